"""Random and malformed inputs through the data path: rows -> samples -> encoded -> batches.

Nothing may fail except by the documented ways (a counted skip, `SnacFormatError`), no id may leave
its layer's range, and every row must be laid out exactly as DESIGN.md writes it, which is rebuilt
here position by position, independently of `omni_train.data.collator`.
"""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from litgpt.tokenizer import Tokenizer
from tiny import VA_SCHEMA, speech

from omni_train.config import DEMO_DATA
from omni_train.data import sources
from omni_train.data.collator import OmniCollator
from omni_train.data.datamodule import SampleEncoder, SkipSample
from omni_train.data.samples import Encoded
from omni_train.data.snac_format import SnacFormatError, format_answer_snac, frames_from_flat
from omni_train.tasks import Task
from omni_train.vocab import ANSWER_A, EOA, IGNORE_INDEX, INPUT_A, PAD_A, Vocab

FUZZ = settings(max_examples=60, deadline=None)


def design_row(s: Encoded, v: Vocab) -> tuple[torch.Tensor, int]:
    """DESIGN.md's "Sequence layouts", one list per layer: the row ``(8, P + A)`` and P."""
    x_a = ANSWER_A if s.task.audio_out else PAD_A
    if s.task.audio_in:  # layer i: input_a, pad_a x T, eoa, X_a; text: input_t, pad_t x T, eot, X_t
        T = s.audio_frames
        audio = [[INPUT_A] + [PAD_A] * T + [EOA, x_a] for _ in range(7)]
        text = [v.input_t] + [v.pad_t] * T + [v.eot, v.asr if s.task is Task.A1T1 else v.answer_t]
    else:  # text: input_t, tokens, eot, answer_t; layer i: pad_a x (n + 2), X_a
        audio = [[PAD_A] * (len(s.question_ids) + 2) + [x_a] for _ in range(7)]
        text = [v.input_t, *s.question_ids, v.eot, v.answer_t]
    P = len(text)
    answer = [*s.answer_ids, v.eot]
    A = max(len(answer), s.answer_frames.size(0) + 8) if s.task.audio_out else len(answer)
    text += answer + [v.pad_t] * (A - len(answer))  # text: answer tokens, eot, pad_t to the end
    for i in range(7):  # layer i: pad_a x (i + 1), its N codes, eoa, then pad_a (text-only answers: all pad_a)
        layer = [PAD_A] * (i + 1) + s.answer_frames[:, i].tolist() + [EOA] if s.task.audio_out else []
        audio[i] += layer + [PAD_A] * (A - len(layer))
    rows = [[v.audio_id(i, c) for c in audio[i]] for i in range(7)] + [text]
    return torch.tensor(rows), P


def check_batch(b, samples: list[Encoded], v: Vocab, multiple: int = 1) -> None:
    B, _, L = b.input_ids.shape
    assert B == len(samples) and L % multiple == 0 and b.targets.shape == b.input_ids.shape
    for layer in range(7):  # every id in its layer's range, inputs and targets alike
        lo, hi = v.audio_offset(layer), v.audio_offset(layer) + 4160
        assert ((b.input_ids[:, layer] >= lo) & (b.input_ids[:, layer] < hi)).all()
        t = b.targets[:, layer]
        assert ((t == IGNORE_INDEX) | ((t >= lo) & (t < hi))).all()
    assert ((b.input_ids[:, 7] >= 0) & (b.input_ids[:, 7] < v.text_vocab_size)).all()
    assert ((b.targets[:, 7] == IGNORE_INDEX) | ((b.targets[:, 7] >= 0) & (b.targets[:, 7] < v.text_vocab_size))).all()
    pads = torch.tensor([v.audio_id(i, PAD_A) for i in range(7)] + [v.pad_t])
    for k, s in enumerate(samples):
        row, P = design_row(s, v)
        n = row.size(1) - 1  # the model reads row[:, :-1] and predicts row[:, 1:]
        assert b.lengths[k] == n
        assert torch.equal(b.input_ids[k, :, :n], row[:, :-1])
        assert (b.input_ids[k, :, n:] == pads[:, None]).all()  # batch padding
        expected = torch.full((8, L), IGNORE_INDEX)
        trained = 8 if s.task.audio_out else 1  # text-only answers train no audio layer
        expected[8 - trained :, P - 1 : n] = row[8 - trained :, P:]  # answer positions only
        assert torch.equal(b.targets[k], expected)
        mask = torch.zeros(L, dtype=torch.bool)
        mask[1 : 1 + s.audio_frames] = s.task.audio_in  # Whisper frames replace audio layers after input_a
        assert torch.equal(b.audio_mask[k], mask)


# ---- the collator against DESIGN.md ---------------------------------------------------------------


@st.composite
def encoded(draw, v: Vocab):
    task = draw(st.sampled_from(list(Task)))
    ids = st.lists(st.integers(0, v.base_vocab_size - 1), max_size=20)
    kw = {"answer_ids": draw(ids)}
    if task.audio_in:
        T = draw(st.integers(1, 30))
        kw.update(audio=speech(T), audio_frames=T)
    else:
        kw.update(question_ids=draw(ids))
    if task.audio_out:
        n = draw(st.integers(1, 16))
        kw.update(answer_frames=torch.tensor(draw(st.lists(st.integers(0, 4095), min_size=7 * n, max_size=7 * n))).view(n, 7))
    return Encoded(task, **kw)


@FUZZ
@given(data=st.data(), base=st.sampled_from([100, 1000, 151936]), multiple=st.sampled_from([1, 8, 64]))
def test_collated_rows_are_the_design_layout(data, base, multiple):
    v = Vocab(base)
    samples = data.draw(st.lists(encoded(v), min_size=1, max_size=6))
    check_batch(OmniCollator(v, multiple)(samples), samples, v, multiple)


# ---- rows of a VoiceAssistant-400K parquet, good and broken, all the way to a batch -----------------


def _flac(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(16000 * seconds), dtype="float32"), 16000, format="FLAC")
    return buf.getvalue()


GOOD_AUDIO = {"bytes": _flac(0.2), "path": "q.flac"}
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "   ", "what is two plus three", "\n\t", "ünïcødé 😀"]))
snac = st.one_of(
    st.lists(st.lists(st.integers(0, 4095), min_size=7, max_size=7), min_size=1, max_size=20).map(format_answer_snac),
    st.lists(st.sampled_from(["#", "1", "4095", "4096", "-1", "x", "", "\n"]), max_size=30).map(" ".join),
    st.sampled_from(["", "# 1 2 3", None]),
)
audio = st.sampled_from([GOOD_AUDIO, {"bytes": b"RIFF garbage", "path": "x.wav"}, {"bytes": b"", "path": ""}, None])
va_rows = st.lists(
    st.fixed_dictionaries({"question": st.one_of(texts, st.none()), "answer": st.one_of(texts, st.none()),
                           "answer_snac": snac, "question_audio": audio}),
    min_size=1, max_size=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    return SampleEncoder(Tokenizer(DEMO_DATA / "tokenizer"), Vocab(1024), max_seq_length=4096)


@FUZZ
@given(rows=va_rows, tasks=st.lists(st.sampled_from(list(Task)[1:]), min_size=1, max_size=4, unique=True))
def test_any_voice_assistant_rows_give_batches_or_counted_skips(tmp_path_factory, encoder, rows, tasks):
    path = tmp_path_factory.mktemp("va") / "train-00000-of-00001.parquet"
    full = [{"split_name": "train", "index": str(i), "round": "0", **r} for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(full, schema=VA_SCHEMA), path)
    src = sources.voice_assistant(path, tasks=[t.value for t in tasks])

    samples = list(src)  # no exception: every bad value is a counted skip
    assert src.skips.n_seen() == len(rows) * len(tasks) == len(samples) + src.skips.n_skipped()
    made = []
    for s in samples:
        try:
            made.append(encoder(s))
        except SkipSample:
            continue
    for s in made:  # what survived is well formed
        if s.task.audio_out:
            assert s.answer_frames.dim() == 2 and s.answer_frames.size(1) == 7 and s.answer_frames.size(0) >= 1
            assert 0 <= int(s.answer_frames.min()) and int(s.answer_frames.max()) < 4096
    # a row whose every part is fine is never dropped
    for i, r in enumerate(rows):
        for task in tasks:
            good = bool((r["answer"] or "").strip()) and (
                r["question_audio"] is GOOD_AUDIO if task.audio_in else bool((r["question"] or "").strip())
            )
            if task.audio_out:
                try:
                    good &= r["answer_snac"] is not None and sources.to_frames(r["answer_snac"]).size(0) > 0
                except SnacFormatError:
                    good = False
            kept = any(s.row == f"{path.name}:{i}" and s.task is task for s in made)
            assert kept == good, (r, task)
    if made:
        check_batch(OmniCollator(encoder.vocab)(made), made, encoder.vocab)


# ---- SNAC codes given as lists (SLAM's target_token, Mini-Omni's list form) -----------------------

values = st.one_of(st.integers(-5, 5000), st.sampled_from(["#", "12", "x", ""]), st.floats(allow_nan=True), st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(values, max_size=30), st.lists(st.integers(0, 4095), max_size=30), st.lists(st.lists(values))))
def test_code_lists_give_frames_or_snac_format_error(codes):
    for parse in (sources.to_frames, frames_from_flat):
        try:
            frames = parse(codes)
        except SnacFormatError:
            continue
        assert frames.dtype == torch.long and frames.dim() == 2 and frames.size(1) == 7 and frames.size(0) >= 1
        assert 0 <= int(frames.min()) and int(frames.max()) < 4096
