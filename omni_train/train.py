"""The staged training run behind ``omni-train``. `train` is the whole recipe, read top-down.

A run directory (``run_dir``, Hydra's ``hydra.run.dir``) holds one folder per stage::

    <run>/config.yaml                  the resolved config (secrets redacted), as the run uses it
    <run>/summary.json                 stages, WER before/after, wall time
    <run>/<stage>/checkpoints/         Lightning checkpoints (last.ckpt: where resume=auto continues)
    <run>/<stage>/logs/                the loggers' files
    <run>/<stage>/model/               our format: weights, model_config.yaml, tokenizer, audio models
    <run>/<stage>/summary.json         steps, wall time, first and last loss per task, throughput

Each stage starts from the previous stage's ``model/`` (the first from ``init_from`` or the base
LLM), so a stage run alone and a stage run inside ``stage=all`` start from the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
import warnings
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from omni_train import evaluate
from omni_train.allocator import give_back_freed_memory, keep_freed_memory
from omni_train.atomic import write_json, write_text
from omni_train.audio import MelCache
from omni_train.builders import (
    build_data,
    build_model,
    build_module,
    build_source,
    build_sources,
    build_trainer,
    check_strategy,
    resolved_model,
)
from omni_train.callbacks import LossHistory, Throughput
from omni_train.checkpoints import ModelBundle
from omni_train.config import ConfigError, DataConfig, LoraConfig, ModelConfig, unknown_keys
from omni_train.data.skips import SkipReport
from omni_train.distributed import rank
from omni_train.model import OmniGPT
from omni_train.redact import redacted
from omni_train.resume import Preempted, Preemption, RngState, RunLock, resume_point
from omni_train.stopping import raise_kept
from omni_train.stages import STAGES, OmniModule
from omni_train.threads import set_threads

log = logging.getLogger("omni_train")
# the frozen Whisper encoder stays in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@dataclass
class StageResult:
    """What a finished stage hands on: its model folder (the next stage starts there) and its summary."""

    stage: str
    model_dir: Path
    summary: dict


def train(cfg: DictConfig, requested_model: Collection[str] | None = None) -> dict:
    """Run the configured stages in order; returns the run summary (also in ``<run>/summary.json``).

    Args:
        cfg: the composed config (`omni_train.config.TrainConfig`).
        requested_model: the ``model.*`` keys the user chose (`omni-train` reads them off the command
            line); a stage starting from a model folder must agree with those, and takes the rest
            from the folder. None: every key counts as chosen.
    """
    check(cfg)
    set_threads(cfg.threads, processes=_processes_per_node(cfg))
    if not _on_gpu(cfg):  # CUDA's caching allocator keeps a GPU run's tensors already
        keep_freed_memory()
    run_dir = Path(cfg.run_dir)
    with RunLock(run_dir) if rank() == 0 else nullcontext():  # one omni-train a run folder
        if cfg.resume != "auto" and rank() == 0 and (run_dir / "config.yaml").exists():  # written as a run starts
            raise ConfigError(f"{run_dir} holds a run already (its config.yaml): resume=auto continues it; to train "
                              "from the start, remove the folder or choose another hydra.run.dir")  # fmt: skip
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if cfg.resume == "auto" and summary_path.exists() else {}
        summary.setdefault("stages", {})
        start = time.perf_counter()

        previous = Path(cfg.init_from) if cfg.init_from else None
        mels = MelCache(cfg.model.mel_cache_mb) if cfg.model.mel_cache_mb else None  # for all stages
        chosen = requested_model  # checked against init_from; the run's own stages were made from this config
        named = None  # how an error names `previous` (None: init_from=...)
        for i, stage in enumerate(cfg.run_stages):
            raise_kept()  # a stop that landed where it could not act (a finalizer, a stage's end)
            if cfg.resume == "auto" and (run_dir / stage / "summary.json").exists():
                log.info("stage %s already finished in %s; skipping it", stage, run_dir / stage)
                # a resume's command may ask for another model than the one this run trained: say so
                previous, chosen = run_dir / stage / "model", _checked_on_resume(requested_model)
                named = f"this run's finished stage {stage} ({previous})"
                continue
            if previous is None and stage != "alignment":
                raise ConfigError(f"stage={stage} starts from a trained model: set init_from=<run>/alignment/model (or a Mini-Omni dir)")
            bundle = build_model(cfg.model, previous, seed=cfg.seed, run_dir=run_dir, requested=chosen, start_name=named)
            if rank() == 0 and not summary["stages"]:  # the first stage of this run: the config as it is used
                model = OmegaConf.to_object(cfg.model)
                save_config(cfg, resolved_model(model, bundle, chosen) if previous else dataclasses.asdict(model), run_dir)
            if i == 0 and cfg.eval.asr and "wer_before" not in summary and rank() == 0:
                summary["wer_before"], summary["wer_before_stage"] = held_out_wer(bundle, cfg, f"before {stage}"), stage
                summary["asr_metric"] = evaluate.scoring(cfg.data.language).metric  # wer_* hold CER for zh, ja, ...
            result = run_stage(cfg, stage, bundle, run_dir, first=not summary["stages"], mels=mels)
            del bundle  # nothing of the finished stage may outlive it: the next one loads on top
            release_memory()
            summary["stages"][stage] = result.summary
            previous, chosen = result.model_dir, ()
            if rank() == 0:
                write_json(summary_path, summary)

        raise_kept()
        if previous is not None and rank() == 0:
            if cfg.eval.asr or cfg.eval.speak:
                final_checks(cfg, build_model(cfg.model, previous, seed=cfg.seed, run_dir=run_dir, requested=()), summary)
            summary["wall_time_s"] = round(time.perf_counter() - start + summary.get("wall_time_s", 0.0), 1)
            summary["final_model"] = str(previous)
            write_json(summary_path, summary)
        return summary


def _checked_on_resume(requested_model: Collection[str] | None) -> set[str]:
    """The ``model.*`` keys a resumed run's command must agree on with a stage the run has finished:
    the ones it chose (all when None), less those only a fresh first stage reads (the base LLM's
    weights, a random Whisper's size), which the finished stage's model folder no longer holds."""
    keys = {f.name for f in dataclasses.fields(ModelConfig)} if requested_model is None else set(requested_model)
    return keys - {"checkpoint_dir", "whisper_dims"}


def run_stage(
    cfg: DictConfig, stage: str, bundle: ModelBundle, run_dir: Path, first: bool = True,
    mels: MelCache | None = None,
) -> StageResult:
    """Train one stage of `bundle`'s model and write the stage's folder (`first`: the run's first stage
    in this process, which prints the model's summary table; `mels`: the run's log-mel cache)."""
    s = cfg.stages[stage]
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    data = build_data(cfg, stage, bundle)
    module = build_module(cfg, stage, bundle, mels)
    throughput, history, skips = Throughput(), LossHistory(s.log_every), SkipReport()
    preemption = Preemption(stage_dir / "checkpoints" / "last.ckpt", s.checkpoint_every)
    trainer = build_trainer(cfg, stage, stage_dir, [RngState(), throughput, history, skips, preemption], first)
    check_strategy(trainer, module)
    ckpt_path = resume_point(stage_dir) if cfg.resume == "auto" else None
    tasks = ", ".join(f"{t} {w:g}" for t, w in s.tasks.items())
    log.info("stage %s: %d steps of %s, from %s%s", stage, s.max_steps, tasks, bundle.origin,
             f"; resuming from {ckpt_path}" if ckpt_path else "")  # fmt: skip

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's answer to a KeyboardInterrupt: here, a second Ctrl-C
        if preemption.stopped_at_once or trainer.interrupted:
            raise Preempted(signal.SIGINT, stage, trainer.global_step, run_dir, None) from None
        raise
    except RuntimeError as err:  # the checkpoint's weights do not fit the model this command built
        if ckpt_path and "Error(s) in loading state_dict" in str(err):
            first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), "")
            raise ConfigError(
                f"resume=auto: {ckpt_path} holds another model than this command's model.* asks for "
                f"({first[:200]}{' ...' if len(first) > 200 else ''}); resume with the run's own settings "
                f"({run_dir / 'config.yaml'}) or start a new hydra.run.dir"
            ) from None
        raise
    wall = time.perf_counter() - start
    if any(type(logger).__name__ == "WandbLogger" for logger in trainer.loggers):
        import wandb

        wandb.finish()  # else the next stage's WandbLogger writes into this stage's run
    if preemption.signum:
        raise Preempted(preemption.signum, stage, trainer.global_step, run_dir, preemption.path)

    trained = _trained_model(trainer, module, stage_dir)
    summary = {}
    if trained is not None:
        bundle.trained_context = max(bundle.trained_context or 0, cfg.data.max_seq_length)  # sizes exports' KV cache
        bundle.language = cfg.data.language  # omni-eval's default
        bundle.save(stage_dir / "model", trained)
        summary = {
            "stage": stage,
            "steps": trainer.global_step,
            "wall_time_s": round(wall, 1),
            "samples_per_s": throughput.samples / max(throughput.seconds, 1e-9),
            "tokens_per_s": throughput.tokens / max(throughput.seconds, 1e-9),
            "loss": history.first_last(),
            "bad_steps": module.bad_steps,  # non-finite loss or gradient: skipped
            "skipped_samples": skips.final.as_dict() if skips.final else {},  # per source: counts, reasons, examples
            "cut_samples": {s: n for s, n in sorted(skips.final.cuts.items()) if n} if skips.final else {},  # to 30 s
            "model_dir": str(stage_dir / "model"),
            "resumed_from": ckpt_path,
        }
        write_json(stage_dir / "summary.json", summary)
        log.info("stage %s: %d steps in %.0f s; model saved in %s", stage, trainer.global_step, wall, stage_dir / "model")
        if mels is not None:
            log.info("log-mel cache: %d clips, %.0f of %g MB; %d of %d clips so far came from it", len(mels),
                     mels.bytes / 2**20, cfg.model.mel_cache_mb, mels.hits, mels.hits + mels.misses)  # fmt: skip
    trainer.strategy.barrier()
    return StageResult(stage, stage_dir / "model", summary)


def release_memory() -> None:
    """Give a finished stage's memory back before the next stage loads its model.

    Lightning's trainer and module refer to each other (and hold the optimizer state, the loaders
    and the callbacks), so they are freed only by a garbage collection, which Python would run at
    some later allocation count: until then the next stage's model and optimizer come on top of
    the old ones (at Qwen2-0.5B, about 12 GB). The C allocator keeps freed blocks in its heap (a CPU
    run's on purpose, `omni_train.allocator`), so it is asked to return them too; CUDA's caching
    allocator likewise.
    """
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    give_back_freed_memory()


def final_checks(cfg: DictConfig, final: ModelBundle, summary: dict) -> None:
    """What the run's last model does: held-out WER (``eval.asr``) and a spoken answer (``eval.speak``)."""
    if cfg.eval.asr:
        summary["wer_after"] = held_out_wer(final, cfg, f"after {cfg.run_stages[-1]}", summary)
        summary["asr_metric"] = evaluate.scoring(cfg.data.language).metric
        summary["wer_after_stage"] = cfg.run_stages[-1]
    if cfg.eval.speak:
        summary["spoken_answer"] = evaluate.speak(final, cfg.eval, Path(cfg.run_dir) / "answer.wav")


def held_out_wer(bundle: ModelBundle, cfg: DictConfig, when: str, summary: dict | None = None) -> float:
    """Held-out ASR WER on ``eval.asr`` (said before it starts: it decodes every utterance)."""
    log.info("held-out ASR WER %s: transcribing %s%s ...", when, cfg.eval.asr,
             f" (first {cfg.eval.asr_max_utterances} utterances)" if cfg.eval.asr_max_utterances else "")  # fmt: skip
    start = time.perf_counter()
    result = evaluate.asr_wer(bundle, cfg.eval, language=cfg.data.language)
    metric = result["metric"]  # CER for languages written without spaces
    log.info("held-out ASR %s %s: %.1f%% on %d utterances (%.0f s)", metric.upper(), when, result[metric],
             result["n"], time.perf_counter() - start)  # fmt: skip
    if summary is not None:
        summary["asr_examples"] = result["examples"][:5]
    return result[metric]


# Numbers that optimizers, loaders and the batcher refuse deep inside a run (a traceback), or take
# without a word: key -> (the test, what it must be). None (unset) always passes.
STAGE_RANGES = {
    "max_lr": (lambda v: v > 0, "> 0"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "loss_chunk_size": (lambda v: v >= 1, ">= 1"),
    "max_tokens": (lambda v: v >= 1, ">= 1 (a batch's token budget)"),
    "max_batch_size": (lambda v: v >= 1, ">= 1"),
    "checkpoint_every": (lambda v: v >= 1, ">= 1"),
    "log_every": (lambda v: v >= 1, ">= 1"),
}
DATA_RANGES = {
    "max_tokens": (lambda v: v >= 1, ">= 1 (a batch's token budget, per rank)"),
    "max_batch_size": (lambda v: v >= 1, ">= 1"),
    "buffer_size": (lambda v: v >= 1, ">= 1"),
    "num_workers": (lambda v: v >= 0, ">= 0 (0: load in the training process)"),
    "pad_to_multiple_of": (lambda v: v >= 1, ">= 1"),
    "max_seq_length": (lambda v: v >= 1, ">= 1"),
    "max_skip_fraction": (lambda v: 0 <= v <= 1, "a share in [0, 1] (null: only count)"),
}
MODEL_RANGES = {
    "mel_cache_mb": (lambda v: v >= 0, ">= 0 (0: no cache)"),
}


def out_of_range(node: DictConfig, where: str, ranges: dict) -> list[str]:
    """One problem for each key of `node` outside its range in `ranges`."""
    return [f"{where}.{key}={node[key]}: must be {rule}" for key, (ok, rule) in ranges.items()
            if node.get(key) is not None and not ok(node[key])]  # fmt: skip


def check(cfg: DictConfig) -> None:
    """Every problem a run would hit late, reported before anything trains."""
    import torch

    problems = unknown_keys(cfg)
    for stage in cfg.run_stages:
        if stage not in STAGES:
            problems.append(f"run_stages: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        elif stage not in cfg.stages or OmegaConf.is_missing(cfg.stages[stage], "tasks"):
            problems.append(f"stages.{stage}: not defined (choose it with stage={stage} or stage=all)")
        elif cfg.stages[stage].max_steps < 1:
            problems.append(f"stages.{stage}.max_steps={cfg.stages[stage].max_steps}: a stage trains at least one step")
        elif cfg.stages[stage].keep_checkpoints < 0:
            problems.append(f"stages.{stage}.keep_checkpoints={cfg.stages[stage].keep_checkpoints}: "
                            "0 or more (0 keeps last.ckpt only)")  # fmt: skip
        else:
            problems += out_of_range(cfg.stages[stage], f"stages.{stage}", STAGE_RANGES)
    problems += out_of_range(cfg.data, "data", DATA_RANGES)
    problems += out_of_range(cfg.model, "model", MODEL_RANGES)
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"threads={cfg.threads}: at least 1 (or null: chosen from the free cores)")
    try:
        evaluate.scoring(cfg.data.language)
    except ValueError as e:
        problems.append(f"data.language: {e}")
    if cfg.model.tokenizer_dir and not Path(cfg.model.tokenizer_dir).is_dir():
        problems.append(f"model.tokenizer_dir={cfg.model.tokenizer_dir}: no such folder")
    if cfg.eval.asr and not Path(cfg.eval.asr).is_dir():  # else found after the model is built, its folder made
        problems.append(f"eval.asr={cfg.eval.asr}: no such folder (a LibriSpeech-layout split; eval.asr=null: no WER)")
    if cfg.eval.speak_recognizer and not Path(cfg.eval.speak_recognizer).is_file():
        problems.append(f"eval.speak_recognizer={cfg.eval.speak_recognizer}: no such file")
    if cfg.resume not in (None, "auto"):
        problems.append(f"resume={cfg.resume!r}: only resume=auto (or nothing) is known")
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        problems.append("trainer: this preset needs a GPU and none is visible; use trainer=cpu (or ddp_cpu)")
    if problems:
        raise ConfigError("; ".join(problems))
    for stage in cfg.run_stages:  # a wrong data path fails now, not after hours of stage 1
        build_sources(cfg, stage)
    for name, spec in cfg.data.val.items():
        build_source(name, spec, None)
    specs = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=False).items() if k != "root"}
    if cfg.data.root != DataConfig.root and "data.root" not in str(specs):
        log.warning("data.root=%s is not used: none of this config's data sources reads ${data.root} "
                    "(the demo's are bundled with the package); set each source's path instead", cfg.data.root)
    lora = OmegaConf.to_container(cfg.model.lora)
    if not lora["r"] and (unused := [f"model.lora.{k}={v}" for k, v in lora.items() if v != getattr(LoraConfig, k)]):
        log.warning("%s: not used, LoRA is off (model.lora.r=0)", ", ".join(unused))


def _on_gpu(cfg: DictConfig) -> bool:
    """Whether the trainer will run on a GPU (``accelerator`` gpu/cuda, or auto with one visible)."""
    import torch

    accelerator = cfg.trainer.get("accelerator", "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _processes_per_node(cfg: DictConfig) -> int:
    """This run's processes on one node (``trainer.devices``), which share its cores."""
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    return len(devices) if OmegaConf.is_list(devices) else 1


def save_config(cfg: DictConfig, model: dict, run_dir: Path) -> None:
    """``<run>/config.yaml``: the resolved config with ``model.*`` as loaded, secrets redacted."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    resolved.model = model
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(redacted(resolved))))


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

    state = _load_distributed_checkpoint(final)["model"]  # Lightning saves the module's state dict as "model"
    model = OmniGPT(module.model.config)
    if module.model.lora is not None:  # the shards hold the unmerged LoRA model's tensors
        model.add_lora(module.model.lora)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model
