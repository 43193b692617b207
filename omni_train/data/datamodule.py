"""From sources to batches: encode samples in the loader workers, bucket them, collate them.

    Source (rows -> Sample) -> SampleEncoder (-> Encoded) -> bucket_batches -> OmniCollator (-> Batch)

Training streams are endless mixtures (a stage runs for a number of steps, not epochs); validation
streams read each source once, in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from omni_train.audio import AudioError, TooLongAudio, load_audio, log_mel, whisper_frames
from omni_train.data.collator import Batch, OmniCollator, sequence_length
from omni_train.data.sampler import bucket_batches, mix
from omni_train.data.samples import Encoded, Sample
from omni_train.data.skips import SkipCounter
from omni_train.data.sources import Source
from omni_train.vocab import Vocab


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class SampleEncoder:
    """Tokenises the texts and turns the question audio into Whisper's log-mel.

    Args:
        tokenizer: anything with ``encode(text) -> ids`` (litgpt's `Tokenizer`).
        vocab: the layout; text ids must stay below its base vocabulary.
        n_mels: 80 for Whisper up to large-v2, 128 for large-v3.
        pad_to_30s: Mini-Omni's padded Whisper input instead of the audio's own length.
        too_long: audio over 30 s is ``cut`` to 30 s or ``drop``ped (a counted skip).
        max_seq_length: longer samples are skipped (counted), never truncated into wrong layouts.
    """

    tokenizer: Any
    vocab: Vocab
    n_mels: int = 80
    pad_to_30s: bool = False
    too_long: str = "cut"
    max_seq_length: int = 2048

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
        )
        if sample.task.audio_in:
            try:
                audio = load_audio(sample.question_audio, 16_000)
                enc.mel = log_mel(audio, self.n_mels, pad_to_30s=self.pad_to_30s, too_long=self.too_long)
            except AudioError as err:
                reason = "audio too long" if isinstance(err, TooLongAudio) else "unreadable audio"
                raise SkipSample(reason, str(err)) from err
            enc.audio_frames = whisper_frames(audio.numel())
        else:
            enc.question_ids = self.text_ids(sample.question_text, "question text")
        if sample.task.audio_out and sample.answer_frames.size(0) == 0:
            raise SkipSample("empty answer audio")
        if (n := sequence_length(enc)) > self.max_seq_length:
            raise SkipSample("longer than max_seq_length", f"{n} > {self.max_seq_length}")
        return enc


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class OmniStream(IterableDataset):
    """Batches of encoded samples; each (rank, worker) reads its own disjoint shard of every source.

    Args:
        sources: name -> `Source`.
        weights: name -> mixture weight; None reads each source once, in order (validation).
        max_tokens: token budget of a batch (rows x padded length), per rank.
    """

    def __init__(
        self,
        sources: dict[str, Source],
        encoder: SampleEncoder,
        collator: OmniCollator,
        max_tokens: int,
        weights: dict[str, float] | None = None,
        buffer_size: int = 1000,
        max_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.sources, self.weights = sources, weights
        self._skips = {src.name: src.skips for src in sources.values()}  # samples carry the Source's name
        self.encoder, self.collator = encoder, collator
        self.max_tokens, self.buffer_size, self.max_batch_size, self.seed = max_tokens, buffer_size, max_batch_size, seed

    def _encoded(self, samples) -> Iterator[Encoded]:
        for sample in samples:
            try:
                yield self.encoder(sample)
            except SkipSample as skip:
                skips = self._skips.get(sample.source)
                if skips is None:
                    raise
                skips.skip(sample.source, sample.row, skip.reason, skip.detail, sample.task.value)

    def __iter__(self) -> Iterator[Batch]:
        rank, world = _rank_and_world()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        index, count = rank * workers + worker, world * workers
        shards = {name: src.sharded(index, count) for name, src in self.sources.items()}
        if self.weights is None:  # validation: everything once, in a fixed order
            samples, seed = itertools.chain.from_iterable(shards.values()), 0
        else:
            streams = {name: (lambda p, s=s: s) for name, s in shards.items()}
            seed = self.seed + index
            samples = mix(streams, self.weights, seed=seed)
        batches = bucket_batches(
            self._encoded(samples), sequence_length, self.max_tokens, self.buffer_size, seed, self.max_batch_size
        )
        counters = list({id(c): c for c in self._skips.values()}.values())  # sources may share one
        for batch in batches:
            out = self.collator(batch)
            # the counts live in this worker; the batch takes them to the trainer (`SkipReport`)
            out.skips, out.worker = SkipCounter().merge(*counters), worker
            yield out


class OmniDataModule(L.LightningDataModule):
    """Hydra-configurable data for one stage: training mixture, validation sources, loader settings.

    A run stops with `TooManySkips` once more than `max_skip_fraction` of a source's samples were
    skipped (bad rows, unreadable audio, over-long samples); None only counts them.
    """

    def __init__(
        self,
        train: dict[str, Source],
        weights: dict[str, float],
        encoder: SampleEncoder,
        val: dict[str, Source] | None = None,
        max_tokens: int = 16384,
        max_batch_size: int | None = None,
        buffer_size: int = 1000,
        num_workers: int = 2,
        pad_to_multiple_of: int = 8,
        seed: int = 0,
        max_skip_fraction: float | None = 0.01,
    ) -> None:
        super().__init__()
        self.train_sources, self.val_sources, self.weights = train, val or {}, weights
        for src in [*train.values(), *self.val_sources.values()]:
            if src.max_skip_fraction is None:  # a source's own setting wins; else the run's (1% by default)
                src.max_skip_fraction = max_skip_fraction
        self.encoder = encoder
        self.collator = OmniCollator(encoder.vocab, pad_to_multiple_of)
        self.max_tokens, self.max_batch_size, self.buffer_size = max_tokens, max_batch_size, buffer_size
        self.num_workers, self.seed = num_workers, seed

    def _loader(self, dataset: OmniStream) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # the stream yields whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        stream = OmniStream(
            self.train_sources,
            self.encoder,
            self.collator,
            self.max_tokens,
            self.weights,
            self.buffer_size,
            self.max_batch_size,
            self.seed,
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
