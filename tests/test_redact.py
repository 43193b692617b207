"""Secrets never reach a run's files or its console: a real shortened run, then every byte is searched."""

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import runs

from omni_train.redact import MASK, ScrubbedRecords, ScrubbedStream, Secrets, mask_override, masked_argv

SECRETS = {  # one a form a secret arrives in
    "override": "wb-0verride-s3cret-value",  # logger.wandb.api_key=...
    "added": "hf_added-s3cret-value",  # +hf_token=...
    "env": "env-s3cret-value-0123",  # ${oc.env:OMNI_TEST_API_KEY}
}
SHORT = ["experiment=demo", "stage=alignment", "stages.alignment.max_steps=2", "data.buffer_size=16",
         "eval.asr=null", "eval.speak=null"]  # fmt: skip


def omni_train(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return runs.omni_train(*args, cwd=cwd, env={"WANDB_MODE": "offline", "OMNI_TEST_API_KEY": SECRETS["env"], **env})


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under root (binary ones and the targets of links included) whose bytes hold `secret`."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize(
    "form, value",
    [("override", SECRETS["override"]), ("env", "${oc.env:OMNI_TEST_API_KEY}")],  # the key as typed, or from the env
)
def test_no_secret_reaches_the_run_folder_or_the_console(tmp_path, form, value):
    run_dir = tmp_path / "run"
    done = omni_train(
        *SHORT, "logger=[csv,tensorboard,wandb]", f"logger.wandb.api_key={value}", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # every logger wrote its files, and Hydra's record of the job is there (masked, not missing)
    logs = run_dir / "alignment" / "logs"
    assert list(logs.rglob("metrics.csv")) and list(logs.rglob("events.out.tfevents.*"))
    assert list(logs.rglob("run-*.wandb")) and list(logs.rglob("output.log"))
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert f"logger.wandb.api_key={MASK}" in overrides or "${oc.env:OMNI_TEST_API_KEY}" in overrides
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "output_subdir: null" in (run_dir / ".hydra" / "hydra.yaml").read_text()  # Hydra never wrote its own
    secret = SECRETS[form]
    assert not files_holding(run_dir, secret)
    assert secret not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "args, env",
    [
        (["hf_token=" + SECRETS["added"]], {}),  # Hydra's hint repeats it: "To append to your config use +hf_token=..."
        (["hf_token=" + SECRETS["added"]], {"HYDRA_FULL_ERROR": "1"}),  # the same as Python's own traceback
        # wandb.init refuses the key mid-job: "Error executing job with overrides: [...]" and a traceback
        (["logger=[wandb]", "+logger.wandb.apikey=" + SECRETS["added"]], {}),
        # forced in with +, and no setting of ours: one line naming the key, never the value
        (["+hf_token=" + SECRETS["added"]], {}),
    ],
)
def test_a_rejected_secret_is_not_printed(tmp_path, args, env):
    done = omni_train(*SHORT, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, **env)
    assert done.returncode != 0
    assert SECRETS["added"] not in done.stdout + done.stderr
    if args[0].startswith("+hf_token"):
        assert done.stderr.strip().splitlines()[-1] == "omni-train: error: hf_token: no such setting"
    else:
        assert MASK in done.stderr  # the message is there, with the value masked
    assert not (tmp_path / "run").exists() or not files_holding(tmp_path / "run", SECRETS["added"])


def test_what_wandb_keeps_of_the_run_is_masked(monkeypatch, tmp_path):
    """A secret that ${oc.env:...} put into notes or a tag was stored in wandb's run file as typed."""
    from omni_train.loggers import WandbLogger

    monkeypatch.setenv("OMNI_TEST_API_KEY", SECRETS["env"])
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="p", api_key=SECRETS["override"],
                         notes=f"from {SECRETS['env']}", tags=[SECRETS["override"], "demo"])  # fmt: skip
    kept = repr({k: v for k, v in logger._wandb_init.items() if k != "settings"})  # what wandb.init records
    assert SECRETS["env"] not in kept and SECRETS["override"] not in kept
    assert logger._wandb_init["notes"] == f"from {MASK}" and logger._wandb_init["tags"] == [MASK, "demo"]
    assert logger._wandb_init["settings"]["api_key"] == SECRETS["override"]  # wandb still gets the key


def test_masking_by_key_and_by_value(monkeypatch):
    monkeypatch.setenv("SOME_TOKEN", "from-the-environment")
    monkeypatch.setenv("SHORT_TOKEN", "tiny")
    secrets = Secrets()
    secrets.add_overrides(["+hf_token='quoted-value-123'", "model.name=Qwen2-0.5B", "+use_auth_token=true"])
    tree = {
        "hf_token": "x", "nested": {"password": 5, "api_key": None}, "url": "https://h/?t=from-the-environment",
        "overrides": ["+hf_token=abc", "+logger.wandb.api_key=tiny", "stage=all", "seed=1234"], "size": "tiny",
    }  # fmt: skip
    assert secrets.redact(tree) == {
        "hf_token": MASK, "nested": {"password": MASK, "api_key": None}, "url": f"https://h/?t={MASK}",
        "overrides": [f"+hf_token={MASK}", f"+logger.wandb.api_key={MASK}", "stage=all", "seed=1234"], "size": "tiny",
    }  # fmt: skip
    # values under 8 characters are masked by their key only: "true" and "tiny" stay elsewhere
    assert secrets.scrub("'quoted-value-123' is true") == f"{MASK} is true"
    assert mask_override("model.name=Qwen2-0.5B") == "model.name=Qwen2-0.5B"


def test_the_command_line_as_wandb_records_it(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["omni-train", "experiment=demo", "+hf_token=abc", "--config-dir", "mine"])
    assert masked_argv() == ["omni-train", "experiment=demo", f"+hf_token={MASK}", "--config-dir", "mine"]


def test_console_and_log_records_are_masked():
    secrets = Secrets(["console-secret-1"])
    out = io.StringIO()
    stream = ScrubbedStream(out, secrets)
    assert stream.write("key: console-secret-1\n") == len("key: console-secret-1\n")
    secrets.add(["added-later-secret"])  # the config's secrets arrive after the command line's
    print("then added-later-secret", file=stream)
    assert out.getvalue() == f"key: {MASK}\nthen {MASK}\n" and stream.getvalue() == out.getvalue()

    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(ScrubbedRecords(secrets))
    logger = logging.getLogger("test_redact")
    logger.addHandler(handler)
    try:
        raise ValueError("bad value console-secret-1")
    except ValueError:
        logger.exception("got %s", "added-later-secret")
    finally:
        logger.removeHandler(handler)
    text = handler.stream.getvalue()
    assert "console-secret-1" not in text and "added-later-secret" not in text
    assert f"got {MASK}" in text and f"ValueError: bad value {MASK}" in text
