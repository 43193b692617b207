"""The five tasks and the one table of what each means.

A task names a question's modality (1) and the answer's (2); A = audio, T = text. Everything that
treats tasks differently reads `RULES`: the collator (prompt layout, which layers carry loss), the
sample encoder (audio or text question), the sources (which columns a task needs), generation
(what is forced, what is spoken) and the sample logger. A new task is a new row here plus the data
that feeds it; no other file branches on a task's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal


class Task(str, Enum):
    A1T1 = "A1T1"
    T1A2 = "T1A2"
    A1T2 = "A1T2"
    A1A2 = "A1A2"
    T1T2 = "T1T2"

    @property
    def rule(self) -> TaskRule:
        return RULES[self]

    @property
    def audio_in(self) -> bool:
        return RULES[self].audio_in

    @property
    def audio_out(self) -> bool:
        return RULES[self].audio_out


@dataclass(frozen=True)
class TaskRule:
    """How one task is laid out and trained (DESIGN.md, "Sequence layouts").

    Attributes:
        audio_in: the question is speech: Whisper frames stand in for the 7 audio layers of the
            prompt; else the question is text on the text layer.
        audio_out: the answer is spoken: the 7 audio layers carry the answer's SNAC codes (delayed
            behind the text) and their loss; else they read pad_a and train nothing (Mini-Omni #61).
        text_marker: the `Vocab` special that ends the text layer's prompt: ``asr`` asks for a
            transcript, ``answer_t`` for an answer.
        about: one line for help texts.
    """

    audio_in: bool
    audio_out: bool
    text_marker: Literal["asr", "answer_t"]
    about: str

    @property
    def converses(self) -> bool:
        """Whether a question of this task may follow earlier turns of a conversation: a transcript
        (``asr``) is of what was said, not an answer, so it stands alone."""
        return self.text_marker != "asr"


RULES: dict[Task, TaskRule] = {
    Task.A1T1: TaskRule(True, False, "asr", "ASR: speech in, its transcript out"),
    Task.T1A2: TaskRule(False, True, "answer_t", "text question, spoken and text answer (TTS: answer = question)"),
    Task.A1T2: TaskRule(True, False, "answer_t", "spoken question, text answer"),
    Task.A1A2: TaskRule(True, True, "answer_t", "spoken question, spoken and text answer"),
    Task.T1T2: TaskRule(False, False, "answer_t", "text question, text answer"),
}  # fmt: skip
TASKS = list(Task)  # a batch's task ids index this list


def spoken_answer(audio_in: bool) -> Task:
    """The task that answers a spoken (`audio_in`) or written question in speech and text (A1A2,
    T1A2): what generation, omni-infer, omni-serve and omni-eval answer with when no task is given."""
    return next(t for t, r in RULES.items() if r.audio_in == audio_in and r.audio_out and r.converses)


def describe_tasks() -> str:
    """The task codes and what they mean, for ``--help`` texts."""
    return "; ".join(f"{t.value}: {r.about}" for t, r in RULES.items())
