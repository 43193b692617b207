"""Non-finite losses and gradients: the step is skipped and counted; a streak of them stops the run."""

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from runs import SHORT, config
from tiny import WHISPER, all_tasks_batch, tiny_omni
from torch.utils.data import DataLoader

from omni_train.audio import WhisperEncoder
from omni_train.checkpoints import ModelBundle
from omni_train.config import StageConfig
from omni_train.model import OmniGPT
from omni_train.stages import MultimodalFinetuning, TooManyBadSteps
from omni_train.train import train


class NaNGrads(L.Callback):
    """Makes one gradient NaN at the given (0-based) steps, after backward, on one rank or all.

    With `out`, saves the model's weights just before the first of those steps.
    """

    def __init__(self, steps, rank: int | None = None, out: str | None = None) -> None:
        self.steps, self.rank, self.out = set(steps), rank, out

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.out and trainer.global_step == min(self.steps):
            torch.save({k: v.clone() for k, v in module.model.state_dict().items()}, self.out)

    def on_after_backward(self, trainer, module) -> None:
        if trainer.global_step in self.steps and self.rank in (None, trainer.global_rank):
            grad = next(p.grad for p in module.model.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("nan")


class InfLoss(MultimodalFinetuning):
    """Adds inf to the loss at `fault_steps`: the loss is not finite, its gradients still are."""

    fault_steps: tuple = ()

    def model_step(self, batch):
        out = super().model_step(batch)
        if self.training and self.global_step in self.fault_steps:
            out.loss = out.loss + float("inf")
        return out


class States(L.Callback):
    """The weights and optimizer state at the start of every step, and at the end."""

    def __init__(self) -> None:
        self.states = []

    def _record(self, trainer, module) -> None:
        weights = {k: v.clone() for k, v in module.model.state_dict().items()}
        self.states.append((weights, copy.deepcopy(trainer.optimizers[0].state_dict()["state"])))

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._record(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._record(trainer, module)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("fault", ["gradient", "loss"])
def test_a_non_finite_step_is_skipped_and_counted(fault):
    torch.manual_seed(0)
    model = OmniGPT(tiny_omni())
    cls = InfLoss if fault == "loss" else MultimodalFinetuning
    stage = StageConfig(tasks={}, max_steps=10, max_lr=1e-2, warmup_steps=1)
    module = cls(ModelBundle(model, WhisperEncoder.from_dims(WHISPER)), stage)
    module.fault_steps = (2,)
    states = States()
    callbacks = [states] + ([NaNGrads([2])] if fault == "gradient" else [])
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, callbacks=callbacks,
    )
    trainer.fit(module, DataLoader([all_tasks_batch(model.config.vocab)] * 4, batch_size=None))

    assert trainer.global_step == 4 and module.bad_steps == 1
    assert trainer.callback_metrics["train/bad_steps"] == 1
    (w1, o1), (w2, o2), (w3, o3), (w4, _) = states.states[1:5]
    assert not same(w1, w2) and not same(o1, o2)  # a good step moves weights and optimizer state
    assert same(w2, w3) and same(o2, o3)  # the bad step 2 moved neither (no weight decay, no Adam step count)
    assert not same(w3, w4) and all(torch.isfinite(v).all() for v in w4.values())  # and training went on


def test_bad_steps_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    before = tmp_path / "before_fault.pt"
    cfg = config(
        *SHORT, "stage=alignment", f"run_dir={tmp_path / 'run'}", "eval.asr=null", "eval.speak=null",
        "stages.alignment.max_steps=5", "stages.alignment.checkpoint_every=1", "stages.alignment.max_bad_steps=2",
        "+callbacks.nan._target_=test_numeric_faults.NaNGrads", "+callbacks.nan.steps=[1,2,3]", f"+callbacks.nan.out={before}",
    )
    with pytest.raises(TooManyBadSteps) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith("steps 2-3: 2 steps in a row had a non-finite loss or gradient (max_bad_steps=2)")
    assert "\n" not in message and ("asr:A1T1" in message or "voice_assistant:T1A2" in message)  # the batch's sources
    assert " row " in message  # and rows
    assert "the newest checkpoint (step 2) holds the weights of step 1, the last good one" in message

    ckpt = torch.load(tmp_path / "run" / "alignment" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["bad_steps"] == 1  # written after skipped step 2; step 3 raised
    saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert same(saved, torch.load(before))  # the weights of the last good step
    assert not (Path(tmp_path / "run" / "alignment" / "summary.json")).exists()  # the stage did not finish


@pytest.mark.parametrize(
    "checkpoint_every, says",
    [
        (3, "the newest checkpoint holds the weights of step 3 (step 4 was good but not saved)"),
        (5, "the newest checkpoint (step 5) holds the weights of step 4, the last good one"),  # saved in the streak
        (None, "no checkpoint of this stage was written yet, so a resume starts the stage again"),
    ],
)
def test_the_stop_says_which_steps_weights_the_checkpoints_hold(tmp_path, checkpoint_every, says):
    """Steps 5-6 are bad: what the newest checkpoint holds depends on when it was written, not on the streak."""
    torch.manual_seed(0)
    model = OmniGPT(tiny_omni())
    stage = StageConfig(tasks={}, max_steps=10, max_lr=1e-3, warmup_steps=1, max_bad_steps=2)
    module = MultimodalFinetuning(ModelBundle(model, WhisperEncoder.from_dims(WHISPER)), stage)
    saves = [L.pytorch.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=checkpoint_every)] if checkpoint_every else []
    trainer = L.Trainer(
        accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=bool(saves), enable_progress_bar=False,
        enable_model_summary=False, callbacks=[NaNGrads([4, 5]), *saves],
    )  # fmt: skip
    with pytest.raises(TooManyBadSteps) as err:
        trainer.fit(module, DataLoader([all_tasks_batch(model.config.vocab)] * 10, batch_size=None))
    assert str(err.value).startswith("steps 5-6: 2 steps in a row") and says in str(err.value), str(err.value)
