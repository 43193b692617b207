"""Conversations in the chat convention: rows whose ``messages`` alternate user and assistant turns.

One JSONL line (or parquet row; the column is a list of structs)::

    {"messages": [
        {"role": "user", "content": "what is two plus three", "audio": "audio/q1.flac"},
        {"role": "assistant", "content": "two plus three is five", "answer_snac": "# 1942 2031 ..."},
        {"role": "user", "content": "and what is that plus one", "audio": "audio/q2.flac"},
        {"role": "assistant", "content": "five plus one is six"}]}

A user turn has text (``content``), speech (``audio``: a path relative to the data file, raw bytes,
or an HF Audio struct ``{bytes, path}``) or both; an assistant turn has text and, optionally, its
speech as SNAC codes (``answer_snac``: VoiceAssistant-400K's string, or a flat list of codes).
``content`` may also be one typed part or a list of them (``{"type": "text", "text": ...}``,
``{"type": "audio", "audio": ...}``), as some chat data sets write it.

Each assistant turn makes one sample of every configured task that its turn has the parts for
(speech in needs the user's audio, text in the user's text, a spoken answer its codes), with the
turns before it as its history, text on both sides (DESIGN.md, "Conversations"). A part that is
absent is no attempt (a text-only turn makes no A1T2 sample); a part that is there but bad (an audio
file that does not exist, malformed codes) makes that turn's sample a counted skip, row
``"<file>:<row>#<turn>"`` (turns counted from 1). Messages that do not alternate user and assistant
(or use another role) skip the whole conversation, one counted skip per task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from omni_train.data.samples import Sample, Turn
from omni_train.data.skips import SkipCounter
from omni_train.data.snac_format import SnacFormatError
from omni_train.data.sources.base import BadRow, Source, check_tasks, to_audio, to_frames
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

CONVERSATION_TASKS = tuple(t for t in Task if t.rule.converses)  # all but ASR


@dataclass(frozen=True)
class Message:
    """One message, its parts as found (checked only when a sample needs them).

    Attributes:
        text: the text of ``content`` (its text parts joined by spaces), None if there is none.
        audio: the user's speech as written: a path, bytes or ``{bytes, path}``; None if absent.
        answer_snac: an assistant turn's SNAC codes as written; None if absent.
    """

    role: str
    text: str | None = None
    audio: Any = None
    answer_snac: Any = None


@dataclass(frozen=True)
class Exchange:
    """A user turn and the assistant's answer to it (None for a last question not answered yet)."""

    user: Message
    assistant: Message | None


def _absent(value) -> bool:
    """None, an empty string, or an audio struct with neither bytes nor path (parquet's null fields)."""
    if isinstance(value, Mapping):
        return all(v is None or v == "" for v in value.values())
    return value is None or (isinstance(value, str) and not value.strip())


def _parts(content) -> tuple[str | None, Any]:
    """``content`` -> (its text, an audio part's value): a string, one typed part, or a list of them."""
    if content is None:
        return None, None
    if isinstance(content, str):
        return content.strip() or None, None
    parts = [content] if isinstance(content, Mapping) else content
    if not isinstance(parts, (list, tuple)):
        raise BadRow("bad messages", f"content must be text or typed parts, got {type(content).__name__}")
    texts, audio = [], None
    for part in parts:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"].strip())
        elif kind in ("audio", "input_audio"):
            audio = part.get(kind)
        else:
            raise BadRow("bad messages", f"a content part must be {{'type': 'text'|'audio', ...}}, got {part!r:.60}")
    text = " ".join(t for t in texts if t)
    return text or None, audio


def parse_messages(value) -> list[Message]:
    """A row's ``messages`` value -> `Message`s; `BadRow` ("bad messages") for anything malformed."""
    if not isinstance(value, (list, tuple)) or not value:
        raise BadRow("bad messages", f"expected a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, Mapping):
            raise BadRow("bad messages", f"message {i} is not an object")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise BadRow("bad messages", f"message {i} has role {role!r}; conversations alternate user and assistant")
        text, audio = _parts(m.get("content"))
        audio = m.get("audio") if not _absent(m.get("audio")) else audio
        snac = m.get("answer_snac")
        out.append(Message(role, text, None if _absent(audio) else audio, None if _absent(snac) else snac))
    return out


def exchanges(messages: list[Message]) -> list[Exchange]:
    """Pair user turns with the answers that follow them; the roles must alternate, user first."""
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            raise BadRow("bad messages", f"message {i + 1} is {m.role!r}, expected {want!r} (user first, then in turn)")
    pairs = range(0, len(messages), 2)
    return [Exchange(messages[i], messages[i + 1] if i + 1 < len(messages) else None) for i in pairs]


def has_input(task: Task, ex: Exchange) -> bool:
    """Whether a turn has the parts a task needs (else it is no attempt of that task)."""
    user_ok = ex.user.audio is not None if task.audio_in else ex.user.text is not None
    return ex.assistant is not None and user_ok and (not task.audio_out or ex.assistant.answer_snac is not None)


def history_of(turns: Sequence[Exchange]) -> list[Turn]:
    """Earlier turns as text; an earlier question with no text cannot enter the history."""
    out = []
    for k, ex in enumerate(turns, 1):
        if ex.user.text is None:
            raise BadRow("earlier user turn without text", f"turn {k} has only audio; the history is text")
        if ex.assistant is None or ex.assistant.text is None:
            raise BadRow("missing assistant content", f"turn {k}")
        out.append(Turn(ex.user.text, ex.assistant.text))
    return out


def turn_sample(
    task: Task, turns: list[Exchange], k: int, base_dir: Path | None, source: str, row: str, history_loss: bool
) -> Sample:
    """The sample of turn `k` (0-based) for `task`, with turns ``[0, k)`` as its history."""
    ex = turns[k]
    if ex.assistant.text is None:
        raise BadRow("missing assistant content")
    question_audio = to_audio(ex.user.audio, base_dir, "audio") if task.audio_in else None
    frames = None
    if task.audio_out:
        try:
            frames = to_frames(ex.assistant.answer_snac)
        except SnacFormatError as err:
            raise BadRow("bad answer_snac", str(err)) from None
    return Sample(
        task, ex.assistant.text, ex.user.text, question_audio, frames, source=source, row=row,
        history=history_of(turns[:k]), history_loss=history_loss,
    )  # fmt: skip


def conversations(
    path: PathLike,
    tasks: Sequence[str] = ("A1T2", "T1T2"),
    *,
    messages_column: str = "messages",
    turns: str = "all",
    history_loss: bool = False,
    name: str | None = None,
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    batch_size: int = 64,
) -> Source:
    """Conversations (JSONL or parquet, a ``messages`` column in the chat convention) -> samples with history.

    Args:
        tasks: any of A1A2, A1T2, T1A2, T1T2; each is drawn from the turns that have its parts.
        turns: ``all``: every answered turn is a sample, with the turns before it as history;
            ``last``: only each conversation's last answered turn (held-out sets score these).
        history_loss: also train the earlier answers of each sample (text layer), not only its own.
        batch_size: parquet rows a record batch.
    """
    if turns not in ("all", "last"):
        raise ValueError(f"turns must be 'all' or 'last', got {turns!r}")
    if not isinstance(history_loss, bool):
        raise ValueError(f"history_loss must be true or false, got {history_loss!r}")
    files = resolve_files(path, TABLE_EXTS)
    task_list = check_tasks(tasks, CONVERSATION_TASKS)
    check_columns(first_readable(files), [messages_column])
    read = partial(
        _conversation_samples, files=files, tasks=task_list, column=messages_column, last_only=turns == "last",
        history_loss=history_loss, batch_size=batch_size,
    )  # fmt: skip
    return Source(name or stem(path), read, skips, max_skip_fraction)


def _conversation_samples(
    src: Source, files: list[Path], tasks: tuple[Task, ...], column: str, last_only: bool, history_loss: bool,
    batch_size: int,
) -> Iterator[Sample]:  # fmt: skip
    for location, base_dir, values in read_rows(files, [column], batch_size, src):
        try:
            if isinstance(values, BadRow):
                raise values
            turns = exchanges(parse_messages(values.get(column)))
        except BadRow as bad:  # the whole conversation: one attempt a task, all skipped
            for task in tasks:
                src.make(location, task, partial(_raise, bad))
            continue
        answered = [k for k, ex in enumerate(turns) if ex.assistant is not None]
        for k in answered[-1:] if last_only else answered:
            row = f"{location}#{k + 1}"
            for task in tasks:
                if has_input(task, turns[k]):
                    build = partial(turn_sample, task, turns, k, base_dir, src.name, row, history_loss)
                    sample = src.make(row, task, build)
                    if sample is not None:
                        yield sample


def _raise(bad: BadRow):
    raise bad


def read_conversation(
    path: PathLike, row: int | None = None, messages_column: str = "messages"
) -> tuple[list[Exchange], Path]:
    """One conversation from a file, for inference: a JSON object with ``messages`` (or a bare list of
    messages), or a JSONL/parquet file with one row (or its `row`-th, 1-based). Returns its turns and
    the folder relative audio paths start from.

    Raises:
        ValueError: a malformed conversation, or a file of several rows without `row` (one line each).
    """
    files = resolve_files(path, TABLE_EXTS)
    if len(files) == 1 and files[0].suffix == ".json":
        try:
            data = json.loads(files[0].read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        rows = [(files[0].name, files[0].parent, data if isinstance(data, Mapping) else {messages_column: data})]
    else:
        rows = list(read_rows(files, [messages_column], batch_size=64))
    if row is None and len(rows) != 1:
        raise ValueError(f"{path} holds {len(rows)} conversations; say which (its row number, from 1)")
    if row is not None and not 1 <= row <= len(rows):
        raise ValueError(f"{path} has {len(rows)} conversations, no row {row}")
    location, base_dir, values = rows[(row or 1) - 1]
    try:
        if isinstance(values, BadRow):
            raise values
        return exchanges(parse_messages(values.get(messages_column))), base_dir
    except BadRow as bad:
        raise ValueError(f"{location}: {bad.reason}" + (f" ({bad.detail})" if bad.detail else "")) from None
