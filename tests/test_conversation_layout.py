"""The multi-turn layout (DESIGN.md, "Conversations"): its worked example token by token, rebuilt
here independently of the collator, and invariants over random conversations."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import speech

from omni_train.data.collator import OmniCollator, build_prompt, drop_oldest_turns, sequence_length
from omni_train.data.samples import Encoded
from omni_train.tasks import Task
from omni_train.vocab import ANSWER_A, EOA, IGNORE_INDEX, INPUT_A, PAD_A, Vocab

V = Vocab(100)
EOT, PAD_T, INPUT_T, ANSWER_T = V.eot, V.pad_t, V.input_t, V.answer_t
X = IGNORE_INDEX


def a(layer, code):
    return V.audio_id(layer, code)


def frames(n):  # frame j's code for layer i is 10 * j + i
    return torch.tensor([[10 * j + i for i in range(7)] for j in range(n)])


def worked_example(history_loss=False):
    """DESIGN.md's multi-turn example: one earlier turn (question [3, 4], answer [5]), then the
    single-turn A1A2 example (T = 2 Whisper frames, answer text [7, 8], N = 2 SNAC frames)."""
    return Encoded(
        Task.A1A2, answer_ids=[7, 8], audio=speech(2), audio_frames=2, answer_frames=frames(2),
        history=[([3, 4], [5])], history_loss=history_loss,
    )  # fmt: skip


# positions 0-6 the earlier turn, 7-11 the current prompt, 12-21 the answer
P, PA = PAD_T, PAD_A
TEXT = [INPUT_T, 3, 4, EOT, ANSWER_T, 5, EOT] + [INPUT_T, P, P, EOT, ANSWER_T] + [7, 8, EOT] + [P] * 7
L0 = [a(0, c) for c in [PA] * 7 + [INPUT_A, PA, PA, EOA, ANSWER_A] + [PA, 0, 10, EOA] + [PA] * 6]
L6 = [a(6, c) for c in [PA] * 7 + [INPUT_A, PA, PA, EOA, ANSWER_A] + [PA] * 7 + [6, 16, EOA]]


def test_design_worked_example_multi_turn():
    b = OmniCollator(V)([worked_example()])
    assert len(TEXT) == len(L0) == len(L6) == 22
    assert b.input_ids.shape == (1, 8, 21)  # reads positions 0-20
    assert b.input_ids[0, 7].tolist() == TEXT[:-1]
    assert b.input_ids[0, 0].tolist() == L0[:-1]
    assert b.input_ids[0, 6].tolist() == L6[:-1]
    # predicts positions 1-21; by default only predictions of positions 12-21 (the current answer) carry loss
    assert b.targets[0, 7].tolist() == [X] * 11 + TEXT[12:]
    assert b.targets[0, 0].tolist() == [X] * 11 + L0[12:]
    assert b.targets[0, 6].tolist() == [X] * 11 + L6[12:]
    # Whisper frames 0 and 1 go to positions 8 and 9, after the current prompt's input_a
    assert b.audio_mask[0].nonzero().flatten().tolist() == [8, 9]
    assert b.audio_lengths.tolist() == [2]
    assert b.lengths.tolist() == [21]


def test_design_worked_example_history_loss():
    b = OmniCollator(V)([worked_example(history_loss=True)])
    # the earlier answer (5, eot at positions 5-6) is trained on the text layer only
    assert b.targets[0, 7].tolist() == [X] * 4 + [5, EOT] + [X] * 5 + TEXT[12:]
    assert b.targets[0, 0].tolist() == [X] * 11 + L0[12:]
    assert (b.targets[0, :7, :11] == X).all()


def test_generation_prompt_is_the_row_before_the_answer():
    enc = worked_example()
    prompt = build_prompt(Encoded(Task.A1A2, [], audio_frames=2, history=enc.history), V)
    assert prompt[7].tolist() == TEXT[:12]
    assert prompt[0].tolist() == L0[:12]


def test_each_earlier_turn_is_a_finished_t1t2_row():
    """An earlier turn reads exactly as a T1T2 question and its answer up to eot (no trailing pads)."""
    single = OmniCollator(V)([Encoded(Task.T1T2, question_ids=[3, 4], answer_ids=[5])])
    turn = torch.cat([single.input_ids[0], single.targets[0, :, -1:]], dim=1)  # the whole row, (8, 7)
    turn[:7, -1] = torch.tensor([a(i, PAD_A) for i in range(7)])  # text-only answers: pad_a
    multi = OmniCollator(V)([Encoded(Task.T1T2, question_ids=[9], answer_ids=[9], history=[([3, 4], [5])])])
    assert torch.equal(multi.input_ids[0, :, :7], turn)


def test_truncation_drops_oldest_turns_first_and_never_the_current_one():
    history = [([1] * 5, [2] * 5), ([3] * 5, [4] * 5), ([5] * 5, [6] * 5)]  # 14 positions each
    enc = Encoded(Task.T1T2, question_ids=[7, 7], answer_ids=[8], history=list(history))
    assert sequence_length(enc) == 3 * 14 + 5 + 2 - 1
    assert drop_oldest_turns(enc, max_length=30) == 2  # 48 -> 34 -> 20 positions
    assert enc.history == history[2:] and enc.dropped_turns == 2
    assert sequence_length(enc) <= 30
    assert drop_oldest_turns(enc, max_length=3) == 1  # still too long: all history goes, the current turn stays
    assert enc.history == [] and enc.question_ids == [7, 7] and enc.dropped_turns == 3
    # generation: the prompt plus `room` answer steps must fit
    enc = Encoded(Task.T1T2, question_ids=[7], answer_ids=[], history=list(history))
    assert drop_oldest_turns(enc, max_length=3 * 14 + 4 + 10, room=10) == 0
    assert drop_oldest_turns(enc, max_length=3 * 14 + 4 + 10, room=11) == 1


# ---- invariants over random conversations -----------------------------------------------------

ids = st.lists(st.integers(0, V.base_vocab_size - 1), min_size=1, max_size=8)


@st.composite
def conversation(draw):
    task = draw(st.sampled_from([Task.A1A2, Task.A1T2, Task.T1A2, Task.T1T2]))
    kw = dict(answer_ids=draw(ids), history=draw(st.lists(st.tuples(ids, ids), max_size=4)),
              history_loss=draw(st.booleans()))  # fmt: skip
    if task.audio_in:
        T = draw(st.integers(1, 6))
        kw.update(audio=speech(T), audio_frames=T)
    else:
        kw.update(question_ids=draw(ids))
    if task.audio_out:
        n = draw(st.integers(1, 4))
        codes = draw(st.lists(st.integers(0, 4095), min_size=7 * n, max_size=7 * n))
        kw.update(answer_frames=torch.tensor(codes).view(n, 7))
    return Encoded(task, **kw)


def expected_loss_positions(enc: Encoded, n: int) -> tuple[set[int], set[int]]:
    """(text, audio) positions whose predictions carry loss, by DESIGN.md's rules, counted by hand."""
    start, text = 0, set()
    for q, ans in enc.history:
        first = start + len(q) + 3  # input_t, question, eot, answer_t: the answer's first position
        if enc.history_loss:
            text |= {p - 1 for p in range(first, first + len(ans) + 1)}  # its tokens and eot, predicted one earlier
        start += len(q) + len(ans) + 4
    prompt = start + (enc.audio_frames if enc.task.audio_in else len(enc.question_ids)) + 3
    answer = set(range(prompt - 1, n))
    return text | answer, answer if enc.task.audio_out else set()


@settings(max_examples=80, deadline=None)
@given(samples=st.lists(conversation(), min_size=1, max_size=4))
def test_multi_turn_invariants(samples):
    b = OmniCollator(V)(samples)
    for layer in range(7):  # every id in its layer's range, inputs and targets
        lo, hi = V.audio_offset(layer), V.audio_offset(layer) + V.audio_vocab_size
        assert ((b.input_ids[:, layer] >= lo) & (b.input_ids[:, layer] < hi)).all()
        t = b.targets[:, layer]
        assert ((t == X) | ((t >= lo) & (t < hi))).all()
    assert ((b.input_ids[:, 7] >= 0) & (b.input_ids[:, 7] < V.text_vocab_size)).all()
    assert ((b.targets[:, 7] == X) | ((b.targets[:, 7] >= 0) & (b.targets[:, 7] < V.text_vocab_size))).all()
    for i, s in enumerate(samples):
        n = b.lengths[i].item()
        assert n == sequence_length(s)
        text, audio = expected_loss_positions(s, n)
        trained = b.targets[i] != X
        assert set(trained[7].nonzero().flatten().tolist()) == text  # loss only where configured
        for layer in range(7):
            assert set(trained[layer].nonzero().flatten().tolist()) == audio
        # targets are the next inputs wherever both exist
        both = trained[:, :-1].clone()
        both[:, n - 1 :] = False
        assert torch.equal(b.targets[i, :, :-1][both], b.input_ids[i, :, 1:][both])
        # the history's audio layers read pad_a; Whisper frames go right after the current input_a
        h = sum(len(q) + len(ans) + 4 for q, ans in s.history)
        assert (b.input_ids[i, 0, :h] == a(0, PAD_A)).all()
        if s.task.audio_in:
            assert b.audio_mask[i].nonzero().flatten().tolist() == list(range(h + 1, h + 1 + s.audio_frames))
            assert b.input_ids[i, 0, h].item() == a(0, INPUT_A)
        else:
            assert not b.audio_mask[i].any()


@settings(max_examples=60, deadline=None)
@given(enc=conversation(), limit=st.integers(1, 80))
def test_truncation_keeps_the_current_turn(enc, limit):
    current = (enc.task, enc.question_ids, enc.audio_frames, list(enc.answer_ids))
    history = list(enc.history)
    dropped = drop_oldest_turns(enc, limit)
    assert (enc.task, enc.question_ids, enc.audio_frames, enc.answer_ids) == current
    assert enc.history == history[dropped:]  # the newest turns kept, in order
    if enc.history:
        assert sequence_length(enc) <= limit  # it stopped as soon as the row fitted
    if dropped:  # no turn was dropped that it did not need to drop
        enc.history = history[dropped - 1 :]
        assert sequence_length(enc) > limit
