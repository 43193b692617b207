"""The run's closing spoken answer: answer.wav, its mel picture, and its CER as the demo recogniser hears it."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch

from omni_train import evaluate
from omni_train.config import DEMO_DATA, EvalConfig
from omni_train.data import sources
from omni_train.demo_asr import DemoRecognizer, cer
from omni_train.generate import Answer
from omni_train.report import summary_table
from omni_train.tasks import Task


@pytest.fixture(scope="module")
def spoken_row():
    """A voice-assistant row of the bundled set: an answer text and its codes in the bundled codec."""
    rows = [s for s in sources.voice_assistant(DEMO_DATA / "voice_assistant.parquet", tasks=["T1A2"])]
    return next(s for s in rows if s.task == Task.T1A2 and s.answer_text == "four plus one is five")


def speak(monkeypatch, tmp_path: Path, text: str, frames: torch.Tensor, recognizer: str | None) -> dict:
    """`evaluate.speak` with the model's reply fixed to `text` and `frames` (the rest is the real path)."""
    monkeypatch.setattr(evaluate, "answer", lambda *a, **k: Answer(text, [], None, frames))
    bundle = SimpleNamespace(model=torch.nn.Identity(), tokenizer_dir=DEMO_DATA / "tokenizer", snac=DEMO_DATA / "snac")
    cfg = EvalConfig(speak="what is four plus one", speak_recognizer=recognizer)
    torch.manual_seed(0)  # SNAC's decoder adds noise
    return evaluate.speak(bundle, cfg, tmp_path / "answer.wav")


def test_spoken_answer_is_written_pictured_and_scored(monkeypatch, tmp_path, spoken_row):
    said = speak(monkeypatch, tmp_path, spoken_row.answer_text, spoken_row.answer_frames, str(DEMO_DATA / "whisper.pt"))
    assert sf.info(tmp_path / "answer.wav").duration == pytest.approx(said["seconds"], abs=0.01)
    assert (tmp_path / "answer.png").read_bytes()[:4] == b"\x89PNG" and said["mel_png"] == str(tmp_path / "answer.png")
    # the score is the recogniser's reading of the written wav against the text answer
    recognizer = DemoRecognizer.load(DEMO_DATA / "whisper.pt")
    heard, score = recognizer.score(tmp_path / "answer.wav", spoken_row.answer_text)
    assert said["heard"] == heard and said["cer"] == pytest.approx(score, abs=0.05)
    assert said["cer"] == pytest.approx(cer([spoken_row.answer_text], [heard], recognizer.alphabet), abs=0.05)
    json.dumps(said)  # it goes into summary.json
    assert f"CER {said['cer']}%" in summary_table({"spoken_answer": said})


def test_no_recognizer_no_cer_and_no_frames_no_files(monkeypatch, tmp_path, spoken_row):
    said = speak(monkeypatch, tmp_path, spoken_row.answer_text, spoken_row.answer_frames, None)
    assert "cer" not in said and said["wav"] and "CER" not in summary_table({"spoken_answer": said})
    no_frames = torch.zeros(0, 7, dtype=torch.long)
    silent = speak(monkeypatch, tmp_path / "silent", "four", no_frames, str(DEMO_DATA / "whisper.pt"))
    assert silent["wav"] is None and "cer" not in silent and not (tmp_path / "silent").exists()
