"""What a user sees when a run goes wrong or is stopped: one line, the right files, nothing lost.

The fault matrix of the training run itself (the data's faults are in test_bad_data.py and
test_faults_data.py): config mistakes caught before training, one run per folder, checkpoints that
cannot be read, a resume with changed settings, Ctrl-C, and what a run prints and logs.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from runs import SHORT, config, omni_train

from omni_train.config import ConfigError
from omni_train.resume import RunLock, RunLocked, resume_point
from omni_train.stages import warmup_cosine
from omni_train.train import check, train

QUIET = ["eval.asr=null", "eval.speak=null"]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["+stages.alignment.max_step=5"], "stages.alignment.max_step: no such setting (did you mean stages.alignment.max_steps?)"),
        (["+model.checkpoint=x"], "model.checkpoint: no such setting (did you mean model.checkpoint_dir?)"),
        (["stages.alignment.max_steps=0"], "stages.alignment.max_steps=0: a stage trains at least one step"),
        (["stages.finetune.max_steps=-5"], "stages.finetune.max_steps=-5: a stage trains at least one step"),
        (["data.max_seq_length=4096"], "data.max_seq_length=4096 is longer than the model's context (512 positions"),
        # tracebacks from AdamW and the DataLoader, or a batch budget of 0 taken without a word
        (["stages.alignment.max_lr=-1"], "stages.alignment.max_lr=-1.0: must be > 0"),
        (["data.num_workers=-1", "data.max_tokens=0"], "data.max_tokens=0: must be >= 1 (a batch's token budget, "
         "per rank); data.num_workers=-1: must be >= 0"),
        # it said "holds another tokenizer than the base model"
        (["model.tokenizer_dir=/no/such/tokenizer"], "model.tokenizer_dir=/no/such/tokenizer: no such folder"),
        # found only after the model was built and the run folder made
        (["eval.asr=/no/such/heldout"], "eval.asr=/no/such/heldout: no such folder"),
    ],
)
def test_settings_that_would_be_ignored_or_fail_late_are_one_line(tmp_path, overrides, says):
    with pytest.raises(ConfigError) as err:
        train(config(*SHORT, f"run_dir={tmp_path}", *QUIET, *overrides))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_data_root_no_source_reads_is_said(tmp_path, caplog):
    """The demo's sources are bundled: `experiment=demo data.root=/data` would silently train on the demo."""
    with caplog.at_level(logging.WARNING, logger="omni_train"):
        check(config(*SHORT, f"run_dir={tmp_path}", "data.root=/nonexistent"))
    assert "data.root=/nonexistent is not used: none of this config's data sources reads ${data.root}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omni_train"):
        check(config(*SHORT, f"run_dir={tmp_path}"))
    assert "data.root" not in caplog.text


def test_one_run_a_folder_and_a_killed_run_does_not_block_its_resume(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from omni_train.resume import RunLock; "
                               f"RunLock(__import__('pathlib').Path({str(tmp_path)!r})); print('locked', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"in use by omni-train process {holder.pid}"):
            RunLock(tmp_path)
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "overrides.yaml").write_text("- the first run's record\n")
        run = omni_train(*SHORT, "stage=alignment", *QUIET, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
        assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
            f"omni-train: error: {tmp_path} is in use by omni-train process {holder.pid}: wait for it to end, or "
            "choose another hydra.run.dir")  # fmt: skip
        # the refused run wrote nothing into the first one's folder (it replaced .hydra/ before)
        assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- the first run's record\n"
    finally:
        holder.kill()  # SIGKILL: no cleanup runs
        holder.wait()
    lock = RunLock(tmp_path)  # the kernel dropped the dead process's lock
    again = RunLock(tmp_path)  # the holding process may take it again (omni-train, then train())
    again.release()
    run = omni_train(*SHORT, "stage=alignment", *QUIET, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert run.returncode == 1 and "in use by omni-train process" in run.stderr  # held until its last release
    lock.release()


def fake_checkpoint(path, step: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)


def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, caplog):
    ckpts = tmp_path / "alignment" / "checkpoints"
    fake_checkpoint(ckpts / "step-4.ckpt", 4)
    time.sleep(0.01)
    fake_checkpoint(ckpts / "last.ckpt", 6)
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING):
        assert resume_point(tmp_path / "alignment") == str(ckpts / "step-4.ckpt")
    assert f"skipping {last}" in caplog.text and "truncated" in caplog.text
    last.unlink()  # deleted: the step checkpoint is still there
    assert resume_point(tmp_path / "alignment") == str(ckpts / "step-4.ckpt")
    # a kill during the first write leaves only a temporary: it goes, and the stage says it starts again
    (ckpts / "step-4.ckpt").unlink()
    (ckpts / ".last.ckpt.tmp-1234").write_bytes(b"half")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resume_point(tmp_path / "alignment") is None
    assert not list(ckpts.iterdir()) and "starts again at step 0" in caplog.text


def test_a_resume_that_asks_for_another_model_than_its_finished_stages_is_one_line(tmp_path):
    """The run's stage 1 is done; its resume asks for another preset: stage 2 would silently train stage 1's model."""
    train(config(*SHORT, "stage=alignment", f"run_dir={tmp_path}", *QUIET))
    with pytest.raises(ConfigError) as err:
        train(config(*SHORT, "stage=all", "model=tiny-llama", f"run_dir={tmp_path}", *QUIET, "resume=auto"))
    said = str(err.value)
    assert said.startswith(f"model.name='Llama-3.2-1B' but this run's finished stage alignment ({tmp_path / 'alignment' / 'model'}) holds 'Qwen2.5-0.5B'")
    assert "\n" not in said and not (tmp_path / "adaption").exists()
    # the same model goes on (every model.* key compared: the Python API counts them all as chosen)
    summary = train(config(*SHORT, "stage=all", f"run_dir={tmp_path}", *QUIET, "resume=auto"))
    assert summary["stages"]["finetune"]["steps"] == 2


def test_a_run_folder_that_holds_a_run_is_not_trained_over_without_resume(tmp_path):
    """The same command again without resume=auto retrained from step 0 over the run's models and summary."""
    common = [*SHORT, "stage=alignment", f"run_dir={tmp_path}", *QUIET]
    train(config(*common))
    model = (tmp_path / "alignment" / "model" / "lit_model.pth").read_bytes()
    with pytest.raises(ConfigError) as err:
        train(config(*common, "seed=1"))
    assert str(err.value) == (f"{tmp_path} holds a run already (its config.yaml): resume=auto continues it; to train "
                              "from the start, remove the folder or choose another hydra.run.dir")  # fmt: skip
    assert (tmp_path / "alignment" / "model" / "lit_model.pth").read_bytes() == model


def test_a_resume_mid_stage_with_another_model_is_one_line(tmp_path):
    common = [*SHORT, "stage=alignment", f"run_dir={tmp_path}", *QUIET, "stages.alignment.checkpoint_every=1"]
    train(config(*common))
    (tmp_path / "alignment" / "summary.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(ConfigError) as err:
        train(config(*common, "model=tiny-llama", "resume=auto"))
    said = str(err.value)
    assert said.startswith(f"resume=auto: {tmp_path / 'alignment' / 'checkpoints' / 'last.ckpt'} holds another model")
    assert "Unexpected key(s) in state_dict" in said and "\n" not in said


def test_a_resume_applies_the_changed_schedule_from_its_step(tmp_path, caplog):
    common = [*SHORT, "stage=alignment", f"run_dir={tmp_path}", *QUIET, "stages.alignment.checkpoint_every=1",
              "stages.alignment.log_every=1", "stages.alignment.warmup_steps=1"]
    train(config(*common))
    (tmp_path / "alignment" / "summary.json").unlink()  # as if killed after step 2
    with caplog.at_level(logging.WARNING):
        train(config(*common, "stages.alignment.max_steps=4", "stages.alignment.max_lr=1e-3", "resume=auto"))
    assert "resumed stage alignment at step 2 with changed settings" in caplog.text
    assert "max_lr 0.0002 -> 0.001" in caplog.text and "max_steps 2 -> 4" in caplog.text
    column = "lr-AdamW/pg1"  # the matrices' group; the norms' and tables' group follows the same schedule
    lr = {int(float(r["step"])): float(r[column]) for r in csv_rows(tmp_path / "alignment") if r.get(column)}
    # steps 3 and 4 (logged at 2 and 3, 0-based) follow the new schedule, not the old max_lr's
    for step in (2, 3):
        assert lr[step] == pytest.approx(warmup_cosine(step, 1, 4, 1e-3, 2e-5), rel=1e-5), (step, lr)


def csv_rows(stage_dir):
    import csv

    rows = []
    for f in sorted(stage_dir.glob("logs/*/version_*/metrics.csv")):
        rows += list(csv.DictReader(f.open()))
    return rows


class SigintAt(L.Callback):
    """Presses Ctrl-C (SIGINT to this process) during the optimizer step that makes `step` steps."""

    def __init__(self, step: int, twice: bool = False) -> None:
        self.step, self.twice = step, twice

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)
            if self.twice:
                os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_after_the_step_and_prints_the_command_that_continues(tmp_path):
    args = [*SHORT, "stage=alignment", *QUIET, "stages.alignment.max_steps=5", "stages.alignment.checkpoint_every=100",
            "+callbacks.ctrl_c._target_=test_faults_run.SigintAt", "+callbacks.ctrl_c.step=2"]
    run = omni_train(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 130, run.stderr[-2000:]
    assert last.startswith("omni-train: Ctrl-C: stage alignment stopped after step 2 and saved ")
    assert "continue with: omni-train " in last and last.endswith(f"hydra.run.dir={tmp_path / 'run'} resume=auto")
    assert torch.load(tmp_path / "run" / "alignment" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    command = last.split("continue with: ")[1].split()
    again = omni_train(*command[1:], cwd=tmp_path)  # the printed command, as the user would paste it
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "alignment" / "summary.json").read_text())["steps"] == 5
    # twice: stop at once, without saving
    run = omni_train(*args[:-1], "+callbacks.ctrl_c.step=1", "+callbacks.ctrl_c.twice=true",
                     f"hydra.run.dir={tmp_path / 'twice'}", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 130 and "did not save" in run.stderr.strip().splitlines()[-1], run.stderr[-2000:]


class SignalOnBuild(L.Callback):
    """Sends `signal_name` to its own process when made (a stage's trainer is being built: no stage is
    training), once the file `when` exists."""

    def __init__(self, signal_name: str, when: str) -> None:
        if os.path.exists(when):
            os.kill(os.getpid(), getattr(signal, signal_name))


def test_sigterm_outside_training_is_one_line_with_what_was_kept(tmp_path):
    """Killed silently with 143 before (during the first WER pass, or between stages)."""
    run_dir = tmp_path / "run"
    args = [*SHORT, *QUIET, "+callbacks.sig._target_=test_faults_run.SignalOnBuild", "+callbacks.sig.signal_name=SIGTERM"]
    run = omni_train(*args, f"+callbacks.sig.when={run_dir / 'alignment' / 'summary.json'}",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 143 and "Traceback" not in run.stderr, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("omni-train: SIGTERM: stopped outside a stage's training steps; the finished stages "
                           "(alignment) are kept; continue with: omni-train ")  # fmt: skip
    assert last.endswith(f"hydra.run.dir={run_dir} resume=auto")
    run = omni_train(*args, f"+callbacks.sig.when={tmp_path}", f"hydra.run.dir={tmp_path / 'first'}", cwd=tmp_path)
    assert run.returncode == 143 and "nothing of this run was saved" in run.stderr.strip().splitlines()[-1]


class SignalInFinalizer(L.Callback):
    """Sends `signal_name` to its own process from its ``__del__`` (as a finished stage's trainer is
    collected), once the file `when` exists: where Python prints an exception and carries on."""

    def __init__(self, signal_name: str, when: str) -> None:
        self.signal_name, self.when = signal_name, when

    def __del__(self) -> None:
        if os.path.exists(self.when):
            os.kill(os.getpid(), getattr(signal, self.signal_name))
            time.sleep(0.1)  # the handler runs here, inside the finalizer


class SignalAtTrainEnd(L.Callback):
    """Sends `signal_name` to its own process after the stage's last step (no step left to act on it)."""

    def __init__(self, signal_name: str) -> None:
        self.signal_name = signal_name

    def on_train_end(self, trainer, module) -> None:
        os.kill(os.getpid(), getattr(signal, self.signal_name))


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_stop_that_lands_where_it_cannot_act_stops_the_run_before_the_next_stage(tmp_path, signal_name):
    """A Ctrl-C inside a finalizer was printed as 'Exception ignored' and the run went on to exit 0;
    one after a stage's last step was recorded by no one."""
    run_dir = tmp_path / "run"
    callback = ["+callbacks.sig._target_=test_faults_run.SignalInFinalizer", f"+callbacks.sig.signal_name={signal_name}",
                f"+callbacks.sig.when={run_dir / 'alignment' / 'summary.json'}"]  # fmt: skip
    run = omni_train(*SHORT, *QUIET, *callback, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    code, name = (130, "Ctrl-C") if signal_name == "SIGINT" else (143, "SIGTERM")
    assert run.returncode == code, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"omni-train: {name}: stopped outside a stage's training steps; the finished stages (alignment) are kept")
    assert not (run_dir / "adaption" / "summary.json").exists()

    run_dir = tmp_path / "end"
    callback = ["+callbacks.sig._target_=test_faults_run.SignalAtTrainEnd", f"+callbacks.sig.signal_name={signal_name}"]
    run = omni_train(*SHORT, *QUIET, "run_stages=[alignment,adaption]", *callback, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert run.returncode == code, run.stderr[-2000:]
    assert "the finished stages (alignment) are kept" in run.stderr.strip().splitlines()[-1]


def test_slurms_warning_after_a_stages_last_step_still_requeues_the_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")  # records its call
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "omni", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
    callback = ["+callbacks.sig._target_=test_faults_run.SignalAtTrainEnd", "+callbacks.sig.signal_name=SIGUSR1"]
    run = omni_train(*SHORT, *QUIET, "run_stages=[alignment,adaption]", *callback, f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, env=slurm)  # fmt: skip
    assert run.returncode == 128 + signal.SIGUSR1, run.stderr[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]


def test_a_run_explains_itself_and_a_failed_command_leaves_nothing(tmp_path):
    run = omni_train(*SHORT, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert out.count("Trainable params") == 1  # the model's table once, not once a stage
    assert "Epoch 0/" not in out  # the progress bars name their stage instead
    assert "held-out ASR WER: " in run.stdout and "before alignment ->" in run.stdout and "after finetune" in run.stdout
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage adaption: 2 steps of" in log and "held-out ASR WER before alignment" in log
    assert "run summary" in log and "`Trainer.fit` stopped: `max_steps=2` reached" in log  # Lightning's lines too
    # a mistake: one line, printed once, and no folder left for a run that never started
    bad = omni_train("experiment=demo", "model.name=NoSuchModel-1B", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    said = [line for line in (bad.stdout + bad.stderr).splitlines() if "NoSuchModel-1B" in line]
    assert bad.returncode == 1 and len(said) == 1 and said[0].startswith("omni-train: error: model.name=")
    assert not (tmp_path / "bad").exists()


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    run = omni_train("experiment=demo", f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [
        f"omni-train: error: hydra.run.dir={tmp_path / 'a_file' / 'run'}: {tmp_path / 'a_file'} is not a folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing made, not even a trial folder


def test_the_demo_writes_where_the_readme_says(tmp_path):
    run = omni_train("experiment=demo", "--cfg", "hydra", "--resolve", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert OmegaConf.create(run.stdout).hydra.run.dir.startswith("outputs/demo/")
