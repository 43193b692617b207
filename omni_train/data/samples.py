"""What flows through the data path: a source yields `Sample`s, a dataset encodes them into
`Encoded` (token ids, 16-kHz question audio), and the collator turns a list of `Encoded` into a `Batch`.

A sample of a conversation is the current turn (the task's question and answer) plus its
`history`: the earlier exchanges as text, oldest first (DESIGN.md, "Conversations").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from omni_train.audio import Audio
from omni_train.tasks import Task


class Turn(NamedTuple):
    """One earlier exchange of a conversation, as text: what the user said and what the assistant answered."""

    question: str
    answer: str


@dataclass
class Sample:
    """One training example of any task, before tokenisation and feature extraction.

    `answer_frames` are the answer's SNAC codes, shape ``(N, 7)``, layer-local (0..4095), required
    when the task's answer is spoken. `source` and `row` name where it came from, for error messages
    and skip counters. `history` holds a conversation's earlier turns (oldest first; empty for a
    single question); with `history_loss` their answers are trained too, else only the current one.
    """

    task: Task
    answer_text: str
    question_text: str | None = None
    question_audio: Audio | None = None
    answer_frames: torch.Tensor | None = None
    source: str = ""
    row: str | int = ""
    history: list[Turn] = field(default_factory=list)
    history_loss: bool = False

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
    """A `Sample` ready for the collator: token ids and Whisper's input audio, made in the loader workers.

    Exactly one of `question_ids` (text prompt) and `audio` (speech prompt) is set; the log-mel of
    `audio` is made in the training step, batched (`WhisperEncoder.encode_audio`). `audio_frames` is
    the number of Whisper frames the prompt holds (DESIGN.md's T), ``int(ms / 20) + 1``. `history`
    holds the earlier turns' ``(question ids, answer ids)``, oldest first; `dropped_turns` counts
    the oldest ones left out to fit ``max_seq_length`` (`collator.drop_oldest_turns`).
    """

    task: Task
    answer_ids: list[int]
    question_ids: list[int] | None = None
    audio: torch.Tensor | None = None  # (S,) 16-kHz question audio as Whisper hears it (`whisper_input`)
    audio_frames: int = 0
    answer_frames: torch.Tensor | None = None  # (N, 7) layer-local SNAC codes
    source: str = ""
    row: str | int = ""
    history: list[tuple[list[int], list[int]]] = field(default_factory=list)
    history_loss: bool = False
    dropped_turns: int = 0
    cut_from_s: float | None = None  # the question audio's length when it was cut to Whisper's 30 s
