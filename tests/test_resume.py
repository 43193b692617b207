"""A stage stopped anywhere continues as if it had not: SIGKILL, SIGTERM/SIGUSR1, a failed checkpoint write.

The runs are the demo's stage 1, cut to 6 steps of small batches of a smaller model (`runs.SHORT_STAGE1`). `runs.Trace`
(added through the config, as a user's callback would be) appends each step's rows and loss to a file at once, so even a
SIGKILLed run leaves its log, and can send a signal to its own process at a chosen step.
"""

import errno
import io
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from litgpt.tokenizer import Tokenizer
from runs import DEMO, SHORT_STAGE1, STEPS, config, omni_train, trace

from omni_train.atomic import DiskFull
from omni_train.config import ConfigError, DataConfig
from omni_train.data import sources
from omni_train.data.datamodule import OmniDataModule, SampleEncoder
from omni_train.resume import AtomicFSDPStrategy, RngState
from omni_train.train import train
from omni_train.vocab import Vocab


def steps(run: Path) -> dict[int, dict]:
    """Step -> its record; a step trained again after a resume replaces the lost one."""
    return {r["step"]: r for r in map(json.loads, (run / "trace.jsonl").read_text().splitlines())}


def csv_losses(run: Path) -> dict[int, float]:
    """train/loss per step from the CSV logger, over all its versions (each start writes a new one)."""
    import csv

    out = {}
    for path in sorted((run / "alignment" / "logs").rglob("metrics.csv")):  # version_0, version_1, ...
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "alignment" / "model" / "lit_model.pth", weights_only=True)


def saved_step(path: Path) -> int:
    return torch.load(path, weights_only=False, map_location="cpu")["global_step"]


def assert_same_run(run: Path, reference: Path) -> None:
    got, want = steps(run), steps(reference)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    assert [got[s]["rows"] for s in want] == [want[s]["rows"] for s in want]  # the same batches, in order
    assert [got[s]["loss"] for s in want] == pytest.approx([want[s]["loss"] for s in want], rel=1e-5)
    assert csv_losses(run) == pytest.approx(csv_losses(reference), rel=1e-5)
    a, b = weights(run), weights(reference)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("reference")
    train(config(*SHORT_STAGE1, f"run_dir={run}", f"stages.alignment.checkpoint_every={STEPS}", *trace(run)))
    want = steps(run)
    # a restart from the stream's beginning would train step 3 on step 1's rows, and the losses move
    assert want[3]["rows"] != want[1]["rows"] and len({r["loss"] for r in want.values()}) == STEPS
    assert len(csv_losses(run)) == STEPS
    return run


def test_sigkill_then_resume_auto_matches_the_uninterrupted_run(tmp_path, reference):
    run = tmp_path / "run"
    killed = omni_train(*SHORT_STAGE1, f"hydra.run.dir={run}", "stages.alignment.checkpoint_every=2",
                        *trace(run, signal_at=3, signal_name="SIGKILL"), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert saved_step(run / "alignment" / "checkpoints" / "last.ckpt") == 2  # step 3 was trained, then lost
    assert not (run / "alignment" / "model").exists()

    summary = train(config(*SHORT_STAGE1, f"run_dir={run}", "stages.alignment.checkpoint_every=2", "resume=auto",
                           *trace(run)))
    assert summary["stages"]["alignment"]["resumed_from"].endswith("last.ckpt")
    assert len((run / "trace.jsonl").read_text().splitlines()) == 3 + STEPS - 2  # steps 1-3, then 3-6 again
    assert_same_run(run, reference)


def test_sigusr1_and_sigterm_save_stop_and_resume(tmp_path, reference):
    run, bin_dir = tmp_path / "run", tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # SLURM's requeue command, as a stub that records its arguments
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "omni", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    every = "stages.alignment.checkpoint_every=4"  # step 2: the signal handler saves; step 4: ModelCheckpoint does

    # SLURM's warning before the time limit: save after the step in progress, requeue, exit 128 + 10
    first = omni_train(*SHORT_STAGE1, f"hydra.run.dir={run}", every, *trace(run, signal_at=1, signal_name="SIGUSR1"),
                       cwd=tmp_path, env=slurm)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert "SIGUSR1: stage alignment stopped after step 2" in first.stderr and "resume=auto" in first.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert saved_step(run / "alignment" / "checkpoints" / "last.ckpt") == 2
    assert not list(run.rglob("hpc_ckpt_*.ckpt"))  # Lightning's own SIGUSR1 handler did not run

    # SIGTERM to the whole process group, the loader worker included: it must not die of it
    second = omni_train(*SHORT_STAGE1, f"hydra.run.dir={run}", every, "resume=auto", "data.num_workers=1",
                        *trace(run, signal_at=3, signal_name="SIGTERM", group=True), cwd=tmp_path)
    assert second.returncode == 128 + signal.SIGTERM, second.stderr[-3000:]
    assert "SIGTERM: stage alignment stopped after step 4" in second.stderr
    assert saved_step(run / "alignment" / "checkpoints" / "last.ckpt") == 4

    train(config(*SHORT_STAGE1, f"run_dir={run}", every, "resume=auto", *trace(run)))
    assert_same_run(run, reference)


def test_a_failed_checkpoint_write_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    common = [*SHORT_STAGE1, f"run_dir={run}", "stages.alignment.max_steps=4", "stages.alignment.checkpoint_every=2"]
    real_save, writes = torch.save, []

    def disk_full_on_second_last_ckpt(obj, f, *args, **kwargs):
        if "last.ckpt" in str(getattr(f, "name", "")):
            writes.append(f.name)
            if len(writes) == 2:  # step 4: write half the bytes, then fail as a full disk does
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_second_last_ckpt)
    with pytest.raises(OSError, match="No space left") as failed:
        train(config(*common))
    assert isinstance(failed.value, DiskFull) and "MiB free" in str(failed.value)
    assert "the previous last.ckpt, if any, is intact" in str(failed.value)
    last = run / "alignment" / "checkpoints" / "last.ckpt"
    assert saved_step(last) == 2  # the complete one from step 2
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]  # no half-written leftovers
    monkeypatch.setattr(torch, "save", real_save)
    summary = train(config(*common, "resume=auto"))
    assert summary["stages"]["alignment"]["steps"] == 4


def test_a_full_disk_is_said_whatever_the_writer_raises(tmp_path, monkeypatch):
    """torch.save on a really full disk raises "RuntimeError: ... unexpected pos ...", not ENOSPC (seen on a 3 MB tmpfs)."""
    from types import SimpleNamespace

    from omni_train import atomic

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old")
    free = {"bytes": 2**20}
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=free["bytes"]))

    def fill(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 29696 vs 29590")

    with pytest.raises(DiskFull) as failed:
        atomic.atomic_write(target, fill)
    assert str(failed.value) == (f"No space left on device writing {target} (1 MiB free on its disk); the previous "
                                 "last.ckpt, if any, is intact")  # fmt: skip
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    free["bytes"] = 100 * 2**30  # the same error with space left is the writer's own
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic.atomic_write(target, fill)


def test_a_sharded_fsdp_checkpoint_is_swapped_in_whole(tmp_path, monkeypatch):
    """FSDP needs GPUs; its writer (a folder of shards) is replaced by one that can fail half-way."""
    from lightning.pytorch.strategies import FSDPStrategy

    def write_shards(self, checkpoint, path, storage_options=None):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "shard-0").write_text(checkpoint["v"])
        if checkpoint.get("fail"):
            raise OSError(errno.ENOSPC, "No space left on device")
        (Path(path) / ".metadata").write_text(checkpoint["v"])

    monkeypatch.setattr(FSDPStrategy, "save_checkpoint", write_shards)
    strategy, last = AtomicFSDPStrategy(state_dict_type="sharded"), tmp_path / "last.ckpt"
    shards = lambda: {p.name: p.read_text() for p in last.iterdir()}
    strategy.save_checkpoint({"v": "1"}, last)
    with pytest.raises(OSError, match="No space left"):
        strategy.save_checkpoint({"v": "2", "fail": True}, last)
    assert shards() == {"shard-0": "1", ".metadata": "1"}  # in place, shard-0 would now be step 2's
    strategy.save_checkpoint({"v": "3"}, last)
    assert shards() == {"shard-0": "3", ".metadata": "3"} and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---- the data stream alone --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_data():
    tokenizer = Tokenizer(DEMO / "tokenizer")
    encoder = SampleEncoder(tokenizer, Vocab(1024), max_seq_length=512)
    train_sources = {"asr": sources.librispeech(DEMO / "asr" / "train", name="asr"),
                     "qa": sources.open_orca(DEMO / "textqa.jsonl", name="qa")}
    return train_sources, encoder


def datamodule(demo_data, workers: int) -> OmniDataModule:
    train_sources, encoder = demo_data
    cfg = DataConfig(max_tokens=600, buffer_size=12, num_workers=workers)
    return OmniDataModule(train_sources, {"asr": 2.0, "qa": 1.0}, encoder, cfg, seed=3)


def rows(batch) -> list[str]:
    return [f"{s}|{r}" for s, r in zip(batch.sources, batch.rows)]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_stream_continues_after_the_last_trained_batch(demo_data, workers, monkeypatch):
    import omni_train.data.datamodule as dm_module

    taken, more, decoded = 7, 5, []
    real = dm_module.load_audio
    monkeypatch.setattr(dm_module, "load_audio", lambda *a, **k: decoded.append(1) or real(*a, **k))
    dm = datamodule(demo_data, workers)
    it = iter(dm.train_dataloader())
    first = [rows(dm.on_before_batch_transfer(next(it), 0)) for _ in range(taken)]  # what the trainer took
    state = torch.load(io.BytesIO(_saved(dm.state_dict())), weights_only=True)  # as a checkpoint holds it
    expected = [rows(next(it)) for _ in range(more)]
    decoded_before, decoded[:] = len(decoded), []

    resumed = datamodule(demo_data, workers)
    resumed.load_state_dict(state)
    it = iter(resumed.train_dataloader())
    got = [rows(next(it))]
    if workers == 0:  # (workers decode in their own processes) one buffer's audio, not the skipped batches'
        assert 0 < len(decoded) <= 12 < decoded_before
    got += [rows(next(it)) for _ in range(more - 1)]
    assert got == expected
    it = iter(datamodule(demo_data, workers).train_dataloader())
    fresh = [rows(next(it)) for _ in range(more)]
    assert fresh != expected and fresh == first[:more]  # without the state: a replay from the start


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_rng_states_survive_a_checkpoint():
    saved = torch.load(io.BytesIO(_saved(RngState().state_dict())), weights_only=True)
    draws = (torch.rand(3), np.random.rand(3), random.random())
    callback = RngState()
    callback.load_state_dict(saved)
    torch.manual_seed(123)  # whatever happened in between
    np.random.seed(123)
    random.seed(123)

    class Trainer:
        world_size, global_rank = 1, 0

    callback.on_train_start(Trainer(), None)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_only_the_newest_step_checkpoints_are_kept_across_a_resume(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "alignment" / "checkpoints"
    common = [*SHORT_STAGE1, f"run_dir={run}", "stages.alignment.checkpoint_every=1", "stages.alignment.keep_checkpoints=2"]
    train(config(*common, "stages.alignment.max_steps=3"))
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step-2.ckpt", "step-3.ckpt"]
    (run / "alignment" / "summary.json").unlink()  # as if it had stopped at step 3 of 5
    train(config(*common, "stages.alignment.max_steps=5", "resume=auto"))
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step-4.ckpt", "step-5.ckpt"]
    assert saved_step(ckpts / "last.ckpt") == saved_step(ckpts / "step-5.ckpt") == 5


def test_keep_checkpoints_0_keeps_last_ckpt_only(tmp_path):
    run = tmp_path / "run"
    train(config(*SHORT_STAGE1, f"run_dir={run}", "stages.alignment.max_steps=2", "stages.alignment.checkpoint_every=1",
                 "stages.alignment.keep_checkpoints=0"))  # fmt: skip
    assert [p.name for p in (run / "alignment" / "checkpoints").iterdir()] == ["last.ckpt"]
    with pytest.raises(ConfigError, match="stages.alignment.keep_checkpoints=-1"):
        train(config(*SHORT_STAGE1, f"run_dir={run}", "stages.alignment.keep_checkpoints=-1"))
