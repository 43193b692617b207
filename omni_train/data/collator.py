"""The multi-sequence collator: encoded samples of any task -> one batch of 8-layer rows.

Every stage and task goes through `OmniCollator`, so the layouts of DESIGN.md live here and only
here. A row is ``prompt + answer`` (8 layers); the model reads ``row[:, :-1]`` and is trained to
predict ``row[:, 1:]`` on answer positions only (and, for a conversation with ``history_loss``, on
its earlier answers). A conversation's prompt starts with its earlier turns as text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omni_train.audio import stack_clips
from omni_train.data.samples import Encoded
from omni_train.data.skips import SkipCounter
from omni_train.tasks import TASKS
from omni_train.vocab import (
    ANSWER_A,
    EOA,
    IGNORE_INDEX,
    INPUT_A,
    N_AUDIO_LAYERS,
    N_LAYERS,
    PAD_A,
    TEXT_LAYER,
    Vocab,
    apply_delay,
)


def _answer_length(enc: Encoded) -> int:
    text = len(enc.answer_ids) + 1  # + eot
    if enc.task.audio_out:
        return max(text, enc.answer_frames.size(0) + N_AUDIO_LAYERS + 1)  # layer 6: 7 pads, N codes, eoa
    return text


def _turn_length(question_ids: list[int], answer_ids: list[int]) -> int:
    return len(question_ids) + len(answer_ids) + 4  # input_t, question, eot, answer_t, answer, eot


def history_length(enc: Encoded) -> int:
    """Positions the earlier turns of a conversation take before the current prompt (0 without any)."""
    return sum(_turn_length(q, a) for q, a in enc.history)


def _prompt_length(enc: Encoded) -> int:
    if enc.task.audio_in:
        return history_length(enc) + enc.audio_frames + 3  # input, T frames, eoa/eot, answer marker
    return history_length(enc) + len(enc.question_ids) + 3


def sequence_length(enc: Encoded) -> int:
    """Positions the model reads for this sample (the row minus its last token)."""
    return _prompt_length(enc) + _answer_length(enc) - 1


def drop_oldest_turns(enc: Encoded, max_length: int, room: int | None = None) -> int:
    """Drop a conversation's oldest earlier turns until it fits `max_length` positions: its whole row
    (training), or with `room` its prompt plus that many answer steps (generation). The current turn
    is never dropped.

    Returns:
        how many turns were dropped (also added to ``enc.dropped_turns``); the sample may still not
        fit, when even its current turn alone is too long.
    """

    def length() -> int:
        return sequence_length(enc) if room is None else _prompt_length(enc) + room

    dropped = 0
    while enc.history and length() > max_length:
        enc.history = enc.history[1:]
        dropped += 1
    enc.dropped_turns += dropped
    return dropped


def speech_positions(enc: Encoded) -> slice:
    """Where the Whisper frames of a speech prompt go: after the history and the prompt's input marker."""
    start = history_length(enc) + 1
    return slice(start, start + enc.audio_frames)


def _history_text(enc: Encoded, vocab: Vocab) -> list[int]:
    """Each earlier turn as a finished text exchange: the T1T2 prompt of its question, then its answer."""
    ids: list[int] = []
    for question, answer in enc.history:
        ids += [vocab.input_t, *question, vocab.eot, vocab.answer_t, *answer, vocab.eot]
    return ids


def history_answer_spans(enc: Encoded) -> list[slice]:
    """The positions of each earlier answer's text and its eot (where `history_loss` trains)."""
    spans, start = [], 0
    for question, answer in enc.history:
        first = start + len(question) + 3  # after input_t, the question, eot, answer_t
        spans.append(slice(first, first + len(answer) + 1))
        start += _turn_length(question, answer)
    return spans


def build_prompt(enc: Encoded, vocab: Vocab) -> torch.Tensor:
    """The ids the model reads before its answer, ``(8, P)``; generation starts from these too.

    Only the prompt fields of `enc` are read (task, question_ids or audio_frames, history), so
    inference can pass an `Encoded` with empty `answer_ids`. A conversation's earlier turns come
    first, as text with pad_a in the audio layers (DESIGN.md, "Conversations").
    """
    rule = enc.task.rule
    x_a = ANSWER_A if rule.audio_out else PAD_A
    x_t = getattr(vocab, rule.text_marker)
    history = _history_text(enc, vocab)
    if rule.audio_in:
        T = enc.audio_frames
        audio = [INPUT_A] + [PAD_A] * T + [EOA, x_a]  # layer-local codes
        text = [vocab.input_t] + [vocab.pad_t] * T + [vocab.eot, x_t]
    else:
        n = len(enc.question_ids)
        audio = [PAD_A] * (n + 2) + [x_a]
        text = [vocab.input_t, *enc.question_ids, vocab.eot, x_t]
    audio = [PAD_A] * len(history) + audio
    audio = torch.tensor(audio).expand(N_AUDIO_LAYERS, -1)  # (7, P), the same codes in every layer
    return torch.cat([vocab.shift_frames(audio.T).T, torch.tensor([history + text])])  # (8, P)


def build_row(enc: Encoded, vocab: Vocab) -> tuple[torch.Tensor, int]:
    """One sample's full row of ids, ``(8, P + A)``, and its prompt length P."""
    prompt = build_prompt(enc, vocab)
    P, A = prompt.size(1), _answer_length(enc)
    audio = torch.full((N_AUDIO_LAYERS, A), PAD_A, dtype=torch.long)  # layer-local codes, (7, A)
    if enc.task.audio_out:
        delayed = apply_delay(enc.answer_frames.long())  # (7, N + 8)
        audio[:, : delayed.size(1)] = delayed
    text = [*enc.answer_ids, vocab.eot]
    text = torch.tensor(text + [vocab.pad_t] * (A - len(text)))  # (A,)
    answer = torch.cat([vocab.shift_frames(audio.T).T, text[None]])  # (8, A)
    return torch.cat([prompt, answer], dim=1), P


@dataclass
class Batch:
    """A collated batch. B rows, L positions, Ba rows with speech input.

    Attributes:
        input_ids: ``(B, 8, L)``; batch padding is pad_a / pad_t of each layer.
        targets: ``(B, 8, L)``; `IGNORE_INDEX` wherever no loss is taken.
        audio: ``(Ba, S)`` 16-kHz question audio of the rows with speech input (zero-padded), or None.
        audio_samples: ``(Ba,)`` samples of each of those clips (in row order).
        audio_lengths: ``(Ba,)`` Whisper frames of each of them.
        audio_mask: ``(B, L)`` positions whose audio layers take the Whisper frames.
        lengths: ``(B,)`` real (unpadded) positions of each row.
        task_ids: ``(B,)`` index into `TASKS`.
        sources, rows: where each row came from (`Sample.source`, `Sample.row`), for error messages.
        skips: the cumulative skip counts of the loader worker that made the batch (see `SkipReport`).
        worker: that worker's id.
        position: for training batches, ``(shard, state)``: where that loader shard's stream continues
            after this batch (`OmniDataModule` saves it in checkpoints for exact resume).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    audio: torch.Tensor | None
    audio_samples: torch.Tensor
    audio_lengths: torch.Tensor
    audio_mask: torch.Tensor
    lengths: torch.Tensor
    task_ids: torch.Tensor
    sources: list[str]
    rows: list
    skips: SkipCounter | None = None
    worker: int = 0
    position: tuple[int, dict] | None = None

    @property
    def loss_mask(self) -> torch.Tensor:
        """``(B, 8, L)`` True where a layer's prediction is trained."""
        return self.targets != IGNORE_INDEX

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.lengths.sum().item() / self.input_ids[:, 0].numel()

    def to(self, device, non_blocking: bool = False) -> Batch:
        moved = {
            k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in self.__dict__.items()
        }
        return Batch(**moved)


@dataclass
class OmniCollator:
    """Collates `Encoded` samples of mixed tasks into a `Batch` (see DESIGN.md for the layouts).

    Args:
        vocab: the token layout of the model being trained.
        pad_to_multiple_of: round L up (8 or 64 helps tensor cores).
    """

    vocab: Vocab
    pad_to_multiple_of: int = 1

    def __call__(self, samples: list[Encoded]) -> Batch:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        vocab = self.vocab
        built = [build_row(s, vocab) for s in samples]
        lengths = [row.size(1) - 1 for row, _ in built]
        L = max(lengths)
        L += -L % self.pad_to_multiple_of
        B = len(samples)

        pad_ids = torch.tensor([*vocab.audio_layer_ids(PAD_A), vocab.pad_t])  # (8,)
        input_ids = pad_ids.view(1, N_LAYERS, 1).repeat(B, 1, L)  # (B, 8, L)
        targets = torch.full((B, N_LAYERS, L), IGNORE_INDEX, dtype=torch.long)
        audio_mask = torch.zeros(B, L, dtype=torch.bool)
        for b, ((row, P), enc) in enumerate(zip(built, samples)):
            n = row.size(1) - 1
            input_ids[b, :, :n] = row[:, :-1]
            # step k of the answer is predicted at position P - 1 + k; the prompt carries no loss
            trained = slice(P - 1, n)
            targets[b, TEXT_LAYER, trained] = row[TEXT_LAYER, P:]
            if enc.task.audio_out:  # text-only answers train no audio (Mini-Omni issue #61)
                targets[b, :N_AUDIO_LAYERS, trained] = row[:N_AUDIO_LAYERS, P:]
            if enc.history_loss:  # a conversation's earlier answers, text only (they were text in the row)
                for span in history_answer_spans(enc):
                    targets[b, TEXT_LAYER, span.start - 1 : span.stop - 1] = row[TEXT_LAYER, span]
            if enc.task.audio_in:
                audio_mask[b, speech_positions(enc)] = True

        spoken = [s for s in samples if s.task.audio_in]
        audio, audio_samples = stack_clips([s.audio for s in spoken])  # (Ba, S), (Ba,)
        return Batch(
            input_ids=input_ids,
            targets=targets,
            audio=audio if spoken else None,
            audio_samples=audio_samples,
            audio_lengths=torch.tensor([s.audio_frames for s in spoken], dtype=torch.long),
            audio_mask=audio_mask,
            lengths=torch.tensor(lengths),
            task_ids=torch.tensor([TASKS.index(s.task) for s in samples]),
            sources=[s.source for s in samples],
            rows=[s.row for s in samples],
        )
