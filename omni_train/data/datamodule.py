"""From sources to batches: encode samples in the loader workers, bucket them, collate them.

    Source (rows -> Sample) -> SampleEncoder (-> Encoded) -> bucket_batches -> OmniCollator (-> Batch)

Training streams are endless mixtures (a stage runs for a number of steps, not epochs); validation
streams read each source once, in order. Where a training stream stands is part of every checkpoint
(`OmniDataModule.state_dict`), so a resumed stage gets the batches it would have got.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from omni_train.audio import (
    WHISPER_SAMPLE_RATE,
    AudioError,
    TooLongAudio,
    load_audio,
    whisper_frames,
    whisper_input,
    whisper_max_samples,
)
from omni_train.config import DataConfig
from omni_train.data.collator import Batch, OmniCollator, drop_oldest_turns, sequence_length
from omni_train.data.sampler import Mixture, bucket_batches, resumable_buckets
from omni_train.data.samples import Encoded, Sample
from omni_train.data.skips import SkipCounter, TooManySkips
from omni_train.data.sources import Source
from omni_train.distributed import gather_objects, group
from omni_train.vocab import Vocab

log = logging.getLogger(__name__)
MAX_STREAK = 1000  # a training source that makes no sample from this many attempts in a row stops the run


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class SampleEncoder:
    """Tokenises the texts and decodes the question audio to 16 kHz (its log-mel is made in the step).

    Args:
        tokenizer: anything with ``encode(text) -> ids`` (litgpt's `Tokenizer`).
        vocab: the layout; text ids must stay below its base vocabulary.
        too_long: audio over 30 s is ``cut`` to 30 s (counted as a cut: `Encoded.cut_from_s`) or
            ``drop``ped (a counted skip).
        max_seq_length: longer samples are skipped (counted), never truncated into wrong layouts; a
            conversation first drops its oldest earlier turns (counted too), never the current one.
    """

    tokenizer: Any
    vocab: Vocab
    too_long: str = DataConfig.too_long
    max_seq_length: int = DataConfig.max_seq_length

    def text_ids(self, text: str, what: str) -> list[int]:
        if not text or not text.strip():
            raise SkipSample(f"empty {what}")
        ids = self.tokenizer.encode(text, bos=False, eos=False)
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(i >= self.vocab.base_vocab_size for i in ids):
            raise SkipSample("token id beyond the base vocabulary", f"{what} {text[:40]!r}")
        return ids

    def __call__(self, sample: Sample) -> Encoded:
        enc = Encoded(
            task=sample.task,
            answer_ids=self.text_ids(sample.answer_text, "answer text"),
            answer_frames=sample.answer_frames,
            source=sample.source,
            row=sample.row,
            history=[(self.text_ids(q, "earlier question"), self.text_ids(a, "earlier answer"))
                     for q, a in sample.history],
            history_loss=sample.history_loss,
        )  # fmt: skip
        if sample.task.audio_in:
            try:
                audio = load_audio(sample.question_audio, WHISPER_SAMPLE_RATE)
                enc.audio = whisper_input(audio, too_long=self.too_long)
            except AudioError as err:
                reason = "audio too long" if isinstance(err, TooLongAudio) else "unreadable audio"
                raise SkipSample(reason, str(err)) from err
            enc.audio_frames = whisper_frames(audio.numel())
            if audio.numel() > whisper_max_samples():  # not dropped above: whisper_input cut it
                enc.cut_from_s = audio.numel() / WHISPER_SAMPLE_RATE
        else:
            enc.question_ids = self.text_ids(sample.question_text, "question text")
        if sample.task.audio_out and sample.answer_frames.size(0) == 0:
            raise SkipSample("empty answer audio")
        drop_oldest_turns(enc, self.max_seq_length)
        if (n := sequence_length(enc)) > self.max_seq_length:
            raise SkipSample("longer than max_seq_length", f"{n} > {self.max_seq_length}")
        return enc


class OmniStream(IterableDataset):
    """Batches of encoded samples; each (rank, worker) reads its own disjoint shard of every source.

    Args:
        sources: name -> `Source`.
        weights: name -> mixture weight; None reads each source once, in order (validation).
        max_tokens: token budget of a batch (rows x padded length), per rank.
        resume: shard index -> the `Batch.position` state of the last batch trained from that shard.
        rotation: loader worker w reads shard ``(w + rotation) % workers`` of its rank (see
            `OmniDataModule`); 0 for a fresh start.
    """

    def __init__(
        self,
        sources: dict[str, Source],
        encoder: SampleEncoder,
        collator: OmniCollator,
        max_tokens: int,
        weights: dict[str, float] | None = None,
        buffer_size: int = DataConfig.buffer_size,
        max_batch_size: int | None = None,
        seed: int = 0,
        resume: dict[int, dict] | None = None,
        rotation: int = 0,
    ) -> None:
        self.sources, self.weights = sources, weights
        self.resume, self.rotation = resume or {}, rotation
        self._skips = {src.name: src.skips for src in sources.values()}  # samples carry the Source's name
        self.encoder, self.collator = encoder, collator
        self.max_tokens, self.buffer_size, self.max_batch_size, self.seed = max_tokens, buffer_size, max_batch_size, seed

    def _encoded(self, samples) -> Iterator[Encoded]:
        for sample in samples:
            skips = self._skips.get(sample.source)
            try:
                enc = self.encoder(sample)
            except SkipSample as skip:
                if skips is None:
                    raise
                skips.skip(sample.source, sample.row, skip.reason, skip.detail, sample.task.value)
                continue
            if enc.dropped_turns and skips is not None:
                skips.drop_turns(sample.source, enc.dropped_turns)
            if enc.cut_from_s is not None and skips is not None:
                skips.cut(sample.source, sample.row, f"{enc.cut_from_s:.1f} s of audio cut to Whisper's 30 s")
            yield enc

    def __iter__(self) -> Iterator[Batch]:
        rank, world = group()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        index, count = rank * workers + (worker + self.rotation) % workers, world * workers
        shards = {name: src.sharded(index, count) for name, src in self.sources.items()}
        counters = list({id(c): c for c in self._skips.values()}.values())  # sources may share one
        if self.weights is None:  # validation: everything once, in a fixed order
            samples = itertools.chain.from_iterable(shards.values())
            batches = bucket_batches(
                self._encoded(samples), sequence_length, self.max_tokens, self.buffer_size, 0, self.max_batch_size
            )
            pairs: Iterable[tuple[list[Encoded], dict | None]] = ((batch, None) for batch in batches)
        else:
            for s in shards.values():  # the mixture restarts each source for ever: one that makes nothing must stop it
                s.max_streak = MAX_STREAK
            streams = {name: partial(_training_pass, s) for name, s in shards.items()}
            seed = self.seed + index
            mixture = Mixture(streams, self.weights, seed)
            resume = self.resume.get(index)
            if resume is not None:
                with _uncounted(shards.values(), counters):
                    mixture.load_state_dict(resume["upstream"])
            pairs = resumable_buckets(
                self._encoded(mixture), sequence_length, self.max_tokens, self.buffer_size, seed,
                self.max_batch_size, upstream=mixture.state_dict, resume=resume,
            )
        for batch, state in pairs:
            out = self.collator(batch)
            # the counts live in this worker; the batch takes them to the trainer (`SkipReport`)
            out.skips, out.worker = SkipCounter().merge(*counters), worker
            out.position = None if state is None else (index, state)
            yield out


def _training_pass(src: Source, n: int) -> Iterator[Sample]:
    """One pass over a training source for `Mixture` (which restarts it forever): a pass that makes no
    sample at all is one line naming the source and why, whatever max_skip_fraction says."""
    made = False
    for sample in src:
        made = True
        yield sample
    if made:
        return
    if src.skips.n_seen(src.name) == 0:
        index, count = src.shard
        raise TooManySkips(
            f"{src.name}: its shard {index} of {count} (one per rank and loader worker) holds no rows: "
            "the source has fewer rows than there are shards; lower data.num_workers"
        )
    raise TooManySkips(f"{src.name}: a whole pass over its rows made no sample; {src.skips.summary(src.name)}")


@contextmanager
def _uncounted(sources: Iterable[Source], counters: list[SkipCounter]):
    """Fast-forwarding re-reads rows that were counted, and judged against max_skip_fraction and
    max_streak, before the restart: read them without either."""
    limits = [(src, src.max_skip_fraction, src.max_streak) for src in sources]
    saved = [(c, copy.deepcopy(vars(c))) for c in counters]
    for src, _, _ in limits:
        src.max_skip_fraction = src.max_streak = None
    try:
        yield
    finally:
        for src, fraction, streak in limits:
            src.max_skip_fraction, src.max_streak = fraction, streak
        for c, state in saved:
            vars(c).clear()
            vars(c).update(state)


def _worker_init(worker_id: int, trainer_pid: int) -> None:
    """Loader workers outlive the preemption signals, which SLURM and terminals send to every process
    of a job: a worker that died of one would crash the trainer before it can save (see
    `omni_train.resume.Preemption`). SIGUSR1 and Ctrl-C's SIGINT are ignored; SIGTERM ends a worker
    only when it comes from the trainer itself (how multiprocessing and torch stop their children),
    which only a thread waiting with `sigwaitinfo` can tell (where it does not exist, SIGTERM keeps
    its default). Every other thread of the worker blocks SIGTERM from its first instruction
    (`_Loader` forks with it blocked), so that thread is the only one it can reach."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _WAIT_FOR_SIGTERM:
        # Not SIG_IGN: an ignored SIGTERM taken by a thread that did not block it would be dropped,
        # and the trainer's own stop with it (multiprocessing then waits at exit for a worker that
        # never ends: a run, or pytest, hung there for ever).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from, args=(trainer_pid,), daemon=True).start()
    if os.environ.get("PL_SEED_WORKERS") == "1":  # what Lightning would have installed (seed_everything(workers=True))
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def _exit_on_sigterm_from(trainer_pid: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == trainer_pid:
            os._exit(0)


_WAIT_FOR_SIGTERM = hasattr(signal, "sigwaitinfo")


class _Loader(DataLoader):
    """Forks its workers with SIGTERM blocked. A thread inherits its creator's signal mask, so every
    thread of a worker blocks SIGTERM, torch's thread pool included, which starts before
    `_worker_init` can block anything; the trainer's thread gets its own mask back at once."""

    def __iter__(self):
        if not (_WAIT_FOR_SIGTERM and self.num_workers > 0):
            return super().__iter__()
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


class OmniDataModule(L.LightningDataModule):
    """Hydra-configurable data for one stage: training mixture, validation sources, loader settings.

    A run stops with `TooManySkips` once more than `max_skip_fraction` of a source's samples were
    skipped (bad rows, unreadable audio, over-long samples); None only counts them. Whatever it says,
    a training source that makes no sample for `MAX_STREAK` attempts in a row stops the run too.

    Exact resume. Each (rank, loader worker) reads its own shard of the data; every training batch
    carries the state its shard's stream continues from (`Batch.position`), taken at the start of
    the batch's bucketing buffer: the mixture's RNG and each source's pass and rows read, the
    shuffle RNG, and how many of the buffer's batches were handed out. `on_before_batch_transfer`
    keeps the state of the last batch the trainer took from each shard; `state_dict` gathers them
    from all ranks into the checkpoint. Because the state travels with the batch, it is exact
    however far the workers and Lightning's prefetching ran ahead. On resume each shard re-reads its
    sources up to the saved rows (no audio decoding, no tokenising) and remakes one buffer (up to
    `buffer_size` samples encoded, as any buffer is), then drops the batches already trained.

    With several workers the DataLoader takes batches from workers 0, 1, ... in turn; after a
    restart its worker 0 reads the shard that was due next (`OmniStream.rotation`), so the order
    across shards is the uninterrupted one. A checkpoint from a different world size or
    `num_workers`, or different data settings, cannot be continued exactly: the stream then starts
    afresh with a warning. (torchdata's StatefulDataLoader would need the same per-shard state from
    the dataset and would still keep only rank 0's state under DDP.)

    Args:
        train: name -> `Source` of the training mixture; weights: name -> its share.
        encoder: turns each `Sample` into token ids and 16-kHz audio (in the loader workers).
        cfg: the batching and loader settings (`DataConfig`; a stage's own ``max_tokens`` and
            ``max_batch_size`` already in it); the schema's defaults when None.
        val: name -> `Source` read once, in order, at each validation.
        seed: of the mixture and the bucketing shuffle.
    """

    def __init__(
        self,
        train: dict[str, Source],
        weights: dict[str, float],
        encoder: SampleEncoder,
        cfg: DataConfig | None = None,
        val: dict[str, Source] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        cfg = cfg or DataConfig()
        self.train_sources, self.val_sources, self.weights = train, val or {}, weights
        for src in [*train.values(), *self.val_sources.values()]:
            if src.max_skip_fraction is None:  # a source's own setting wins; else the run's (1% by default)
                src.max_skip_fraction = cfg.max_skip_fraction
        self.encoder = encoder
        self.collator = OmniCollator(encoder.vocab, cfg.pad_to_multiple_of)
        self.max_tokens, self.max_batch_size, self.buffer_size = cfg.max_tokens, cfg.max_batch_size, cfg.buffer_size
        self.num_workers, self.seed = cfg.num_workers, seed
        self._positions: dict[int, dict] = {}  # shard index -> state after the last batch trained from it
        self._next_worker = 0  # this rank's shard (0..workers-1) the loader serves next
        self._loaded: dict | None = None

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def _settings(self) -> dict:
        """What must not change for a saved stream position to mean the same batches."""
        return {"seed": self.seed, "weights": sorted(self.weights.items()), "buffer_size": self.buffer_size,
                "max_tokens": self.max_tokens, "max_batch_size": self.max_batch_size}

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if batch.position is not None:  # a training batch, about to be trained on
            index, state = batch.position
            self._positions[index] = state
            self._next_worker = (index % self._workers() + 1) % self._workers()
        return batch

    def state_dict(self) -> dict:
        world = group()[1]
        mine = {"shards": self._positions, "next_worker": self._next_worker}
        return {"shards": world * self._workers(), "settings": self._settings(), "ranks": gather_objects(mine)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def _resume(self) -> tuple[dict[int, dict], int]:
        """This rank's saved shard states and the worker rotation, if the checkpoint fits this run."""
        state, self._loaded = self._loaded, None
        if not state:
            return {}, 0
        rank, world = group()
        if state["shards"] != world * self._workers() or len(state["ranks"]) != world:
            log.warning("the checkpoint's data stream had %d shards (ranks x workers), this run has %d: "
                        "the data order starts afresh", state["shards"], world * self._workers())
            return {}, 0
        if state["settings"] != self._settings():
            log.warning("data settings changed since the checkpoint (%s, now %s): the data order starts afresh",
                        state["settings"], self._settings())
            return {}, 0
        mine = state["ranks"][rank]
        self._positions, self._next_worker = dict(mine["shards"]), mine["next_worker"]
        return dict(mine["shards"]), mine["next_worker"]

    def _loader(self, dataset: OmniStream) -> DataLoader:
        return _Loader(
            dataset,
            batch_size=None,  # the stream yields whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=partial(_worker_init, trainer_pid=os.getpid()) if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        resume, rotation = self._resume()
        stream = OmniStream(
            self.train_sources,
            self.encoder,
            self.collator,
            self.max_tokens,
            self.weights,
            self.buffer_size,
            self.max_batch_size,
            self.seed,
            resume=resume,
            rotation=rotation,
        )
        return self._loader(stream)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_sources:
            return []
        stream = OmniStream(
            self.val_sources, self.encoder, self.collator, self.max_tokens, None, self.buffer_size, self.max_batch_size
        )
        return self._loader(stream)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device, non_blocking=True)
