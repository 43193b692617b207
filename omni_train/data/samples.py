"""What flows through the data path: a source yields `Sample`s, a dataset encodes them into
`Encoded` (token ids, log-mel), and the collator turns a list of `Encoded` into a `Batch`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch


class Task(str, Enum):
    """Input modality (1) -> output modality (2); A = audio, T = text. See DESIGN.md."""

    A1T1 = "A1T1"  # ASR: speech in, its transcript out
    T1A2 = "T1A2"  # text in, spoken (and text) answer out; TTS when the answer is the input
    A1T2 = "A1T2"  # spoken question, text answer
    A1A2 = "A1A2"  # spoken question, spoken and text answer
    T1T2 = "T1T2"  # text question, text answer

    @property
    def audio_in(self) -> bool:
        return self.value.startswith("A1")

    @property
    def audio_out(self) -> bool:
        return self.value.endswith("A2")


@dataclass
class Audio:
    """Encoded audio as a source found it: a file path, or the bytes of a whole file (any container)."""

    path: str | Path | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("Audio needs exactly one of path or data")

    def __repr__(self) -> str:
        return f"Audio(path={self.path!r})" if self.path is not None else f"Audio(<{len(self.data)} bytes>)"


@dataclass
class Sample:
    """One training example of any task, before tokenisation and feature extraction.

    `answer_frames` are the answer's SNAC codes, shape ``(N, 7)``, layer-local (0..4095), required
    when the task's answer is spoken. `source` and `row` name where it came from, for error messages
    and skip counters.
    """

    task: Task
    answer_text: str
    question_text: str | None = None
    question_audio: Audio | None = None
    answer_frames: torch.Tensor | None = None
    source: str = ""
    row: str | int = ""

    def __post_init__(self) -> None:
        self.task = Task(self.task)
        where = f"{self.source or 'sample'} row {self.row!r}"
        if self.task.audio_in and self.question_audio is None:
            raise ValueError(f"{where}: task {self.task.value} needs question_audio")
        if not self.task.audio_in and not self.question_text:
            raise ValueError(f"{where}: task {self.task.value} needs question_text")
        if self.task.audio_out and self.answer_frames is None:
            raise ValueError(f"{where}: task {self.task.value} needs answer_frames")


@dataclass
class Encoded:
    """A `Sample` ready for the collator: token ids and Whisper input, made in the loader workers.

    Exactly one of `question_ids` (text prompt) and `mel` (speech prompt) is set. `audio_frames` is
    the number of Whisper frames the prompt holds (DESIGN.md's T), ``int(ms / 20) + 1``.
    """

    task: Task
    answer_ids: list[int]
    question_ids: list[int] | None = None
    mel: torch.Tensor | None = None  # (n_mels, M) log-mel, M >= 2 * audio_frames
    audio_frames: int = 0
    answer_frames: torch.Tensor | None = None  # (N, 7) layer-local SNAC codes
    source: str = ""
    row: str | int = ""
    meta: dict = field(default_factory=dict)
