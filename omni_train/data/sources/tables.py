"""Tables of questions and answers, parquet or JSONL: one row, one sample a configured task.

`Columns` names which column holds each part of a sample; `table_samples` is the loop every table
source shares (rows -> one attempt a task -> `Source.make`). The sources differ only in their
columns, their tasks and how they name a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from omni_train.data.samples import Sample
from omni_train.data.skips import SkipCounter
from omni_train.data.snac_format import SnacFormatError
from omni_train.data.sources.base import BadRow, Row, Source, check_tasks, to_frames
from omni_train.data.sources.files import (
    TABLE_EXTS,
    PathLike,
    check_columns,
    first_readable,
    read_rows,
    resolve_files,
    stem,
)
from omni_train.tasks import Task

log = logging.getLogger(__name__)


def asr_sample(r: Row, audio_col: str, text_col: str, source: str, row) -> Sample:
    text = r.text(text_col)
    return Sample(Task.A1T1, answer_text=text, question_audio=r.audio(audio_col), source=source, row=row)


def tts_sample(r: Row, codes: dict, utt: str, source: str) -> Sample:
    """A T1A2 sample: the row's text spoken as the codes `load_code_map` found for `utt`."""
    text = r.text("text")
    entry = codes.get(utt)
    if entry is None:
        raise BadRow("no tts codes")
    if isinstance(entry, str):  # the parse error, kept from loading time
        raise BadRow("bad tts codes", entry)
    frames = torch.from_numpy(entry.astype(np.int64))
    return Sample(Task.T1A2, answer_text=text, question_text=text, answer_frames=frames, source=source, row=utt)


def load_code_map(files: list[Path], id_column: str, snac_column: str, ids: set[str]) -> dict[str, np.ndarray | str]:
    """id -> ``(N, 7)`` int16 codes for the given ids, or the parse error's message (reported when the row comes up).

    Stored as int16 (codes < 4096), 14 bytes a frame: all of LibriSpeech 960 h (~40 M frames at
    ~11.7 frames/s) would take ~0.6 GB, a third of its strings, and each shard keeps only its own share.
    """
    start, out = time.perf_counter(), {}
    for _, _, values in read_rows(files, [id_column, snac_column], batch_size=1024):
        if isinstance(values, BadRow) or str(values.get(id_column)) not in ids:
            continue
        try:
            out[str(values[id_column])] = to_frames(values.get(snac_column)).numpy().astype(np.int16)
        except SnacFormatError as err:
            out[str(values[id_column])] = str(err)
    log.info("loaded SNAC codes of %d utterances in %.1f s", len(out), time.perf_counter() - start)
    return out


def speech_text_samples(
    src: Source, clips: list[tuple[str, str, Row]], tasks: Sequence[Task], code_files: list[Path] | None,
    id_column: str, snac_column: str,
) -> Iterator[Sample]:
    """A1T1 (hear the clip, write its text) and T1A2 (speak the text as its codes) samples of a speech corpus.

    Args:
        clips: this shard's ``(clip id, row name in skip reports, Row with "text" and "audio")``.
        code_files: tables of SNAC codes keyed by clip id, for T1A2; None without T1A2.
    """
    codes = None
    if code_files is not None:
        key = ("codes", src.shard)
        if key not in src.cache:  # only this shard's clips: memory and parsing split across workers
            src.cache[key] = load_code_map(code_files, id_column, snac_column, {clip_id for clip_id, _, _ in clips})
        codes = src.cache[key]
    for clip_id, where, r in clips:
        for task in tasks:
            if task is Task.A1T1:
                build = partial(asr_sample, r, "audio", "text", src.name, where)
            else:
                build = partial(tts_sample, r, codes, clip_id, src.name)
            sample = src.make(where, task, build)
            if sample is not None:
                yield sample


@dataclass(frozen=True)
class Columns:
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


def _qa_sample(task: Task, r: Row, cols: Columns, source: str, row) -> Sample:
    answer = r.text(cols.answer_text)
    if task.audio_in:
        question_audio = r.audio(cols.question_audio)
        question_text = r.optional_text(cols.question_text) if cols.question_text else None
    else:
        question_audio, question_text = None, r.text(cols.question_text)
    frames = r.frames(cols.answer_frames) if task.audio_out else None
    return Sample(task, answer, question_text, question_audio, frames, source=source, row=row)


def table_samples(
    src: Source, files: list[Path], tasks: tuple[Task, ...], cols: Columns, batch_size: int,
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
            r, row = Row({}, error=values), location
        else:
            if keep is not None and not keep(values):
                continue
            r, row = Row(values, base_dir), row_id(location, values) if row_id else location
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
    check_tasks(tasks, (Task.A1T1,))
    files = resolve_files(path, (".jsonl", ".json"))
    check_columns(first_readable(files), [audio_key, text_key])
    cols = Columns(answer_text=text_key, question_audio=audio_key)
    read = partial(table_samples, files=files, tasks=(Task.A1T1,), cols=cols, batch_size=1)
    return Source(name or stem(path), read, skips, max_skip_fraction)


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
    check_tasks(tasks, (Task.T1T2,))
    files = resolve_files(path, TABLE_EXTS)
    check_columns(first_readable(files), [system_column, question_column, response_column])
    read = partial(
        _open_orca_samples, files=files, columns=(system_column, question_column, response_column),
        separator=separator, batch_size=batch_size,
    )
    return Source(name, read, skips, max_skip_fraction)


def _open_orca_samples(src, files, columns, separator, batch_size) -> Iterator[Sample]:
    for location, _, values in read_rows(files, list(columns), batch_size, src):
        r = Row({}, error=values) if isinstance(values, BadRow) else Row(values)
        sample = src.make(location, Task.T1T2, partial(_orca_sample, r, columns, separator, src.name, location))
        if sample is not None:
            yield sample


def _orca_sample(r: Row, columns, separator: str, source: str, row) -> Sample:
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
    cols = Columns(answer_text=answer_column, question_audio=audio_column, question_text=question_column)
    task_list = check_tasks(tasks, (Task.A1T2, Task.T1T2))
    extra = [question_column] if question_column else []  # carried along even where the task needs no text question
    check_columns(first_readable(files), cols.needed(task_list) + extra)
    read = partial(table_samples, files=files, tasks=task_list, cols=cols, batch_size=batch_size, extra=extra)
    return Source(name, read, skips, max_skip_fraction)


VOICE_ASSISTANT_COLUMNS = Columns(
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
    task_list = check_tasks(tasks, tuple(Task))
    needed = VOICE_ASSISTANT_COLUMNS.needed(task_list)
    extra = ["split_name"] if splits is not None or exclude_splits else []
    check_columns(first_readable(files), needed + extra)
    include = None if splits is None else frozenset(splits)
    keep = partial(_split_filter, include=include, exclude=frozenset(exclude_splits))
    read = partial(
        table_samples, files=files, tasks=task_list, cols=VOICE_ASSISTANT_COLUMNS, batch_size=batch_size,
        extra=extra, keep=keep if extra else None,
    )
    return Source(name, read, skips, max_skip_fraction)


def _split_filter(values: Mapping, include: frozenset | None, exclude: frozenset) -> bool:
    split = values.get("split_name")
    return (include is None or split in include) and split not in exclude


SLAM_COLUMNS = Columns(
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
    task_list = check_tasks(tasks, tuple(Task))
    check_columns(first_readable(files), SLAM_COLUMNS.needed(task_list))
    read = partial(
        table_samples, files=files, tasks=task_list, cols=SLAM_COLUMNS, batch_size=1, row_id=_key_or_location,
    )
    return Source(name or stem(path), read, skips, max_skip_fraction)


def _key_or_location(location: str, values: Mapping) -> str | int:
    key = values.get("key")
    return key if isinstance(key, (str, int)) and not isinstance(key, bool) and key != "" else location
