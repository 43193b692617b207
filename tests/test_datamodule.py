"""The whole data path: a VoiceAssistant-400K-shaped parquet -> samples -> encoded -> batches."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from tiny import VA_SCHEMA, train_tokenizer

from omni_train.audio import whisper_frames
from omni_train.config import DataConfig
from omni_train.data import sources
from omni_train.data.datamodule import OmniDataModule, SampleEncoder
from omni_train.data.skips import TooManySkips
from omni_train.data.snac_format import format_answer_snac
from omni_train.tasks import TASKS, Task
from omni_train.vocab import IGNORE_INDEX, Vocab


def flac_bytes(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal(int(22050 * seconds))).astype("float32"), 22050, format="FLAC")
    return buf.getvalue()


@pytest.fixture(scope="module")
def va_parquet(tmp_path_factory):
    root = tmp_path_factory.mktemp("va")
    rng = np.random.default_rng(0)
    rows = [
        dict(
            split_name="train", index=str(i), round="0", question="what is two plus three",
            question_audio={"bytes": flac_bytes(0.3 + 0.1 * i, i), "path": f"{i}.flac"},
            answer="the answer is five", answer_snac=format_answer_snac(rng.integers(0, 4096, (4 + i, 7))),
        )
        for i in range(8)
    ]
    rows[2]["question_audio"] = {"bytes": b"RIFF not really audio", "path": "2.wav"}  # corrupt audio
    rows[5]["answer_snac"] = "# 1 2 3"  # wrong frame length
    pq.write_table(pa.Table.from_pylist(rows, schema=VA_SCHEMA), root / "train-00000-of-00001.parquet", row_group_size=2)
    return root


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    tokenizer = train_tokenizer(tmp_path_factory.mktemp("tok"))
    return SampleEncoder(tokenizer, Vocab(512), max_seq_length=512)


def test_voice_assistant_parquet_to_batches(va_parquet, encoder):
    va = sources.voice_assistant(va_parquet, tasks=("A1A2", "T1T2"))
    cfg = DataConfig(max_tokens=400, num_workers=0, buffer_size=8, max_skip_fraction=None)
    dm = OmniDataModule({"voice_assistant": va}, {"voice_assistant": 1.0}, encoder, cfg, val={"va": va})
    batches = list(dm.val_dataloader())
    seen = [(s, r) for b in batches for s, r in zip(b.sources, b.rows)]
    # 8 rows x 2 tasks, minus the corrupt audio (A1A2 of row 2) and the bad answer_snac (A1A2 of row 5)
    assert len(seen) == 14
    kinds = {(r, t) for b in batches for r, t in zip(b.rows, [TASKS[i] for i in b.task_ids])}
    assert ("train-00000-of-00001.parquet:2", Task.A1A2) not in kinds
    assert ("train-00000-of-00001.parquet:2", Task.T1T2) in kinds
    reasons = {reason for (_, reason) in va.skips.skipped}
    assert len(reasons) == 2 and va.skips.n_skipped() == 2
    for b in batches:
        assert b.input_ids.size(0) * b.input_ids.size(-1) <= 400
        assert b.targets.shape == b.input_ids.shape
        if b.audio is not None:  # decoded 16-kHz audio: the log-mel is the step's to make
            assert b.audio.size(-1) == int(b.audio_samples.max())
            assert [whisper_frames(n) for n in b.audio_samples.tolist()] == b.audio_lengths.tolist()
            assert int(b.audio_mask.sum()) == int(b.audio_lengths.sum())
        for i, task in enumerate([TASKS[i] for i in b.task_ids]):
            assert (b.targets[i, :7] != IGNORE_INDEX).any() == task.audio_out

    # the training stream is endless and mixes the same sources
    train = iter(dm.train_dataloader())
    assert sum(next(train).input_ids.size(0) for _ in range(10)) > 14


def test_run_stops_past_the_skip_fraction(va_parquet, encoder):
    va = sources.voice_assistant(va_parquet, tasks=("A1A2",))
    dm = OmniDataModule({"va": va}, {"va": 1.0}, encoder, DataConfig(max_tokens=400, num_workers=0), val={"va": va})
    with pytest.raises(TooManySkips, match=r"voice_assistant: skipped 2 of 8 samples \(25.0%\), more than the allowed 1.0%"):
        list(dm.val_dataloader())


def test_encoder_skips_overlong_and_empty(encoder):
    from omni_train.data.datamodule import SkipSample
    from omni_train.data.samples import Sample

    with pytest.raises(SkipSample, match="empty answer"):
        encoder(Sample(Task.T1T2, answer_text="  ", question_text="hi"))
    with pytest.raises(SkipSample, match="longer than max_seq_length"):
        encoder(Sample(Task.T1T2, answer_text="the model " * 300, question_text="hi"))
    enc = encoder(Sample(Task.T1A2, answer_text="hi", question_text="hi", answer_frames=torch.zeros(3, 7)))
    assert enc.question_ids == enc.answer_ids
