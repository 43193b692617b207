"""The bundled demo set reads through the same sources a real run uses."""

from pathlib import Path

import torch

from omni_train.audio import SnacCodec
from omni_train.data import sources
from omni_train.tasks import Task

DEMO = Path(__file__).resolve().parents[1] / "omni_train" / "demo_data"


def test_demo_asr_splits_are_disjoint_librispeech_layouts():
    train = list(sources.librispeech(DEMO / "asr" / "train"))
    heldout = list(sources.librispeech(DEMO / "asr" / "heldout"))
    assert len(train) >= 300 and len(heldout) >= 30
    assert {s.task for s in train} == {Task.A1T1}
    assert not {s.answer_text for s in heldout} & {s.answer_text for s in train}


def test_demo_voice_assistant_and_textqa_read_without_skips():
    va = sources.voice_assistant(DEMO / "voice_assistant.parquet", tasks=("A1A2", "T1A2"))
    qa = sources.open_orca(DEMO / "textqa.jsonl")
    rows = list(va)
    assert len(rows) >= 60 and va.skips.n_skipped() == 0
    assert all(s.answer_frames.shape[1] == 7 for s in rows)
    assert len(list(qa)) >= 40 and qa.skips.n_skipped() == 0
    codec = SnacCodec.from_pretrained(DEMO / "snac")
    assert codec.decode(rows[0].answer_frames).numel() == rows[0].answer_frames.size(0) * codec.samples_per_frame


def test_demo_tts_targets_cover_every_training_utterance():
    asr = sources.librispeech(DEMO / "asr" / "train", tts_snac=DEMO / "asr" / "train_tts.parquet")
    rows = list(asr)
    tts = [s for s in rows if s.task == Task.T1A2]
    assert len(tts) == len(rows) // 2 >= 300 and asr.skips.n_skipped() == 0
    assert all(s.answer_frames.shape[1] == 7 and s.answer_frames.size(0) >= 5 for s in tts)


def test_demo_codes_use_only_the_codecs_open_rows_and_decode_at_their_length():
    """train_demo_snac.py keeps 512 rows a codebook open; every shipped code is one of them, and decodes."""
    codec = SnacCodec.from_pretrained(DEMO / "snac")
    rows = list(sources.voice_assistant(DEMO / "voice_assistant.parquet", tasks=["T1A2"]))
    rows += list(sources.librispeech(DEMO / "asr" / "train", tts_snac=DEMO / "asr" / "train_tts.parquet", tasks=["T1A2"]))
    codes = torch.cat([s.answer_frames for s in rows])  # (N, 7)
    assert int(codes.max()) < 512 and len(torch.unique(codes[:, 0])) > 100
    for s in rows[:3]:
        assert codec.decode(s.answer_frames).numel() == s.answer_frames.size(0) * codec.samples_per_frame
