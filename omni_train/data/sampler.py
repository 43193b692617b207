"""Streaming batch formation: mix sources, shard them across ranks and workers, bucket by length.

The sources are streams (160 GB of parquet is never indexed up front), so bucketing works on a
shuffled buffer: sort a buffer of samples by length, cut it into batches that fill a token budget,
and emit those batches in random order. Every choice comes from a seeded generator, so a run is
reproducible for a given (seed, epoch, rank, worker), and resumable: `Mixture` and
`resumable_buckets` report where they are, so a restarted run continues the same sequence.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from omni_train.config import DataConfig
from omni_train.distributed import rng_state, set_rng_state

T = TypeVar("T")


class Mixture:
    """Draws from several streams in proportion to their weights, restarting each one when it ends,
    with a position that can be saved and restored: the draw RNG, and each stream's pass and the
    number of items taken from that pass.

    Restoring re-opens each stream at its pass and skips the items already taken. For our sources
    that means re-reading rows (parquet, JSONL, file lists), never decoding audio: decoding happens
    after the mixture, in `SampleEncoder`.

    Args:
        streams: name -> function of the pass number (0, 1, ...) returning a fresh iterable.
        weights: name -> relative weight; names with weight 0 are skipped.
        seed: of the draws.
    """

    def __init__(self, streams: dict[str, Callable[[int], Iterable[T]]], weights: dict[str, float], seed: int) -> None:
        self.names = [n for n in streams if weights.get(n, 0) > 0]
        unknown = set(weights) - set(streams)
        if unknown or not self.names:
            raise ValueError(f"mixture weights {weights} do not match the sources {sorted(streams)}")
        self.streams, self.weights = streams, [weights[n] for n in self.names]
        self.rng = random.Random(seed)
        self.passes = {n: 0 for n in self.names}
        self.taken = {n: 0 for n in self.names}  # items drawn from the current pass of each stream
        self._iters: dict[str, Iterator[T]] = {}

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng), "passes": dict(self.passes), "taken": dict(self.taken)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken; skips the items already drawn from each stream's pass now."""
        if sorted(state["passes"]) != sorted(self.names):
            raise ValueError(f"saved mixture of {sorted(state['passes'])} cannot resume one of {sorted(self.names)}")
        set_rng_state(self.rng, state["rng"])
        self.passes, self.taken = dict(state["passes"]), dict(state["taken"])
        for name in self.names:
            it = iter(self.streams[name](self.passes[name]))
            next(itertools.islice(it, self.taken[name], self.taken[name]), None)  # consume that many
            self._iters[name] = it

    def __iter__(self) -> Iterator[T]:
        for name in self.names:
            if name not in self._iters:
                self._iters[name] = iter(self.streams[name](self.passes[name]))
        while True:
            name = self.rng.choices(self.names, weights=self.weights)[0]
            for _ in range(2):  # a stream that is empty right after a restart is empty for good
                try:
                    item = next(self._iters[name])
                except StopIteration:
                    self.passes[name] += 1
                    self.taken[name] = 0
                    self._iters[name] = iter(self.streams[name](self.passes[name]))
                    continue
                self.taken[name] += 1
                yield item
                break
            else:
                raise ValueError(f"source {name!r} yields no samples")


def bucket_batches(
    items: Iterable[T],
    length: Callable[[T], int],
    max_tokens: int,
    buffer_size: int = DataConfig.buffer_size,
    seed: int = 0,
    max_batch_size: int | None = None,
) -> Iterator[list[T]]:
    """Batches of similar length whose padded size ``len(batch) * max length`` fits `max_tokens`.

    An item longer than `max_tokens` alone is the caller's to filter; here it forms a batch of one.
    """
    for batch, _ in resumable_buckets(items, length, max_tokens, buffer_size, seed, max_batch_size):
        yield batch


def resumable_buckets(
    items: Iterable[T],
    length: Callable[[T], int],
    max_tokens: int,
    buffer_size: int = DataConfig.buffer_size,
    seed: int = 0,
    max_batch_size: int | None = None,
    upstream: Callable[[], dict | None] = lambda: None,
    resume: dict | None = None,
) -> Iterator[tuple[list[T], dict]]:
    """`bucket_batches`, each batch with the state that continues right after it.

    The state is taken where the batch's buffer starts: the shuffle RNG, ``upstream()`` (the
    position of whatever feeds `items`, e.g. `Mixture.state_dict`) and how many of the buffer's
    batches were handed out (after a buffer's last batch: where the next buffer starts). To resume,
    restore the upstream from ``state["upstream"]`` and pass the state as `resume`: that one buffer
    is read again, its batches rebuilt in the same order, and those already handed out dropped. So
    a restart remakes at most one buffer of items, never the batches before it.
    """
    rng = random.Random(seed)
    skip = 0
    if resume is not None:
        set_rng_state(rng, resume["rng"])
        skip = resume["taken"]
    it = iter(items)
    while True:
        start = {"rng": rng_state(rng), "upstream": upstream()}
        buffer = sorted(itertools.islice(it, buffer_size), key=length)
        if not buffer:
            return
        batches = list(random_batches(buffer, length, max_tokens, max_batch_size))
        rng.shuffle(batches)
        for taken in range(skip, len(batches) - 1):
            yield batches[taken], {**start, "taken": taken + 1}
        if skip < len(batches):  # after a buffer's last batch, resume at the next buffer: none to remake
            yield batches[-1], {"rng": rng_state(rng), "upstream": upstream(), "taken": 0}
        skip = 0


def random_batches(
    items: Iterable[T], length: Callable[[T], int], max_tokens: int, max_batch_size: int | None = None
) -> Iterator[list[T]]:
    """Batches in the given order under the token budget: bucketing cuts its sorted buffers with it,
    and on an unsorted stream it is the baseline bucketing is measured against."""
    current, longest = [], 0
    for item in items:
        n = length(item)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * max(longest, n) > max_tokens):
            yield current
            current, longest = [], 0
        current.append(item)
        longest = max(longest, n)
    if current:
        yield current
