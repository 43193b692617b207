"""Data preparation behind ``omni-prep``: SNAC encoding and decoding, format conversion, VoiceAssistant
rows in a new voice, statistics.

Every writer here produces parquet shards ``part-00000.parquet, part-00001.parquet, ...`` of
`shard_size` rows of the input, in input order. A shard is written to a temporary file and renamed
into place (`os.replace`), so a shard that exists is complete, and a rerun (after a crash, or on a
grown input) skips the shards already there. ``.omni_prep.json`` in the output folder records what the
shards were made from; a rerun with another shard size or command is refused rather than mixing
row numbering schemes.

Inputs are read lazily, as `omni_train.data.sources` reads them (its readers and helpers are reused):
a LibriSpeech-layout folder (``speaker/chapter/*.trans.txt`` beside the audio), a corpus in one of
`sources.LAYOUTS` (LJSpeech, Common Voice, MLS, LibriTTS, VCTK, wav/txt pairs), a JSONL manifest or
parquet file(s). Rows that cannot be used (a missing or unreadable audio file, an empty text) are
skipped, counted and reported at the end, never fatal.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch
from tqdm import tqdm

from omni_train.atomic import atomic_write, write_json
from omni_train.audio import SNAC_SAMPLE_RATE, Audio, AudioError, SnacCodec, load_audio, save_wav
from omni_train.data import sources
from omni_train.data.skips import SkipCounter
from omni_train.data.snac_format import SnacFormatError, format_answer_snac, parse_answer_snac
from omni_train.data.sources import (
    TABLE_EXTS,
    BadRow,
    is_librispeech,
    read_rows,
    resolve_files,
    to_audio,
    to_frames,
    utterances,
)
from omni_train.data.sources.conversations import exchanges, parse_messages
from omni_train.data.sources.files import PathLike, existing

AUDIO_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Audio in parquet
_VALUE = {"dtype": "string", "_type": "Value"}  # an HF string feature, for the schema metadata
STATE_FILE = ".omni_prep.json"  # hidden: the sources skip it when reading the folder


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class AudioRow:
    """One input row: a stable id, its audio (None if the row has none or it is unusable) and its text."""

    id: str
    audio: Audio | None = None
    text: str | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None  # why the row is unusable; it is then skipped and counted


def _count(root: Path) -> int:
    """How many utterances a LibriSpeech-layout folder's transcripts list (no audio is opened)."""
    return sum(1 for _ in utterances(root))


@dataclass
class AudioInput:
    """An input's rows, their number when cheap to know, whether it has text, and the reader's skip counter."""

    rows: Iterator[AudioRow]
    total: int | None
    has_text: bool
    skips: SkipCounter | None = None


def audio_rows(
    path: PathLike, audio_column: str = "audio", text_column: str | None = "text", id_column: str | None = None,
    layout: str | None = None,
) -> AudioInput:  # fmt: skip
    """The rows of an audio input, read lazily.

    A corpus `layout` (`sources.LAYOUTS`: wav-txt, ljspeech, common-voice, mls, libritts, vctk) is
    read by `sources.clips` (row id = clip id; a bad transcript line is a skipped row naming
    ``file:line``). LibriSpeech-layout folders are read by `sources.librispeech` (row id = utterance id); JSONL and
    parquet by the sources' table reader (row id = `id_column`, else ``"<file>:<row>"``; relative
    audio paths are relative to the data file). `text_column` is optional in tables.
    """
    p = existing(path, "input")
    if layout is not None:
        total = sum(1 for _ in sources.clips(layout, p))  # transcripts only: cheap, and a progress bar
        return AudioInput(_clip_rows(sources.clips(layout, p)), total, True)
    if is_librispeech(p):
        src = sources.librispeech(p)
        rows = (AudioRow(str(s.row), s.question_audio, s.answer_text) for s in src)
        return AudioInput(rows, _count(p), True, src.skips)
    files = resolve_files(p, TABLE_EXTS)
    names = _column_names(files[0])
    if audio_column not in names:
        raise sources.MissingColumnError(f"{files[0]}: no audio column {audio_column!r} (columns: {', '.join(names)})")
    if id_column is not None and id_column not in names:
        raise sources.MissingColumnError(f"{files[0]}: no id column {id_column!r} (columns: {', '.join(names)})")
    columns = [c for c in (id_column, audio_column, text_column) if c is not None and c in names]
    all_parquet = all(f.suffix == ".parquet" for f in files)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files) if all_parquet else None
    rows = _table_audio_rows(files, columns, audio_column, text_column, id_column)
    return AudioInput(rows, total, text_column is not None and text_column in names)


def _clip_rows(clips: Iterator[sources.Clip]) -> Iterator[AudioRow]:
    for clip in clips:
        if clip.error is not None:
            yield AudioRow(clip.where, error=f"{clip.error.reason}: {clip.error.detail}")
        elif not clip.audio.is_file():
            yield AudioRow(clip.id, None, clip.text, error=f"missing audio file: {clip.audio} ({clip.where})")
        elif not clip.text:
            yield AudioRow(clip.id, None, clip.text, error=f"empty text: {clip.where}")
        else:
            yield AudioRow(clip.id, Audio(path=str(clip.audio)), clip.text)


def _table_audio_rows(files, columns, audio_column, text_column, id_column) -> Iterator[AudioRow]:
    for location, base_dir, values in read_rows(files, columns, batch_size=64):
        if isinstance(values, BadRow):
            yield AudioRow(location, error=str(values))
            continue
        row_id = str(values[id_column]) if id_column and values.get(id_column) is not None else location
        text = values.get(text_column) if text_column else None
        text = text.strip() if isinstance(text, str) else None
        value = values.get(audio_column)
        try:
            if value is None:
                raise BadRow(f"missing {audio_column}")
            yield AudioRow(row_id, to_audio(value, base_dir, audio_column), text)
        except BadRow as bad:
            yield AudioRow(row_id, None, text, error=f"{bad.reason}: {bad.detail}" if bad.detail else bad.reason)


def _column_names(f: Path) -> list[str]:
    if f.suffix == ".parquet":
        return pq.read_schema(f).names
    first = sources.first_object(f)
    return list(first) if first else []


# --------------------------------------------------------------------------------------------------
# Sharded, atomic, resumable output


class ShardWriter:
    """Writes ``part-%05d.parquet`` shards atomically; `done(k)` says whether shard k already exists.

    Args:
        out_dir: created if missing.
        shard_size: input rows per shard (skipped rows still count, so numbering is stable).
        job: what is being written (command and settings); must match an earlier run in `out_dir`.
    """

    def __init__(self, out_dir: PathLike, shard_size: int, job: dict) -> None:
        if shard_size < 1:
            raise ValueError(f"shard size must be >= 1, got {shard_size}")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        state = {**job, "shard_size": shard_size}
        state_file = self.dir / STATE_FILE
        if state_file.is_file():
            old = json.loads(state_file.read_text())
            changed = [k for k in state if k in old and old[k] != state[k]]
            if changed:
                diffs = ", ".join(f"{k} {old[k]!r} -> {state[k]!r}" for k in changed)
                raise ValueError(f"{self.dir} holds shards made with other settings ({diffs}); use a new folder")
        write_json(state_file, state)
        self.written = self.skipped_shards = 0

    def path(self, k: int) -> Path:
        return self.dir / f"part-{k:05d}.parquet"

    def done(self, k: int) -> bool:
        return self.path(k).is_file()

    def write(self, k: int, table: pa.Table) -> Path:
        atomic_write(self.path(k), lambda tmp: pq.write_table(table, str(tmp), row_group_size=256))
        self.written += 1
        return self.path(k)


def shards(rows: Iterable, shard_size: int) -> Iterator[tuple[int, list]]:
    """Consecutive chunks of `shard_size` rows, numbered from 0."""
    chunk, k = [], 0
    for row in rows:
        chunk.append(row)
        if len(chunk) == shard_size:
            yield k, chunk
            chunk, k = [], k + 1
    if chunk:
        yield k, chunk


@dataclass
class Report:
    """What a command did: rows written, shards skipped because they existed, rows skipped and why."""

    rows: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    skips: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, counter: SkipCounter | None) -> None:
        """Take in the skips a `sources` reader counted itself (e.g. a missing LibriSpeech audio file)."""
        for e in counter.examples if counter is not None else []:
            self.examples.setdefault(e.reason, str(e))
        for (_, reason), n in (counter.skipped.items() if counter is not None else []):
            self.skips[reason] += n

    def skip(self, row_id: str, reason: str) -> None:
        key = reason.split(":")[0][:60]
        self.skips[key] += 1
        self.examples.setdefault(key, f"{row_id}: {reason}")

    def __str__(self) -> str:
        lines = [f"{self.rows} rows in {self.shards_written} new shards; {self.shards_kept} complete shards kept"]
        for reason, n in self.skips.most_common():
            lines.append(f"skipped {n} rows: {reason} (e.g. {self.examples[reason]})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# snac-encode


def pick_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (use --device cpu)")
    return device


def snac_encode(
    input: PathLike,
    out_dir: PathLike,
    snac: PathLike,
    *,
    audio_column: str = "audio",
    text_column: str | None = "text",
    id_column: str | None = None,
    batch_size: int = 16,
    shard_size: int = 1000,
    device: str | None = None,
    workers: int = 4,
    progress: bool = True,
    layout: str | None = None,
) -> Report:
    """Encode each row's audio (resampled to the codec's rate) into an ``answer_snac`` string.

    Writes shards with columns ``id``, ``answer_snac`` and, when the input has text, ``text`` (the
    table `sources.librispeech(root, tts_snac=OUT_DIR)` reads for T1A2). A table of conversations
    (a ``messages`` column) is encoded turn by turn instead (`_snac_encode_conversations`). Audio is decoded by
    `workers` threads while the codec runs; each shard is encoded in length-sorted batches, which
    keeps padding small. A clip shorter than its batch's longest may get slightly different codes in
    its last frames than when encoded alone (see `SnacCodec.encode_batch`); ``batch_size=1`` gives
    exactly the single-clip codes.
    """
    codec = SnacCodec.from_pretrained(existing(snac, "SNAC codec"), device=pick_device(device))
    if layout is None and _is_conversations(input):
        return _snac_encode_conversations(
            input, out_dir, codec, id_column=id_column, batch_size=batch_size, shard_size=shard_size, workers=workers,
            progress=progress,
        )  # fmt: skip
    data = audio_rows(input, audio_column, text_column, id_column, layout)
    job = {"command": "snac-encode", "input": str(Path(input).resolve())}
    if layout is not None:
        job["layout"] = layout
    writer = ShardWriter(out_dir, shard_size, job)
    report = Report()
    bar = tqdm(total=data.total, unit="clip", desc="snac-encode", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, chunk in shards(data.rows, shard_size):
            if writer.done(k):
                report.shards_kept += 1
                bar.update(len(chunk))
                continue
            table = _encode_shard(codec, chunk, data.has_text, batch_size, pool, report, bar)
            writer.write(k, table)
            report.shards_written += 1
            report.rows += table.num_rows
    bar.close()
    report.add(data.skips)
    return report


def _load(row: AudioRow, rate: int) -> torch.Tensor | str:
    if row.error is not None:
        return row.error
    if row.audio is None:
        return "no audio"
    try:
        return load_audio(row.audio, rate)
    except AudioError as e:
        return str(e)


def _encode_shard(
    codec: SnacCodec, chunk: list[AudioRow], has_text: bool, batch_size: int, pool, report: Report, bar
) -> pa.Table:
    codes: dict[int, str] = {}
    window = max(batch_size * 8, 1)  # clips decoded at once, sorted by length into batches
    for start in range(0, len(chunk), window):
        part = chunk[start : start + window]
        waves = list(pool.map(lambda r: _load(r, codec.sample_rate), part))
        good = []
        for i, (row, wave) in enumerate(zip(part, waves)):
            if isinstance(wave, str):
                report.skip(row.id, wave)
                bar.update(1)
            else:
                good.append((start + i, wave))
        good.sort(key=lambda iw: iw[1].numel())
        for b in range(0, len(good), batch_size):
            batch = good[b : b + batch_size]
            for (i, _), frames in zip(batch, codec.encode_batch([w for _, w in batch])):
                codes[i] = format_answer_snac(frames)
            bar.update(len(batch))
    kept = sorted(codes)
    columns = {"id": pa.array([chunk[i].id for i in kept], pa.string())}
    if has_text:
        columns["text"] = pa.array([chunk[i].text for i in kept], pa.string())
    columns["answer_snac"] = pa.array([codes[i] for i in kept], pa.string())
    return pa.table(columns)


# --------------------------------------------------------------------------------------------------
# snac-encode of conversations

MESSAGE = pa.struct(
    [("role", pa.string()), ("content", pa.string()), ("audio", AUDIO_STRUCT), ("answer_snac", pa.string())]
)
CONVERSATION_SCHEMA = pa.schema([("id", pa.string()), ("messages", pa.list_(MESSAGE))])


def _is_conversations(path: PathLike) -> bool:
    """A JSONL or parquet input whose rows hold ``messages`` (the chat convention of `sources.conversations`)."""
    p = existing(path, "input")
    if is_librispeech(p):
        return False
    return "messages" in _column_names(resolve_files(p, TABLE_EXTS)[0])


def _snac_encode_conversations(
    input: PathLike, out_dir: PathLike, codec: SnacCodec, *, id_column: str | None, batch_size: int, shard_size: int,
    workers: int, progress: bool,
) -> Report:  # fmt: skip
    """Encode the spoken answers of conversations: each assistant turn's ``audio`` becomes its ``answer_snac``.

    Writes shards of ``id, messages`` that `sources.conversations(OUT_DIR)` reads: every message as
    ``{role, content, audio, answer_snac}``, the users' audio embedded (``{bytes, path}``, so the
    shards stand alone), the assistants' audio replaced by its codes (codes already in the input are
    kept). A turn whose audio is missing or unreadable keeps its text, loses its audio and is counted;
    a conversation whose messages are malformed is skipped and counted.
    """
    files = resolve_files(existing(input, "input"), TABLE_EXTS)
    columns = ["messages"] + ([id_column] if id_column else [])
    rows = read_rows(files, columns, batch_size=64)
    job = {"command": "snac-encode", "input": str(Path(input).resolve()), "kind": "conversations"}
    writer = ShardWriter(out_dir, shard_size, job)
    report = Report()
    bar = tqdm(unit="conversation", desc="snac-encode", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, chunk in shards(rows, shard_size):
            bar.update(len(chunk))
            if writer.done(k):
                report.shards_kept += 1
                continue
            table = _encode_conversations(codec, chunk, id_column, batch_size, pool, report)
            writer.write(k, table)
            report.shards_written += 1
            report.rows += table.num_rows
    bar.close()
    return report


def _encode_conversations(codec: SnacCodec, chunk, id_column, batch_size: int, pool, report: Report) -> pa.Table:
    out, answers = [], []  # answers: (conversation, message index, row id, Audio) to encode
    for location, base_dir, values in chunk:
        if isinstance(values, BadRow):
            report.skip(location, values.reason)
            continue
        row_id = str(values[id_column]) if id_column and values.get(id_column) is not None else location
        try:
            messages = parse_messages(values.get("messages"))
            exchanges(messages)  # user and assistant in turn, as the source will want them
        except BadRow as bad:
            report.skip(row_id, f"{bad.reason}: {bad.detail}")
            continue
        conversation = {"id": row_id, "messages": []}
        for i, m in enumerate(messages):
            item = {"role": m.role, "content": m.text, "audio": None, "answer_snac": None}
            try:
                audio = None if m.audio is None else to_audio(m.audio, base_dir, "audio")
                if m.role == "user":
                    item["audio"] = _embed(audio)
                elif m.answer_snac is not None:
                    item["answer_snac"] = format_answer_snac(to_frames(m.answer_snac))
                elif audio is not None:
                    answers.append((conversation, i, row_id, audio))
            except (BadRow, OSError, SnacFormatError) as err:  # this turn's audio or codes: the text stays
                kind = {BadRow: None, SnacFormatError: "bad answer_snac"}.get(type(err), "unreadable audio")
                reason = f"{err.reason}: {err.detail}" if isinstance(err, BadRow) else f"{kind}: {err}"
                report.skip(f"{row_id}#{i + 1}", reason)
            conversation["messages"].append(item)
        out.append(conversation)
    waves = list(pool.map(lambda a: _load(AudioRow("", a[3]), codec.sample_rate), answers))
    good = []
    for (conversation, i, row_id, _), wave in zip(answers, waves):
        if isinstance(wave, str):
            report.skip(f"{row_id}#{i + 1}", wave)
        else:
            good.append((conversation["messages"][i], wave))
    good.sort(key=lambda mw: mw[1].numel())
    for b in range(0, len(good), batch_size):
        batch = good[b : b + batch_size]
        for (message, _), frames in zip(batch, codec.encode_batch([w for _, w in batch])):
            message["answer_snac"] = format_answer_snac(frames)
    return pa.Table.from_pylist(out, schema=CONVERSATION_SCHEMA)


# --------------------------------------------------------------------------------------------------
# snac-decode


def snac_decode(
    source: str, out_dir: PathLike, snac: PathLike, *, column: str = "answer_snac", id_column: str | None = None,
    limit: int | None = None, device: str | None = None,
) -> list[Path]:
    """Decode ``answer_snac`` values to 16-bit wav files in `out_dir`, one per row (or one for a string).

    `source` is a parquet/JSONL file, a folder or glob of them, or an ``answer_snac`` string itself
    (anything starting with ``#``). Files are named after `id_column` (default: ``id`` when the data
    has it, else ``split_name-index-round`` for VoiceAssistant-400K, else the row number).
    """
    codec = SnacCodec.from_pretrained(existing(snac, "SNAC codec"), device=pick_device(device))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source.lstrip().startswith("#"):
        items: Iterable[tuple[str, str]] = [("answer", source)]
    else:
        items = _snac_rows(existing(source, "input"), column, id_column)
    written = []
    for n, (name, text) in enumerate(tqdm(items, desc="snac-decode", unit="clip", total=limit)):
        if limit is not None and n >= limit:
            break
        audio = codec.decode(parse_answer_snac(text))
        path = out / f"{_safe_name(name)}.wav"
        save_wav(path, audio, codec.sample_rate)
        written.append(path)
    return written


def _snac_rows(path: Path, column: str, id_column: str | None) -> Iterator[tuple[str, str]]:
    files = resolve_files(path, TABLE_EXTS)
    names = _column_names(files[0])
    if column not in names:
        raise sources.MissingColumnError(f"{files[0]}: no column {column!r} (columns: {', '.join(names)})")
    va_id = ["split_name", "index", "round"]
    if id_column is None and "id" in names:
        id_column = "id"
    id_cols = [id_column] if id_column else [c for c in va_id if c in names] if set(va_id) <= set(names) else []
    for n, (_, _, values) in enumerate(read_rows(files, [column] + id_cols, batch_size=64)):
        if isinstance(values, BadRow) or not isinstance(values.get(column), str):
            continue
        name = "-".join(str(values.get(c)) for c in id_cols) if id_cols else f"{n:06d}"
        yield name, values[column]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "row"


# --------------------------------------------------------------------------------------------------
# convert


def _embed(audio: Audio | None) -> dict | None:
    """`Audio` -> HF Audio's parquet struct: the file's encoded bytes (no re-encoding) and its name."""
    if audio is None:
        return None
    if audio.data is not None:
        return {"bytes": audio.data, "path": None}
    return {"bytes": Path(audio.path).read_bytes(), "path": Path(audio.path).name}


def _hf_metadata(features: dict) -> dict:
    """Schema metadata that makes `datasets.load_dataset("parquet", ...)` see the Audio columns as Audio."""
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _write_converted(
    records: Iterator[dict | tuple[str, str]], out_dir, shard_size: int, job: dict, schema: pa.Schema,
    total: int | None = None,
) -> Report:
    """Records are dicts to write or ``(row_id, reason)`` skips; shards count both, so numbering is stable."""
    writer = ShardWriter(out_dir, shard_size, job)
    report = Report()
    bar = tqdm(total=total, unit="row", desc=f"convert {job['kind']}")
    for k, chunk in shards(records, shard_size):
        bar.update(len(chunk))
        if writer.done(k):
            report.shards_kept += 1
            continue
        good = []
        for rec in chunk:
            if isinstance(rec, tuple):
                report.skip(*rec)
            else:
                good.append(_materialise(rec, report))
        good = [g for g in good if g is not None]
        writer.write(k, pa.Table.from_pylist(good, schema=schema))
        report.shards_written += 1
        report.rows += len(good)
    bar.close()
    return report


def _materialise(rec: dict, report: Report) -> dict | None:
    """Read embedded audio only for shards being written (resumed shards never touch their audio)."""
    out = dict(rec)
    for key, value in rec.items():
        if isinstance(value, Audio):
            try:
                out[key] = _embed(value)
            except OSError as e:
                report.skip(str(rec.get("id")), f"unreadable audio: {e}")
                return None
    return out


def convert_librispeech(input: PathLike, out_dir: PathLike, shard_size: int = 1000) -> Report:
    """LibriSpeech layout (LibriTTS, VCTK, MLS converted alike) -> parquet ``id, audio{bytes,path}, text``.

    Read back with `sources.hf_asr(OUT_DIR, audio_column="audio", text_column="text", id_column="id")`.
    """
    p = existing(input, "input")
    if not is_librispeech(p):
        raise ValueError(f"{input}: not a LibriSpeech-layout folder (no */*.trans.txt transcripts)")
    src = sources.librispeech(p)
    records = ({"id": str(s.row), "audio": s.question_audio, "text": s.answer_text} for s in src)
    schema = pa.schema([("id", pa.string()), ("audio", AUDIO_STRUCT), ("text", pa.string())], metadata=_hf_metadata(
        {"id": _VALUE, "audio": {"_type": "Audio"}, "text": _VALUE}
    ))
    job = {"command": "convert", "kind": "librispeech", "input": str(p.resolve())}
    report = _write_converted(records, out_dir, shard_size, job, schema, _count(p))
    report.add(src.skips)
    return report


def convert_corpus(layout: str, input: PathLike, out_dir: PathLike, shard_size: int = 1000) -> Report:
    """A corpus in one of `sources.LAYOUTS` -> parquet ``id, audio{bytes,path}, text`` (as `convert_librispeech`).

    Clips without their audio file, with an empty text, or from an unreadable transcript line are
    skipped and counted (``file:line`` in the report).
    """
    p = existing(input, "input")
    total = sum(1 for _ in sources.clips(layout, p))

    def records():
        for row in _clip_rows(sources.clips(layout, p)):
            yield (row.id, row.error) if row.error is not None else {"id": row.id, "audio": row.audio, "text": row.text}

    schema = pa.schema([("id", pa.string()), ("audio", AUDIO_STRUCT), ("text", pa.string())], metadata=_hf_metadata(
        {"id": _VALUE, "audio": {"_type": "Audio"}, "text": _VALUE}
    ))
    job = {"command": "convert", "kind": layout, "input": str(p.resolve())}
    return _write_converted(records(), out_dir, shard_size, job, schema, total)


def convert_open_orca(input: PathLike, out_dir: PathLike, shard_size: int = 100_000) -> Report:
    """Open-Orca parquet/JSONL -> parquet ``id, system_prompt, question, response`` (all strings).

    A missing system prompt becomes ``""``; rows without a question or response are skipped. Read
    back with `sources.open_orca(OUT_DIR)`.
    """
    files = resolve_files(existing(input, "input"), TABLE_EXTS)
    names = _column_names(files[0])
    for col in ("question", "response"):
        if col not in names:
            raise sources.MissingColumnError(f"{files[0]}: no column {col!r} (columns: {', '.join(names)})")
    columns = [c for c in ("id", "system_prompt", "question", "response") if c in names]

    def records():
        for location, _, values in read_rows(files, columns, batch_size=1024):
            if isinstance(values, BadRow):
                yield location, values.reason
                continue
            q, r = values.get("question"), values.get("response")
            if not (isinstance(q, str) and q.strip() and isinstance(r, str) and r.strip()):
                yield location, "empty question or response"
                continue
            yield {"id": str(values.get("id") or location), "system_prompt": values.get("system_prompt") or "",
                   "question": q, "response": r}

    schema = pa.schema([(c, pa.string()) for c in ("id", "system_prompt", "question", "response")])
    job = {"command": "convert", "kind": "open-orca", "input": str(Path(input).resolve())}
    return _write_converted(records(), out_dir, shard_size, job, schema)


_MOSS_TURN = re.compile(r"\[Human\]:\s*(.*?)\s*<eoh>.*?\[MOSS\]:\s*(.*?)\s*<eoa>", re.S)


def convert_moss(
    input: PathLike, out_dir: PathLike, shard_size: int = 1000, *, audio_column: str = "question_audio",
    question_column: str = "question", answer_column: str = "answer",
) -> Report:
    """A Moss-style AudioQA manifest (JSONL/parquet) -> parquet ``id, question_audio{bytes,path}, question, answer``.

    Each row needs the spoken question's audio (a path, relative to the manifest allowed, bytes, or
    an HF Audio struct) and either question/answer columns or Moss-002-sft's ``plain_text``
    (``[Human]: ...<eoh> [MOSS]: ...<eoa>``; its first turn is used). Read back with
    `sources.moss_audioqa(OUT_DIR)` (VoiceAssistant-400K's column names).
    """
    files = resolve_files(existing(input, "input"), TABLE_EXTS)
    names = _column_names(files[0])
    use_plain_text = answer_column not in names and "plain_text" in names
    need = [audio_column, "plain_text" if use_plain_text else answer_column]
    for col in need:
        if col not in names:
            raise sources.MissingColumnError(f"{files[0]}: no column {col!r} (columns: {', '.join(names)})")
    wanted = dict.fromkeys(["id", audio_column, question_column, answer_column, "plain_text"])
    columns = [c for c in wanted if c in names]

    def records():
        for location, base_dir, values in read_rows(files, columns, batch_size=64):
            if isinstance(values, BadRow):
                yield location, values.reason
                continue
            row_id = str(values.get("id") or location)
            question, answer = values.get(question_column), values.get(answer_column)
            if answer is None and isinstance(values.get("plain_text"), str):
                turn = _MOSS_TURN.search(values["plain_text"])
                question, answer = (turn.group(1), turn.group(2)) if turn else (question, None)
            if not (isinstance(answer, str) and answer.strip()):
                yield row_id, "empty answer"
                continue
            try:
                audio = to_audio(values.get(audio_column) or "", base_dir, audio_column)
            except BadRow as bad:
                yield row_id, f"{bad.reason}: {bad.detail}" if bad.detail else bad.reason
                continue
            yield {"id": row_id, "question_audio": audio, "question": question or "", "answer": answer}

    schema = pa.schema(
        [("id", pa.string()), ("question_audio", AUDIO_STRUCT), ("question", pa.string()), ("answer", pa.string())],
        metadata=_hf_metadata(
            {"id": _VALUE, "question_audio": {"_type": "Audio"}, "question": _VALUE, "answer": _VALUE}
        ),
    )
    job = {"command": "convert", "kind": "moss", "input": str(Path(input).resolve())}
    return _write_converted(records(), out_dir, shard_size, job, schema)


# --------------------------------------------------------------------------------------------------
# voice: VoiceAssistant-style rows whose answers are spoken in the user's voice

# VoiceAssistant-400K's columns, all strings but the audio (its index and round too)
VOICE_SCHEMA = pa.schema(
    [("id", pa.string()), ("split_name", pa.string()), ("index", pa.string()), ("round", pa.string()),
     ("question", pa.string()), ("question_audio", AUDIO_STRUCT), ("answer", pa.string()),
     ("answer_snac", pa.string())],
    metadata=_hf_metadata({"id": _VALUE, "split_name": _VALUE, "index": _VALUE, "round": _VALUE, "question": _VALUE,
                           "question_audio": {"_type": "Audio"}, "answer": _VALUE, "answer_snac": _VALUE}),
)  # fmt: skip


def voice_rows(
    manifest: PathLike, out_dir: PathLike, snac: PathLike, *, question_column: str = "question",
    answer_column: str = "answer", answer_audio_column: str = "answer_audio",
    question_audio_column: str = "question_audio", split_name: str = "voice", batch_size: int = 16,
    shard_size: int = 1000, device: str | None = None, workers: int = 4, progress: bool = True,
) -> Report:  # fmt: skip
    """Questions, their answer texts and the answers spoken in the target voice -> VoiceAssistant-400K rows.

    Each manifest row (JSONL or parquet) needs a question text, an answer text and the answer's
    audio (a path, relative to the manifest allowed, bytes, or an HF Audio struct): a recording of
    the answer in the voice the model should speak with (the user's, or their TTS's). A spoken
    question (`question_audio_column`) is optional; rows with it also give A1A2 samples.

    Writes VoiceAssistant-400K's columns (``split_name, index, round, question, question_audio,
    answer, answer_snac``, plus ``id`` = ``<file>:<row>``), which `sources.voice_assistant(OUT_DIR)`
    reads: T1A2 (and A1A2) teach the model the voice, T1T2/A1T2 keep its answers. The answer audio
    is SNAC-encoded as snac-encode encodes (length-sorted batches; resumable shards).
    """
    codec = SnacCodec.from_pretrained(existing(snac, "SNAC codec"), device=pick_device(device))
    files = resolve_files(existing(manifest, "manifest"), TABLE_EXTS)
    names = _column_names(files[0])
    for col in (question_column, answer_column, answer_audio_column):
        if col not in names:
            raise sources.MissingColumnError(f"{files[0]}: no column {col!r} (columns: {', '.join(names)})")
    columns = [c for c in (question_column, answer_column, answer_audio_column, question_audio_column) if c in names]

    def rows() -> Iterator[AudioRow]:
        for index, (location, base_dir, values) in enumerate(read_rows(files, columns, batch_size=64)):
            if isinstance(values, BadRow):
                yield AudioRow(location, error=str(values))
                continue
            question, answer = values.get(question_column), values.get(answer_column)
            extra = {"index": index, "question": question.strip() if isinstance(question, str) else None}
            try:
                for col, text in ((question_column, question), (answer_column, answer)):
                    if not isinstance(text, str) or not text.strip():
                        raise BadRow(f"empty {col}")
                audio = to_audio(values.get(answer_audio_column) or "", base_dir, answer_audio_column)
                spoken = values.get(question_audio_column)
                extra["question_audio"] = to_audio(spoken, base_dir, question_audio_column) if spoken else None
            except BadRow as bad:
                yield AudioRow(location, error=f"{bad.reason}: {bad.detail}" if bad.detail else bad.reason)
                continue
            yield AudioRow(location, audio, answer.strip(), extra)

    job = {"command": "voice", "input": str(Path(manifest).resolve()), "split_name": split_name}
    writer = ShardWriter(out_dir, shard_size, job)
    report = Report()
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files[0].suffix == ".parquet" else None
    bar = tqdm(total=total, unit="row", desc="voice", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, chunk in shards(rows(), shard_size):
            if writer.done(k):
                report.shards_kept += 1
                bar.update(len(chunk))
                continue
            coded = _encode_shard(codec, chunk, True, batch_size, pool, report, bar).to_pylist()
            by_id = {r.id: r for r in chunk}
            records = []
            for c in coded:
                row = by_id[c["id"]]
                question_audio = row.extra["question_audio"]
                try:
                    question_audio = _embed(question_audio)
                except OSError as e:
                    report.skip(row.id, f"unreadable question audio: {e}")
                    continue
                records.append({"id": row.id, "split_name": split_name, "index": str(row.extra["index"]), "round": "0",
                                 "question": row.extra["question"], "question_audio": question_audio,
                                 "answer": row.text, "answer_snac": c["answer_snac"]})  # fmt: skip
            writer.write(k, pa.Table.from_pylist(records, schema=VOICE_SCHEMA))
            report.shards_written += 1
            report.rows += len(records)
    bar.close()
    return report


# --------------------------------------------------------------------------------------------------
# stats

AUDIO_NAMES = ("audio", "question_audio", "source_wav", "wav", "audio_path", "audio_filepath")
NOT_TEXT = {"id", "key", "split_name", "index", "round", "answer_snac", "target_token", "path"}


@dataclass
class Stats:
    """Totals of one data set; `lengths` holds one value per row for the histogram."""

    rows: int = 0
    seconds: float = 0.0
    audio_rows: int = 0
    unreadable_audio: int = 0
    first_unreadable: str | None = None  # the first unreadable clip: its path, or the row and column
    tokens: Counter = field(default_factory=Counter)
    snac_frames: int = 0
    snac_rows: int = 0
    lengths: list[float] = field(default_factory=list)
    length_unit: str = "s"
    turns: int = 0  # conversations: answered turns in all
    bad_rows: int = 0  # rows that could not be read (or, for conversations, malformed messages)


def stats(path: PathLike, tokenizer: PathLike | None = None, progress: bool = False) -> Stats:
    """Rows, audio hours (from file headers: `soundfile.info`, no decoding), text tokens, SNAC frames.

    Tokens are whitespace-separated words, or litgpt `Tokenizer` ids with `tokenizer`. Parquet is
    read one record batch at a time with only the columns needed.
    """
    p = existing(path, "input")
    count = _token_counter(tokenizer)
    if _is_conversations(p):
        return _conversation_stats(resolve_files(p, TABLE_EXTS), count, progress)
    out = Stats()
    if is_librispeech(p):  # the source's paths already start with `p`: no base folder to join
        rows: Iterator[tuple[dict, Path | None]] = (
            ({"audio": str(s.question_audio.path), "text": s.answer_text}, None) for s in sources.librispeech(p)
        )
        audio_cols, text_cols, snac_col = ["audio"], ["text"], None
    else:
        files = resolve_files(p, TABLE_EXTS)
        audio_cols, text_cols, snac_col = _classify(files[0])
        cols = audio_cols + text_cols + ([snac_col] if snac_col else [])
        rows = ((v, d) for _, d, v in read_rows(files, cols, batch_size=256) if not isinstance(v, BadRow))
    for values, base_dir in tqdm(rows, desc="stats", unit="row", disable=not progress):
        out.rows += 1
        seconds = None
        for col in audio_cols:
            audio = _audio_value(values.get(col), base_dir)
            d = _duration(audio)
            if d is None:
                if values.get(col) is not None:  # an empty value too: the row names a clip it does not have
                    out.unreadable_audio += 1
                    out.first_unreadable = out.first_unreadable or (
                        str(audio) if isinstance(audio, Path) else f"row {out.rows}, {col}"
                    )
                continue
            out.seconds += d
            out.audio_rows += 1
            seconds = (seconds or 0.0) + d
        words = 0
        for col in text_cols:
            if isinstance(values.get(col), str):
                n = count(values[col])
                out.tokens[col] += n
                words += n
        if snac_col and isinstance(values.get(snac_col), str):
            out.snac_frames += values[snac_col].count("#")
            out.snac_rows += 1
        out.lengths.append(seconds if audio_cols else words)
    out.length_unit = "s" if audio_cols else "tokens"
    return out


def _conversation_stats(files: list[Path], count: Callable[[str], int], progress: bool) -> Stats:
    """Conversations: turns per conversation (the histogram), the users' audio, text tokens by role, SNAC frames."""
    out = Stats(length_unit="turns")
    for _, base_dir, values in tqdm(read_rows(files, ["messages"], batch_size=256), desc="stats", disable=not progress):
        try:
            if isinstance(values, BadRow):
                raise values
            turns = exchanges(parse_messages(values.get("messages")))
        except BadRow:
            out.bad_rows += 1
            continue
        out.rows += 1
        answered = [t for t in turns if t.assistant is not None]
        out.turns += len(answered)
        out.lengths.append(len(answered))
        for t in turns:
            for role, m in (("user", t.user), ("assistant", t.assistant)):
                if m is not None and m.text is not None:
                    out.tokens[role] += count(m.text)
            if t.user.audio is not None:
                d = _duration(_audio_value(t.user.audio, base_dir))
                out.unreadable_audio += d is None
                out.seconds += d or 0.0
                out.audio_rows += d is not None
            if t.assistant is not None and isinstance(t.assistant.answer_snac, str):
                out.snac_frames += t.assistant.answer_snac.count("#")
                out.snac_rows += 1
    return out


def _token_counter(tokenizer: PathLike | None) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda text: len(text.split())
    from litgpt.tokenizer import Tokenizer

    tok = Tokenizer(existing(tokenizer, "tokenizer"))
    return lambda text: int(tok.encode(text).numel())


def _classify(f: Path) -> tuple[list[str], list[str], str | None]:
    """Audio columns (HF Audio structs, binaries, or audio-named path columns), text columns, answer_snac."""
    if f.suffix == ".parquet":
        schema = pq.read_schema(f)
        audio, text = [], []
        for fld in schema:
            t = fld.type
            if (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) or pa.types.is_binary(t):
                audio.append(fld.name)
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                (audio if fld.name in AUDIO_NAMES else text if fld.name not in NOT_TEXT else []).append(fld.name)
        return audio, text, "answer_snac" if "answer_snac" in schema.names else None
    first = sources.first_object(f) or {}
    audio = [
        k for k, v in first.items() if k in AUDIO_NAMES or (isinstance(v, str) and v.lower().endswith(_AUDIO_EXTS))
    ]
    text = [k for k, v in first.items() if isinstance(v, str) and k not in audio and k not in NOT_TEXT]
    return audio, text, "answer_snac" if "answer_snac" in first else None


_AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def _audio_value(value, base_dir: Path | None) -> Path | bytes | None:
    """A row's audio as a path (relative ones joined to `base_dir`) or bytes; None when it has none."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    path = Path(value)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def _duration(audio: Path | bytes | None) -> float | None:
    """Seconds of audio from its header, or None when it is missing or unreadable."""
    if audio is None:
        return None
    try:
        return sf.info(io.BytesIO(audio) if isinstance(audio, bytes) else str(audio)).duration
    except (sf.SoundFileError, RuntimeError, OSError):
        return None


def format_stats(s: Stats, bins: int = 10, width: int = 40) -> str:
    lines = [f"rows: {s.rows}" + (f" ({s.bad_rows} more could not be read)" if s.bad_rows else "")]
    if s.length_unit == "turns":
        lines[0] = f"conversations: {s.rows}" + (f" ({s.bad_rows} malformed, not counted)" if s.bad_rows else "")
        lines.append(f"turns: {s.turns} answered (mean {s.turns / max(s.rows, 1):.2f} a conversation)")
    if s.audio_rows or s.unreadable_audio:
        lines.append(f"audio: {s.seconds / 3600:.4f} hours in {s.audio_rows} clips"
                     + (f" ({s.unreadable_audio} unreadable, the first {s.first_unreadable})"
                        if s.unreadable_audio else ""))
    for col, n in s.tokens.items():
        unit = "conversation" if s.length_unit == "turns" else "row"
        lines.append(f"text tokens ({col}): {n} (mean {n / max(s.rows, 1):.1f} a {unit})")
    if s.snac_rows:
        seconds = s.snac_frames * 2048 / SNAC_SAMPLE_RATE  # SNAC 24 kHz: 2048 samples a coarse frame
        where = "assistant turns" if s.length_unit == "turns" else "rows"
        lines.append(f"SNAC frames (answer_snac): {s.snac_frames} in {s.snac_rows} {where}, {seconds / 3600:.4f} hours")
    if s.length_unit == "turns":  # a bar per number of turns: few values, all integers
        counts = Counter(int(x) for x in s.lengths)
        top = max(counts.values(), default=1)
        lines.append("turns per conversation:")
        lines += [f"  {n:4d} | {'#' * math.ceil(width * c / top):<{width}} {c}" for n, c in sorted(counts.items())]
    else:
        lines += histogram([x for x in s.lengths if x is not None], s.length_unit, bins, width)
    return "\n".join(lines)


def histogram(values: list[float], unit: str, bins: int = 10, width: int = 40) -> list[str]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    top = max(counts)
    out = [f"length histogram ({unit}):"]
    for i, c in enumerate(counts):
        a, b = lo + i * step, lo + (i + 1) * step
        out.append(f"  {a:9.2f} - {b:9.2f} | {'#' * math.ceil(width * c / top) if c else '':<{width}} {c}")
    return out
