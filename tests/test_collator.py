"""Golden layouts (DESIGN.md, token by token) and invariants of the shared collator."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import speech

from omni_train.data.collator import OmniCollator, sequence_length
from omni_train.data.samples import Encoded
from omni_train.tasks import TASKS, Task
from omni_train.vocab import ANSWER_A, EOA, IGNORE_INDEX, INPUT_A, PAD_A, Vocab

V = Vocab(100)
EOT, PAD_T, INPUT_T, ANSWER_T, ASR = V.eot, V.pad_t, V.input_t, V.answer_t, V.asr
X = IGNORE_INDEX


def a(layer, code):
    return V.audio_id(layer, code)


def frames(n):  # frame j's code for layer i is 10 * j + i, easy to read in a failure
    return torch.tensor([[10 * j + i for i in range(7)] for j in range(n)])


def collate(*samples):
    return OmniCollator(V)(list(samples))


def test_design_worked_example_a1a2():
    enc = Encoded(Task.A1A2, answer_ids=[7, 8], audio=speech(2), audio_frames=2, answer_frames=frames(2))
    batch = collate(enc)
    P, PA = PAD_T, PAD_A
    row_text = [INPUT_T, P, P, EOT, ANSWER_T, 7, 8, EOT] + [P] * 7
    row_l0 = [a(0, c) for c in [INPUT_A, PA, PA, EOA, ANSWER_A, PA, 0, 10, EOA] + [PA] * 6]
    row_l6 = [a(6, c) for c in [INPUT_A, PA, PA, EOA, ANSWER_A] + [PA] * 7 + [6, 16, EOA]]
    assert batch.input_ids.shape == (1, 8, 14)  # reads positions 0-13
    assert batch.input_ids[0, 7].tolist() == row_text[:-1]
    assert batch.input_ids[0, 0].tolist() == row_l0[:-1]
    assert batch.input_ids[0, 6].tolist() == row_l6[:-1]
    # predicts positions 1-14; only predictions of positions 5-14 carry loss
    assert batch.targets[0, 7].tolist() == [X] * 4 + row_text[5:]
    assert batch.targets[0, 0].tolist() == [X] * 4 + row_l0[5:]
    assert batch.targets[0, 6].tolist() == [X] * 4 + row_l6[5:]
    # Whisper frames 0 and 1 go to positions 1 and 2
    assert batch.audio_mask[0].nonzero().flatten().tolist() == [1, 2]
    assert batch.audio_lengths.tolist() == [2]
    assert batch.audio.shape == (1, 321) and batch.audio_samples.tolist() == [321]


def test_golden_a1t1_asr():
    enc = Encoded(Task.A1T1, answer_ids=[7, 8, 9], audio=speech(2), audio_frames=2)
    b = collate(enc)
    text = [INPUT_T, PAD_T, PAD_T, EOT, ASR, 7, 8, 9, EOT]
    layer3 = [a(3, c) for c in [INPUT_A, PAD_A, PAD_A, EOA, PAD_A, PAD_A, PAD_A, PAD_A, PAD_A]]
    assert b.input_ids[0, 7].tolist() == text[:-1]
    assert b.input_ids[0, 3].tolist() == layer3[:-1]
    assert b.targets[0, 7].tolist() == [X] * 4 + [7, 8, 9, EOT]
    assert (b.targets[0, :7] == X).all()  # a text-only answer trains no audio layer


def test_golden_t1t2_text_qa():
    enc = Encoded(Task.T1T2, question_ids=[1, 2, 3], answer_ids=[4, 5])
    b = collate(enc)
    text = [INPUT_T, 1, 2, 3, EOT, ANSWER_T, 4, 5, EOT]
    assert b.input_ids[0, 7].tolist() == text[:-1]
    assert b.input_ids[0, 0].tolist() == [a(0, PAD_A)] * 8  # pad_a x (n + 2), then X_a = pad_a
    assert b.targets[0, 7].tolist() == [X] * 5 + [4, 5, EOT]
    assert (b.targets[0, :7] == X).all()
    assert b.audio is None and not b.audio_mask.any()


def test_golden_a1t2():
    enc = Encoded(Task.A1T2, answer_ids=[4], audio=speech(1), audio_frames=1)
    b = collate(enc)
    assert b.input_ids[0, 7].tolist() == [INPUT_T, PAD_T, EOT, ANSWER_T, 4]
    assert b.input_ids[0, 5].tolist() == [a(5, c) for c in [INPUT_A, PAD_A, EOA, PAD_A, PAD_A]]
    assert b.targets[0, 7].tolist() == [X] * 3 + [4, EOT]
    assert (b.targets[0, :7] == X).all()


def test_golden_t1a2_tts():
    enc = Encoded(Task.T1A2, question_ids=[1, 2], answer_ids=[1, 2], answer_frames=frames(1))
    b = collate(enc)
    # prompt: input_t 1 2 eot answer_t | pad_a x 4, answer_a; answer length N + 8 = 9
    text = [INPUT_T, 1, 2, EOT, ANSWER_T, 1, 2, EOT] + [PAD_T] * 6
    l1 = [PAD_A] * 4 + [ANSWER_A] + [PAD_A] * 2 + [1, EOA] + [PAD_A] * 5
    l6 = [PAD_A] * 4 + [ANSWER_A] + [PAD_A] * 7 + [6, EOA]
    assert b.input_ids[0, 7].tolist() == text[:-1]
    assert b.input_ids[0, 1].tolist() == [a(1, c) for c in l1[:-1]]
    assert b.targets[0, 6].tolist() == [X] * 4 + [a(6, c) for c in l6[5:]]
    assert b.targets[0, 7].tolist() == [X] * 4 + text[5:]


def test_long_text_answer_pads_audio_layers():
    enc = Encoded(Task.T1A2, question_ids=[1], answer_ids=list(range(12)), answer_frames=frames(1))
    b = collate(enc)
    # the answer is 13 text steps, longer than N + 8 = 9: audio layers continue with pad_a, as targets
    assert b.input_ids.shape[-1] == 4 + 13 - 1
    assert b.targets[0, 0, -1].item() == a(0, PAD_A)


def test_mixed_batch_padding_and_masks():
    s1 = Encoded(Task.T1T2, question_ids=[1], answer_ids=[2], source="orca", row=3)
    s2 = Encoded(Task.A1A2, answer_ids=[7, 8], audio=speech(3), audio_frames=3, answer_frames=frames(2), source="va",
                 row=9)  # fmt: skip
    s3 = Encoded(Task.A1T1, answer_ids=[5], audio=speech(1), audio_frames=1, source="ls", row="u1")
    b = OmniCollator(V, pad_to_multiple_of=8)([s1, s2, s3])
    assert b.input_ids.shape == (3, 8, 16)
    assert b.lengths.tolist() == [sequence_length(s) for s in (s1, s2, s3)]
    assert [TASKS[i] for i in b.task_ids] == [Task.T1T2, Task.A1A2, Task.A1T1]
    assert b.sources == ["orca", "va", "ls"] and b.rows == [3, 9, "u1"]
    assert b.audio_lengths.tolist() == [3, 1]  # rows 1 and 2, in row order
    assert b.audio.shape == (2, 641) and b.audio_samples.tolist() == [641, 1] and (b.audio[1, 1:] == 0).all()
    assert int(b.audio_mask.sum()) == 4
    # batch padding: pad ids in the inputs, no loss
    n = b.lengths[0]
    assert (b.input_ids[0, 7, n:] == PAD_T).all() and (b.input_ids[0, 2, n:] == a(2, PAD_A)).all()
    assert (b.targets[0, :, n:] == X).all()
    assert b.padding_fraction == pytest.approx(1 - b.lengths.sum().item() / 48)


# ---- invariants over random samples ---------------------------------------------------------

text_ids = st.lists(st.integers(0, V.base_vocab_size - 1), min_size=1, max_size=12)


@st.composite
def encoded(draw):
    task = draw(st.sampled_from(list(Task)))
    kw = dict(answer_ids=draw(text_ids))
    if task.audio_in:
        T = draw(st.integers(1, 10))
        kw.update(audio=torch.zeros(80, 2 * T), audio_frames=T)
    else:
        kw.update(question_ids=draw(text_ids))
    if task.audio_out:
        n = draw(st.integers(1, 8))
        codes = draw(st.lists(st.integers(0, 4095), min_size=7 * n, max_size=7 * n))
        kw.update(answer_frames=torch.tensor(codes).view(n, 7))
    return Encoded(task, **kw)


@settings(max_examples=80, deadline=None)
@given(samples=st.lists(encoded(), min_size=1, max_size=5))
def test_collator_invariants(samples):
    b = collate(*samples)
    B, _, L = b.input_ids.shape
    for layer in range(7):  # every id in its layer's range
        ids = b.input_ids[:, layer]
        assert ((ids >= V.audio_offset(layer)) & (ids < V.audio_offset(layer) + V.audio_vocab_size)).all()
    assert (b.input_ids[:, 7] < V.text_vocab_size).all()
    for i, s in enumerate(samples):
        n = b.lengths[i].item()
        trained = b.targets[i] != X
        # targets are the inputs shifted by one wherever both exist
        both = trained[:, :-1].clone()
        both[:, n - 1 :] = False
        assert torch.equal(b.targets[i, :, :-1][both], b.input_ids[i, :, 1:][both])
        # no loss on prompts or batch padding; the text layer is trained up to the row's end
        first = trained[7].nonzero().min().item()
        assert not trained[:, :first].any() and not trained[:, n:].any()
        assert trained[7, first:n].all()
        assert b.input_ids[i, 7, first].item() in (V.answer_t, V.asr)
        if s.task.audio_out:
            assert trained[:7, first:n].all()
            for layer in range(7):  # layer i's first code comes i + 1 steps after the answer starts
                targets = b.targets[i, layer, first:n]
                first_code = (targets < V.audio_id(layer, EOA)).nonzero().min().item()
                assert first_code == layer + 1
                assert targets[first_code].item() - V.audio_offset(layer) == s.answer_frames[0, layer].item()
        else:
            assert not trained[:7].any()
        if s.task.audio_in:
            assert b.audio_mask[i].sum().item() == s.audio_frames
            assert b.audio_mask[i, 1 : 1 + s.audio_frames].all()
