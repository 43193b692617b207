"""Where samples come from: one reader per dataset family, each a lazy, re-iterable `Source` of `Sample`s.

Each reader is a function of plain keyword arguments, so Hydra can build it::

    _target_: omni_train.data.sources.voice_assistant
    path: /data/VoiceAssistant-400K/data
    tasks: [A1A2, T1A2]

It checks paths and columns at once (a wrong path or column name is a config mistake and should fail
before training starts, naming the file and column) and returns a `Source` that reads nothing until
iterated. Iteration streams: parquet through ``ParquetFile.iter_batches`` with only the columns the
chosen tasks need, JSONL line by line, so a 160 GB set never sits in memory.

Bad rows (an empty answer, a malformed ``answer_snac``, a missing audio file) are not errors: the
affected samples are skipped and counted in the source's `SkipCounter` (`Source.skips`), and
``max_skip_fraction`` turns "too many" into `TooManySkips`.

Row ids (`Sample.row`) are stable and say where to look: ``"<file name>:<row>"`` for parquet and
JSONL (row 0-based within the parquet file; the line number, 1-based, in a JSONL file), the
utterance id for LibriSpeech, the index in the split for HF datasets, unless an id column is given.
A row may yield several samples, one per configured task; they share its row id.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from omni_train.data.samples import Audio, Sample, Task
from omni_train.data.skips import SkipCounter
from omni_train.data.snac_format import SnacFormatError, frames_from_flat, parse_answer_snac

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
TABLE_EXTS = (".parquet", ".jsonl", ".json")
AUDIO_EXTS = (".flac", ".wav")  # LibriSpeech ships flac; converted copies are often wav


class MissingColumnError(ValueError):
    """A configured column/key is not in a data file: a config mistake, not a bad row."""


class BadRow(Exception):
    """Raised while building one sample; `Source.make` turns it into a counted skip."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------------
# Source


class Source:
    """A named, lazy, re-iterable stream of `Sample`s; each ``iter()`` reads the data again.

    Args:
        name: used as `Sample.source` and as the key of the skip counts.
        read: ``read(source) -> Iterator[Sample]``; a `functools.partial` of a module-level
            function, so the source pickles into DataLoader workers.
        skips: where skips are counted (shared between sources if you pass one); a fresh one by default.
        max_skip_fraction: raise `TooManySkips` once more than this share of the attempted samples
            was skipped (checked every `check_every` attempts once that many were seen, and at the
            end of each pass). None: only count.
    """

    check_every = 1000

    def __init__(
        self,
        name: str,
        read: Callable[[Source], Iterator[Sample]],
        skips: SkipCounter | None = None,
        max_skip_fraction: float | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        self.name = name
        self.skips = skips if skips is not None else SkipCounter()
        self.max_skip_fraction = max_skip_fraction
        self.shard = (index, count)
        self._read = read
        self.cache: dict = {}  # per-process state a reader may keep between passes (e.g. a code map)

    def __iter__(self) -> Iterator[Sample]:
        return self._iterate()

    def _iterate(self) -> Iterator[Sample]:
        yield from self._read(self)
        if self.max_skip_fraction is not None:
            self.skips.check(self.max_skip_fraction, self.name)

    def sharded(self, index: int, count: int) -> Source:
        """The same source restricted to every `count`-th unit (row group, line, utterance) from `index`.

        For DataLoader workers and data-parallel ranks: each shard reads only its own units' data.
        Parquet is split by row group, so a set needs at least `count` row groups to be balanced.
        Sharding a shard splits it further. Shards share the counter and the cache.
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        mine, total = self.shard
        shard = Source(self.name, self._read, self.skips, self.max_skip_fraction, (mine + total * index, total * count))
        shard.cache = self.cache
        return shard

    def owns(self, unit: int) -> bool:
        """Whether the `unit`-th shardable unit (0-based, in reading order) belongs to this shard."""
        return unit % self.shard[1] == self.shard[0]

    def make(self, row: str | int, task: Task, build: Callable[[], Sample]) -> Sample | None:
        """Count one attempt and run `build`; a `BadRow` becomes a counted skip and gives None."""
        self.skips.seen(self.name)
        try:
            sample = build()
        except BadRow as bad:
            self.skips.skip(self.name, row, bad.reason, bad.detail, task.value)
            sample = None
        if self.max_skip_fraction is not None and self.skips.n_seen(self.name) % self.check_every == 0:
            self.skips.check(self.max_skip_fraction, self.name, min_seen=self.check_every)
        return sample

    def __repr__(self) -> str:
        shard = "" if self.shard == (0, 1) else f", shard={self.shard}"
        return f"Source({self.name!r}{shard}, {self.skips!r})"


# --------------------------------------------------------------------------------------------------
# LibriSpeech


def librispeech(
    root: PathLike,
    tts_snac: PathLike | None = None,
    *,
    tasks: Sequence[str] | None = None,
    tts_id_column: str = "id",
    tts_snac_column: str = "answer_snac",
    name: str = "librispeech",
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
) -> Source:
    """LibriSpeech-layout ASR data: ``speaker/chapter/*.trans.txt`` ("UTTID TEXT" lines) beside ``UTTID.flac``/``.wav``.

    Gives A1T1 samples (audio -> transcript). With `tts_snac`, a parquet/JSONL table (file,
    directory or glob) of utterance id -> SNAC codes (an ``answer_snac`` string, or a flat list of 7
    codes per frame), the same rows also give T1A2 samples (transcript -> spoken transcript), so one
    corpus feeds both stage-1 tasks. Utterances without codes are counted as "no tts codes" skips of
    their T1A2 sample.

    Args:
        root: the corpus root (or any folder under it, e.g. ``LibriSpeech/train-clean-100``); searched recursively.
        tts_snac: optional codes table; read lazily on the first pass (and kept, as int16, per process).
        tasks: A1T1 and/or T1A2; default A1T1, plus T1A2 when `tts_snac` is given.
    """
    root_dir = _existing(root)
    if not root_dir.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    allowed = (Task.A1T1, Task.T1A2)
    task_list = _tasks(tasks, allowed) if tasks is not None else allowed[: 2 if tts_snac is not None else 1]
    code_files = None
    if tts_snac is not None:
        code_files = resolve_files(tts_snac, TABLE_EXTS)
        _check_columns(_first_readable(code_files), [tts_id_column, tts_snac_column])
    elif Task.T1A2 in task_list:
        raise ValueError("librispeech: task T1A2 needs tts_snac (the SNAC codes of each utterance)")
    read = partial(
        _librispeech_samples, root=root_dir, tasks=task_list, code_files=code_files,
        id_column=tts_id_column, snac_column=tts_snac_column,
    )
    return Source(name, read, skips, max_skip_fraction)


def _librispeech_samples(src, root, tasks, code_files, id_column, snac_column) -> Iterator[Sample]:
    utterances = []  # this shard's (folder, utterance id, transcript); the transcripts are small
    unit = -1
    for trans in sorted(root.rglob("*.trans.txt")):
        with open(trans, encoding="utf-8") as f:
            for line in f:
                utt, _, text = line.strip().partition(" ")
                if utt:
                    unit += 1
                    if src.owns(unit):
                        utterances.append((trans.parent, utt, text))
    codes = None
    if code_files is not None:
        key = ("codes", src.shard)
        if key not in src.cache:  # only this shard's utterances: memory and parsing split across workers
            src.cache[key] = _load_code_map(code_files, id_column, snac_column, {u for _, u, _ in utterances})
        codes = src.cache[key]
    for folder, utt, text in utterances:
        audio = next((folder / (utt + e) for e in AUDIO_EXTS if (folder / (utt + e)).is_file()), None)
        r = _Row({"text": text, "audio": str(audio or folder / (utt + AUDIO_EXTS[0]))})
        for task in tasks:
            if task is Task.A1T1:
                build = partial(_asr_sample, r, "audio", "text", src.name, utt)
            else:
                build = partial(_tts_sample, r, codes, utt, src.name)
            sample = src.make(utt, task, build)
            if sample is not None:
                yield sample


def _asr_sample(r: _Row, audio_col: str, text_col: str, source: str, row) -> Sample:
    text = r.text(text_col)
    return Sample(Task.A1T1, answer_text=text, question_audio=r.audio(audio_col), source=source, row=row)


def _tts_sample(r: _Row, codes: dict, utt: str, source: str) -> Sample:
    text = r.text("text")
    entry = codes.get(utt)
    if entry is None:
        raise BadRow("no tts codes")
    if isinstance(entry, str):  # the parse error, kept from loading time
        raise BadRow("bad tts codes", entry)
    frames = torch.from_numpy(entry.astype(np.int64))
    return Sample(Task.T1A2, answer_text=text, question_text=text, answer_frames=frames, source=source, row=utt)


def _load_code_map(files: list[Path], id_column: str, snac_column: str, ids: set[str]) -> dict[str, np.ndarray | str]:
    """id -> ``(N, 7)`` int16 codes for the given ids, or the parse error's message (reported when the row comes up).

    Stored as int16 (codes < 4096), 14 bytes a frame: all of LibriSpeech 960 h (~40 M frames at
    ~11.7 frames/s) would take ~0.6 GB, a third of its strings, and each shard keeps only its own share.
    """
    start, out = time.perf_counter(), {}
    for _, _, values in read_rows(files, [id_column, snac_column], batch_size=1024):
        if isinstance(values, BadRow) or str(values.get(id_column)) not in ids:
            continue
        try:
            out[str(values[id_column])] = _to_frames(values.get(snac_column)).numpy().astype(np.int16)
        except SnacFormatError as err:
            out[str(values[id_column])] = str(err)
    log.info("loaded SNAC codes of %d utterances in %.1f s", len(out), time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------------------------------
# HF datasets with an audio column


def hf_asr(
    path: PathLike,
    audio_column: str = "audio",
    text_column: str = "text",
    split: str = "train",
    *,
    tasks: Sequence[str] = ("A1T1",),
    id_column: str | None = None,
    name: str | None = None,
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    batch_size: int = 64,
    cache_dir: PathLike | None = None,
) -> Source:
    """Any HF dataset on disk with an audio and a text column -> A1T1 samples.

    `path` is either a ``save_to_disk`` folder (a Dataset, or a DatasetDict from which `split` is
    taken) or data files (a file, a folder or a glob of ``.parquet`` or ``.jsonl``/``.json``),
    streamed with ``load_dataset(..., streaming=True)``. The audio column is cast to
    ``datasets.Audio(decode=False)``: we pass the encoded bytes (or the path) on as `Audio` and decode
    ourselves, because ``datasets``' own decoding needs torchcodec/FFmpeg. Relative audio paths are
    taken relative to the dataset folder (or the data file's folder).

    Args:
        id_column: a column to use as `Sample.row`; default the row's index in the split.
            (A saved dataset is sharded by row index, reading only the shard's rows; streamed files
            are read whole by every shard, which keeps every `count`-th row.)
        cache_dir: where ``load_dataset`` may keep its lock files (default: the HF cache).
    """
    _tasks(tasks, (Task.A1T1,))  # a uniform `tasks` argument for configs; ASR rows give A1T1 only
    p = _existing(path) if not _is_glob(path) else Path(str(path))
    on_disk = p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json", "dataset_info.json"))
    needed = [audio_column, text_column] + ([id_column] if id_column else [])
    if on_disk:
        spec = ("disk", p, split)
        base_dir = p
    else:
        files = resolve_files(path, TABLE_EXTS)
        kinds = {"parquet" if f.suffix == ".parquet" else "json" for f in files}
        if len(kinds) > 1:
            raise ValueError(f"{path}: mixes parquet and JSON files; give one kind")
        spec = (kinds.pop(), [str(f) for f in files], split)
        base_dir = files[0].parent
    columns = _hf_open(spec, None, cache_dir).column_names or []
    for col in needed:
        if col not in columns:
            raise MissingColumnError(f"{p}: no column {col!r} (columns: {', '.join(columns)})")
    read = partial(
        _hf_asr_samples, spec=spec, audio_column=audio_column, text_column=text_column,
        id_column=id_column, base_dir=base_dir, batch_size=batch_size, cache_dir=cache_dir,
    )
    return Source(name or _stem(path), read, skips, max_skip_fraction)


def _hf_open(spec, columns: list[str] | None, cache_dir):
    """A `datasets.Dataset` (on disk, memory-mapped) or a streaming `IterableDataset`, nothing decoded."""
    import datasets

    kind, where, split = spec
    if kind == "disk":
        ds = datasets.load_from_disk(str(where))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{where}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
    else:
        extra = {"columns": columns} if kind == "parquet" and columns else {}  # parquet reads only these
        cache = {"cache_dir": str(cache_dir)} if cache_dir else {}
        ds = datasets.load_dataset(kind, data_files=where, split="train", streaming=True, **cache, **extra)
    return ds.select_columns(columns) if columns else ds


def _hf_asr_samples(src, spec, audio_column, text_column, id_column, base_dir, batch_size, cache_dir):
    import datasets

    columns = [audio_column, text_column] + ([id_column] if id_column else [])
    ds = _hf_open(spec, columns, cache_dir).cast_column(audio_column, datasets.Audio(decode=False))
    index, count = src.shard
    if isinstance(ds, datasets.Dataset):  # random access: read only this shard's rows
        row_ids = range(index, len(ds), count)
        ds = ds.select(row_ids) if count > 1 else ds
        rows = zip(row_ids, _iter_hf_rows(ds, columns, batch_size))
    else:
        rows = ((i, v) for i, v in enumerate(_iter_hf_rows(ds, columns, batch_size)) if src.owns(i))
    for i, values in rows:
        r = _Row(values, base_dir)
        row = values.get(id_column) if id_column and values.get(id_column) is not None else i
        sample = src.make(row, Task.A1T1, partial(_asr_sample, r, audio_column, text_column, src.name, row))
        if sample is not None:
            yield sample


def _iter_hf_rows(ds, columns: list[str], batch_size: int) -> Iterator[dict]:
    for batch in ds.iter(batch_size=batch_size):
        yield from (dict(zip(columns, vals)) for vals in zip(*(batch[c] for c in columns)))


# --------------------------------------------------------------------------------------------------
# Tables (parquet or JSONL) of questions and answers


@dataclass(frozen=True)
class _Columns:
    """Which column holds each part of a sample; None where a source has no such column."""

    answer_text: str
    question_audio: str | None = None
    question_text: str | None = None
    answer_frames: str | None = None

    def needed(self, tasks: Iterable[Task]) -> list[str]:
        """The columns the tasks need, in a fixed order (only these are read from parquet)."""
        cols = [self.answer_text]
        for task in tasks:
            part = [self.question_audio if task.audio_in else self.question_text]
            part += [self.answer_frames] if task.audio_out else []
            for col in part:
                if col is None:
                    raise ValueError(f"task {task.value} needs a column this source does not have")
                if col not in cols:
                    cols.append(col)
        return cols


def _qa_sample(task: Task, r: _Row, cols: _Columns, source: str, row) -> Sample:
    answer = r.text(cols.answer_text)
    if task.audio_in:
        question_audio = r.audio(cols.question_audio)
        question_text = r.optional_text(cols.question_text) if cols.question_text else None
    else:
        question_audio, question_text = None, r.text(cols.question_text)
    frames = r.frames(cols.answer_frames) if task.audio_out else None
    return Sample(task, answer, question_text, question_audio, frames, source=source, row=row)


def _table_samples(
    src: Source, files: list[Path], tasks: tuple[Task, ...], cols: _Columns, batch_size: int,
    extra: Sequence[str] = (), keep: Callable[[Mapping], bool] | None = None,
    row_id: Callable[[str, Mapping], str | int] | None = None,
) -> Iterator[Sample]:
    """The shared loop of the table sources: rows -> one sample attempt per task.

    `extra` columns are read (and required) besides those the tasks need; `keep` filters rows before
    they count as attempts; `row_id` may replace the file location as `Sample.row`.
    """
    needed = cols.needed(tasks)
    columns = needed + [c for c in extra if c not in needed]
    for location, base_dir, values in read_rows(files, columns, batch_size, src):
        if isinstance(values, BadRow):
            r, row = _Row({}, error=values), location
        else:
            if keep is not None and not keep(values):
                continue
            r, row = _Row(values, base_dir), row_id(location, values) if row_id else location
        for task in tasks:
            sample = src.make(row, task, partial(_qa_sample, task, r, cols, src.name, row))
            if sample is not None:
                yield sample


def asr_manifest(
    path: PathLike,
    *,
    tasks: Sequence[str] = ("A1T1",),
    audio_key: str = "audio",
    text_key: str = "text",
    name: str | None = None,
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
) -> Source:
    """A JSONL manifest of ``{"audio": path, "text": transcript}`` lines -> A1T1 samples.

    Relative audio paths are relative to the manifest's folder, so a corpus folder can move.
    """
    _tasks(tasks, (Task.A1T1,))
    files = resolve_files(path, (".jsonl", ".json"))
    _check_columns(_first_readable(files), [audio_key, text_key])
    cols = _Columns(answer_text=text_key, question_audio=audio_key)
    read = partial(_table_samples, files=files, tasks=(Task.A1T1,), cols=cols, batch_size=1)
    return Source(name or _stem(path), read, skips, max_skip_fraction)


def open_orca(
    path: PathLike,
    *,
    tasks: Sequence[str] = ("T1T2",),
    system_column: str = "system_prompt",
    question_column: str = "question",
    response_column: str = "response",
    separator: str = "\n\n",
    name: str = "open_orca",
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    batch_size: int = 1024,
) -> Source:
    """Open-Orca (parquet or JSONL: system_prompt, question, response) -> T1T2 samples.

    The text prompt is ``system_prompt + separator + question`` (a blank line by default, as the
    system prompt reads as a preamble to the question), or the question alone when the system prompt
    is empty. Mini-Omni's prompt layout has one text span for the question, with no chat template,
    so the system prompt has to live inside it.
    """
    _tasks(tasks, (Task.T1T2,))
    files = resolve_files(path, TABLE_EXTS)
    _check_columns(_first_readable(files), [system_column, question_column, response_column])
    read = partial(
        _open_orca_samples, files=files, columns=(system_column, question_column, response_column),
        separator=separator, batch_size=batch_size,
    )
    return Source(name, read, skips, max_skip_fraction)


def _open_orca_samples(src, files, columns, separator, batch_size) -> Iterator[Sample]:
    for location, _, values in read_rows(files, list(columns), batch_size, src):
        r = _Row({}, error=values) if isinstance(values, BadRow) else _Row(values)
        sample = src.make(location, Task.T1T2, partial(_orca_sample, r, columns, separator, src.name, location))
        if sample is not None:
            yield sample


def _orca_sample(r: _Row, columns, separator: str, source: str, row) -> Sample:
    system_col, question_col, response_col = columns
    system, question = r.optional_text(system_col), r.text(question_col)
    prompt = f"{system}{separator}{question}" if system else question
    return Sample(Task.T1T2, answer_text=r.text(response_col), question_text=prompt, source=source, row=row)


def moss_audioqa(
    path: PathLike,
    *,
    tasks: Sequence[str] = ("A1T2",),
    audio_column: str = "question_audio",
    question_column: str | None = "question",
    answer_column: str = "answer",
    name: str = "moss_audioqa",
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    batch_size: int = 64,
) -> Source:
    """Spoken questions with text answers (Moss-002-sft with TTS'd questions) -> A1T2 (and/or T1T2) samples.

    A JSONL manifest or parquet (file, folder or glob) with the question audio (a path, relative to
    the data file's folder allowed; raw bytes; or an HF Audio struct ``{bytes, path}``), the question
    text (set `question_column` to None if there is none) and the answer text. The defaults follow
    VoiceAssistant-400K's column names, so one data-prep writer serves both.
    """
    files = resolve_files(path, TABLE_EXTS)
    cols = _Columns(answer_text=answer_column, question_audio=audio_column, question_text=question_column)
    task_list = _tasks(tasks, (Task.A1T2, Task.T1T2))
    extra = [question_column] if question_column else []  # carried along even where the task needs no text question
    _check_columns(_first_readable(files), cols.needed(task_list) + extra)
    read = partial(_table_samples, files=files, tasks=task_list, cols=cols, batch_size=batch_size, extra=extra)
    return Source(name, read, skips, max_skip_fraction)


VOICE_ASSISTANT_COLUMNS = _Columns(
    answer_text="answer", question_audio="question_audio", question_text="question", answer_frames="answer_snac"
)


def voice_assistant(
    path: PathLike,
    tasks: Sequence[str] = ("A1A2",),
    *,
    splits: Sequence[str] | None = None,
    exclude_splits: Sequence[str] = (),
    name: str = "voice_assistant",
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    batch_size: int = 32,
) -> Source:
    """VoiceAssistant-400K's parquet shards (a file, a folder of shards, or a glob) -> samples of `tasks`.

    Columns: split_name, index, round, question, question_audio (HF Audio struct ``{bytes, path}``),
    answer, answer_snac. Each row gives one sample per task: A1A2 (spoken question -> answer text
    and SNAC frames), A1T2 (spoken question -> answer text), T1A2 (question text -> spoken answer),
    T1T2 (question text -> answer text). Only the columns those tasks need are read (T1T2 never
    touches the audio bytes), one record batch at a time.

    Args:
        splits: keep only rows whose split_name is one of these; exclude_splits: drop these (e.g.
            ``["identity"]``, the model's self-introductions, when training a differently named model).
        batch_size: rows per record batch; with audio, ~32 rows is a few MB.
    """
    files = resolve_files(path, (".parquet",))
    task_list = _tasks(tasks, tuple(Task))
    needed = VOICE_ASSISTANT_COLUMNS.needed(task_list)
    extra = ["split_name"] if splits is not None or exclude_splits else []
    _check_columns(_first_readable(files), needed + extra)
    include = None if splits is None else frozenset(splits)
    keep = partial(_split_filter, include=include, exclude=frozenset(exclude_splits))
    read = partial(
        _table_samples, files=files, tasks=task_list, cols=VOICE_ASSISTANT_COLUMNS, batch_size=batch_size,
        extra=extra, keep=keep if extra else None,
    )
    return Source(name, read, skips, max_skip_fraction)


def _split_filter(values: Mapping, include: frozenset | None, exclude: frozenset) -> bool:
    split = values.get("split_name")
    return (include is None or split in include) and split not in exclude


SLAM_COLUMNS = _Columns(
    answer_text="target_text", question_audio="source_wav", question_text="source_text", answer_frames="target_token"
)


def slam_s2s_jsonl(
    path: PathLike,
    tasks: Sequence[str] = ("A1A2",),
    *,
    name: str | None = None,
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
) -> Source:
    """SLAM-LLM's s2s JSONL (key, source_wav, source_text, target_token, target_text) -> A1A2 samples.

    ``target_token`` must hold SNAC codes: a flat list of ints, 7 per frame in Mini-Omni's frame
    order (the ``answer_snac`` string without its ``#`` markers), or an ``answer_snac`` string. Note
    that SLAM-LLM's own published JSONL data (SLAM-Omni) puts single-codebook CosyVoice tokens in
    ``target_token`` (its ``code_type: CosyVoice``); those are not SNAC codes and cannot be told
    apart by value. A list whose length is not a multiple of 7 is skipped as "bad target_token".
    ``source_wav`` may be relative to the manifest's folder; `Sample.row` is ``key`` when present.
    Other tasks (A1T2, T1A2, T1T2) can be drawn from the same rows.
    """
    files = resolve_files(path, (".jsonl", ".json"))
    task_list = _tasks(tasks, tuple(Task))
    _check_columns(_first_readable(files), SLAM_COLUMNS.needed(task_list))
    read = partial(
        _table_samples, files=files, tasks=task_list, cols=SLAM_COLUMNS, batch_size=1, row_id=_key_or_location,
    )
    return Source(name or _stem(path), read, skips, max_skip_fraction)


def _key_or_location(location: str, values: Mapping) -> str | int:
    key = values.get("key")
    return key if isinstance(key, (str, int)) and not isinstance(key, bool) and key != "" else location


# --------------------------------------------------------------------------------------------------
# Rows and their values


class _Row:
    """One row's values, checked on demand; every problem becomes a `BadRow` with a stable reason."""

    def __init__(self, values: Mapping, base_dir: Path | None = None, error: BadRow | None = None) -> None:
        self.values, self.base_dir, self.error = values, base_dir, error
        self._frames: dict[str, torch.Tensor | BadRow] = {}

    def _get(self, col: str):
        if self.error is not None:
            raise self.error
        value = self.values.get(col)
        if value is None:
            raise BadRow(f"missing {col}")
        return value

    def text(self, col: str) -> str:
        value = self._get(col)
        if not isinstance(value, str):
            raise BadRow(f"bad {col}", f"expected text, got {type(value).__name__}")
        if not value.strip():
            raise BadRow(f"empty {col}")
        return value.strip()

    def optional_text(self, col: str) -> str | None:
        value = self.values.get(col) if self.error is None else None
        return value.strip() or None if isinstance(value, str) else None

    def audio(self, col: str) -> Audio:
        return to_audio(self._get(col), self.base_dir, col)

    def frames(self, col: str) -> torch.Tensor:
        """Parsed once per row, however many tasks need them (errors too)."""
        if col not in self._frames:
            try:
                self._frames[col] = _to_frames(self._get(col))
            except SnacFormatError as err:
                self._frames[col] = BadRow(f"bad {col}", str(err))
            except BadRow as bad:
                self._frames[col] = bad
        result = self._frames[col]
        if isinstance(result, BadRow):
            raise result
        return result


def _to_frames(value) -> torch.Tensor:
    """An ``answer_snac`` string, or a flat code list (SNAC ints, ``#`` markers allowed) -> ``(N, 7)``."""
    if isinstance(value, str):
        return parse_answer_snac(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        if any(isinstance(v, str) for v in value):  # Mini-Omni's reconscruct_snac list form
            return parse_answer_snac(" ".join(map(str, value)))
        return frames_from_flat(value)
    raise SnacFormatError(f"expected an answer_snac string or a list of codes, got {type(value).__name__}")


def to_audio(value, base_dir: Path | None, col: str) -> Audio:
    """A path, raw bytes or an HF Audio struct ``{bytes, path}`` -> `Audio` (bytes win over the path)."""
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return Audio(data=bytes(data))
        if not path:
            raise BadRow(f"missing {col}", "neither bytes nor path")
        value = path
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise BadRow(f"empty {col}")
        return Audio(data=bytes(value))
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not str(value):
            raise BadRow(f"missing {col}")
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise BadRow("missing audio file", str(path))
        return Audio(path=str(path))
    raise BadRow(f"bad {col}", f"expected a path, bytes or {{bytes, path}}, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------------
# Files


def _is_glob(path: PathLike) -> bool:
    return any(c in str(path) for c in "*?[")


def _existing(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return p


def resolve_files(path: PathLike, exts: tuple[str, ...]) -> list[Path]:
    """A file, a folder (searched recursively, hidden folders skipped) or a glob -> its data files, sorted."""
    if _is_glob(path):
        files = sorted(Path(f) for f in glob.glob(os.path.expanduser(str(path)), recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"{path}: no files match")
        return files
    p = _existing(path)
    if p.is_file():
        return [p]
    files = sorted(
        f for f in p.rglob("*")
        if f.suffix in exts and f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
    )
    if not files:
        raise FileNotFoundError(f"{path}: no {' or '.join(exts)} files in this folder")
    return files


def _stem(path: PathLike) -> str:
    name = Path(str(path)).name
    return name.split(".")[0] if not _is_glob(path) else Path(str(path)).parent.name


def _is_parquet(f: Path) -> bool:
    return f.suffix == ".parquet"


def first_object(f: Path) -> dict | None:
    """The first JSON object line of a JSONL file (None if it has none)."""
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{f}: not JSON Lines ({err})") from None
                return obj if isinstance(obj, dict) else None
    return None


def _check_columns(f: Path, columns: Iterable[str]) -> None:
    """Raise `MissingColumnError` naming the file and column; JSONL is judged by its first line."""
    if _is_parquet(f):
        names = pq.read_schema(f).names
    else:
        first = first_object(f)
        if first is None:
            return  # an empty manifest is no config mistake; it just yields nothing
        names = list(first)
    _check_names(f, names, columns)


def _check_names(f: Path, names: list[str], columns: Iterable[str]) -> None:
    for col in columns:
        if col not in names:
            raise MissingColumnError(f"{f}: no column {col!r} (columns: {', '.join(names)})")


def _first_readable(files: list[Path]) -> Path:
    """The first file whose columns can be read: a truncated shard is skipped (and counted) when the
    data is read, so it should not stop the run when the source is built."""
    for f in files:
        if not _is_parquet(f) or _num_row_groups(f) >= 0:
            return f
    raise ValueError(
        f"{files[0].parent}: none of its {len(files)} parquet files can be read (truncated or not parquet)"
    )


def _num_row_groups(f: Path) -> int:
    """-1 for a file whose parquet footer cannot be read."""
    try:
        return pq.read_metadata(f).num_row_groups
    except (pa.ArrowException, OSError):
        return -1


def read_rows(
    files: list[Path], columns: list[str], batch_size: int, src: Source | None = None
) -> Iterator[tuple[str, Path, dict | BadRow]]:
    """Yield ``(location, folder, values)`` for each row of this shard; only `columns` are read from parquet.

    Shard units are parquet row groups and JSONL lines, counted across all files in order. Parquet
    with fewer row groups than there are shards (a small set on many workers) is sharded by row
    instead, every shard reading all groups, so no shard is left empty. A JSONL line that is not a
    JSON object comes back as a `BadRow` (counted by the caller); a file missing a column is a
    `MissingColumnError`. A parquet file that cannot be opened (truncated: its footer is gone) comes
    back as one `BadRow` located at the file's name, and a row group that fails midway as one at
    the row where it failed; the rest of the file, or of the group, is lost, not the run.
    """
    parquet = [f for f in files if _is_parquet(f)]
    count = src.shard[1] if src is not None else 1
    by_row = count > 1 and bool(parquet) and sum(max(0, _num_row_groups(f)) for f in parquet) < count
    unit = -1
    for f in files:
        if _is_parquet(f):
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as err:
                # every shard sees it; the one owning the next unit reports it, so it is counted once
                if src is None or src.owns(unit + 1):
                    yield f.name, f.parent, BadRow("unreadable parquet file", str(err))
                continue
            with pf:
                _check_names(f, pf.schema_arrow.names, columns)
                meta = pf.metadata
                starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
                groups = []
                for g in range(meta.num_row_groups):
                    unit += not by_row
                    if by_row or src is None or src.owns(unit):
                        groups.append(g)
                for g in groups:  # one row group at a time, so row numbers stay exact
                    row = int(starts[g])
                    try:
                        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns):
                            for values in batch.to_pylist():
                                unit += by_row
                                if not by_row or src.owns(unit):
                                    yield f"{f.name}:{row}", f.parent, values
                                row += 1
                    except (pa.ArrowException, OSError) as err:  # a corrupt page: the rest of this group is lost
                        if not by_row or src.owns(unit + 1):
                            yield f"{f.name}:{row}", f.parent, BadRow("unreadable parquet data", str(err))
                        unit += by_row * (int(starts[g + 1]) - row)  # keep the row units of all shards aligned
        else:
            _check_columns(f, columns)
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    unit += 1
                    if src is not None and not src.owns(unit):
                        continue
                    try:
                        values = json.loads(line)
                        if not isinstance(values, dict):
                            values = BadRow("bad json", f"expected an object, got {type(values).__name__}")
                    except json.JSONDecodeError as err:
                        values = BadRow("bad json", str(err))
                    yield f"{f.name}:{lineno}", f.parent, values


def _tasks(tasks: Sequence[str] | str, allowed: tuple[Task, ...]) -> tuple[Task, ...]:
    """Config task names (a list, a Hydra ListConfig, or one string) -> unique `Task`s, checked against `allowed`."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[Task] = []
    for t in names:
        try:
            task = Task(str(t))
        except ValueError:
            raise ValueError(f"unknown task {t!r}; tasks are {', '.join(x.value for x in Task)}") from None
        if task not in allowed:
            choices = ", ".join(a.value for a in allowed)
            raise ValueError(f"task {task.value} is not available here; choose from {choices}")
        if task not in out:
            out.append(task)
    if not out:
        raise ValueError("no tasks given")
    return tuple(out)
