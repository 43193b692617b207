"""Running omni-train from a test: composed configs, the CLI in a subprocess, and short demo runs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from omni_train.cli.train import CONFIGS
from omni_train.config import register

TESTS = Path(__file__).parent
DEMO = TESTS.parent / "omni_train" / "demo_data"

SHORT = [  # the demo cut to seconds: 2 steps a stage, 2 held-out utterances, a bucketing buffer of
    # 32 samples (the demo's 256 decode about a second of audio a stage that 2 steps never train on)
    "experiment=demo", "stages.alignment.max_steps=2", "stages.adaption.max_steps=2",
    "stages.finetune.max_steps=2", "eval.asr_max_utterances=2", "eval.max_new_tokens=4", "data.buffer_size=32",
]  # fmt: skip

STEPS = 6
SHORT_STAGE1 = [  # the demo's stage 1 in 6 steps; about 3 batches a bucketing buffer, so resumes land inside buffers
    "experiment=demo", "stage=alignment", "eval.asr=null", "eval.speak=null", "~data.val.asr_heldout",
    f"stages.alignment.max_steps={STEPS}", "stages.alignment.log_every=1", "stages.alignment.max_tokens=1024",
    "data.buffer_size=24", "+logger.csv.flush_logs_every_n_steps=1",
    # half the demo model, so a random base: 47 MB checkpoints (mostly the 7 x 4160 audio rows of wte and lm_head,
    # and their Adam state)
    "model.checkpoint_dir=null", "model.overrides.n_layer=2", "model.overrides.n_embd=64", "model.overrides.head_size=16",
    "model.overrides.intermediate_size=128",
]  # fmt: skip


def config(*overrides: str):
    """The run config `omni-train OVERRIDES` would compose."""
    register()
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def omni_train(*args: str, cwd: Path, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """The CLI with this checkout's code and the tests' modules (for callbacks such as `Trace`), in its own
    session, so that a signal to its process group reaches nothing else."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), **(env or {})}
    cmd = [sys.executable, "-m", "omni_train.cli.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
                          start_new_session=True)  # fmt: skip


class Trace(L.Callback):
    """Appends {step, rows, loss} after every step (flushed: a killed run keeps it); at `signal_at`
    sends `signal_name` to its own process (or, with `group`, to its process group, loader workers too)."""

    def __init__(self, out: str, signal_at: int = 0, signal_name: str = "", group: bool = False) -> None:
        self.out, self.signal_at, self.signal_name, self.group = Path(out), signal_at, signal_name, group

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        record = {"step": trainer.global_step, "rank": trainer.global_rank, "loss": float(outputs["loss"]),
                  "rows": [f"{s}|{r}" for s, r in zip(batch.sources, batch.rows)]}  # fmt: skip
        with open(self.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        if trainer.global_step == self.signal_at:
            sig = getattr(signal, self.signal_name)
            if self.group:  # from another process, as a scheduler's signal comes
                kill = ["kill", f"-{sig.name.removeprefix('SIG')}", "--", f"-{os.getpgid(0)}"]
                subprocess.run(kill, check=True, start_new_session=True)
            else:
                os.kill(os.getpid(), sig)


def trace(run: Path, **kwargs) -> list[str]:
    """Overrides that add `Trace` to a run, writing `run/trace.jsonl`."""
    args = [f"+callbacks.trace._target_={__name__}.Trace", f"+callbacks.trace.out={run / 'trace.jsonl'}"]
    return args + [f"+callbacks.trace.{k}={v}" for k, v in kwargs.items()]
