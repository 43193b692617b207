import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_train.vocab import (
    ANSWER_A,
    EOA,
    INPUT_A,
    PAD_A,
    SPLIT,
    Vocab,
    apply_delay,
    flatten_snac,
    remove_delay,
    unflatten_snac,
)


def test_qwen2_numbers_match_design():
    v = Vocab(151936)
    assert v.text_vocab_size == 152000
    assert v.audio_vocab_size == 4160
    assert v.padded_vocab_size == 181120
    assert (v.eot, v.pad_t, v.input_t, v.answer_t, v.asr) == (151936, 151937, 151938, 151939, 151940)
    assert (EOA, PAD_A, INPUT_A, ANSWER_A, SPLIT) == (4096, 4097, 4098, 4099, 4100)
    assert v.audio_offset(0) == 152000
    assert v.audio_offset(6) == 152000 + 6 * 4160
    assert v.audio_id(3, PAD_A) == 152000 + 3 * 4160 + 4097
    assert v.audio_layer_ids(EOA)[-1] == 181120 - 4160 + 4096


def test_layout_follows_the_base_vocab():
    v = Vocab(32000)  # a Llama-2-sized vocabulary: nothing is Qwen-specific
    assert v.text_vocab_size == 32064
    assert v.padded_vocab_size == 32064 + 7 * 4160
    assert v.eot == 32000


def test_bad_layer_is_an_error():
    with pytest.raises(ValueError, match="audio layer"):
        Vocab(100).audio_offset(7)


@given(
    base=st.integers(1, 300_000),
    codes=st.lists(st.lists(st.integers(0, 4159), min_size=7, max_size=7), min_size=1, max_size=20),
)
def test_shift_roundtrip_and_ranges(base, codes):
    v = Vocab(base)
    frames = torch.tensor(codes)
    ids = v.shift_frames(frames)
    assert torch.equal(ids - v.audio_offset(0) - torch.arange(7) * v.audio_vocab_size, frames)
    for layer in range(7):
        assert (ids[:, layer] >= v.audio_offset(layer)).all()
        assert (ids[:, layer] < v.audio_offset(layer) + 4160).all()
        assert torch.equal(ids[:, layer], torch.tensor([v.audio_id(layer, c) for c in frames[:, layer].tolist()]))
    assert (ids < v.padded_vocab_size).all()


frames_strategy = st.integers(1, 40).flatmap(
    lambda n: st.lists(st.integers(0, 4095), min_size=7 * n, max_size=7 * n).map(
        lambda xs: torch.tensor(xs).view(-1, 7)
    )
)


@given(frames=frames_strategy)
def test_snac_flatten_roundtrip(frames):
    books = unflatten_snac(frames)
    n = frames.size(0)
    assert [tuple(b.shape) for b in books] == [(1, n), (1, 2 * n), (1, 4 * n)]
    assert torch.equal(flatten_snac(books), frames)


def test_snac_flatten_order_is_minis_omnis():
    c0 = torch.tensor([[10, 11]])
    c1 = torch.tensor([[20, 21, 22, 23]])
    c2 = torch.tensor([[30, 31, 32, 33, 34, 35, 36, 37]])
    frames = flatten_snac([c0, c1, c2])
    # c0[t], c1[2t], c2[4t], c2[4t+1], c1[2t+1], c2[4t+2], c2[4t+3]
    assert frames.tolist() == [[10, 20, 30, 31, 21, 32, 33], [11, 22, 34, 35, 23, 36, 37]]


def test_snac_flatten_rejects_wrong_lengths():
    with pytest.raises(ValueError, match="N, 2N, 4N"):
        flatten_snac([torch.zeros(2), torch.zeros(4), torch.zeros(7)])


def test_delay_pattern_matches_design_example():
    frames = torch.tensor([[100 + i for i in range(7)], [200 + i for i in range(7)]])  # N = 2
    layers = apply_delay(frames)
    assert layers.shape == (7, 2 + 8)
    P, E = PAD_A, EOA
    assert layers[0].tolist() == [P, 100, 200, E, P, P, P, P, P, P]
    assert layers[6].tolist() == [P] * 7 + [106, 206, E]
    for i in range(7):
        assert layers[i, : i + 1].tolist() == [P] * (i + 1)  # layer i lags the text by i + 1 steps


@settings(max_examples=60)
@given(frames=frames_strategy, extra=st.integers(0, 5))
def test_delay_roundtrip(frames, extra):
    layers = apply_delay(frames)
    padded = torch.cat([layers, torch.full((7, extra), PAD_A)], dim=1)  # trailing pads, as generation leaves
    assert torch.equal(remove_delay(padded), frames)


def test_remove_delay_keeps_complete_frames_of_truncated_generation():
    frames = torch.arange(21).view(3, 7)
    layers = apply_delay(frames)[:, :6]  # stopped after 6 steps
    out = remove_delay(layers)
    assert torch.equal(out, frames[: out.size(0)])
    assert out.size(0) == 0  # layer 6 lags by 7 steps, so no frame is complete yet
    out = remove_delay(apply_delay(frames)[:, :9])
    assert torch.equal(out, frames[:2])
