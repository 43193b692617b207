"""LibriSpeech-layout folders: ``speaker/chapter/*.trans.txt`` ("UTTID TEXT" lines) beside ``UTTID.flac``.

`utterances` is the one scanner of that layout; the training source (`librispeech`), omni-prep and
the evaluations (`omni_train.evaluate`, the sample logger) all read a folder through it, so they
agree on which utterances a folder holds and in which order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from omni_train.data.samples import Sample
from omni_train.data.skips import SkipCounter
from omni_train.data.sources.base import BadRow, Row, Source, check_tasks
from omni_train.data.sources.files import (
    TABLE_EXTS,
    PathLike,
    check_columns,
    existing,
    first_readable,
    resolve_files,
    text_line,
)
from omni_train.data.sources.tables import speech_text_samples
from omni_train.tasks import Task

log = logging.getLogger(__name__)
AUDIO_EXTS = (".flac", ".wav")  # LibriSpeech ships flac; converted copies are often wav
TRANSCRIPTS = "*.trans.txt"  # one a chapter folder, speaker/chapter/ below the split


@dataclass(frozen=True)
class Utterance:
    """One transcript line: the utterance id, its folder and its text.

    A line that cannot be read (`utterances` with ``bad_lines=True``) has its ``file:line`` as `id`,
    no text, and `error` saying why.
    """

    id: str
    folder: Path
    text: str
    error: str | None = None

    @property
    def audio(self) -> Path | None:
        """The utterance's audio file (flac, else wav), None if neither exists."""
        return next((p for e in AUDIO_EXTS if (p := self.folder / (self.id + e)).is_file()), None)


def utterances(root: PathLike, bad_lines: bool = False) -> Iterator[Utterance]:
    """Every transcript line under `root` (searched recursively), in sorted file order; no audio is opened.

    A line that is not UTF-8 is logged (``file:line`` and the byte) and passed over; with
    `bad_lines` it comes back as an `Utterance` with its `error` set, for the caller to count.
    """
    for trans in sorted(Path(root).rglob(TRANSCRIPTS)):
        with open(trans, "rb") as f:  # bytes, decoded a line at a time: a bad byte costs its line, not the scan
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = text_line(raw)
                except BadRow as bad:
                    if bad_lines:
                        yield Utterance(f"{trans.name}:{lineno}", trans.parent, "", f"{trans}:{lineno}: {bad.detail}")
                    else:
                        log.warning("skipping %s:%d: not UTF-8 (%s)", trans, lineno, bad.detail)
                    continue
                utt, _, text = line.strip().partition(" ")
                if utt:
                    yield Utterance(utt, trans.parent, text)


def is_librispeech(path: Path, depth: int | None = None) -> bool:
    """Whether `path` is a folder holding LibriSpeech-layout transcripts, at most `depth` folders
    down (None: any depth). A split holds them two down (speaker/chapter), a folder of splits three."""
    if not path.is_dir():
        return False
    if depth is None:
        return next(path.rglob(TRANSCRIPTS), None) is not None
    return any(next(path.glob("*/" * d + TRANSCRIPTS), None) for d in range(depth + 1))


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
    """LibriSpeech-layout ASR data -> A1T1 samples (audio -> transcript).

    With `tts_snac`, a parquet/JSONL table (file, directory or glob) of utterance id -> SNAC codes
    (an ``answer_snac`` string, or a flat list of 7 codes per frame), the same rows also give T1A2
    samples (transcript -> spoken transcript), so one corpus feeds both stage-1 tasks. Utterances
    without codes are counted as "no tts codes" skips of their T1A2 sample.

    Args:
        root: the corpus root (or any folder under it, e.g. ``LibriSpeech/train-clean-100``); searched recursively.
        tts_snac: optional codes table; read lazily on the first pass (and kept, as int16, per process).
        tasks: A1T1 and/or T1A2; default A1T1, plus T1A2 when `tts_snac` is given.
    """
    root_dir = existing(root)
    if not root_dir.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    allowed = (Task.A1T1, Task.T1A2)
    task_list = check_tasks(tasks, allowed) if tasks is not None else allowed[: 2 if tts_snac is not None else 1]
    code_files = None
    if tts_snac is not None:
        code_files = resolve_files(tts_snac, TABLE_EXTS)
        check_columns(first_readable(code_files), [tts_id_column, tts_snac_column])
    elif Task.T1A2 in task_list:
        raise ValueError("librispeech: task T1A2 needs tts_snac (the SNAC codes of each utterance)")
    read = partial(
        _samples, root=root_dir, tasks=task_list, code_files=code_files, id_column=tts_id_column,
        snac_column=tts_snac_column,
    )  # fmt: skip
    return Source(name, read, skips, max_skip_fraction)


def _samples(src: Source, root, tasks, code_files, id_column, snac_column) -> Iterator[Sample]:
    # this shard's utterances, each one unit; the transcripts are small, the audio is opened later
    mine = [u for unit, u in enumerate(utterances(root, bad_lines=True)) if src.owns(unit)]
    yield from speech_text_samples(src, [(u.id, u.id, _row(u)) for u in mine], tasks, code_files, id_column, snac_column)


def _row(u: Utterance) -> Row:
    if u.error is not None:  # an unreadable transcript line: each of its tasks' attempts is a counted skip
        return Row({}, error=BadRow("not UTF-8", u.error))
    audio = u.audio or u.folder / (u.id + AUDIO_EXTS[0])  # a missing file is the sample's counted skip
    return Row({"text": u.text, "audio": str(audio)})
