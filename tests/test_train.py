"""omni-train end to end: the configs, the staged run, resume, DDP, and users' mistakes."""

import json
import platform
import signal
from pathlib import Path

import pytest
import soundfile as sf
from litgpt.config import Config
from omegaconf import OmegaConf
from runs import SHORT, config, omni_train

from omni_train import allocator
from omni_train.checkpoints import audio_sources, load_checkpoint
from omni_train.cli.train import CONFIGS
from omni_train.config import ConfigError
from omni_train.model import OmniConfig
from omni_train.redact import redacted
from omni_train.train import train

PRESETS = sorted(p.stem for p in (Path(CONFIGS) / "model").glob("*.yaml") if not p.stem.startswith("_"))
TINY = [p for p in PRESETS if p.startswith("tiny")]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_gives_an_omni_config(preset):
    cfg = config(f"model={preset}")
    base = Config.from_name(cfg.model.name, **OmegaConf.to_container(cfg.model.overrides))
    omni = OmniConfig.from_base(base, whisper_adapter_dim=64)
    assert omni.vocab.base_vocab_size == base.padded_vocab_size  # the layout follows the base, whatever it is
    if not preset.startswith("tiny"):
        assert cfg.model.checkpoint_dir is not None  # real presets name their weights
    elif cfg.model.checkpoint_dir is not None:  # a tiny preset's bundled base has the preset's very shape
        bundled = Config.from_file(Path(cfg.model.checkpoint_dir) / "model_config.yaml")
        assert bundled.__dict__ == base.__dict__


def test_a_misspelt_key_is_an_error_not_a_default(tmp_path):
    with pytest.raises(Exception, match="max_stepz"):
        config("experiment=demo", "stages.alignment.max_stepz=3")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text("# @package _global_\nstages:\n  alignment:\n    max_lr_: 1\n")
    run = omni_train("--config-dir", str(tmp_path), "experiment=typo", "--cfg", "job", cwd=tmp_path)
    assert run.returncode != 0 and "max_lr_" in run.stderr


def test_the_published_recipe_resolves(tmp_path):
    run = omni_train("experiment=mini_omni", "--cfg", "job", "--resolve", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    cfg = OmegaConf.create(run.stdout)
    assert cfg.trainer.devices * cfg.data.max_batch_size == 192
    assert list(cfg.run_stages) == ["alignment", "adaption", "finetune"]
    assert [cfg.stages[s].max_steps for s in cfg.run_stages] == [40000] * 3
    assert cfg.stages.finetune.max_lr == 5e-5 and cfg.stages.alignment.min_lr == 4e-6


@pytest.mark.parametrize("preset", TINY)
def test_shortened_demo_runs_for_every_tiny_model(tmp_path, preset):
    summary = train(config(*SHORT, f"model={preset}", f"run_dir={tmp_path}"))
    assert [s for s in summary["stages"]] == ["alignment", "adaption", "finetune"]
    assert all(s["steps"] == 2 for s in summary["stages"].values())
    assert 0 <= summary["wer_before"] and 0 <= summary["wer_after"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["wer_after"] == summary["wer_after"]
    for stage in summary["stages"]:
        model, cfg = load_checkpoint(tmp_path / stage / "model")  # what inference and export read
        assert cfg.post_adapter == preset.endswith("post-adapter")
        assert (tmp_path / stage / "model" / "whisper.pt").is_file()
        assert (tmp_path / stage / "model" / "snac" / "config.json").is_file()
        assert (tmp_path / stage / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / stage / "logs").is_dir()
        assert audio_sources(tmp_path / stage / "model")["trained_context"] == 512  # the demo's max_seq_length
    spoken = summary["spoken_answer"]
    if spoken["frames"]:
        info = sf.info(tmp_path / "answer.wav")
        assert info.samplerate == 24000 and info.duration == pytest.approx(spoken["seconds"], abs=0.01)
        assert (tmp_path / "answer.png").is_file()


def test_a_random_whisper_is_made_once_and_saved_with_the_model(tmp_path):
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                n_vocab=8, n_text_ctx=4, n_text_state=32, n_text_head=2, n_text_layer=1)
    overrides = [f"+model.whisper_dims.{k}={v}" for k, v in dims.items()]
    train(config(*SHORT, "stage=alignment", f"run_dir={tmp_path}", *overrides, "eval.speak=null"))
    model, cfg = load_checkpoint(tmp_path / "alignment" / "model")
    assert cfg.whisper_adapter_dim == 32
    saved = (tmp_path / "alignment" / "model" / "whisper.pt").read_bytes()
    assert saved == (tmp_path / "whisper.pt").read_bytes()  # the encoder of the WER check is the trained one's


def test_csv_tensorboard_and_offline_wandb_loggers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the demo's offline=true already says so; no network either way
    train(config(*SHORT, "run_stages=[alignment,adaption]", f"run_dir={tmp_path}", "eval.asr=null",
                 "eval.speak=null", "logger=[csv,tensorboard,wandb]", "stages.alignment.log_every=1"))
    logs = tmp_path / "alignment" / "logs"
    assert "train/loss" in next(logs.rglob("metrics.csv")).read_text()
    assert list(logs.rglob("events.out.tfevents.*"))
    # one wandb run a stage, each in its own stage's folder (not stage 2 written into stage 1's run)
    runs = {stage: list((tmp_path / stage / "logs").rglob("offline-run-*")) for stage in ("alignment", "adaption")}
    assert len(runs["alignment"]) == 1 and len(runs["adaption"]) == 1, runs


def test_each_stage_starts_from_the_previous_stage(tmp_path):
    train(config(*SHORT, "stage=alignment", f"run_dir={tmp_path / 'a'}", "eval.asr=null", "eval.speak=null"))
    first = tmp_path / "a" / "alignment" / "model"
    summary = train(config(*SHORT, "stage=adaption", f"init_from={first}", f"run_dir={tmp_path / 'b'}",
                           "eval.asr=null", "eval.speak=null"))
    assert summary["stages"]["adaption"]["steps"] == 2
    before, _ = load_checkpoint(first)
    after, _ = load_checkpoint(tmp_path / "b" / "adaption" / "model")
    # stage 2 keeps the adapters it was given and trains the LLM
    assert all((before.state_dict()[k] == v).all() for k, v in after.state_dict().items() if "whisper_adapter" in k)
    assert not (before.transformer.h[0].attn.qkv.weight == after.transformer.h[0].attn.qkv.weight).all()


def test_init_from_decides_the_model_and_a_conflicting_model_setting_is_one_line(tmp_path):
    train(config(*SHORT, "stage=alignment", f"run_dir={tmp_path / 'a'}", "eval.asr=null", "eval.speak=null"))
    first = tmp_path / "a" / "alignment" / "model"  # tiny-qwen2: Qwen2.5-0.5B, 4 layers of 128
    # the Python API counts every model.* key as chosen: another preset is refused, naming both models
    with pytest.raises(ConfigError, match="model.name='Llama-3.2-1B' but init_from=.* holds 'Qwen2.5-0.5B'") as err:
        train(config(*SHORT, "stage=adaption", "model=tiny-llama", f"init_from={first}", f"run_dir={tmp_path / 'b'}"))
    assert "\n" not in str(err.value)
    # a tokenizer or a Whisper other than the ones the checkpoint was trained with: one line each, never silent
    import torch
    from tiny import train_tokenizer

    train_tokenizer(tmp_path / "other_tok")
    whisper = torch.load(first / "whisper.pt", weights_only=False)
    whisper["model_state_dict"] = {k: v + 1 for k, v in whisper["model_state_dict"].items()}
    torch.save(whisper, tmp_path / "other_whisper.pt")
    with pytest.raises(ConfigError) as err:
        train(config(*SHORT, "stage=adaption", f"init_from={first}", f"model.tokenizer_dir={tmp_path / 'other_tok'}",
                     f"model.whisper={tmp_path / 'other_whisper.pt'}", f"run_dir={tmp_path / 'b'}"))  # fmt: skip
    assert f"model.tokenizer_dir={tmp_path / 'other_tok'} holds another tokenizer than init_from={first}" in str(err.value)
    assert f"model.whisper={tmp_path / 'other_whisper.pt'} but init_from={first} was trained with" in str(err.value)
    assert "\n" not in str(err.value)
    # on the command line only what the user chose counts; the rest is the checkpoint's, and config.yaml says so
    common = ["data=demo", "trainer=cpu", "stage=adaption", f"init_from={first}", "stages.adaption.max_steps=1",
              "data.num_workers=0", "eval.asr=null", "eval.speak=null"]
    run = omni_train(*common, "model.name=Llama-3.2-1B", f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and last.startswith("omni-train: error: model.name='Llama-3.2-1B' but init_from=")
    assert "'Qwen2.5-0.5B'" in last
    run = omni_train(*common, f"hydra.run.dir={tmp_path / 'd'}", cwd=tmp_path)  # model left at its default preset
    assert run.returncode == 0, run.stderr[-2000:]
    if platform.libc_ver()[0] == "glibc" and allocator.user_choice() is None:  # a CPU run keeps freed memory
        assert "allocator: freed memory kept for reuse" in run.stdout + run.stderr
    saved = OmegaConf.load(tmp_path / "d" / "config.yaml").model
    assert saved.name == "Qwen2.5-0.5B" and saved.overrides.n_layer == 4 and saved.overrides.n_embd == 128
    assert saved.checkpoint_dir is None and saved.tokenizer_dir == str(first)
    assert saved.whisper == str(first / "whisper.pt")


def test_resume_auto_continues_an_interrupted_stage(tmp_path):
    common = [*SHORT, "stage=alignment", f"run_dir={tmp_path}", "eval.asr=null", "eval.speak=null",
              "stages.alignment.checkpoint_every=1"]
    train(config(*common))
    # as if killed after step 2 of 4: the checkpoints exist, the stage's outputs do not
    (tmp_path / "alignment" / "summary.json").unlink()
    summary = train(config(*common, "stages.alignment.max_steps=4", "resume=auto"))
    stage = summary["stages"]["alignment"]
    assert stage["resumed_from"].endswith("last.ckpt") and stage["steps"] == 4
    # a finished stage is not trained again
    again = train(config(*common, "stages.alignment.max_steps=4", "resume=auto"))
    assert again["stages"]["alignment"] == stage


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stage=adaption"], "init_from"),
        (["model.name=NoSuchModel-1B"], "model.name"),
        (["trainer=gpu"], "GPU"),
        (["data.sources.asr.root=/no/such/dir"], "/no/such/dir"),
        (["+stages.alignment.tasks.X9=1"], "X9"),
        (["data.language=klingon"], "data.language: unknown language 'klingon'"),
        (["model.mel_cache_mb=-1"], "model.mel_cache_mb=-1.0: must be >= 0"),
        (["stage=adaption", "init_from=/no/such/model"], "init_from=/no/such/model"),
        (["model.checkpoint_dir=null", "model.overrides.padded_vocab_size=256"],  # a random base: 905 tokens > 256 rows
         "model.tokenizer_dir: the tokenizer in"),
    ],
)
def test_users_mistakes_are_one_line_errors(tmp_path, overrides, message):
    cfg = config(*SHORT, f"run_dir={tmp_path}", "eval.asr=null", *overrides)
    if message == "GPU":
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has a GPU")
    with pytest.raises((ConfigError, FileNotFoundError), match=message.replace(".", r"\.")) as err:
        train(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args, says",
    [
        (["model=no-such-preset"], "Could not find 'model/no-such-preset'"),  # Hydra's own message, then the choices
        (["experiment=demo", "stages.alignment.max_stepz=3"], "Could not override 'stages.alignment.max_stepz'"),
        (["experiment=demo", "model.checkpoint_dir=null", "model.overrides.padded_vocab_size=256"],
         "omni-train: error: model.tokenizer_dir: "),
    ],
)
def test_users_mistakes_through_the_command_line(tmp_path, args, says):
    run = omni_train(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and "Traceback" not in run.stderr + run.stdout
    if says.startswith("omni-train: error:"):  # ours: the last line says it all
        assert lines[-1].startswith(says) and "905 tokens" in lines[-1] and "256 rows" in lines[-1]
    else:
        assert lines[0].endswith(says) or lines[0].startswith(says)


def test_secrets_never_reach_the_saved_config(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef-secret")
    cfg = OmegaConf.create({"logger": {"wandb": {"api_key": "plain-key-value", "project": "p"}},
                            "note": "${oc.env:WANDB_API_KEY}", "data": {"max_tokens": 5}})
    text = json.dumps(redacted(cfg))
    assert "0123456789abcdef-secret" not in text and "plain-key-value" not in text
    assert redacted(cfg)["data"]["max_tokens"] == 5 and redacted(cfg)["logger"]["wandb"]["project"] == "p"


def test_ddp_two_cpu_processes(tmp_path):
    run = omni_train(
        *SHORT, "trainer=ddp_cpu", "stage=alignment", "stages.alignment.max_steps=3", "stages.alignment.log_every=1",
        "eval.asr=null",
        "eval.speak=null", f"hydra.run.dir={tmp_path / 'run'}", "+callbacks.probe._target_=ddp_probe.Probe",
        f"+callbacks.probe.out={tmp_path / 'probe'}",
        # a NaN gradient on rank 1 only, at step 2: both ranks must skip that step, or their weights part
        "+callbacks.fault._target_=test_numeric_faults.NaNGrads", "+callbacks.fault.steps=[1]", "+callbacks.fault.rank=1",
        cwd=tmp_path, timeout=280,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["samples"] and ranks[1]["samples"]
    assert not set(ranks[0]["samples"]) & set(ranks[1]["samples"])  # disjoint shares of every source
    assert len(ranks[0]["losses"]) == 3 and ranks[0]["losses"] == ranks[1]["losses"]  # the mean over ranks
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were averaged, and the bad step skipped alike
    assert json.loads((tmp_path / "run" / "alignment" / "summary.json").read_text())["bad_steps"] == 1
    ckpts = list((tmp_path / "run" / "alignment" / "checkpoints").glob("*.ckpt"))
    assert any(c.name == "last.ckpt" for c in ckpts)
    assert (tmp_path / "run" / "alignment" / "model" / "lit_model.pth").is_file()


def test_a_finished_stage_is_freed_before_the_next_one_loads(tmp_path, monkeypatch):
    """In one stage=all process, the previous stage's model, module, trainer, optimizer and loaders
    are gone (not merely unreferenced in a cycle) when the next stage builds its model."""
    import weakref

    import lightning as L

    from omni_train import train as train_module

    alive, checked = [], []

    class Watch(L.Callback):
        def on_train_end(self, trainer, module):
            alive.extend(weakref.ref(o) for o in (module, module.model, trainer, trainer.optimizers[0],
                                                  trainer.datamodule, trainer.train_dataloader))  # fmt: skip

    real_trainer, real_model = train_module.build_trainer, train_module.build_model
    monkeypatch.setattr(train_module, "build_trainer", lambda *a, **k: _with(real_trainer(*a, **k), Watch()))

    def build_model(*args, **kwargs):
        checked.append([ref() is None for ref in alive] + [signal.getsignal(signal.SIGTERM) == sigterm])
        return real_model(*args, **kwargs)

    monkeypatch.setattr(train_module, "build_model", build_model)
    sigterm = signal.getsignal(signal.SIGTERM)  # between stages, not a finished trainer's handler
    train(config(*SHORT, "run_stages=[alignment,adaption]", f"run_dir={tmp_path}", "eval.asr=null", "eval.speak=null",
                 "logger=none"))  # fmt: skip
    assert checked == [[True], [True] * 7]  # stage 1: nothing before it; stage 2: all six of stage 1 freed


def _with(trainer, callback):
    trainer.callbacks.append(callback)
    return trainer
