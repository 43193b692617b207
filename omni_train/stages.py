"""The three training stages of Mini-Omni as LightningModules over one shared base.

The science lives here (what trains, the loss, the schedule); devices, precision, clipping and
accumulation belong to the Trainer and its configs. Each stage differs only in its freeze rule.

A step whose loss or gradient is not finite is skipped (weights and optimizer state stay as they
were) and counted; `max_bad_steps` of them in a row stop the run with `TooManyBadSteps`, since by
then the weights, the data or the learning rate are broken, not one batch.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import lightning as L
import torch
from torch import nn

from omni_train.audio import MelCache
from omni_train.checkpoints import ModelBundle
from omni_train.config import StageConfig
from omni_train.data.collator import Batch
from omni_train.loss import LossOutput, omni_loss
from omni_train.model import OmniGPT
from omni_train.vocab import N_AUDIO_LAYERS

ENCODER_PREFIX = "encoder."
# StageConfig fields the optimizer and scheduler keep in their own state: a resume must re-apply them
OPTIMISATION = ("max_lr", "min_lr", "warmup_steps", "max_steps", "weight_decay", "betas")
log = logging.getLogger(__name__)


class TooManyBadSteps(RuntimeError):
    """`max_bad_steps` optimizer steps in a row had a non-finite loss or gradient."""


def grad_norm(parameters, sum_over_ranks=None, device=None) -> torch.Tensor | None:
    """The 2-norm of all the parameters' gradients (None if none has one).

    Under DDP every rank holds the whole (averaged) gradient. Under FSDP each rank holds a disjoint
    shard of it, so the norm of the whole is the root of the ranks' summed squares: pass
    `sum_over_ranks` (an all-reduce sum; every rank must call it, even one holding no gradient).
    """
    grads = [p.grad.detach().norm(2) for p in parameters if p.grad is not None]
    norm = torch.stack(grads).norm(2) if grads else None
    if sum_over_ranks is None:
        return norm
    square = norm.square() if norm is not None else torch.zeros((), device=device)
    return sum_over_ranks(square).sqrt()


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, max_lr: float, min_lr: float) -> float:
    """Learning rate at `step`: 1) linear warm-up to max_lr, 2) cosine decay to min_lr, 3) min_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


class OmniModule(L.LightningModule):
    """Shared base: the model step, the loss, metrics and the optimizer.

    Args:
        bundle: the model to train and its frozen Whisper encoder (None for text-only runs), with
            the tokenizer and SNAC that callbacks need to hear its answers (`ModelBundle`, made by
            `omni_train.builders.build_model`).
        cfg: the stage's settings (`StageConfig`: schedule, AdamW's betas and weight decay, loss
            weights and chunking, max_bad_steps); required, so that no schedule is made up here.
        mels: the run's log-mel cache (``model.mel_cache_mb``); None: every clip's is made anew.
    """

    stage: str = "base"

    def __init__(
        self, bundle: ModelBundle, cfg: StageConfig, mels: MelCache | None = None
    ) -> None:
        super().__init__()
        self.model: OmniGPT = bundle.model
        self.encoder: nn.Module | None = bundle.encoder
        self.mels = mels
        self.bundle = bundle
        self.cfg = cfg
        self.apply_freeze_rule()
        self.bad_steps = 0  # skipped steps of this stage, all told (kept in checkpoints)
        self._bad_in_row = 0
        self._saved_step: int | None = None  # the step of the newest checkpoint of this stage, if any
        self._bad_loss: torch.Tensor | None = None  # this rank's loss was not finite since the last step
        self._where: list[tuple[str, object]] = []  # (source, row) of the last batch, for the error message

    # ---- what trains -------------------------------------------------------------------------
    # A stage's rule names parts (`OmniGPT.part`), so it applies to a LoRA model as it is: there the
    # base LLM's weights are the part ``base``, which no rule names, and the LoRA matrices and the
    # new vocabulary rows train where the LLM and the tables would.
    def trainable(self, name: str) -> bool:
        """Whether model parameter `name` trains in this stage."""
        return self.model.part(name) != "base"

    def new_rows_only(self, name: str) -> bool:
        """Whether only the rows beyond the base vocabulary of `name` train (shared text/audio tables)."""
        return False

    def apply_freeze_rule(self) -> None:
        if self.encoder is not None:
            self.encoder.requires_grad_(False)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.trainable(name))
            if p.requires_grad and self.new_rows_only(name):
                keep = torch.zeros(p.size(0), *([1] * (p.dim() - 1)), dtype=p.dtype, device=p.device)
                keep[self.model.new_rows()] = 1
                p.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device, grad.dtype))

    # ---- the step -----------------------------------------------------------------------------
    def model_step(self, batch: Batch) -> LossOutput:
        features = None
        if batch.audio is not None:
            if self.encoder is None:
                raise ValueError("this batch has speech input but the module has no Whisper encoder")
            # the log-mel is made here, batched on the step's device, not in the loader workers
            features = self.encoder.encode_audio(batch.audio, batch.audio_samples, self.mels)  # (Ba, F, whisper width)
        with_audio = bool(batch.loss_mask[:, :N_AUDIO_LAYERS].any())  # else skip the audio side
        h_text, h_audio = self.model.hidden_states(
            batch.input_ids, features, batch.audio_lengths, batch.audio_mask, with_audio=with_audio
        )
        return omni_loss(
            self.model,
            h_text,
            h_audio,
            batch.targets,
            batch.task_ids,
            text_weight=self.cfg.text_weight,
            audio_weight=self.cfg.audio_weight,
            chunk_size=self.cfg.loss_chunk_size,
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        out = self.model_step(batch)
        self.last_metrics = out.metrics  # read by callbacks (the run summary's loss history)
        B = batch.input_ids.size(0)
        if self.logs_this_step():
            self.log_dict({f"train/{k}": v for k, v in out.metrics.items() if k != "loss"}, batch_size=B)
            self.log("train/padding", batch.padding_fraction, batch_size=B)
            # the mean over ranks (one all-reduce), so every rank logs the same number
            self.log("train/loss", out.loss, prog_bar=True, batch_size=B, sync_dist=True)
        # a non-finite loss still goes through backward (every DDP rank must run it); the step is
        # dropped in on_before_optimizer_step. No host sync here: the flag stays on the device.
        bad = ~torch.isfinite(out.loss.detach())
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad  # any micro-batch of the step
        self._where = list(zip(batch.sources, batch.rows))
        return out.loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # before clipping (Lightning clips after this hook): the norm the clip threshold is compared with
        if self._fsdp():
            reduce = self.trainer.strategy.reduce
            norm = grad_norm(self.model.parameters(), lambda t: reduce(t, reduce_op="sum"), self.device)
        else:
            norm = grad_norm(self.model.parameters())
        skipped = self._skip_step(norm)
        if skipped:
            optimizer.zero_grad(set_to_none=True)  # no gradient, no update: weights and optimizer state stay
        elif norm is not None and self.logs_this_step():
            self.log("train/grad_norm", norm, batch_size=1)
        if skipped or self.logs_this_step():  # a skipped step shows at once
            self.log("train/bad_steps", float(self.bad_steps), batch_size=1)

    def logs_this_step(self) -> bool:
        """Whether the loggers write this training step's values (every ``log_every`` steps).

        Lightning's `log` costs about 4 ms of CPU a call whether or not the value is written (it moves
        each value through its result collection): with the ten values of a step, 17% of the CPU time
        of the demo's 1024-token stage-2 steps (BENCHMARKS.md section 14), and the same milliseconds
        on every GPU step. Values no logger writes are therefore not logged at all; the progress bar's
        figures then change every ``log_every`` steps. Every rank decides alike, so the loss's
        all-reduce stays in step.
        """
        trainer = self._trainer
        # Lightning's own test (private; it writes the step's values when this is true)
        return trainer is None or trainer._logger_connector.should_update_logs

    def _skip_step(self, norm: torch.Tensor | None) -> bool:
        """Whether this optimizer step is dropped; every rank decides alike, on all ranks' losses and gradients."""
        no = torch.zeros((), dtype=torch.bool, device=self.device)
        bad_loss = self._bad_loss if self._bad_loss is not None else no
        self._bad_loss = None
        bad_grad = no
        # with fp16's GradScaler, overflowing gradients are the scaler's to skip (they are how it finds its scale)
        if norm is not None and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            bad_grad = ~torch.isfinite(norm)
        if not self.trainer.strategy.reduce((bad_loss | bad_grad).float(), reduce_op="sum").item():
            self._bad_in_row = 0
            return False
        self.bad_steps += 1
        self._bad_in_row += 1
        step = self.global_step + 1  # the step being taken, as in the checkpoints' names
        what = " and ".join(w for w, b in (("loss", bad_loss), ("gradient", bad_grad)) if b) or "loss on another rank"
        where = self._describe_batch()
        log.warning("step %d: non-finite %s, step skipped (%d so far); batch: %s", step, what, self.bad_steps, where)
        limit = self.cfg.max_bad_steps
        if limit is not None and self._bad_in_row >= limit:
            first = step - self._bad_in_row + 1
            raise TooManyBadSteps(
                f"steps {first}-{step}: {self._bad_in_row} steps in a row had a non-finite loss or gradient "
                f"(max_bad_steps={limit}); {self._what_checkpoints_hold(first - 1)}. Last batch on this rank: "
                f"{where}. Lower the learning rate or check those rows"
            )
        return True

    def _what_checkpoints_hold(self, last_good: int) -> str:
        """Which step's weights the stage's newest checkpoint holds, when steps after `last_good` were all bad."""
        saved = self._saved_step
        if saved is None:
            return "no checkpoint of this stage was written yet, so a resume starts the stage again"
        if saved >= last_good:  # saved during the streak: skipped steps change no weights
            return f"the newest checkpoint (step {saved}) holds the weights of step {last_good}, the last good one"
        lost = f"step {last_good} was" if saved + 1 == last_good else f"steps {saved + 1}-{last_good} were"
        return f"the newest checkpoint holds the weights of step {saved} ({lost} good but not saved)"

    def _describe_batch(self, n: int = 3) -> str:
        counts = Counter(src for src, _ in self._where)
        sources = ", ".join(f"{src} x{k}" for src, k in counts.most_common())
        rows = ", ".join(f"{src} row {row!r}" for src, row in self._where[:n])
        more = f", ... ({len(self._where) - n} more)" if len(self._where) > n else ""
        return f"{sources} ({rows}{more})"

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.model_step(batch)
        self.log_dict({f"val/{k}": v for k, v in out.metrics.items()}, batch_size=batch.input_ids.size(0))

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # norms, biases and the (shared) embedding tables decay to nothing; and a masked table must
            # not decay at all, or its frozen base rows would still move
            is_table = self.model.part(name) in ("tables", "new_rows")
            (no_decay if p.dim() < 2 or is_table else decay).append(p)
        c = self.cfg
        groups = [
            {"params": decay, "weight_decay": c.weight_decay, "decays": True},
            {"params": no_decay, "weight_decay": 0.0, "decays": False},
        ]
        # fused: one kernel for all tensors; the per-tensor loop cost ~19% of a CPU step with the 30k-row tables
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=c.max_lr, betas=tuple(c.betas), fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, c.warmup_steps, c.max_steps, c.max_lr, c.min_lr) / c.max_lr
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val and self._fsdp():
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"trainer.gradient_clip_algorithm={gradient_clip_algorithm}: FSDP clips by norm only")
            # each rank holds a shard of the gradients: the root FSDP module computes the norm of them all
            # (Lightning's FSDP precision refuses to clip by norm, having no reference to that module)
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- checkpoints: the frozen encoder is not saved with the trained weights ---------------------
    # (except in FSDP's sharded checkpoints: Lightning loads those itself, asking for every key of the
    # module's state dict, and the encoder's shards are a small part of a model FSDP is needed for)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if not self._sharded_checkpoints():
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(ENCODER_PREFIX)]:
                del state[key]
        checkpoint["bad_steps"] = self.bad_steps
        self._saved_step = checkpoint.get("global_step", self.global_step)
        checkpoint["optimisation"] = {k: getattr(self.cfg, k) for k in OPTIMISATION}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.bad_steps = checkpoint.get("bad_steps", 0)
        self._saved_step = checkpoint.get("global_step")
        self._resumed_from = checkpoint.get("optimisation")
        if self.encoder is not None and "state_dict" in checkpoint:  # none: FSDP has loaded its shards already
            state = checkpoint["state_dict"]
            state.update({ENCODER_PREFIX + k: v for k, v in self.encoder.state_dict().items()})

    def _fsdp(self) -> bool:
        """Whether this runs under FSDP: each rank then holds a shard of the weights and gradients."""
        from lightning.pytorch.strategies import FSDPStrategy

        return self._trainer is not None and isinstance(self._trainer.strategy, FSDPStrategy)

    def _sharded_checkpoints(self) -> bool:
        return self._fsdp() and self._trainer.strategy._state_dict_type == "sharded"

    def on_train_start(self) -> None:
        """A resumed stage trains with the settings it is given now, from the step it stopped at.

        The optimizer and scheduler come back from the checkpoint with the old learning rate and
        AdamW settings in them; a user who lowered ``max_lr`` (as the bad-steps message suggests) or
        changed the schedule means the new ones. They replace the restored ones here, with one line
        saying what changed.
        """
        old, self._resumed_from = getattr(self, "_resumed_from", None), None
        changed = {k: (old[k], getattr(self.cfg, k)) for k in OPTIMISATION if old and old.get(k) != getattr(self.cfg, k)}
        if not changed:
            return
        c, step = self.cfg, self.trainer.global_step
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.base_lrs = [c.max_lr] * len(scheduler.base_lrs)
        lr = warmup_cosine(step, c.warmup_steps, c.max_steps, c.max_lr, c.min_lr)
        optimizer = self.optimizers()
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
        for group in optimizer.param_groups:
            group.update(lr=lr, betas=tuple(c.betas))
            group["weight_decay"] = c.weight_decay if group.get("decays", group["weight_decay"] > 0) else 0.0
        log.warning("resumed stage %s at step %d with changed settings (%s); they apply from this step on",
                    self.stage, step, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))  # fmt: skip


class ModalityAlignment(OmniModule):
    """Stage 1: the LLM stays fixed; the Whisper adapter and the audio output side learn (ASR + TTS).

    `wte` and `lm_head` hold text and audio rows in one tensor, so they train with their base
    vocabulary rows masked out of the gradient: only the new specials and audio rows move. (A LoRA
    model holds its new rows apart and needs no mask; its LoRA matrices stay fixed here.)
    """

    stage = "alignment"

    def trainable(self, name: str) -> bool:
        return self.model.part(name) in ("adapter", "post_adapter", "tables", "new_rows")

    def new_rows_only(self, name: str) -> bool:
        return self.model.part(name) == "tables"


class AdaptionTraining(OmniModule):
    """Stage 2: adapters frozen; the LLM learns to answer in text (ASR, AudioQA, TextQA).

    With LoRA: its LoRA matrices and the new vocabulary rows.
    """

    stage = "adaption"

    def trainable(self, name: str) -> bool:
        return self.model.part(name) in ("llm", "tables", "lora", "new_rows")


class MultimodalFinetuning(OmniModule):
    """Stage 3: everything but the Whisper encoder trains, on all tasks including spoken answers.

    With LoRA: everything but the encoder and the base LLM's weights.
    """

    stage = "finetune"


STAGES = {cls.stage: cls for cls in (ModalityAlignment, AdaptionTraining, MultimodalFinetuning)}
