"""The staged training run behind ``omni-train``: config -> model, data, stage module, Trainer.

A run directory (Hydra's ``hydra.run.dir``) holds one folder per stage::

    <run>/config.yaml                  the resolved config (secrets redacted)
    <run>/summary.json                 stages, WER before/after, wall time
    <run>/<stage>/checkpoints/         Lightning checkpoints (last.ckpt: where resume=auto continues)
    <run>/<stage>/logs/                the loggers' files
    <run>/<stage>/model/               our format: weights, model_config.yaml, tokenizer, audio models
    <run>/<stage>/summary.json         steps, wall time, first and last loss per task, throughput

Each stage starts from the previous stage's ``model/`` (or ``init_from``), so a stage run alone
and a stage run inside ``stage=all`` start from the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import whisper
from hydra.utils import instantiate
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from omegaconf import DictConfig, OmegaConf

from omni_train import evaluate
from omni_train.audio import WhisperEncoder
from omni_train.checkpoints import (
    CONFIG_FILE,
    WHISPER_FILE,
    audio_sources,
    save_audio_models,
    atomic_dir,
    load_base,
    load_checkpoint,
    omni_from_base,
    save_omni,
    validate_tokenizer,
)
from omni_train.config import plain, redacted
from omni_train.data.datamodule import OmniDataModule, SampleEncoder
from omni_train.data.skips import SkipReport
from omni_train.data.samples import Task
from omni_train.model import OmniConfig, OmniGPT
from omni_train.resume import AtomicCheckpointIO, AtomicFSDPStrategy, Preempted, Preemption, RngState
from omni_train.stages import STAGES, OmniModule

log = logging.getLogger("omni_train")
# the frozen Whisper encoder stays in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

class ConfigError(ValueError):
    """A mistake in the run's configuration; `omni-train` prints it as one line."""


# ---- the audio models ----------------------------------------------------------------------------
def make_random_whisper(dims: dict, path: Path, seed: int) -> Path:
    """A randomly initialised openai-whisper checkpoint (for tiny runs: no weights can be downloaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # every rank makes the same file; none sees half of one
    torch.save({"dims": dict(dims), "model_state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


# ---- the model -----------------------------------------------------------------------------------
def base_config(mcfg: DictConfig) -> Config:
    try:
        return Config.from_name(mcfg.name, **plain(mcfg.overrides))
    except ValueError as err:
        raise ConfigError(f"model.name={mcfg.name!r}: {err}") from None


def model_from_base(mcfg: DictConfig, whisper_width: int, seed: int) -> tuple[OmniGPT, str]:
    """A fresh OmniGPT around the configured base LLM (random when it names no checkpoint)."""
    omni = dict(
        whisper_adapter_dim=whisper_width,
        asr_adapter=mcfg.asr_adapter,
        post_adapter=mcfg.post_adapter,
        post_adapter_layers=mcfg.post_adapter_layers,
    )
    tokenizer_dir = mcfg.tokenizer_dir or mcfg.checkpoint_dir
    if tokenizer_dir is None:
        raise ConfigError("model.tokenizer_dir: a random base model needs a tokenizer folder")
    if mcfg.checkpoint_dir is not None:
        path = Path(mcfg.checkpoint_dir)
        if not path.is_dir():
            raise ConfigError(f"model.checkpoint_dir={mcfg.checkpoint_dir}: no such folder (download the base model)")
        config = base_config(mcfg)
        try:
            model, _ = load_base(path, base_config=config, seed=seed, **omni)
        except ValueError as err:  # weights or tokenizer that do not fit model.name
            raise ConfigError(f"model.checkpoint_dir={mcfg.checkpoint_dir}: {err}") from None
    else:  # a random base, e.g. the tiny demo presets
        config = base_config(mcfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            base = GPT(config)
            base.apply(base._init_weights)
        model = omni_from_base(base.state_dict(), OmniConfig.from_base(config, **omni), seed=seed)
    try:
        validate_tokenizer(tokenizer_dir, model.config.vocab.base_vocab_size)
    except ValueError as err:
        raise ConfigError(f"model.tokenizer_dir: {err}") from None
    return model, str(tokenizer_dir)


# ---- the data ------------------------------------------------------------------------------------
def _build_source(name: str, spec: Any, tasks: list[str] | None):
    spec = dict(plain(spec))
    spec.pop("weight", None)
    declared = spec.pop("tasks", None)
    if "_target_" not in spec:
        raise ConfigError(f"data source {name!r} has no _target_ (a factory of omni_train.data.sources)")
    try:
        return instantiate(spec, tasks=tasks or declared, name=name, _convert_="all")
    except Exception as err:  # Hydra wraps the factory's own error; show the cause, with the key
        cause = err.__cause__ or err
        raise ConfigError(f"data source {name!r}: {cause}") from None


def stage_sources(cfg: DictConfig, stage: str) -> tuple[dict, dict]:
    """One source per (data source, task of the stage it feeds); a task's share is split by source weight."""
    tasks = plain(cfg.stages[stage].tasks)
    for task in tasks:
        if task not in Task.__members__:
            raise ConfigError(f"stages.{stage}.tasks: unknown task {task!r} (tasks: {', '.join(Task.__members__)})")
    feeders: dict[str, list[tuple[str, Any]]] = {t: [] for t in tasks}
    for name, spec in cfg.data.sources.items():
        for task in spec.get("tasks") or []:
            if task in feeders:
                feeders[task].append((name, spec))
    missing = [t for t, f in feeders.items() if not f and tasks[t] > 0]
    if missing:
        raise ConfigError(f"stage {stage}: no data source feeds {', '.join(missing)} (data.sources.*.tasks)")
    sources, weights = {}, {}
    for task, fed in feeders.items():
        total = sum(float(spec.get("weight", 1.0)) for _, spec in fed)
        for name, spec in fed:
            key = f"{name}:{task}"
            sources[key] = _build_source(key, spec, [task])
            weights[key] = tasks[task] * float(spec.get("weight", 1.0)) / total
    return sources, weights


def build_data(cfg: DictConfig, stage: str, tokenizer: Tokenizer, model: OmniGPT, encoder: WhisperEncoder) -> OmniDataModule:
    d, s = cfg.data, cfg.stages[stage]
    train, weights = stage_sources(cfg, stage)
    val = {name: _build_source(name, spec, None) for name, spec in d.val.items()}
    sample_encoder = SampleEncoder(
        tokenizer, model.config.vocab, n_mels=encoder.n_mels, pad_to_30s=encoder.pad_to_30s,
        too_long=d.too_long, max_seq_length=d.max_seq_length,
    )
    return OmniDataModule(
        train, weights, sample_encoder, val=val,
        max_tokens=s.max_tokens or d.max_tokens, max_batch_size=s.max_batch_size or d.max_batch_size,
        buffer_size=d.buffer_size, num_workers=d.num_workers, pad_to_multiple_of=d.pad_to_multiple_of,
        seed=cfg.seed, max_skip_fraction=d.max_skip_fraction,
    )


# ---- the Trainer ---------------------------------------------------------------------------------
def fsdp_strategy(activation_checkpointing: bool = False, sharding_strategy: str = "FULL_SHARD", **kwargs):
    """Lightning's FSDP with one unit a transformer block (and sharded checkpoints, swapped in whole)."""
    from litgpt.model import Block

    return AtomicFSDPStrategy(
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type="sharded",
        **kwargs,
    )


class Throughput(L.Callback):
    """samples/s and tokens/s (real, unpadded positions) of each training step, over the whole stage too."""

    def __init__(self) -> None:
        self.samples = self.tokens = 0
        self.seconds = 0.0
        self._start = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._start
        n, t = batch.input_ids.size(0), int(batch.lengths.sum())
        self.samples, self.tokens, self.seconds = self.samples + n, self.tokens + t, self.seconds + dt
        module.log("train/samples_per_s", n / dt, batch_size=n)
        module.log("train/tokens_per_s", t / dt, batch_size=n, prog_bar=True)


class LossHistory(L.Callback):
    """Keeps the per-task losses every `every` steps, for the stage summary (first and last values)."""

    def __init__(self, every: int) -> None:
        self.every, self.rows = every, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 1 or step % self.every == 0:
            metrics = {k: float(v) for k, v in module.last_metrics.items() if k.startswith("loss")}
            self.rows.append({"step": step, **metrics})

    def state_dict(self) -> dict:  # a resumed stage's summary still starts at step 1
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def first_last(self, window: int = 5) -> dict[str, dict[str, float]]:
        """Per metric: the mean of its first and of its last `window` recorded values."""
        keys = sorted({k for r in self.rows for k in r if k != "step"})
        out = {}
        for k in keys:
            values = [r[k] for r in self.rows if k in r and math.isfinite(r[k])]
            if values:
                n = min(window, max(1, len(values) // 3))
                out[k] = {"first": sum(values[:n]) / n, "last": sum(values[-n:]) / n}
        return out


def build_trainer(cfg: DictConfig, stage: str, stage_dir: Path, extra_callbacks: list) -> L.Trainer:
    s = cfg.stages[stage]
    kwargs = plain(cfg.trainer)
    if isinstance(kwargs.get("strategy"), dict):
        kwargs["strategy"] = instantiate(kwargs["strategy"])
    loggers = [
        instantiate(spec, save_dir=str(stage_dir / "logs"), name=stage) for spec in plain(cfg.logger).values() if spec
    ]
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=stage_dir / "checkpoints", filename="step-{step}", every_n_train_steps=s.checkpoint_every,
        save_last=True, save_top_k=1, monitor="step", mode="max", auto_insert_metric_name=False,
        enable_version_counter=False,  # last.ckpt, never last-v1.ckpt: resume=auto and the preemption save use that name
    )
    callbacks = [
        checkpoints,
        L.pytorch.callbacks.LearningRateMonitor(logging_interval="step"),
        RngState(),
        *extra_callbacks,
        *[instantiate(spec) for spec in plain(cfg.callbacks).values()],
    ]
    try:
        return L.Trainer(
            **kwargs,
            max_steps=s.max_steps,
            val_check_interval=s.val_every or s.max_steps,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            log_every_n_steps=s.log_every,
            logger=loggers or False,
            callbacks=callbacks,
            default_root_dir=stage_dir,
            plugins=[*kwargs.pop("plugins", []), AtomicCheckpointIO()],  # a failed write keeps the last checkpoint
        )
    except TypeError as err:
        raise ConfigError(f"trainer: {err}") from None


def check_strategy(trainer: L.Trainer, module: OmniModule) -> None:
    """Refuse what a strategy would silently get wrong."""
    from lightning.pytorch.strategies import FSDPStrategy

    masked = [n for n, p in module.model.named_parameters() if p.requires_grad and module.new_rows_only(n)]
    if masked and isinstance(trainer.strategy, FSDPStrategy):
        # FSDP runs autograd through its flat parameters, so hooks on the original ones never fire
        raise ConfigError(
            f"trainer=fsdp: stage {module.stage} trains only the new rows of {', '.join(masked)} through a gradient "
            "mask that FSDP bypasses; run it with trainer=ddp (its LLM is frozen, so it fits without sharding)"
        )


# ---- one stage -----------------------------------------------------------------------------------
def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _trained_model(trainer: L.Trainer, module: OmniModule, stage_dir: Path) -> OmniGPT | None:
    """The trained model on rank 0 (gathered from the shards under FSDP), None on other ranks."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model if trainer.is_global_zero else None
    final = stage_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final)  # sharded: a folder, one file a rank
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    state = _load_distributed_checkpoint(final)["state_dict"]
    model = OmniGPT(module.model.config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model


def latest_checkpoint(stage_dir: Path) -> str | None:
    """The newest of ``checkpoints/last.ckpt`` and the checkpoints Lightning writes when SLURM preempts a job
    (or ``.last.ckpt.old``, if a crash hit a sharded FSDP checkpoint's swap: see `AtomicFSDPStrategy`)."""
    found = [*stage_dir.glob("checkpoints/last.ckpt"), *stage_dir.glob("hpc_ckpt_*.ckpt")]
    found = found or list(stage_dir.glob("checkpoints/.last.ckpt.old"))
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def run_stage(cfg: DictConfig, stage: str, init: dict, run_dir: Path) -> dict:
    """Train one stage from `init` (model dir or base) and write its folder; returns its summary."""
    s = cfg.stages[stage]
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    model, tokenizer_dir = init["model"].train(), init["tokenizer_dir"]  # Lightning keeps the modes it finds
    encoder = init["encoder"]
    tokenizer = Tokenizer(tokenizer_dir)
    data = build_data(cfg, stage, tokenizer, model, encoder)
    module = STAGES[stage](
        model, encoder, optimizer=partial(torch.optim.AdamW, betas=tuple(s.betas), fused=True),
        max_lr=s.max_lr, min_lr=s.min_lr, warmup_steps=s.warmup_steps, max_steps=s.max_steps,
        weight_decay=s.weight_decay, text_weight=s.text_weight, audio_weight=s.audio_weight,
        loss_chunk_size=s.loss_chunk_size, max_bad_steps=s.max_bad_steps,
    )
    throughput, history, skips = Throughput(), LossHistory(s.log_every), SkipReport()
    preemption = Preemption(stage_dir / "checkpoints" / "last.ckpt", s.checkpoint_every)
    trainer = build_trainer(cfg, stage, stage_dir, [throughput, history, skips, preemption])
    check_strategy(trainer, module)
    for callback in trainer.callbacks:  # those that decode (callbacks.SampleLogger) need the tokenizer and SNAC
        if hasattr(callback, "use_init"):
            callback.use_init(init)
    ckpt_path = latest_checkpoint(stage_dir) if cfg.resume == "auto" else None
    if ckpt_path:
        log.info("resuming stage %s from %s", stage, ckpt_path)

    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start
    if any(type(logger).__name__ == "WandbLogger" for logger in trainer.loggers):
        import wandb

        wandb.finish()  # else the next stage's WandbLogger writes into this stage's run
    if preemption.signum:
        raise Preempted(preemption.signum, stage, trainer.global_step, preemption.path)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"stage {stage} interrupted at step {trainer.global_step}; resume with resume=auto")

    trained = _trained_model(trainer, module, stage_dir)
    summary = {}
    if trained is not None:
        with atomic_dir(stage_dir / "model") as tmp:
            save_omni(trained, tmp, tokenizer_dir)
            save_audio_models(tmp, init["whisper"], init["snac"], init["pad_to_30s"])
        summary = {
            "stage": stage,
            "steps": trainer.global_step,
            "wall_time_s": round(wall, 1),
            "samples_per_s": throughput.samples / max(throughput.seconds, 1e-9),
            "tokens_per_s": throughput.tokens / max(throughput.seconds, 1e-9),
            "loss": history.first_last(),
            "bad_steps": module.bad_steps,  # non-finite loss or gradient: skipped
            "skipped_samples": skips.final.as_dict() if skips.final else {},  # per source: counts, reasons, examples
            "model_dir": str(stage_dir / "model"),
            "resumed_from": ckpt_path,
        }
        _write_json(stage_dir / "summary.json", summary)
    trainer.strategy.barrier()
    return summary


# ---- the run -------------------------------------------------------------------------------------
def init_for(cfg: DictConfig, stage: str, previous: Path | None, run_dir: Path) -> dict:
    """Where `stage` starts: the previous stage's model, `init_from`, or (stage 1 only) the base LLM.

    Returns the model, its Whisper encoder (loaded once, for training and the WER checks), the
    tokenizer folder, and the Whisper/SNAC sources to save with the stage's model.
    """
    mcfg = cfg.model
    source = previous or (Path(cfg.init_from) if cfg.init_from else None)
    if source is not None:
        if not (source / CONFIG_FILE).is_file():
            raise ConfigError(f"init_from={source}: not a model folder (no {CONFIG_FILE}); give <run>/<stage>/model")
        try:
            model, _ = load_checkpoint(source)
        except ValueError as err:  # e.g. a tokenizer that does not fit the checkpoint's vocabulary
            raise ConfigError(f"init_from={source}: {err}") from None
        audio = {"whisper": mcfg.whisper, "snac": mcfg.snac, "pad_to_30s": mcfg.pad_to_30s}
        audio.update(audio_sources(source) or {})  # what the model was trained with wins
        encoder = WhisperEncoder.from_pretrained(audio["whisper"], pad_to_30s=audio["pad_to_30s"])
        return {"model": model, "encoder": encoder, "tokenizer_dir": str(source), **audio}
    if stage != "alignment":
        raise ConfigError(f"stage={stage} starts from a trained model: set init_from=<run>/alignment/model (or a Mini-Omni dir)")
    whisper_src = mcfg.whisper
    if mcfg.whisper_dims:
        whisper_src = str(make_random_whisper(plain(mcfg.whisper_dims), run_dir / WHISPER_FILE, cfg.seed))
    encoder = WhisperEncoder.from_pretrained(whisper_src, pad_to_30s=mcfg.pad_to_30s)
    model, tokenizer_dir = model_from_base(mcfg, encoder.width, cfg.seed)  # its width is the adapter's input
    return {"model": model, "encoder": encoder, "tokenizer_dir": tokenizer_dir, "whisper": whisper_src,
            "snac": mcfg.snac, "pad_to_30s": mcfg.pad_to_30s}


def check(cfg: DictConfig) -> None:
    """Every problem a run would hit late, reported before anything trains."""
    problems = []
    for stage in cfg.run_stages:
        if stage not in STAGES:
            problems.append(f"run_stages: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        elif stage not in cfg.stages or OmegaConf.is_missing(cfg.stages[stage], "tasks"):
            problems.append(f"stages.{stage}: not defined (choose it with stage={stage} or stage=all)")
    if cfg.resume not in (None, "auto"):
        problems.append(f"resume={cfg.resume!r}: only resume=auto (or nothing) is known")
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        problems.append("trainer: this preset needs a GPU and none is visible; use trainer=cpu (or ddp_cpu)")
    if problems:
        raise ConfigError("; ".join(problems))
    for stage in cfg.run_stages:  # a wrong data path fails now, not after hours of stage 1
        stage_sources(cfg, stage)
    for name, spec in cfg.data.val.items():
        _build_source(name, spec, None)


def train(cfg: DictConfig) -> dict:
    """Run the configured stages in order; returns the run summary (also in <run_dir>/summary.json)."""
    check(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _rank() == 0:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(redacted(cfg))))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if cfg.resume == "auto" and summary_path.exists() else {}
    summary.setdefault("stages", {})
    start = time.perf_counter()

    previous: Path | None = None
    for i, stage in enumerate(cfg.run_stages):
        done = run_dir / stage / "summary.json"
        if cfg.resume == "auto" and done.exists():
            log.info("stage %s already finished in %s; skipping it", stage, run_dir / stage)
            previous = run_dir / stage / "model"
            continue
        init = init_for(cfg, stage, previous, run_dir)
        if i == 0 and cfg.eval.asr and "wer_before" not in summary and _rank() == 0:
            summary["wer_before"] = evaluate.asr_wer(init, cfg.eval)["wer"]
        summary["stages"][stage] = run_stage(cfg, stage, init, run_dir)
        previous = run_dir / stage / "model"
        if _rank() == 0:
            _write_json(summary_path, summary)

    if previous is not None and _rank() == 0:
        final = init_for(cfg, cfg.run_stages[-1], previous, run_dir)
        if cfg.eval.asr:
            result = evaluate.asr_wer(final, cfg.eval)
            summary["wer_after"] = result["wer"]
            summary["asr_examples"] = result["examples"][:5]
        if cfg.eval.speak:
            summary["spoken_answer"] = evaluate.speak(final, cfg.eval, run_dir / "answer.wav")
        summary["wall_time_s"] = round(time.perf_counter() - start + summary.get("wall_time_s", 0.0), 1)
        summary["final_model"] = str(previous)
        _write_json(summary_path, summary)
    return summary


def _rank() -> int:
    """This process's global rank, also before Lightning has started the process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):  # set by torchrun, srun, Lightning's launcher
        if var in os.environ:
            return int(os.environ[var])
    return 0
