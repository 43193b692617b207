"""The parts of a stage, built from the config: the model, the data, the stage module, the Trainer.

`omni_train.train` calls these in order; each takes the schema's config objects (`omni_train.config`)
and returns a ready part. A mistake the user can fix is a `ConfigError`: one line naming the key.
"""

from __future__ import annotations

import dataclasses
import filecmp
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import lightning as L
import torch
import whisper
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from omegaconf import DictConfig, OmegaConf

from omni_train.atomic import atomic_write
from omni_train.audio import MelCache, WhisperEncoder
from omni_train.callbacks import stage_progress_bar
from omni_train.checkpoints import (
    CONFIG_FILE,
    WHISPER_FILE,
    ModelBundle,
    load_base,
    omni_from_base,
    validate_tokenizer,
)
from omni_train.config import ConfigError, DataConfig, LoraConfig, ModelConfig, StageConfig, plain
from omni_train.data.datamodule import OmniDataModule, SampleEncoder
from omni_train.model import OmniConfig, OmniGPT
from omni_train.resume import AtomicCheckpointIO
from omni_train.stages import STAGES, OmniModule
from omni_train.tasks import Task

log = logging.getLogger("omni_train")


# ---- the model -----------------------------------------------------------------------------------
def build_model(
    m: ModelConfig, start: Path | None, *, seed: int, run_dir: Path, requested: Collection[str] | None = None,
    start_name: str | None = None,
) -> ModelBundle:
    """The model a stage starts from, with its Whisper encoder, tokenizer and audio models.

    The one way a model is made, whatever its origin:
    - ``start=None`` (stage 1 of a fresh run): the base LLM of ``model.*`` (its weights from
      `checkpoint_dir`, or random for the tiny presets) with new adapters and vocabulary rows;
    - ``start`` a model folder: the previous stage's ``model/``, ``init_from``, or a Mini-Omni
      checkpoint. It holds the model, its tokenizer and the Whisper/SNAC it was trained with, so the
      config's ``model.*`` must agree with it: every key in `requested` (all of them when None) is
      compared with what was loaded, and a conflict is a `ConfigError` naming both values (and the
      folder as `start_name` says, ``init_from=<start>`` by default).

    With ``model.lora.r > 0`` the model then gets fresh LoRA layers (`OmniGPT.add_lora`), whatever
    its origin: a stage starts from the previous stage's merged weights plus new LoRA matrices.
    """
    check_lora(m)
    if start is None:
        whisper_src = m.whisper
        if m.whisper_dims:
            whisper_src = str(make_random_whisper(plain(m.whisper_dims), run_dir / WHISPER_FILE, seed))
        encoder = WhisperEncoder.from_pretrained(whisper_src, pad_to_30s=m.pad_to_30s)
        model, tokenizer_dir = _from_base(m, encoder.width, seed)  # Whisper's width is the adapter's input
        base = f"the base LLM {m.name} ({m.checkpoint_dir or 'random weights'})"
        bundle = ModelBundle(model, encoder, Path(tokenizer_dir), whisper_src, m.snac, m.pad_to_30s, base)
    else:
        if not (start / CONFIG_FILE).is_file():
            raise ConfigError(f"init_from={start}: not a model folder (no {CONFIG_FILE}); give <run>/<stage>/model")
        try:  # what the model was trained with, else (a Mini-Omni checkpoint) model.*'s audio models
            bundle = ModelBundle.load(start, fallback={"whisper": m.whisper, "snac": m.snac, "pad_to_30s": m.pad_to_30s})
        except ValueError as err:  # e.g. a tokenizer that does not fit the checkpoint's vocabulary
            raise ConfigError(f"init_from={start}: {err}") from None
        check_requested(m, bundle, requested, start_name or f"init_from={start}")  # before Whisper loads
        bundle.load_encoder()
    if m.lora.r:
        lora = m.lora if isinstance(m.lora, LoraConfig) else LoraConfig(**plain(m.lora))
        bundle.model.add_lora(lora, seed=seed)
    bundle.model.activation_checkpointing = m.activation_checkpointing
    return bundle


def check_lora(m: ModelConfig) -> None:
    """Refuse LoRA settings that cannot mean what they say, every problem at once."""
    lora, problems = m.lora, []
    if lora.r < 0:
        problems.append(f"model.lora.r={lora.r}: a rank is >= 0 (0: LoRA off)")
    if lora.r and lora.alpha <= 0:
        problems.append(f"model.lora.alpha={lora.alpha}: the update is scaled by alpha / r, so alpha must be > 0")
    if not 0 <= lora.dropout < 1:
        problems.append(f"model.lora.dropout={lora.dropout}: a probability in [0, 1)")
    targets = ("query", "key", "value", "projection", "mlp", "head")
    if lora.r and not any(getattr(lora, t) for t in targets):
        problems.append(f"model.lora.r={lora.r} but none of model.lora.{{{','.join(targets)}}} is true: nothing to adapt")
    if problems:
        raise ConfigError("; ".join(problems))


def base_config(m: ModelConfig) -> Config:
    """The litgpt config ``model.name`` + ``model.overrides`` ask for."""
    try:
        return Config.from_name(m.name, **plain(m.overrides))
    except ValueError as err:
        raise ConfigError(f"model.name={m.name!r}: {err}") from None


def _from_base(m: ModelConfig, whisper_width: int, seed: int) -> tuple[OmniGPT, str]:
    omni = {"whisper_adapter_dim": whisper_width, **{key: getattr(m, key) for key in ADAPTER_KEYS}}
    tokenizer_dir = m.tokenizer_dir or m.checkpoint_dir
    if tokenizer_dir is None:
        raise ConfigError("model.tokenizer_dir: a random base model needs a tokenizer folder")
    config = base_config(m)
    if m.checkpoint_dir is not None:
        if not Path(m.checkpoint_dir).is_dir():
            raise ConfigError(f"model.checkpoint_dir={m.checkpoint_dir}: no such folder (download the base model)")
        own = [f for f in VOCABULARY_FILES if (Path(m.checkpoint_dir) / f).is_file()]
        if m.tokenizer_dir and own and not _same_tokenizer(Path(m.checkpoint_dir), Path(m.tokenizer_dir)):
            raise ConfigError(
                f"model.tokenizer_dir={m.tokenizer_dir} holds another tokenizer than the base model in "
                f"model.checkpoint_dir={m.checkpoint_dir}: its ids would mean other words (leave tokenizer_dir unset)"
            )
        try:
            model, _ = load_base(m.checkpoint_dir, base_config=config, seed=seed, **omni)
        except ValueError as err:  # weights or tokenizer that do not fit model.name
            raise ConfigError(f"model.checkpoint_dir={m.checkpoint_dir}: {err}") from None
    else:  # a random base, e.g. the tiny presets
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


# litgpt fields that say nothing about the weights: a checkpoint may differ in them from its preset
_BOOKKEEPING = {"name", "hf_config", "block_size", "vocab_size", "padding_multiple"}
ADAPTER_KEYS = ("asr_adapter", "post_adapter", "post_adapter_layers")  # model.* keys an OmniConfig holds


def check_requested(m: ModelConfig, bundle: ModelBundle, requested: Collection[str] | None, where: str) -> None:
    """Refuse a model folder that is not the model ``model.*`` asks for (only the keys in `requested`).

    ``model.checkpoint_dir`` (a base LLM's weights) means nothing for a trained model and is
    refused only when the user set it.
    """
    asked = (lambda key: True) if requested is None else (lambda key: key in requested)
    have = bundle.model.config
    conflicts = []
    if asked("name") or asked("overrides"):
        want, base = base_config(m), have.base_config
        if want.name != have.name:
            conflicts.append(f"model.name={want.name!r} but {where} holds {have.name!r}")
        fields = [f.name for f in dataclasses.fields(Config) if f.name not in _BOOKKEEPING]
        diff = [f for f in fields if getattr(want, f) != getattr(base, f)]
        if diff:
            shown = ", ".join(f"{f}={getattr(want, f)!r} (checkpoint: {getattr(base, f)!r})" for f in diff[:4])
            conflicts.append(f"model asks for {shown}{' ...' if len(diff) > 4 else ''}")
    for key in ADAPTER_KEYS:
        if asked(key) and getattr(m, key) != getattr(have, key):
            conflicts.append(f"model.{key}={getattr(m, key)!r} but {where} has {getattr(have, key)!r}")
    if asked("pad_to_30s") and m.pad_to_30s != bundle.pad_to_30s:
        conflicts.append(f"model.pad_to_30s={m.pad_to_30s} but {where} was trained with {bundle.pad_to_30s}")
    for key in ("snac", *(() if m.whisper_dims else ("whisper",))):  # whisper_dims replaces model.whisper
        if asked(key) and not _same_source(getattr(m, key), getattr(bundle, key)):
            conflicts.append(f"model.{key}={getattr(m, key)} but {where} was trained with {getattr(bundle, key)}")
    if asked("whisper_dims") and m.whisper_dims:
        conflicts.append(f"model.whisper_dims makes a new random Whisper, but {where} has its own")
    if asked("tokenizer_dir") and m.tokenizer_dir and not _same_tokenizer(Path(m.tokenizer_dir), bundle.tokenizer_dir):
        conflicts.append(f"model.tokenizer_dir={m.tokenizer_dir} holds another tokenizer than {where}")
    if requested is not None and "checkpoint_dir" in requested and m.checkpoint_dir:
        conflicts.append(f"model.checkpoint_dir={m.checkpoint_dir} is a base LLM, but the stage starts from {where}")
    if conflicts:
        raise ConfigError(
            "; ".join(conflicts) + " (start from a matching model, or leave model.* unset to use the checkpoint's)"
        )


def _same_source(a: str, b: str) -> bool:
    """Whether two Whisper/SNAC sources (hub names, files or folders) are the same model."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return _same_files(pa, pb) if pa.is_dir() else pb.is_file() and filecmp.cmp(pa, pb, shallow=False)
    return a == b


def _same_files(a: Path, b: Path, names: Collection[str] | None = None) -> bool:
    """Whether folder `b` holds every file of folder `a` (or those of `names` that `a` has) with the same bytes."""
    if not (a.is_dir() and b.is_dir()):
        return False
    files = [f for f in a.iterdir() if f.is_file() and (names is None or f.name in names)]
    return all((b / f.name).is_file() and filecmp.cmp(f, b / f.name, shallow=False) for f in files)


def _same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two folders hold the same vocabulary file (tokenizer.json or tokenizer.model)."""
    return _same_files(a, b, VOCABULARY_FILES) and any((a / f).is_file() for f in VOCABULARY_FILES)


VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model")


def make_random_whisper(dims: dict, path: Path, seed: int) -> Path:
    """A randomly initialised openai-whisper checkpoint (for tiny runs: no weights can be downloaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    # every rank makes the same file; the rename means none sees half of one
    return atomic_write(path, lambda tmp: torch.save({"dims": dict(dims), "model_state_dict": model.state_dict()}, tmp))


def resolved_model(m: ModelConfig, bundle: ModelBundle, requested: Collection[str] | None) -> dict:
    """``model.*`` of a run that starts from a model folder, as it really is: the keys the user did
    not choose (see `build_model`) are the loaded model's."""
    out = dataclasses.asdict(m)
    if requested is None:
        return out
    config = bundle.model.config
    if not {"name", "overrides"} & set(requested):
        preset = Config.from_name(config.name)
        base = config.base_config
        out["name"] = config.name
        out["overrides"] = {
            f.name: getattr(base, f.name) for f in dataclasses.fields(Config)
            if f.name not in ("name", "hf_config") and getattr(base, f.name) != getattr(preset, f.name)
        }  # fmt: skip
    for key in ADAPTER_KEYS:
        if key not in requested:
            out[key] = getattr(config, key)
    for key in ("whisper", "snac", "pad_to_30s"):
        if key not in requested:
            out[key] = getattr(bundle, key)
    if "tokenizer_dir" not in requested:
        out["tokenizer_dir"] = str(bundle.tokenizer_dir)
    if "checkpoint_dir" not in requested:
        out["checkpoint_dir"] = None
    if "whisper_dims" not in requested:
        out["whisper_dims"] = {}
    return out


# ---- the data ------------------------------------------------------------------------------------
def build_source(name: str, spec: Any, tasks: list[str] | None):
    """One `Source` from its config entry (``_target_`` + arguments + ``tasks``/``weight``/``stages``)."""
    spec = dict(plain(spec))
    spec.pop("weight", None)
    spec.pop("stages", None)
    declared = spec.pop("tasks", None)
    if "_target_" not in spec:
        raise ConfigError(f"data source {name!r} has no _target_ (a factory of omni_train.data.sources)")
    try:
        return instantiate(spec, tasks=tasks or declared, name=name, _convert_="all")
    except Exception as err:  # Hydra wraps the factory's own error; show the cause, with the key
        cause = err.__cause__ or err
        raise ConfigError(f"data source {name!r}: {cause}") from None


def build_sources(cfg: DictConfig, stage: str) -> tuple[dict, dict]:
    """One source per (data source, task of the stage it feeds); a task's share is split by source weight.

    A source feeds every stage that has one of its tasks, or only those its ``stages`` list names
    (e.g. conversations in fine-tuning only).
    """
    tasks = plain(cfg.stages[stage].tasks)
    for task in tasks:
        if task not in Task.__members__:
            raise ConfigError(f"stages.{stage}.tasks: unknown task {task!r} (tasks: {', '.join(Task.__members__)})")
    feeders: dict[str, list[tuple[str, Any]]] = {t: [] for t in tasks}
    for name, spec in cfg.data.sources.items():
        only = spec.get("stages")
        if only is not None:
            only = [only] if isinstance(only, str) else list(only)
            if unknown := [s for s in only if s not in STAGES]:
                choices = ", ".join(STAGES)
                raise ConfigError(f"data.sources.{name}.stages: unknown stage {unknown[0]!r} (stages: {choices})")
            if stage not in only:
                continue
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
            sources[key] = build_source(key, spec, [task])
            weights[key] = tasks[task] * float(spec.get("weight", 1.0)) / total
    return sources, weights


def build_data(cfg: DictConfig, stage: str, bundle: ModelBundle) -> OmniDataModule:
    """The stage's training mixture and validation sources, encoded for `bundle`'s model."""
    d: DataConfig = OmegaConf.to_object(cfg.data)
    s: StageConfig = OmegaConf.to_object(cfg.stages[stage])
    if d.max_seq_length > bundle.model.max_seq_length:  # else a traceback when the first long sample comes
        raise ConfigError(
            f"data.max_seq_length={d.max_seq_length} is longer than the model's context ({bundle.model.max_seq_length} "
            "positions, its block_size): lower data.max_seq_length, or raise model.overrides.block_size for a fresh model"
        )
    train, weights = build_sources(cfg, stage)
    val = {name: build_source(name, spec, None) for name, spec in cfg.data.val.items()}
    sample_encoder = SampleEncoder(
        Tokenizer(bundle.tokenizer_dir), bundle.model.config.vocab, too_long=d.too_long, max_seq_length=d.max_seq_length,
    )  # fmt: skip
    # a stage may have its own batch size (stage 1 of a frozen LLM fits more rows)
    d = dataclasses.replace(d, max_tokens=s.max_tokens or d.max_tokens, max_batch_size=s.max_batch_size or d.max_batch_size)
    return OmniDataModule(train, weights, sample_encoder, d, val=val, seed=cfg.seed)


# ---- the stage module and the Trainer ------------------------------------------------------------
def build_module(cfg: DictConfig, stage: str, bundle: ModelBundle, mels: MelCache | None = None) -> OmniModule:
    """The stage's LightningModule around `bundle` (`mels`: the run's log-mel cache, if any)."""
    bundle.model.train()  # Lightning keeps the modes it finds
    return STAGES[stage](bundle, OmegaConf.to_object(cfg.stages[stage]), mels)


def build_trainer(
    cfg: DictConfig, stage: str, stage_dir: Path, callbacks: list[L.Callback], first: bool = True
) -> L.Trainer:
    """Lightning's Trainer for one stage: the ``trainer`` preset, the loggers, checkpoints every
    ``checkpoint_every`` steps (``last.ckpt`` for resume=auto), a progress bar that names the stage,
    and the given callbacks. The model's summary table is printed for the `first` stage only."""
    s = cfg.stages[stage]
    kwargs = plain(cfg.trainer)
    if not first:
        kwargs.setdefault("enable_model_summary", False)
    if kwargs.get("enable_progress_bar", True):
        callbacks = [*callbacks, stage_progress_bar(stage)]
    if isinstance(kwargs.get("strategy"), dict):
        try:
            kwargs["strategy"] = instantiate(kwargs["strategy"])
        except InstantiationException as err:  # a strategy factory's ConfigError, as its own one line
            raise err.__cause__ if isinstance(err.__cause__, ConfigError) else err
    loggers = [
        instantiate(spec, save_dir=str(stage_dir / "logs"), name=stage) for spec in plain(cfg.logger).values() if spec
    ]
    # The k newest step-N.ckpt (top k by step); Lightning deletes the oldest only once the new file is
    # complete (AtomicCheckpointIO), and last.ckpt is never one of the k.
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=stage_dir / "checkpoints", filename="step-{step}", every_n_train_steps=s.checkpoint_every,
        save_last=True, save_top_k=s.keep_checkpoints, monitor="step", mode="max", auto_insert_metric_name=False,
        enable_version_counter=False,  # last.ckpt, never last-v1.ckpt: resume=auto and the preemption save use that name
    )
    callbacks = [
        checkpoints,
        *([L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")] if loggers else []),  # it refuses none
        *callbacks,
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
