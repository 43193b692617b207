"""What lets a stage stop anywhere and continue as if it had not: complete checkpoint files, the
RNG states, and preemption signals turned into a checkpoint at a step boundary.

A Lightning checkpoint already holds the weights, the optimizer, the LR schedule and the step. With
`OmniDataModule.state_dict` (where each loader shard of the data stream stands) and `RngState`,
``resume=auto`` continues a stage with the same batches and the same random draws, so an interrupted
run ends with the weights and loss log of an uninterrupted one.

Signals (`Preemption`): SIGTERM (schedulers, ``kill``, Kubernetes), SIGUSR1 (SLURM's warning
before the time limit: ``#SBATCH --signal=SIGUSR1@90``) and SIGINT (Ctrl-C) make the run save
``last.ckpt`` after the step in progress and stop; `omni-train` then exits with status 128 + the
signal number (143 for SIGTERM, 138 for SIGUSR1, 130 for Ctrl-C), so a wrapper sees "stopped, not
finished"; a second Ctrl-C stops at once, without saving. Under SLURM, SIGUSR1 also
requeues the job (``scontrol requeue``), as Lightning's own handler does. Lightning's handler saves
from inside the signal handler, i.e. wherever the main thread happens to be (in the middle of an
optimizer step, or of a collective the other ranks are not in); ours only sets a flag.

`RunLock` keeps a second process out of a run directory; `resume_point` finds the newest
checkpoint that can be loaded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy

from omni_train import stopping
from omni_train.atomic import atomic_write, remove, swap_in
from omni_train.config import ConfigError
from omni_train.distributed import gather_objects, rng_states, set_rng_states

log = logging.getLogger(__name__)


# ---- complete checkpoint files -------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, fsyncs it, then renames it into place.

    A write that fails (full disk, quota, a crash) leaves the previous file with that name, e.g.
    ``last.ckpt``, complete and loadable. Lightning's own writer also renames into place, but
    serialises the whole checkpoint into memory first (twice the RAM of the optimizer state) and
    never fsyncs, so after a node crash the new name can point at a file whose bytes never reached
    the disk. Remote paths (``s3://``) go to Lightning's writer. FSDP's sharded checkpoints bypass
    CheckpointIO altogether; see `AtomicFSDPStrategy`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

        atomic_write(path, write)


class AtomicFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP, whose sharded checkpoints (a folder: one file a rank, plus metadata) are
    written beside the target and swapped in once every rank has finished, instead of overwriting
    the shards of the previous ``last.ckpt`` in place (where a crash would leave a mix).

    The swap moves the old folder aside, renames the new one in, then deletes the old one; a
    crash between the two renames leaves ``.last.ckpt.old``, which `latest_checkpoint`
    then resumes from. Full (one-file) state dicts go through `AtomicCheckpointIO`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # what a process killed while writing left
        self.barrier("atomic_fsdp_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)  # torch.distributed.checkpoint fsyncs the shards
        self.barrier("atomic_fsdp_save_written")
        if self.global_rank == 0:
            swap_in(tmp, path)
        self.barrier("atomic_fsdp_save_done")


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", **kwargs):
    """Lightning's FSDP with one unit a transformer block (and sharded checkpoints, swapped in whole).

    Activation checkpointing is ``model.activation_checkpointing``, the same under every strategy;
    Lightning's own switches for it are refused here, so that there is one way to say it.
    """
    from litgpt.model import Block

    for key in ("activation_checkpointing", "activation_checkpointing_policy"):
        if key in kwargs:
            raise ConfigError(f"trainer.strategy.{key}: use model.activation_checkpointing=true (any strategy)")
    return AtomicFSDPStrategy(auto_wrap_policy={Block}, sharding_strategy=sharding_strategy,
                              state_dict_type="sharded", **kwargs)  # fmt: skip


# ---- where a stage continues ---------------------------------------------------------------------
def resume_point(stage_dir: Path) -> str | None:
    """The newest checkpoint of a stage that can be loaded, for ``resume=auto``; None: start at step 0.

    Candidates, newest first: ``checkpoints/last.ckpt``, the checkpoints Lightning writes when SLURM
    preempts a job (``hpc_ckpt_*.ckpt``), the periodic ``step-N.ckpt``, and ``.last.ckpt.old`` (left
    if a crash hit a sharded FSDP checkpoint's swap, see `AtomicFSDPStrategy`). A file that cannot be
    read (truncated, not a checkpoint) is passed over with a warning naming it; a temporary file
    left by a kill during a checkpoint's first write is removed, and a restart from step 0 says so.
    """
    ckpts = stage_dir / "checkpoints"
    found = [*ckpts.glob("last.ckpt"), *stage_dir.glob("hpc_ckpt_*.ckpt"), *ckpts.glob("step-*.ckpt"),
             *ckpts.glob(".last.ckpt.old")]  # fmt: skip
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if problem := _unreadable(path):
            log.warning("resume: skipping %s: %s", path, problem)
            continue
        return str(path)
    leftovers = list(ckpts.glob(".*.tmp-*")) if ckpts.is_dir() else []
    for tmp in leftovers:
        remove(tmp)
    if found or leftovers:
        what = ", ".join(p.name for p in found + leftovers)
        log.warning("resume: no loadable checkpoint in %s (found %s): stage %s starts again at step 0",
                    ckpts, what, stage_dir.name)  # fmt: skip
    return None


def _unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded, or None. Cheap: a one-file checkpoint is a zip archive whose
    index is at its end (a truncated file has none); a sharded one is a folder with torch.distributed's
    ``.metadata``."""
    if path.is_dir():
        return None if (path / ".metadata").is_file() else "a folder without .metadata (an incomplete sharded checkpoint)"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "not a torch checkpoint"
    except (zipfile.BadZipFile, OSError) as err:
        return f"unreadable ({err}); truncated?"
    return None


class RunLock:
    """One omni-train process a run directory: a second one is refused with one line.

    An exclusive `flock` on ``<run>/.lock``, held while the process lives: the kernel drops it when
    the process ends, however it ends, so a SIGKILLed run never blocks its own resume. The process
    holding it may take it again (``omni-train`` locks before it writes anything, `train` locks
    too); it is dropped when the last of its holders releases it.
    """

    _held: dict[Path, list[int]] = {}  # .lock path -> [descriptor, holders in this process]

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self._key: Path | None = self.path.resolve()
        if self._key in RunLock._held:
            RunLock._held[self._key][1] += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{run_dir} is in use by omni-train process {holder}: wait for it to end, or choose "
                            "another hydra.run.dir") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        RunLock._held[self._key] = [fd, 1]

    def release(self) -> None:
        if self._key is None:
            return
        held = RunLock._held[self._key]
        held[1] -= 1
        if not held[1]:
            os.close(held[0])  # closing the descriptor drops the lock
            del RunLock._held[self._key]
        self._key = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunLocked(RuntimeError):
    """Another omni-train process holds the run directory."""


# ---- random number generators --------------------------------------------------------------------
class RngState(L.Callback):
    """Saves every rank's RNG states with each checkpoint and restores them when training resumes,
    so dropout and any other random draw continue the sequence the interrupted run was on.

    They are restored in `on_train_start`, not on load: starting the loader draws from torch's RNG
    (its workers' base seed) after the checkpoint is loaded, as it did when the original run started.
    """

    def __init__(self) -> None:
        self._loaded: list[dict] | None = None

    def state_dict(self) -> dict:
        return {"ranks": gather_objects(rng_states())}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict["ranks"]

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._loaded is None:
            return
        if len(self._loaded) == trainer.world_size:
            set_rng_states(self._loaded[trainer.global_rank])
        else:
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: not restored",
                        len(self._loaded), trainer.world_size)
        self._loaded = None


# ---- preemption ----------------------------------------------------------------------------------
class Preempted(RuntimeError):
    """The run was asked to stop and stopped, after saving `saved` (None: a second Ctrl-C, no save).

    `exit_code` is 128 + the signal; `run_dir` is where ``resume=auto`` continues.
    """

    def __init__(self, signum: int, stage: str, step: int, run_dir: Path, saved: Path | None) -> None:
        what = f"saved {saved}" if saved else "did not save (stopped at once; resume=auto takes its last checkpoint)"
        super().__init__(f"{stopping.name(signum)}: stage {stage} stopped after step {step} and {what}")
        self.exit_code, self.run_dir = 128 + signum, Path(run_dir)


class Preemption(L.Callback):
    """SIGTERM, SIGUSR1 or Ctrl-C -> save `path` after the current optimizer step, then stop the fit.

    A second Ctrl-C stops at once (`stopped_at_once`), without saving. The handler only records the signal. After each optimizer step the ranks agree (one tiny
    all-reduce: a signal on any rank stops all of them, so one signalled process is enough) and all
    take part in the save. The caller checks `signum` after ``fit`` and raises `Preempted`.

    Args:
        path: the checkpoint to write, the stage's ``last.ckpt`` (where ``resume=auto`` looks).
        checkpoint_every: the ModelCheckpoint's interval; at those steps it saves ``last.ckpt``
            itself right after this callback, so this one only stops the fit.
    """

    signals = stopping.SIGNALS

    def __init__(self, path: str | Path, checkpoint_every: int) -> None:
        self.path, self.checkpoint_every = Path(path), checkpoint_every
        self.signum = 0  # the signal that stopped the run (agreed over ranks), 0: none
        self.stopped_at_once = False  # a second Ctrl-C: no save
        self._received = 0
        self._last_step = -1
        self._before: dict[int, Any] = {}

    def _handler(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            if self._received == signal.SIGINT:
                self.stopped_at_once = True
                raise KeyboardInterrupt  # Lightning shuts the fit down and exits; the caller says what happened
            print(f"\nCtrl-C: saving {self.path.name} after this step, then stopping (Ctrl-C again: stop now, "
                  "without saving)", file=sys.stderr, flush=True)  # fmt: skip
        self._received = signum

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # what a signal means outside this fit, read before Lightning installs its handlers: restoring
        # those instead would leave a finished trainer answering SIGTERM, and alive (with its model)
        self._before = {sig: signal.getsignal(sig) for sig in self.signals}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning installs its SIGTERM/SIGUSR1 handlers just before; ours replace them for this fit
        for sig in self.signals:
            signal.signal(sig, self._handler)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self._received and not self.signum and not self.stopped_at_once:  # came after the last step
            stopping.keep(self._received)  # the stage ends as planned; the run stops before the next
            if trainer.is_global_zero:
                requeue_if_warned(self._received)  # as a SIGUSR1 during the steps does
        # after the fit (the WER pass, the next stage) a signal means what it meant before
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_step = trainer.global_step
        signum = self._received
        if trainer.world_size > 1:
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=module.device), reduce_op="max"))
        if not signum:
            return
        self.signum = signum
        log.warning("received %s: saving %s after step %d and stopping",
                    signal.Signals(signum).name, self.path, trainer.global_step)
        if trainer.global_step % self.checkpoint_every != 0:
            trainer.save_checkpoint(self.path)
            for callback in trainer.checkpoint_callbacks:  # it would write last.ckpt again at train end
                callback.save_last = False
        trainer.should_stop = True
        if trainer.is_global_zero:
            requeue_if_warned(signum)


def requeue_if_warned(signum: int) -> None:
    """After SLURM's warning (SIGUSR1 in a SLURM job), put the job back in the queue (it keeps its
    id; resume=auto continues it). Any other signal, or no SLURM: nothing."""
    if signum != signal.SIGUSR1 or not SLURMEnvironment.detect():
        return
    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not re.fullmatch(r"[0-9_]+", job):
        log.warning("SIGUSR1 under SLURM, but no usable SLURM_JOB_ID (%r): not requeued", job)
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        log.warning("scontrol not found: job %s not requeued", job)
        return
    if result.returncode == 0:
        log.warning("requeued SLURM job %s", job)
    else:
        log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
