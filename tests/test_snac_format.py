import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from omni_train.data.snac_format import SnacFormatError, format_answer_snac, frames_from_flat, parse_answer_snac

REAL = "# 1942 2031 2825 2111 2743 271 3545 # 1399 3311 3120 32 4095 0 17"


def test_parses_the_voice_assistant_form():
    frames = parse_answer_snac(REAL)
    assert frames.dtype == torch.long and frames.shape == (2, 7)
    assert frames[0].tolist() == [1942, 2031, 2825, 2111, 2743, 271, 3545]
    assert frames[1].tolist() == [1399, 3311, 3120, 32, 4095, 0, 17]


def test_format_is_the_exact_inverse():
    assert format_answer_snac(parse_answer_snac(REAL)) == REAL
    assert format_answer_snac([[1, 2, 3, 4, 5, 6, 7]]) == "# 1 2 3 4 5 6 7"  # no leading/trailing space


def test_whitespace_is_free_but_structure_is_not():
    expected = parse_answer_snac(REAL)
    for variant in (" " + REAL + " ", REAL + "\n", REAL.replace(" ", "  "), REAL.replace("# ", "#"), "\t" + REAL):
        assert torch.equal(parse_answer_snac(variant), expected), variant


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "answer_snac is empty"),
        ("  \n", "answer_snac is empty"),
        ("1 2 3 4 5 6 7", "must start with '#'"),
        ("# 1 2 3 4 5 6", "frame 0 has 6 codes, expected 7"),
        ("# 1 2 3 4 5 6 7 # 1 2 3 4 5 6 7 8", "frame 1 has 8 codes, expected 7"),
        ("# 1 2 3 4 5 6 7 #", "frame 1 has 0 codes, expected 7"),
        ("# 1 2 3 4 5 6 4096", "frame 0, code 6: 4096 is out of range [0, 4096)"),
        ("# 1 2 -3 4 5 6 7", "frame 0, code 2: -3 is out of range"),
        ("# 1 2 3 x 5 6 7", "frame 0, code 3: 'x' is not an integer"),
        ("# 1 2 3 4.0 5 6 7", "'4.0' is not an integer"),
        ("# 1 2 3 +4 5 6 7", "'+4' is not an integer"),
        ("# 1 2 3 4 5 6 ٣", "is not an integer"),  # a non-ASCII digit that int() would take
        ("# 1 2 3 4 5 6 " + "9" * 5000, "is out of range"),  # int() itself refuses > 4300 digits
    ],
)
def test_malformed_strings_say_what_is_wrong(text, message):
    with pytest.raises(SnacFormatError, match=re.escape(message)):
        parse_answer_snac(text)


def test_not_a_string():
    with pytest.raises(SnacFormatError, match="must be a string, got NoneType"):
        parse_answer_snac(None)


def test_snac_format_error_is_a_value_error():
    assert issubclass(SnacFormatError, ValueError)


@pytest.mark.parametrize("frames", [np.zeros((0, 7), dtype=int), np.zeros((2, 6), dtype=int), np.zeros(7, dtype=int)])
def test_format_rejects_bad_shapes(frames):
    with pytest.raises(SnacFormatError, match="shape"):
        format_answer_snac(frames)


def test_format_rejects_specials_and_floats():
    with pytest.raises(SnacFormatError, match="frame 1, code 3: 4096 is out of range"):
        format_answer_snac(torch.tensor([[0] * 7, [0, 0, 0, 4096, 0, 0, 0]]))
    with pytest.raises(SnacFormatError, match="integer"):
        format_answer_snac(np.zeros((1, 7)))


def test_frames_from_flat():
    flat = list(range(14))
    assert frames_from_flat(flat).tolist() == [list(range(7)), list(range(7, 14))]
    with pytest.raises(SnacFormatError, match="13 codes is not a whole number of 7-code frames"):
        frames_from_flat(flat[:-1])
    with pytest.raises(SnacFormatError, match="frame 1, code 0: 5000 is out of range"):
        frames_from_flat([0] * 7 + [5000] + [0] * 6)
    with pytest.raises(SnacFormatError, match="non-empty"):
        frames_from_flat([])
    with pytest.raises(SnacFormatError, match="integer"):
        frames_from_flat([0.5] * 7)


codes = arrays(np.int64, st.tuples(st.integers(1, 40), st.just(7)), elements=st.integers(0, 4095))


@settings(max_examples=200, deadline=None)
@given(codes)
def test_round_trip(frames):
    text = format_answer_snac(frames)
    assert text.startswith("# ") and not text.endswith(" ")
    back = parse_answer_snac(text)
    assert back.shape == frames.shape and torch.equal(back, torch.from_numpy(frames))
    assert format_answer_snac(back) == text
    assert torch.equal(frames_from_flat(frames.reshape(-1)), back)


snac_alphabet = st.sampled_from(
    ["#", " ", "\n", "0", "1", "7", "4095", "4096", "-", "+", "x", "٣", "\u00a0", ".", "99999"]
)
snac_like = st.lists(snac_alphabet, max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), snac_like.map("".join), snac_like.map(" ".join)))
def test_malformed_strings_raise_only_snac_format_error(text):
    try:
        frames = parse_answer_snac(text)
    except SnacFormatError:
        return
    assert frames.dim() == 2 and frames.shape[1] == 7 and frames.shape[0] >= 1
    assert int(frames.min()) >= 0 and int(frames.max()) < 4096


@settings(max_examples=100, deadline=None)
@given(codes, st.integers(0, 10_000), st.sampled_from(["drop", "dup", "junk", "big"]))
def test_corrupted_strings_are_rejected(frames, at, how):
    tokens = format_answer_snac(frames).split(" ")
    i = at % len(tokens)
    if how == "drop":
        del tokens[i]
    elif how == "dup":
        tokens.insert(i, tokens[i])
    elif how == "junk":
        tokens[i] = "a"
    else:
        tokens[i] = "4096"
    with pytest.raises(SnacFormatError):
        parse_answer_snac(" ".join(tokens))
