"""Checkpoints: base text LLMs in, our own format in and out, Mini-Omni's format in and out.

Three on-disk layouts meet here:

- a base text LLM, as a litgpt checkpoint directory (``lit_model.pth`` + ``model_config.yaml``) or
  a Hugging Face one (``config.json`` + safetensors / ``pytorch_model.bin``), converted with
  litgpt's own ``copy_weights_*`` functions (`load_base`);
- our format: ``lit_model.pth`` (the flat `OmniGPT` state dict), ``model_config.yaml`` (every
  `OmniConfig` field) and the tokenizer files (`save_omni`, `load_omni`);
- Mini-Omni's format, which its inference code loads with litgpt 0.4: the same directory, but the
  fused qkv is named ``attn.attn`` and interleaved per query group, and the yaml holds only the
  fields its 0.4 ``Config`` accepts (`export_mini_omni`, `import_mini_omni`).

Every directory write goes to a temporary directory beside the target first, so a crash never
leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.scripts import convert_hf_checkpoint as hf_convert
from litgpt.scripts import convert_lit_checkpoint as lit_convert
from litgpt.tokenizer import Tokenizer
from litgpt.utils import lazy_load

from omni_train.atomic import atomic_dir
from omni_train.audio import WhisperEncoder
from omni_train.model import OmniConfig, OmniGPT

WEIGHTS_FILE = "lit_model.pth"
CONFIG_FILE = "model_config.yaml"
# What litgpt's and Mini-Omni's `Tokenizer` read (plus the HF side files some tokenizers need).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
)

# The fields of Mini-Omni's litgpt-0.4 `Config` (gpt-omni/mini-omni, litgpt/config.py). Its
# `from_file` does `Config(**yaml)`, so a yaml key outside this list crashes Mini-Omni's loader.
MINI_OMNI_FIELDS = (
    "name", "hf_config", "scale_embeddings", "block_size", "vocab_size", "padding_multiple",
    "padded_vocab_size", "n_layer", "n_head", "head_size", "n_embd", "rotary_percentage",
    "parallel_residual", "bias", "lm_head_bias", "n_query_groups", "shared_attention_norm",
    "norm_class_name", "norm_eps", "mlp_class_name", "gelu_approximate", "intermediate_size",
    "rope_condense_ratio", "rope_base", "n_expert", "n_expert_per_token", "add_qkv_bias",
    "prompt_vocab_size", "attn_dropout", "pos_type", "force_align", "use_pretrain_phoneme_emb",
    "tie_word_embeddings", "text_vocab_size", "cat_audio_vocab_size", "audio_vocab_size",
    "whisper_adapter_dim", "post_adapter", "post_adapter_layers", "asr_adapter",
)  # fmt: skip
# 0.4-only fields that Mini-Omni's `GPT` never reads (`tie_word_embeddings` is read, see below).
_MINI_OMNI_UNUSED = ("prompt_vocab_size", "attn_dropout", "pos_type", "force_align", "use_pretrain_phoneme_emb")
# Fields with the same name and meaning in both versions.
_SHARED_FIELDS = tuple(
    f for f in MINI_OMNI_FIELDS if f not in (*_MINI_OMNI_UNUSED, "add_qkv_bias", "tie_word_embeddings")
)
_MINI_OMNI_TEXT_VOCAB_DEFAULT = 152000  # 0.4's default when the yaml omits text_vocab_size
# Mini-Omni sizes its KV cache and causal mask by block_size (litgpt's max_seq_length), and its
# inference.py refuses a model under 2048 positions (max_returned_tokens=2048: prompt plus answer).
# The released checkpoint's model_config.yaml says 2048 too; base LLMs say far more (Qwen2: 32768).
MINI_OMNI_CONTEXT = 2048

_QKV_KEY = re.compile(r"^(?P<prefix>.*\.attn)\.qkv\.(?P<kind>weight|bias)$")
_LEGACY_QKV_KEY = re.compile(r"^(?P<prefix>.*\.attn)\.attn\.(?P<kind>weight|bias)$")


# ---- small helpers ----------------------------------------------------------------------------
def _existing_dir(path: str | Path, what: str = "checkpoint directory") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _require_files(directory: Path, names: tuple[str, ...]) -> None:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a checkpoint: missing {', '.join(missing)}")


def _materialize(t: Any) -> torch.Tensor:
    """Lazily loaded tensors (litgpt's `lazy_load`) -> real tensors."""
    return t._load_tensor() if hasattr(t, "_load_tensor") else t


class CheckpointError(ValueError):
    """A weights file that cannot be read (truncated, corrupt, not PyTorch's); the message names it."""


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:  # mmap: a 0.5B checkpoint is not read twice into memory
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # only zip-format files can be mmapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:  # a cut-off zip, a cut-off legacy pickle
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"cannot read {path}: truncated, or not a PyTorch weights file ({reason})") from err
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of weights")
    if isinstance(state.get("model"), Mapping):
        state = state["model"]  # litgpt / Fabric training checkpoints wrap the weights
    return {k: _materialize(v) for k, v in state.items()}


def _copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> None:
    tokenizer_dir = _existing_dir(tokenizer_dir, "tokenizer directory")
    if not any((tokenizer_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {tokenizer_dir}")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)


def _write_files(
    directory: Path, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], tokenizer_dir: str | Path
) -> None:
    _copy_tokenizer(Path(tokenizer_dir), directory)  # first: a bad tokenizer dir fails before the big write
    with open(directory / CONFIG_FILE, "w", encoding="utf-8") as fp:
        yaml.safe_dump(dict(config), fp, sort_keys=False)
    torch.save({k: v.detach().to("cpu") for k, v in state.items()}, directory / WEIGHTS_FILE)


def _write_model(directory: Path, model: OmniGPT, tokenizer_dir: str | Path) -> None:
    # a LoRA model is written merged: the folder loads as a plain OmniGPT, with no LoRA code
    _write_files(directory, model.merged_state_dict(), asdict(model.config), tokenizer_dir)


def _write_checkpoint(
    out_dir: str | Path, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], tokenizer_dir: str | Path
) -> Path:
    with atomic_dir(out_dir) as tmp:
        _write_files(tmp, state, config, tokenizer_dir)
    return Path(out_dir)


def _empty_model(config: OmniConfig, dtype: torch.dtype, device: torch.device | str | None) -> OmniGPT:
    """An `OmniGPT` with uninitialised parameters, for loading a complete state dict into.

    Skips the random init (minutes for a 7B model on CPU); the rope cache, the only state not in
    a checkpoint, is rebuilt and cast as `Module.to(dtype)` would.
    """
    with torch.device("meta"):
        model = OmniGPT(config)
    model = model.to(dtype=dtype).to_empty(device=device or "cpu")
    model.reset_parameters()  # litgpt's GPT: rebuilds cos/sin on the model's device
    model.cos, model.sin = model.cos.to(dtype), model.sin.to(dtype)
    return model


def _load_full_state(model: OmniGPT, state: Mapping[str, torch.Tensor]) -> OmniGPT:
    persistent = set(model.state_dict())
    stray = {name for name, _ in model.named_buffers()} - persistent - {"cos", "sin"}
    if stray:  # a new non-persistent buffer would stay uninitialised by `_empty_model`
        raise RuntimeError(f"OmniGPT has buffers that no checkpoint restores: {sorted(stray)}")
    model.load_state_dict(state, strict=True)
    return model


# ---- tokenizer --------------------------------------------------------------------------------
def validate_tokenizer(tokenizer_dir: str | Path, padded_vocab_size: int) -> Tokenizer:
    """Load the tokenizer and check that every id it can produce is a base text row.

    Ids from ``padded_vocab_size`` on are Mini-Omni's text specials and audio layers, so a larger
    tokenizer would silently alias them. Added tokens count too (Qwen2's ``<|im_end|>`` etc.).

    Raises:
        ValueError: naming both sizes and the directory.
    """
    tokenizer_dir = _existing_dir(tokenizer_dir, "tokenizer directory")
    try:
        tokenizer = Tokenizer(tokenizer_dir)
    except KeyError as err:  # litgpt reads tokenizer_config.json's tokenizer_class unconditionally
        raise ValueError(
            f"{tokenizer_dir / 'tokenizer_config.json'}: no {err} field, which litgpt's Tokenizer needs "
            '(add e.g. "tokenizer_class": "Qwen2Tokenizer", the class its model card names)'
        ) from None
    size = tokenizer.vocab_size
    if tokenizer.backend == "huggingface":
        size = max(size, tokenizer.processor.get_vocab_size(with_added_tokens=True))
    if size > padded_vocab_size:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has {size} tokens, more than the checkpoint's padded text "
            f"vocabulary of {padded_vocab_size} rows; ids from {padded_vocab_size} on are the omni special and "
            "audio tokens, so this tokenizer does not belong to this checkpoint"
        )
    return tokenizer


# ---- base LLM -> OmniGPT ----------------------------------------------------------------------
def _base_config(checkpoint_dir: Path, model_name: str | None) -> Config:
    if (checkpoint_dir / CONFIG_FILE).is_file():
        return Config.from_file(checkpoint_dir / CONFIG_FILE)
    candidates = [model_name] if model_name else [checkpoint_dir.name]
    if not model_name and (checkpoint_dir / "config.json").is_file():
        hf_name = json.loads((checkpoint_dir / "config.json").read_text()).get("_name_or_path") or ""
        candidates += [hf_name, hf_name.rsplit("/", 1)[-1]]
    for name in filter(None, candidates):
        try:
            return Config.from_name(name)
        except ValueError:
            continue
    raise ValueError(
        f"cannot tell which litgpt config {checkpoint_dir} uses (tried {[c for c in candidates if c]}): add a "
        f"{CONFIG_FILE}, or pass model_name= (a litgpt `Config.from_name` name) or base_config="
    )


def _hf_copy_fn(config: Config):
    """litgpt's `convert_hf_checkpoint` dispatch, but bound to the real config.

    `convert_hf_checkpoint` itself re-creates the config with `Config.from_name` and writes into
    the source directory; here the given (possibly customised) config is used, in memory.
    """
    name = config.name.lower()
    if "falcon" in name:
        return partial(hf_convert.copy_weights_falcon, config)
    if name.startswith("gemma-2"):
        return partial(hf_convert.copy_weights_gemma_2, {})
    if name.startswith("gemma-3"):
        return partial(hf_convert.copy_weights_gemma_3, {}, config=config)
    if name.startswith("phi"):
        return partial(hf_convert.copy_weights_phi, config, {})
    if name.startswith(("qwen2.5", "qwq")):
        return partial(hf_convert.copy_weights_qwen_2_5, config, {})
    if name.startswith("olmo-2-"):
        return partial(hf_convert.copy_weights_olmo2, config, {})
    if name.startswith("qwen3"):
        return partial(hf_convert.copy_weights_qwen_3, config, {})
    if config.mlp_class_name in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE"):
        return partial(hf_convert.copy_weights_hf_llama, config, {})
    return partial(hf_convert.copy_weights_gpt_neox, config)


def _hf_weight_files(checkpoint_dir: Path) -> list[Path]:
    for index in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        if (checkpoint_dir / index).is_file():
            weight_map = json.loads((checkpoint_dir / index).read_text())["weight_map"]
            return sorted({checkpoint_dir / f for f in weight_map.values()})
    files = set(checkpoint_dir.glob("*.bin")) | set(checkpoint_dir.glob("*.safetensors"))
    return sorted(f for f in files if f.name != "training_args.bin")


def _convert_hf(checkpoint_dir: Path, config: Config) -> dict[str, torch.Tensor]:
    files = _hf_weight_files(checkpoint_dir)
    if not files:
        raise FileNotFoundError(f"no {WEIGHTS_FILE}, *.safetensors or *.bin weights in {checkpoint_dir}")
    hf_weights = {}
    for f in files:  # one merged dict: litgpt's tie fallback must see every shard at once
        hf_weights.update(hf_convert.load_safetensors(f) if f.suffix == ".safetensors" else lazy_load(f))
    state: dict[str, torch.Tensor] = {}
    _hf_copy_fn(config)(state, hf_weights)
    return {k: _materialize(v) for k, v in state.items()}


def _qkv_from_interleaved(state: Mapping[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """litgpt 0.4 ``attn.attn`` (per-group q..q,k,v) -> 0.5 ``attn.qkv`` (all q, all k, all v)."""
    out = {}
    for key, value in state.items():
        if m := _LEGACY_QKV_KEY.match(key):
            out[f"{m['prefix']}.qkv.{m['kind']}"] = hf_convert.qkv_reassemble(value, config)
        else:
            out[key] = value
    return out


def init_new_rows(base_rows: torch.Tensor, n_new: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rows for the vocabulary entries the base model never saw (omni specials, audio codes).

    Each new row is drawn from a normal with the per-dimension mean and std of `base_rows`, so the
    new embeddings (and logits) start at the scale and offset of the trained ones: rows from
    litgpt's N(0, 0.02) init would be far off for many LLMs, and their logits would start either
    dead or dominant next to the text rows.

    Args:
        base_rows: trained rows, shape ``(n_base, C)``; pass the real tokens only (not padding).
        n_new: rows to draw.
        generator: for a reproducible draw.

    Returns:
        shape ``(n_new, C)``, float32.
    """
    rows = base_rows.detach().float()
    mean, std = rows.mean(0), rows.std(0)  # (C,)
    noise = torch.randn(n_new, rows.size(1), generator=generator, device=rows.device)
    return noise * std + mean


def _check_base_state(state: Mapping[str, torch.Tensor], base: Config, checkpoint_dir: Path) -> None:
    """Every problem at once: missing, unexpected and mis-shaped tensors."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(base).state_dict().items()}
    problems = []
    if missing := sorted(set(expected) - set(state)):
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected := sorted(set(state) - set(expected)):
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k in sorted(set(state) & set(expected)):
        if tuple(state[k].shape) != tuple(expected[k]):
            problems.append(f"{k}: shape {tuple(state[k].shape)}, config wants {tuple(expected[k])}")
    if problems:
        raise ValueError(f"{checkpoint_dir} does not match its config {base.name!r}: " + "; ".join(problems))


@torch.no_grad()
def omni_from_base(
    state: Mapping[str, torch.Tensor], config: OmniConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> OmniGPT:
    """Build an `OmniGPT` around a base LLM's litgpt state dict.

    - Every base tensor is copied exactly, including rows ``[0, V)`` of ``wte`` and ``lm_head``.
    - Rows ``[V, padded_vocab_size)`` of ``wte`` and ``lm_head`` follow `init_new_rows`, from the
      base model's real-token rows ``[0, vocab_size)``. If the base ties ``lm_head`` to ``wte``
      (litgpt's HF conversion copies ``wte`` into ``lm_head``), the same new rows go into both, so
      the untied copies start tied.
    - The post-adapter's audio head follows the same rule from ``lm_head``, and
      ``post_adapter_audio_ln`` starts as a copy of ``ln_f``: the audio head then starts where the
      text head stands.
    - The Whisper adapter and the post-adapter blocks get litgpt's init (normal(0, 0.02) Linears,
      zero biases, unit norms). The post-adapter blocks are not copies of the last backbone blocks:
      they read the backbone's final state, not the input those blocks were trained on, and a
      small-init residual block starts close to the identity, so the audio head initially sees the
      backbone's final state unchanged. It also works when ``post_adapter_layers > n_layer``.

    Args:
        state: the base model's litgpt-0.5 state dict.
        config: the omni config, from `OmniConfig.from_base` on the base config.
        seed: seeds every fresh tensor; the global RNG is left untouched.
        dtype: parameter dtype of the returned model (float32: master weights for mixed precision).
    """
    base_vocab = config.vocab.base_vocab_size
    n_real = min(config.vocab_size, base_vocab)
    n_new = config.padded_vocab_size - base_vocab
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OmniGPT(config)
        model.whisper_adapter.apply(model._init_weights)
        if config.post_adapter:
            model.transformer.post_adapter.apply(model._init_weights)
    generator = torch.Generator().manual_seed(seed)
    full = model.state_dict()
    full.update({k: v for k, v in state.items() if k not in ("transformer.wte.weight", "lm_head.weight")})

    wte = state["transformer.wte.weight"]
    lm_head = state["lm_head.weight"]
    new_wte = init_new_rows(wte[:n_real], n_new, generator).to(wte.dtype)
    tied = lm_head is wte or torch.equal(lm_head, wte)
    new_head = new_wte if tied else init_new_rows(lm_head[:n_real], n_new, generator).to(lm_head.dtype)
    full["transformer.wte.weight"] = torch.cat([wte, new_wte])
    full["lm_head.weight"] = torch.cat([lm_head, new_head])
    if config.lm_head_bias:
        bias = state["lm_head.bias"]
        full["lm_head.bias"] = torch.cat([bias, bias[:n_real].float().mean().expand(n_new).to(bias.dtype)])
    if config.post_adapter:
        full["transformer.post_adapter_audio_lm_head.weight"] = init_new_rows(
            lm_head[:n_real], config.cat_audio_vocab_size, generator
        )
        if config.lm_head_bias:
            mean = state["lm_head.bias"][:n_real].float().mean()
            full["transformer.post_adapter_audio_lm_head.bias"] = mean.expand(config.cat_audio_vocab_size).clone()
        for kind in ("weight", "bias"):
            if f"transformer.ln_f.{kind}" in state:
                full[f"transformer.post_adapter_audio_ln.{kind}"] = state[f"transformer.ln_f.{kind}"]
    model = model.to(dtype)
    model.load_state_dict(full, strict=True)
    return model


def load_base(
    checkpoint_dir: str | Path,
    *,
    base_config: Config | None = None,
    model_name: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **omni_fields: Any,
) -> tuple[OmniGPT, OmniConfig]:
    """Load a base text LLM into a fresh `OmniGPT` (see `omni_from_base` for what is new).

    The directory is either litgpt's (``lit_model.pth``, converted or trained by litgpt) or a
    Hugging Face one (``config.json`` + ``*.safetensors`` / ``*.bin``, converted in memory with
    litgpt's ``copy_weights_*``; the directory is not written to). Either way it holds the
    tokenizer files, which are checked against the vocabulary.

    Args:
        checkpoint_dir: the base model's directory.
        base_config: the litgpt config; by default its ``model_config.yaml``, else
            ``Config.from_name(model_name)``, else a name guessed from the directory name or
            ``config.json``'s ``_name_or_path``.
        model_name: a litgpt `Config.from_name` name.
        seed: for the fresh parameters.
        dtype: parameter dtype of the model.
        **omni_fields: `OmniConfig` fields, e.g. ``post_adapter=True``, ``asr_adapter="mlp"``.

    Returns:
        ``(model, config)``.
    """
    checkpoint_dir = _existing_dir(checkpoint_dir)
    base = base_config if base_config is not None else _base_config(checkpoint_dir, model_name)
    validate_tokenizer(checkpoint_dir, base.padded_vocab_size)
    if (checkpoint_dir / WEIGHTS_FILE).is_file():
        state = _torch_load(checkpoint_dir / WEIGHTS_FILE)
        state = _qkv_from_interleaved(state, base)  # checkpoints of litgpt < 0.5
        if "lm_head.weight" not in state and "transformer.wte.weight" in state:
            state["lm_head.weight"] = state["transformer.wte.weight"]  # tied
    else:
        state = _convert_hf(checkpoint_dir, base)
    _check_base_state(state, base, checkpoint_dir)
    config = OmniConfig.from_base(base, **omni_fields)
    return omni_from_base(state, config, seed=seed, dtype=dtype), config


def base_model(model: OmniGPT) -> GPT:
    """The plain litgpt `GPT` inside an `OmniGPT`: the backbone and the base rows of ``wte`` and ``lm_head``.

    `omni_from_base` copies every base tensor exactly, so for a model fresh from `load_base` this is
    the base LLM itself, run by litgpt's own code.
    """
    config = model.config.base_config
    V = config.padded_vocab_size
    state = {
        k: v[:V] if model.part(k) == "tables" else v
        for k, v in model.state_dict().items()
        if model.part(k) in ("llm", "tables")
    }
    param = next(model.parameters())
    with torch.device("meta"):
        base = GPT(config)
    base = base.to(dtype=param.dtype).to_empty(device=param.device)
    base.reset_parameters()  # the rope cache, as `checkpoints._empty_model` does
    base.cos, base.sin = base.cos.to(param.dtype), base.sin.to(param.dtype)
    base.load_state_dict(state, strict=True)
    return base.eval()


# ---- our format -------------------------------------------------------------------------------
def save_omni(model: OmniGPT, out_dir: str | Path, tokenizer_dir: str | Path) -> Path:
    """Write our format atomically: ``lit_model.pth``, ``model_config.yaml``, tokenizer files.

    Args:
        model: the model to save (any device or dtype; tensors are saved as they are, on CPU).
        out_dir: replaced only once the new checkpoint is complete.
        tokenizer_dir: where the tokenizer files come from (the base model's or a checkpoint's).
    """
    with atomic_dir(out_dir) as tmp:
        _write_model(tmp, model, tokenizer_dir)
    return Path(out_dir)


def load_omni(
    checkpoint_dir: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[OmniGPT, OmniConfig]:
    """Load our format.

    Args:
        checkpoint_dir: written by `save_omni`.
        device: where the parameters go (default CPU).
        dtype: parameter dtype (default: the saved one).

    Returns:
        ``(model, config)``.
    """
    checkpoint_dir = _existing_dir(checkpoint_dir)
    _require_files(checkpoint_dir, (WEIGHTS_FILE, CONFIG_FILE))
    config = OmniConfig.from_file(checkpoint_dir / CONFIG_FILE)
    validate_tokenizer(checkpoint_dir, config.vocab.base_vocab_size)
    state = _torch_load(checkpoint_dir / WEIGHTS_FILE)
    model = _empty_model(config, dtype or state["transformer.wte.weight"].dtype, device)
    return _load_full_state(model, state), config


# ---- the audio models a checkpoint was trained with -------------------------------------------
AUDIO_FILE = "omni_audio.json"  # in a model dir: which Whisper and SNAC the model was trained with
WHISPER_FILE = "whisper.pt"
WHISPER_HF_DIR = "whisper"  # a Hugging Face Whisper folder's config and weights, copied
SNAC_DIR = "snac"


def save_audio_models(
    model_dir: Path,
    whisper_src: str,
    snac_src: str,
    pad_to_30s: bool,
    trained_context: int | None = None,
    language: str | None = None,
) -> None:
    """Put the Whisper and SNAC a model was trained with beside it: local files are copied, hub names named.

    `trained_context` (the longest sequence it was trained on) goes in the same file: an export
    sizes its readers' KV cache by it (`mini_omni_block_size`); so does `language` (its data's
    ``data.language``), which omni-eval scores in unless told otherwise.
    """
    entry = {"whisper": whisper_src, "snac": snac_src, "pad_to_30s": pad_to_30s}
    if trained_context:
        entry["trained_context"] = trained_context
    if language:
        entry["language"] = language
    if Path(whisper_src).is_file():
        shutil.copyfile(whisper_src, model_dir / WHISPER_FILE)
        entry["whisper"] = WHISPER_FILE
    elif Path(whisper_src).is_dir():  # Hugging Face layout: config and weights, not a fine-tune's other files
        (model_dir / WHISPER_HF_DIR).mkdir()
        for f in Path(whisper_src).iterdir():
            if f.name == "config.json" or re.fullmatch(r"(model|pytorch_model).*\.(safetensors|bin|json)", f.name):
                shutil.copyfile(f, model_dir / WHISPER_HF_DIR / f.name)
        entry["whisper"] = WHISPER_HF_DIR
    if Path(snac_src).is_dir():
        shutil.copytree(snac_src, model_dir / SNAC_DIR, dirs_exist_ok=True)
        entry["snac"] = SNAC_DIR
    (model_dir / AUDIO_FILE).write_text(json.dumps(entry, indent=2) + "\n")


def audio_sources(model_dir: str | Path) -> dict | None:
    """The Whisper and SNAC of a model dir, as paths or hub names, Whisper's padding rule, and the
    context and language it was trained at (``trained_context``, ``language``, when recorded).

    Read from ``omni_audio.json`` (written by omni-train); without it, a ``whisper.pt`` file or
    ``snac/`` folder placed in the directory is used. None if the directory names neither.
    """
    model_dir = Path(model_dir)
    path = model_dir / AUDIO_FILE
    if path.is_file():
        entry = json.loads(path.read_text())
    else:
        entry = {k: v for k, v in (("whisper", WHISPER_FILE), ("snac", SNAC_DIR)) if (model_dir / v).exists()}
        if not entry:
            return None
    for key in ("whisper", "snac"):
        if key in entry and (model_dir / entry[key]).exists():
            entry[key] = str(model_dir / entry[key])
    return entry


LORA_FILE = "lora.pth"  # in a model dir of a LoRA run: the LoRA matrices alone
LORA_INFO = "lora.json"  # what they are: settings, and the model they apply to


def save_lora(model_dir: Path, model: OmniGPT, base: str) -> None:
    """Put a LoRA model's matrices alone beside its merged weights, with the model they apply to.

    ``lora.pth`` holds the ``lora_A``/``lora_B`` tensors, named as in the unmerged model; added to
    `base` (``B @ A * alpha / r``, litgpt's merge rule) they give the backbone of ``lit_model.pth``,
    whose adapters and new vocabulary rows, trained in full, are in ``lit_model.pth`` only.
    """
    torch.save({k: v.detach().to("cpu") for k, v in model.lora_state_dict().items()}, model_dir / LORA_FILE)
    info = {"applies_to": base, "merged_into": WEIGHTS_FILE, **asdict(model.lora)}
    (model_dir / LORA_INFO).write_text(json.dumps(info, indent=2) + "\n")


@dataclass
class ModelBundle:
    """A model with what it hears and talks with: what a model folder holds, loaded.

    The hand-off between the parts of a run: the model builder makes one (from a base LLM, or a
    model folder through `load`, as the CLIs and omni-serve do), the stage module trains its
    model, the evaluations and the sample logger answer with it, and `save` writes it as the next
    stage's starting point.

    Attributes:
        model: the OmniGPT.
        encoder: its frozen Whisper encoder (None where nothing is heard, e.g. in text-only tests).
        tokenizer_dir: the folder of its tokenizer files.
        whisper, snac: the Whisper checkpoint (file or name) and SNAC codec (folder or hub name) it
            was trained with, and `pad_to_30s`, how Whisper's input was padded (`omni_audio.json`).
        origin: where it came from (a folder, or the base LLM), for messages.
        trained_context: the longest sequence any of its stages trained on (their
            ``data.max_seq_length``); None for a model no stage of ours trained.
        language: the language of the data it was last trained on (``data.language``), where known.
    """

    model: OmniGPT
    encoder: WhisperEncoder | None = None
    tokenizer_dir: Path | None = None
    whisper: str | None = None
    snac: str | None = None
    pad_to_30s: bool = False
    origin: str = ""  # where the model came from, for messages
    trained_context: int | None = None
    language: str | None = None

    @classmethod
    def load(
        cls, model_dir: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        fallback: Mapping[str, Any] | None = None,
    ) -> ModelBundle:
        """A model folder, ours or Mini-Omni's, loaded without its encoder (`load_encoder`): the one reader of one.

        Its Whisper, SNAC, padding rule, trained context and language are what the folder records
        (`audio_sources`); `fallback` gives those it does not (a Mini-Omni checkpoint records none).
        """
        model, _ = load_checkpoint(model_dir, device=device, dtype=dtype)
        audio = {"pad_to_30s": False, **(fallback or {}), **(audio_sources(model_dir) or {})}
        return cls(model, None, Path(model_dir), audio.get("whisper"), audio.get("snac"), audio["pad_to_30s"],
                   str(model_dir), audio.get("trained_context"), audio.get("language"))  # fmt: skip

    def load_encoder(self, device: torch.device | str | None = None) -> WhisperEncoder:
        """The Whisper encoder it hears with (``self.whisper``), kept as ``self.encoder``."""
        self.encoder = WhisperEncoder.from_pretrained(self.whisper, device=device, pad_to_30s=self.pad_to_30s)
        return self.encoder

    def save(self, out_dir: str | Path, model: OmniGPT | None = None) -> Path:
        """Write our format with the tokenizer and audio models, atomically (`model`: e.g. gathered from shards).

        A LoRA model is written merged, and its LoRA matrices alone beside it (`save_lora`).
        """
        model = model or self.model
        with atomic_dir(out_dir) as tmp:
            _write_model(tmp, model, self.tokenizer_dir)
            save_audio_models(tmp, self.whisper, self.snac, self.pad_to_30s, self.trained_context, self.language)
            if model.lora is not None:
                save_lora(tmp, model, self.origin)
        return Path(out_dir)


# ---- Mini-Omni's format -----------------------------------------------------------------------
def _field_default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def check_mini_omni_compatible(config: OmniConfig) -> None:
    """Refuse configs that litgpt 0.4 (Mini-Omni's model code) would run differently.

    Every litgpt-0.5 field that 0.4 lacks must keep its default (the features added since:
    qk-norm, sliding windows, extra norms, softcapping, rope scaling, MLA, MoE extensions ...);
    0.5's ``attn_bias`` is the one exception, as it maps to 0.4's ``add_qkv_bias``. Name-keyed
    behaviour that only 0.5 has (OLMo's affine-free LayerNorm) is refused too.

    Raises:
        ValueError: listing every problem.
    """
    problems = []
    for f in fields(OmniConfig):
        if f.name in _SHARED_FIELDS or f.name == "attn_bias":
            continue
        value, default = getattr(config, f.name), _field_default(f)
        if f.name == "attention_scores_scalar" and value == config.head_size:
            continue  # 0.4 always scales by head_size
        if f.name == "sliding_window_indices" and config.sliding_window_size is None:
            continue  # only read when a window is set
        if f.name == "rope_indices" and config.rope_local_base_freq is None:
            continue
        if value != default:
            problems.append(f"{f.name}={value!r}")
    if config.norm_class_name == "LayerNorm" and "OLMo" in config.name:
        problems.append(f"name={config.name!r} (litgpt 0.5 gives OLMo LayerNorms no affine parameters)")
    if problems:
        raise ValueError(
            "Mini-Omni's litgpt 0.4 cannot express this config, its checkpoint would compute something else: "
            + ", ".join(problems)
        )


def mini_omni_block_size(config: OmniConfig, trained_context: int | None) -> int:
    """The block_size an export writes: the context the model was trained at, at least Mini-Omni's 2048.

    Writing the base LLM's block_size instead would make Mini-Omni allocate a cache for positions
    the model never saw (at Qwen2-0.5B's 32768: 5.6 GB of KV cache and a 1 GB mask a sequence).
    Never more than the model's own block_size.
    """
    return min(config.block_size, max(trained_context or 0, MINI_OMNI_CONTEXT))


def mini_omni_config(config: OmniConfig, block_size: int | None = None) -> dict[str, Any]:
    """The ``model_config.yaml`` content Mini-Omni's `Config(**yaml)` accepts (`block_size`: written
    instead of the model's, see `mini_omni_block_size`)."""
    check_mini_omni_compatible(config)
    out = {name: getattr(config, name) for name in _SHARED_FIELDS}
    if block_size is not None:
        out["block_size"] = block_size
    out["add_qkv_bias"] = bool(config.bias or config.attn_bias)  # 0.5's qkv bias is `bias or attn_bias`
    out["tie_word_embeddings"] = False  # OmniGPT never ties: the audio rows of lm_head and wte differ
    return out


def config_from_mini_omni(values: Mapping[str, Any]) -> OmniConfig:
    """Inverse of `mini_omni_config`, for any yaml Mini-Omni's own loader accepts.

    Fields its `GPT` never reads (`_MINI_OMNI_UNUSED`) are dropped; ``tie_word_embeddings`` is
    dropped too, as a tied checkpoint stores both tensors and the imported model unties them.

    Raises:
        ValueError: unknown keys, or qkv without bias next to biased Linears (0.5 cannot).
    """
    values = dict(values)
    if unknown := sorted(set(values) - set(MINI_OMNI_FIELDS)):
        raise ValueError(f"not a Mini-Omni model_config.yaml: unknown fields {unknown}")
    for name in (*_MINI_OMNI_UNUSED, "tie_word_embeddings"):
        values.pop(name, None)
    bias = values.get("bias", True)
    qkv_bias = values.pop("add_qkv_bias", None)
    qkv_bias = bias if qkv_bias is None else qkv_bias
    if bias and not qkv_bias:
        raise ValueError("bias=True with add_qkv_bias=False: litgpt 0.5 always gives qkv a bias when bias=True")
    values["attn_bias"] = bool(qkv_bias)
    values.setdefault("text_vocab_size", _MINI_OMNI_TEXT_VOCAB_DEFAULT)
    return OmniConfig(**values)


def to_mini_omni_state_dict(state: Mapping[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """``attn.qkv`` (all q, all k, all v) -> ``attn.attn`` (per group: its q heads, its k, its v)."""
    out = {}
    for key, value in state.items():
        if m := _QKV_KEY.match(key):
            out[f"{m['prefix']}.attn.{m['kind']}"] = lit_convert.qkv_reassemble(value, config)
        else:
            out[key] = value
    return out


def from_mini_omni_state_dict(state: Mapping[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """Inverse of `to_mini_omni_state_dict`."""
    return _qkv_from_interleaved(state, config)


def export_mini_omni(
    model: OmniGPT, out_dir: str | Path, tokenizer_dir: str | Path, block_size: int | None = None
) -> Path:
    """Write a checkpoint that Mini-Omni's inference code loads with ``strict=True``.

    Args:
        block_size: the context Mini-Omni's code sizes its KV cache for; default
            `mini_omni_block_size` of the model without a recorded training context (2048).

    Raises:
        ValueError: if the config uses a litgpt-0.5 feature 0.4 cannot express, or `block_size` is
            not positive (nothing is written).
    """
    block_size = mini_omni_block_size(model.config, None) if block_size is None else block_size
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: a context of at least one position")
    config = mini_omni_config(model.config, block_size)
    state = to_mini_omni_state_dict(model.merged_state_dict(), model.config)
    return _write_checkpoint(out_dir, state, config, tokenizer_dir)


def import_mini_omni(
    checkpoint_dir: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[OmniGPT, OmniConfig]:
    """Load a Mini-Omni checkpoint (e.g. the released gpt-omni/mini-omni) to fine-tune it.

    Returns:
        ``(model, config)``; `save_omni` then writes it in our format.
    """
    checkpoint_dir = _existing_dir(checkpoint_dir)
    _require_files(checkpoint_dir, (WEIGHTS_FILE, CONFIG_FILE))
    with open(checkpoint_dir / CONFIG_FILE, encoding="utf-8") as fp:
        config = config_from_mini_omni(yaml.safe_load(fp) or {})
    validate_tokenizer(checkpoint_dir, config.vocab.base_vocab_size)
    state = from_mini_omni_state_dict(_torch_load(checkpoint_dir / WEIGHTS_FILE), config)
    model = _empty_model(config, dtype or state["transformer.wte.weight"].dtype, device)
    return _load_full_state(model, state), config


# ---- either format ----------------------------------------------------------------------------
def detect_format(checkpoint_dir: str | Path) -> str:
    """``"omni"`` or ``"mini-omni"``, from the yaml: only 0.4 configs have ``add_qkv_bias``."""
    checkpoint_dir = _existing_dir(checkpoint_dir)
    _require_files(checkpoint_dir, (CONFIG_FILE,))
    with open(checkpoint_dir / CONFIG_FILE, encoding="utf-8") as fp:
        values = yaml.safe_load(fp) or {}
    return "mini-omni" if "add_qkv_bias" in values else "omni"


def load_checkpoint(
    checkpoint_dir: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[OmniGPT, OmniConfig]:
    """`load_omni` or `import_mini_omni`, whichever the directory holds."""
    load = import_mini_omni if detect_format(checkpoint_dir) == "mini-omni" else load_omni
    return load(checkpoint_dir, device=device, dtype=dtype)
