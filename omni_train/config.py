"""The schema of the Hydra configs in ``omni_train/configs/``: a misspelt key is an error, not a silent default.

Each dataclass is one config group (``model/``, ``data/``, ``stage/``); `TrainConfig` is the
whole job. Groups whose keys belong to another library (``trainer/``: Lightning's `Trainer`
arguments; ``logger/`` and ``callbacks/``: ``_target_`` objects) are plain dicts, checked by
the classes they build.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

DEMO_DATA = Path(__file__).parent / "demo_data"


class ConfigError(ValueError):
    """A mistake in the run's configuration; `omni-train` prints it as one line."""


@dataclass
class LoraConfig:
    """LoRA on the base LLM (litgpt's `litgpt.lora` layers): low-rank matrices train in place of its weights.

    With ``r > 0`` the base LLM's weights, including the base vocabulary's rows of ``wte`` and
    ``lm_head``, never move; each stage's rule trains the LoRA matrices where it would train the LLM,
    and the new vocabulary rows (omni specials, audio) as full rows in tensors of their own.
    """

    r: int = 0  # rank of the update B @ A of each chosen projection; 0: off (the LLM trains in full)
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.05  # on the input of the LoRA branch, while training
    # which projections of every block get an update (QLoRA, arXiv 2305.14314: all of them, to match
    # full fine-tuning), and whether the text rows of lm_head get one too
    query: bool = True
    key: bool = True
    value: bool = True
    projection: bool = True
    mlp: bool = True
    head: bool = False


@dataclass
class ModelConfig:
    """The base LLM, and the Whisper encoder and SNAC codec around it."""

    name: str = MISSING  # a litgpt config name (`litgpt.Config.from_name`), e.g. Qwen2.5-0.5B
    checkpoint_dir: Optional[str] = None  # base weights, litgpt or Hugging Face layout; None: random init
    tokenizer_dir: Optional[str] = None  # default: checkpoint_dir
    overrides: Dict[str, Any] = field(default_factory=dict)  # litgpt Config fields to change (tiny presets)
    asr_adapter: str = "llamamlp"  # Whisper adapter: llamamlp (Mini-Omni's) or mlp (one Linear)
    post_adapter: bool = False  # False: audio logits from lm_head (Mini-Omni's release); True: TTS adapter
    post_adapter_layers: int = 6
    whisper: str = "small"  # an openai-whisper name or checkpoint file, or a Hugging Face Whisper folder
    whisper_dims: Dict[str, int] = field(default_factory=dict)  # if set: a random Whisper of these ModelDimensions
    pad_to_30s: bool = False  # Mini-Omni's padded Whisper input (slower; see WhisperEncoder)
    snac: str = "hubertsiuzdak/snac_24khz"  # a SNAC directory (config.json + pytorch_model.bin) or hub name
    lora: LoraConfig = field(default_factory=LoraConfig)  # off by default (lora.r=0)
    # Training keeps each transformer block's input only and computes the block again in backward
    # (torch.utils.checkpoint): the same loss and gradients, activations of one block at a time
    # instead of all of them, for 1.2-1.3x the step time on CPU (BENCHMARKS.md 9). Any strategy.
    activation_checkpointing: bool = False
    # A clip heard again (every epoch of a small data set, and in the next stage) can reuse the log-mel
    # it got the first time, the same bits: up to this many MB of them are kept for the run, in the
    # memory of the device Whisper runs on (n_mels x 2T x 4 bytes a clip of T frames: 0.92 MB for
    # 30 s at 80 mels). 0: off (`omni_train.audio.MelCache`).
    mel_cache_mb: float = 0.0


@dataclass
class DataConfig:
    """Where samples come from and how they are batched.

    ``sources`` and ``val`` map a name to a source factory of `omni_train.data.sources`
    (``_target_``), its arguments, the ``tasks`` it feeds and an optional ``weight`` (its share
    among the sources of the same task). A stage draws each of its tasks from every source that
    lists it.
    """

    root: str = "data"  # the folder the data/ presets look in (${data.root}/LibriSpeech, ...)
    language: str = "en"  # of the speech and text: held-out scoring (normaliser; CER for zh, ja, th, ...)
    sources: Dict[str, Any] = field(default_factory=dict)
    val: Dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 16384  # per rank and step: rows x padded length
    max_batch_size: Optional[int] = None
    buffer_size: int = 1000  # samples sorted by length at a time (bucketing)
    num_workers: int = 2
    pad_to_multiple_of: int = 8
    max_seq_length: int = 2048  # longer samples are skipped and counted
    too_long: str = "cut"  # audio over 30 s: cut or drop
    max_skip_fraction: Optional[float] = 0.01  # stop once a source skips more than this share; null: only count


@dataclass
class StageConfig:
    """One training stage: its task mixture, schedule and loss weights."""

    tasks: Dict[str, float] = MISSING  # task -> share of the samples, e.g. {A1T1: 1, T1T2: 1}
    max_steps: int = MISSING
    max_lr: float = 4e-4
    min_lr: float = 4e-6
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    text_weight: float = 1.0
    audio_weight: float = 1.0
    loss_chunk_size: int = 2048
    max_tokens: Optional[int] = None  # overrides data.max_tokens for this stage
    max_batch_size: Optional[int] = None  # overrides data.max_batch_size
    val_every: Optional[int] = None  # steps between validations; None: only at the end
    checkpoint_every: int = 1000  # steps between Lightning checkpoints (and at the end)
    keep_checkpoints: int = 1  # step-N.ckpt files kept, newest first (older ones deleted); 0: last.ckpt only
    log_every: int = 10
    max_bad_steps: Optional[int] = 5  # stop after this many non-finite (skipped) steps in a row; null: never


@dataclass
class EvalConfig:
    """Checks around the run, reported in the run's summary.json."""

    asr: Optional[str] = None  # a LibriSpeech-layout folder: WER before the first and after the last stage
    asr_max_utterances: Optional[int] = None
    speak: Optional[str] = None  # a question answered in speech at the end, written to answer.wav (+ answer.png)
    speak_recognizer: Optional[str] = None  # a whisper.pt with its CTC head beside: the spoken answer's CER vs its text
    max_new_tokens: int = 64


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)  # definitions, from stage/
    run_stages: List[str] = MISSING  # which of them run, in order (set by the stage/ choice)
    trainer: Dict[str, Any] = field(default_factory=dict)  # lightning.Trainer arguments
    logger: Dict[str, Any] = field(default_factory=dict)  # name -> a _target_ logger
    callbacks: Dict[str, Any] = field(default_factory=dict)  # name -> a _target_ callback
    eval: EvalConfig = field(default_factory=EvalConfig)
    init_from: Optional[str] = None  # a model directory (ours or Mini-Omni's) to start the first stage from
    resume: Optional[str] = None  # "auto": finish the run in hydra.run.dir where it stopped
    seed: int = 1234
    threads: Optional[int] = None  # torch intra-op threads; null: OMP_NUM_THREADS if set, else the free cores
    offline: bool = False  # no network: loggers stay offline (wandb syncs later)
    run_dir: str = "."  # set to hydra's output dir by the configs


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("demo_data"):
        OmegaConf.register_new_resolver("demo_data", lambda sub="": str(DEMO_DATA / sub))


def unknown_keys(cfg: DictConfig, path: str = "") -> list[str]:
    """Keys of the schema's dataclass nodes that their class does not declare, each with a suggestion.

    Hydra refuses a misspelt key, but ``+key=value`` forces it in (``+stages.alignment.max_step=5``,
    the spelling its own error message suggests), and nothing would read it.
    """
    kind = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(kind):
        return []
    declared = {f.name: f for f in dataclasses.fields(kind)}
    problems = []
    for key in cfg.keys():
        where = f"{path}{key}"
        if key not in declared:
            close = difflib.get_close_matches(str(key), declared, n=1)
            problems.append(f"{where}: no such setting" + (f" (did you mean {path}{close[0]}?)" if close else ""))
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not OmegaConf.is_missing(cfg, key) and node._is_none() is False:
            if dataclasses.is_dataclass(OmegaConf.get_type(node)):
                problems += unknown_keys(node, f"{where}.")
            elif key == "stages":  # name -> StageConfig
                for name in node.keys():
                    problems += unknown_keys(node[name], f"{where}.{name}.")
    return problems


def plain(node: Any) -> Any:
    """An OmegaConf node as plain Python (dicts and lists), anything else unchanged."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
