"""SampleLogger in a shortened tiny run: answers as text, speech and pictures in every logger; val/wer."""

import json

import pytest
import soundfile as sf
import torch
import wandb
from runs import SHORT, config

from omni_train.callbacks import SampleLogger, evaluating
from omni_train.config import DEMO_DATA
from omni_train.evaluate import mel_picture
from omni_train.train import train

HELDOUT = DEMO_DATA / "asr" / "heldout"


def test_samples_and_wer_reach_csv_tensorboard_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        train(config(
            *SHORT, "stage=alignment", f"run_dir={tmp_path}", "eval.asr=null", "eval.speak=null",
            "logger=[csv,tensorboard,wandb]", "callbacks=samples", "callbacks.samples.every_n_steps=1",
            "callbacks.samples.max_speech=1", "callbacks.samples.max_new_tokens=12",
            f"callbacks.samples.wer={HELDOUT}", "callbacks.samples.wer_max_utterances=2",
        ))  # fmt: skip
    finally:
        wandb.finish()  # or the next test's WandbLogger would write into this test's run
    logs = tmp_path / "alignment" / "logs"
    # CSV: one JSON a step (steps 1 and 2; the end adds none), a wav and a mel picture a spoken answer
    samples = next(logs.rglob("samples"))
    assert sorted(p.name for p in samples.glob("*.json")) == ["step-000001.json", "step-000002.json"]
    records = json.loads((samples / "step-000002.json").read_text())
    assert [r["task"] for r in records] == ["A1A2", "T1A2"]  # the demo's first held-out clip, a text question
    assert records[0]["reference"] and records[1]["question"] == "what can you do for me"
    for r in records:
        assert r["step"] == 2 and isinstance(r["text"], str)
        if r["frames"]:
            info = sf.info(samples / r["wav"])
            assert info.samplerate == 24000 and info.duration == pytest.approx(r["seconds"], abs=1e-3)
            assert (samples / r["mel"]).read_bytes().startswith(b"\x89PNG")
    assert any(r["frames"] for r in records)
    # the held-out WER of the validation at the stage's end
    metrics = next(logs.rglob("metrics.csv")).read_text().splitlines()
    column = metrics[0].split(",").index("val/wer")
    assert next(float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]) >= 0
    # TensorBoard: text, audio and a figure per probe
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(logs.rglob("events.out.tfevents.*")).parent)).Reload()
    tags = events.Tags()
    spoken = next(i for i, r in enumerate(records) if r["frames"])
    assert f"samples/{spoken}/speech" in tags["audio"] and f"samples/{spoken}/mel" in tags["images"]
    assert "samples/0/text_summary" in tags["tensors"] and "val/wer" in tags["scalars"]
    # wandb (offline): the answers table, the speech and the pictures
    wandb_files = {p.name.split("_")[0] for p in logs.rglob("media/*/samples/*")}
    assert {"answers", "speech", "mel"} <= wandb_files


def test_bad_probes_are_named():
    with pytest.raises(ValueError, match="speech_task='T1A2'"):
        SampleLogger(speech_task="T1A2")
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        SampleLogger(speech=["nowhere.wav"])
    with pytest.raises(FileNotFoundError, match="no-such-split"):
        SampleLogger(wer="no-such-split")


def test_eval_mode_is_undone_module_by_module():
    model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Dropout())
    model[1].eval()  # e.g. a frozen part kept in eval mode on purpose
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False]


def test_mel_picture_of_a_clip_shorter_than_one_window():
    fig = mel_picture(torch.randn(100), 24000, "short")
    assert fig.axes[0].get_title() == "short"
