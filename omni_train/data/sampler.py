"""Streaming batch formation: mix sources, shard them across ranks and workers, bucket by length.

The sources are streams (160 GB of parquet is never indexed up front), so bucketing works on a
shuffled buffer: sort a buffer of samples by length, cut it into batches that fill a token budget,
and emit those batches in random order. Every choice comes from a seeded generator, so a run is
reproducible for a given (seed, epoch, rank, worker).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def shard(items: Iterable[T], index: int, count: int) -> Iterator[T]:
    """Every `count`-th item starting at `index`: disjoint shares for ranks x loader workers."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} not in [0, {count})")
    return itertools.islice(items, index, None, count)


def mix(streams: dict[str, Callable[[int], Iterable[T]]], weights: dict[str, float], seed: int) -> Iterator[T]:
    """Draw from several streams in proportion to `weights`, restarting each one when it ends.

    Args:
        streams: name -> function of the pass number (0, 1, ...) returning a fresh iterable.
        weights: name -> relative weight; names with weight 0 are skipped.
    """
    names = [n for n in streams if weights.get(n, 0) > 0]
    unknown = set(weights) - set(streams)
    if unknown or not names:
        raise ValueError(f"mixture weights {weights} do not match the sources {sorted(streams)}")
    rng = random.Random(seed)
    passes = {n: 0 for n in names}
    iters = {n: iter(streams[n](0)) for n in names}
    while True:
        name = rng.choices(names, weights=[weights[n] for n in names])[0]
        for _ in range(2):  # a stream that is empty right after a restart is empty for good
            try:
                yield next(iters[name])
                break
            except StopIteration:
                passes[name] += 1
                iters[name] = iter(streams[name](passes[name]))
        else:
            raise ValueError(f"source {name!r} yields no samples")


def bucket_batches(
    items: Iterable[T],
    length: Callable[[T], int],
    max_tokens: int,
    buffer_size: int = 1000,
    seed: int = 0,
    max_batch_size: int | None = None,
) -> Iterator[list[T]]:
    """Batches of similar length whose padded size ``len(batch) * max length`` fits `max_tokens`.

    An item longer than `max_tokens` alone is the caller's to filter; here it forms a batch of one.
    """
    rng = random.Random(seed)
    it = iter(items)
    while True:
        buffer = sorted(itertools.islice(it, buffer_size), key=length)
        if not buffer:
            return
        batches = list(random_batches(buffer, length, max_tokens, max_batch_size))
        rng.shuffle(batches)
        yield from batches


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
