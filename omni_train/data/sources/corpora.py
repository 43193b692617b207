"""Speech corpora in the layouts they ship in: a folder of (audio, txt) pairs, LJSpeech, Common Voice,
MLS, LibriTTS and VCTK.

Each layout is one scanner that lists its clips (`Clip`: id, audio file, text) from the
transcripts alone, no audio opened; `clips` picks the scanner by name. The same clips feed:

- training, through the source factory `corpus` (``layout: ljspeech`` ...): A1T1 samples (audio
  -> transcript), and with ``tts_snac`` (the clips' SNAC codes, written by ``omni-prep snac-encode
  --layout ...``) T1A2 samples (transcript -> the speech in that voice);
- ``omni-prep snac-encode`` and ``omni-prep convert`` (`omni_train.prep`).

A transcript line that cannot be read (too few fields, no text, not UTF-8) is a `Clip` with an
``error``: it is counted as a bad row under ``"<file>:<line>"``, as a clip whose audio file is
missing is. Text is read as bytes and decoded a line at a time (`files.text_line`), so a bad byte
costs its line, not the corpus.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from omni_train.data.samples import Sample
from omni_train.data.skips import SkipCounter
from omni_train.data.sources.base import BadRow, MissingColumnError, Row, Source, check_tasks
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

PAIR_AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass(frozen=True)
class Clip:
    """One utterance of a corpus.

    Attributes:
        id: unique in the corpus; the key of its SNAC codes (``id`` column of snac-encode's output).
        where: where a reader looks to fix it: ``"<file>:<line>"``, or the transcript file (paths
            relative to the corpus folder).
        audio: the clip's audio file (it may not exist: that is the clip's counted skip).
        text: the transcript.
        error: the line could not be read (then `audio` and `text` are None).
    """

    id: str
    where: str
    audio: Path | None = None
    text: str | None = None
    error: BadRow | None = None


def _lines(path: Path) -> Iterator[tuple[int, str | BadRow]]:
    """(1-based line number, line) of the non-blank lines of a text file; a line that is not UTF-8
    comes back as its `BadRow`."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    yield n, text_line(raw).rstrip("\r\n")
                except BadRow as bad:
                    yield n, bad


def _text_file(path: Path) -> str | BadRow:
    """A transcript file's text, whitespace collapsed, or the `BadRow` of its first line that is not UTF-8."""
    lines = []
    for _, line in _lines(path):
        if isinstance(line, BadRow):
            return line
        lines.append(line)
    return " ".join(" ".join(lines).split())


def _text_clip(uid: str, where: str, audio: Path, txt: Path) -> Clip:
    text = _text_file(txt)
    return Clip(uid, where, error=text) if isinstance(text, BadRow) else Clip(uid, where, audio, text)


def _first_existing(candidates: list[Path]) -> Path:
    """The first file that exists, else the first candidate (whose absence is the clip's skip)."""
    return next((p for p in candidates if p.is_file()), candidates[0])


# ---- the layouts ---------------------------------------------------------------------------------
def wav_txt_clips(root: PathLike) -> Iterator[Clip]:
    """``NAME.txt`` beside ``NAME.wav`` (or .flac, .mp3, .ogg, .opus), in any sub-folders of `root`.

    The id is the path under `root` without its suffix. An audio file without its ``.txt`` is a
    bad row, as is an empty ``.txt``; a ``.txt`` with no audio beside it is not a clip.
    """
    root = Path(root)
    audio = sorted(p for p in root.rglob("*") if p.suffix.lower() in PAIR_AUDIO_EXTS and p.is_file())
    for path in audio:
        rel = path.relative_to(root).with_suffix("").as_posix()
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            yield Clip(rel, path.relative_to(root).as_posix(), error=BadRow("no transcript", f"{txt} not found"))
            continue
        yield _text_clip(rel, txt.relative_to(root).as_posix(), path, txt)


def ljspeech_clips(root: PathLike) -> Iterator[Clip]:
    """LJSpeech: ``metadata.csv`` lines ``ID|transcript|normalised transcript`` and ``wavs/ID.wav``.

    The normalised transcript (numbers and abbreviations spelt out) is used where the line has one.
    """
    root = Path(root)
    meta = root / "metadata.csv"
    for n, line in _lines(meta):
        where = f"{meta.name}:{n}"
        if isinstance(line, BadRow):
            yield Clip(where, where, error=line)
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip():
            yield Clip(where, where, error=BadRow("malformed line", f"expected ID|text, got {line[:60]!r}"))
            continue
        text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
        uid = fields[0].strip()
        yield Clip(uid, where, root / "wavs" / f"{uid}.wav", text.strip())


def common_voice_clips(tsv: PathLike, clips_dir: PathLike | None = None) -> Iterator[Clip]:
    """Common Voice: a ``*.tsv`` (``train.tsv``, ``validated.tsv``, ...) with ``path`` and ``sentence``
    columns, the mp3 files in ``clips/`` beside it (soundfile decodes mp3)."""
    tsv = Path(tsv)
    clips_dir = Path(clips_dir) if clips_dir is not None else tsv.parent / "clips"
    header = None
    for n, line in _lines(tsv):
        where = f"{tsv.name}:{n}"
        if isinstance(line, BadRow):
            if header is None:
                raise ValueError(f"{tsv}:{n}: the header is not UTF-8 ({line.detail})")
            yield Clip(where, where, error=line)
            continue
        fields = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
        if header is None:
            header = fields
            continue
        if len(fields) != len(header):  # fields out of place: no column can be trusted
            yield Clip(
                where, where, error=BadRow("malformed line", f"{len(fields)} fields, the header has {len(header)}")
            )
            continue
        row = dict(zip(header, fields))
        yield Clip(Path(row["path"]).stem, where, clips_dir / row["path"], row["sentence"].strip())


def mls_clips(root: PathLike) -> Iterator[Clip]:
    """Multilingual LibriSpeech, one split (``mls_german/train``): ``transcripts.txt`` lines
    ``SPEAKER_BOOK_UTT<tab>text``, audio in ``audio/SPEAKER/BOOK/`` (flac, or opus in the opus release)."""
    root = Path(root)
    trans = root / "transcripts.txt"
    for n, line in _lines(trans):
        where = f"{trans.name}:{n}"
        if isinstance(line, BadRow):
            yield Clip(where, where, error=line)
            continue
        uid, _, text = line.partition("\t")
        parts = uid.split("_")
        if not text.strip() or len(parts) != 3:
            bad = BadRow("malformed line", f"expected SPEAKER_BOOK_UTT<tab>text, got {line[:60]!r}")
            yield Clip(where, where, error=bad)
            continue
        folder = root / "audio" / parts[0] / parts[1]
        audio = _first_existing([folder / f"{uid}{e}" for e in (".flac", ".opus", ".wav")])
        yield Clip(uid, where, audio, text.strip())


def libritts_clips(root: PathLike, text: str = "normalized") -> Iterator[Clip]:
    """LibriTTS (and LibriTTS-R): ``speaker/chapter/UTT.wav`` beside ``UTT.normalized.txt`` and
    ``UTT.original.txt``; `text` picks which transcript ("normalized" or "original")."""
    if text not in ("normalized", "original"):
        raise ValueError(f"libritts: text must be 'normalized' or 'original', got {text!r}")
    root = Path(root)
    suffix = f".{text}.txt"
    for txt in sorted(root.rglob(f"*{suffix}")):
        uid = txt.name[: -len(suffix)]
        yield _text_clip(uid, txt.relative_to(root).as_posix(), txt.parent / f"{uid}.wav", txt)


def vctk_clips(root: PathLike, mic: str = "mic1") -> Iterator[Clip]:
    """VCTK: ``txt/SPEAKER/ID.txt``, audio ``wav48_silence_trimmed/SPEAKER/ID_<mic>.flac`` (0.92) or
    ``wav48/SPEAKER/ID.wav`` (0.80). A transcript without audio (p315's, in 0.92) is a counted skip."""
    if mic not in ("mic1", "mic2"):
        raise ValueError(f"vctk: mic must be 'mic1' or 'mic2', got {mic!r}")
    root = Path(root)
    for txt in sorted((root / "txt").glob("*/*.txt")):
        speaker, uid = txt.parent.name, txt.stem
        audio = _first_existing(
            [root / "wav48_silence_trimmed" / speaker / f"{uid}_{mic}.flac", root / "wav48" / speaker / f"{uid}.wav"]
        )
        yield _text_clip(uid, txt.relative_to(root).as_posix(), audio, txt)


# layout name -> (its scanner, the file or folder its path must hold; None: nothing to check)
LAYOUTS = {
    "wav-txt": (wav_txt_clips, None),
    "ljspeech": (ljspeech_clips, "metadata.csv"),
    "common-voice": (common_voice_clips, None),
    "mls": (mls_clips, "transcripts.txt"),
    "libritts": (libritts_clips, None),
    "vctk": (vctk_clips, "txt"),
}


def check_layout(layout: str, path: PathLike) -> Path:
    """`path` checked for `layout` (its marker file, Common Voice's columns), as one line naming what is missing."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts are {', '.join(LAYOUTS)}")
    p = existing(path)
    marker = LAYOUTS[layout][1]
    if layout == "common-voice":
        if not p.is_file():
            raise ValueError(f"{p}: common-voice reads a .tsv file (train.tsv, validated.tsv, ...), not a folder")
        with open(p, "rb") as f:
            header = f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
        if missing := [c for c in ("path", "sentence") if c not in header]:
            raise MissingColumnError(f"{p}: no column {', '.join(missing)} (columns: {', '.join(header)})")
    elif not p.is_dir():
        raise NotADirectoryError(f"{p}: {layout} reads a folder")
    elif marker is not None and not (p / marker).exists():
        raise FileNotFoundError(f"{p}: no {marker} (a {layout} folder holds it)")
    return p


def clips(layout: str, path: PathLike, **options) -> Iterator[Clip]:
    """The clips of `path` in `layout` (a key of `LAYOUTS`), checked first (`check_layout`)."""
    return LAYOUTS[layout][0](check_layout(layout, path), **options)


# ---- the sources ---------------------------------------------------------------------------------
def corpus(
    layout: str,
    path: PathLike,
    tts_snac: PathLike | None = None,
    *,
    tasks: Sequence[str] | None = None,
    tts_id_column: str = "id",
    tts_snac_column: str = "answer_snac",
    name: str | None = None,
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    **options,
) -> Source:
    """A corpus in one of `LAYOUTS` -> A1T1 samples, and T1A2 with `tts_snac` (as `librispeech` does).

    Args:
        layout: wav-txt, ljspeech, common-voice, mls, libritts or vctk.
        path: the corpus folder (Common Voice: its .tsv file).
        tts_snac: a table of clip id -> SNAC codes (``omni-prep snac-encode --layout LAYOUT``): the
            clips become T1A2 samples too, answers spoken in the corpus's voice(s).
        tasks: A1T1 and/or T1A2; default A1T1, plus T1A2 when `tts_snac` is given.
        options: the layout's own (libritts: ``text``; vctk: ``mic``; common-voice: ``clips_dir``).
    """
    root = check_layout(layout, path)
    try:  # a wrong option fails now: the first clip is listed (from the transcripts; no audio is opened)
        next(LAYOUTS[layout][0](root, **options), None)
    except TypeError as e:
        raise ValueError(f"{layout}: {e}".replace(f"{LAYOUTS[layout][0].__name__}() ", "")) from None
    allowed = (Task.A1T1, Task.T1A2)
    task_list = check_tasks(tasks, allowed) if tasks is not None else allowed[: 2 if tts_snac is not None else 1]
    code_files = None
    if tts_snac is not None:
        code_files = resolve_files(tts_snac, TABLE_EXTS)
        check_columns(first_readable(code_files), [tts_id_column, tts_snac_column])
    elif Task.T1A2 in task_list:
        raise ValueError(f"{layout}: task T1A2 needs tts_snac (the SNAC codes of each clip)")
    read = partial(
        _samples, layout=layout, root=root, options=options, tasks=task_list, code_files=code_files,
        id_column=tts_id_column, snac_column=tts_snac_column,
    )  # fmt: skip
    return Source(name or layout.replace("-", "_"), read, skips, max_skip_fraction)


def _samples(src: Source, layout, root, options, tasks, code_files, id_column, snac_column) -> Iterator[Sample]:
    mine = [c for unit, c in enumerate(LAYOUTS[layout][0](root, **options)) if src.owns(unit)]
    clips = [
        (c.id, c.where, Row({"text": c.text, "audio": None if c.audio is None else str(c.audio)}, error=c.error))
        for c in mine
    ]
    yield from speech_text_samples(src, clips, tasks, code_files, id_column, snac_column)
