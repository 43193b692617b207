"""OmniGPT: a litgpt `GPT` that hears (Whisper adapter) and talks (7 SNAC audio layers).

The whole speech model lives in this one file, on top of litgpt's own `GPT`, `Block`, rope and KV
cache. Parameter names are Mini-Omni's (`whisper_adapter`, `transformer.post_adapter`, ...), so its
checkpoints differ from ours only by litgpt's 0.4 -> 0.5 renames (see `checkpoints.py`).

The frozen Whisper encoder is not part of this module: it runs in the data path or the
LightningModule, and the model takes its output frames.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from litgpt import lora as litgpt_lora
from litgpt.config import Config
from litgpt.lora import LoRALinear, lora_filter
from litgpt.model import GPT, Block, batched_index_select, do_softcapping
from torch.utils.checkpoint import checkpoint

from omni_train.config import LoraConfig
from omni_train.vocab import N_AUDIO_LAYERS, N_LAYERS, TEXT_LAYER, Vocab

Part = Literal["adapter", "post_adapter", "tables", "llm", "lora", "new_rows", "base"]


@dataclass
class OmniConfig(Config):
    """litgpt's `Config` plus Mini-Omni's fields (the names its `model_config.yaml` uses)."""

    # Vocabulary (`padded_vocab_size` of the parent is the whole table: text + 7 audio layers)
    text_vocab_size: int = 0  # base padded vocab + 64 text specials
    audio_vocab_size: int = 4160  # per audio layer: 4096 SNAC codes + 64 specials
    cat_audio_vocab_size: int = 7 * 4160
    # Audio in
    whisper_adapter_dim: int = 768  # width of the Whisper encoder (768 for whisper-small)
    asr_adapter: Literal["mlp", "llamamlp"] = "llamamlp"  # Linear, or gated SiLU MLP (Mini-Omni's default)
    # Audio out: False = audio logits are slices of `lm_head`; True = the paper's TTS adapter
    post_adapter: bool = False
    post_adapter_layers: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_vocab_size <= 0:
            raise ValueError("OmniConfig.text_vocab_size must be set; build configs with `OmniConfig.from_base`")
        expected = self.vocab.padded_vocab_size
        if self.padded_vocab_size != expected or self.cat_audio_vocab_size != N_AUDIO_LAYERS * self.audio_vocab_size:
            raise ValueError(
                f"inconsistent vocabulary: padded_vocab_size={self.padded_vocab_size} (expected {expected} for "
                f"text_vocab_size={self.text_vocab_size}), cat_audio_vocab_size={self.cat_audio_vocab_size}"
            )

    @property
    def vocab(self) -> Vocab:
        return Vocab(
            self.text_vocab_size - 64, codebook_size=self.audio_vocab_size - 64, text_specials=64, audio_specials=64
        )

    @classmethod
    def from_base(cls, base: Config, **omni: Any) -> OmniConfig:
        """Extend a text LLM's config: the layout follows from its padded vocabulary, whatever the model."""
        vocab = Vocab(base.padded_vocab_size)
        values = {f.name: getattr(base, f.name) for f in fields(Config)}
        values.update(
            text_vocab_size=vocab.text_vocab_size,
            audio_vocab_size=vocab.audio_vocab_size,
            cat_audio_vocab_size=N_AUDIO_LAYERS * vocab.audio_vocab_size,
            padded_vocab_size=vocab.padded_vocab_size,
        )
        values.update(omni)
        return cls(**values)

    @property
    def base_config(self) -> Config:
        """The text LLM's config (for comparisons against the plain litgpt model)."""
        values = {f.name: getattr(self, f.name) for f in fields(Config)}
        values["padded_vocab_size"] = self.vocab.base_vocab_size
        values["vocab_size"] = min(self.vocab_size, self.vocab.base_vocab_size)
        return Config(**values)


class WhisperMLP(nn.Module):
    """Mini-Omni's `llamamlp` adapter: Whisper width -> LLM width through a gated SiLU MLP."""

    def __init__(self, config: OmniConfig) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.whisper_adapter_dim, config.intermediate_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.whisper_adapter_dim, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


def _rows(blocks: torch.Tensor | tuple[torch.Tensor, ...], start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of a tensor, or of row blocks taken together (joined only where the range crosses)."""
    if isinstance(blocks, torch.Tensor):
        return blocks[start:stop]
    pieces, offset = [], 0
    for block in blocks:
        lo, hi = max(start, offset), min(stop, offset + block.size(0))
        if lo < hi:
            pieces.append(block[lo - offset : hi - offset])
        offset += block.size(0)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class NewRowsEmbedding(nn.Module):
    """``wte`` of a LoRA model: the base vocabulary's rows (``weight``, frozen) and the new rows, the
    omni specials and audio codes (``new``, trained in full), in tensors of their own.

    Training the new rows then needs no gradient, optimizer state or mask over the base rows,
    which are most of the table (Qwen2: 151,936 of 181,120 rows).
    """

    def __init__(self, base_rows: torch.Tensor, new_rows: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(base_rows)  # (V_base, C)
        self.new = nn.Parameter(new_rows)  # (padded_vocab_size - V_base, C)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ids ``(...)`` -> ``(..., C)``."""
        n_base = self.weight.size(0)
        out = F.embedding(ids.clamp(max=n_base - 1), self.weight)
        is_new = ids >= n_base
        return out.index_put((is_new,), F.embedding(ids[is_new] - n_base, self.new))


class NewRowsHead(LoRALinear):
    """``lm_head`` of a LoRA model: litgpt's `LoRALinear` over the base vocabulary's rows (with a
    low-rank update when ``lora.head``), and the new rows (``new``, ``new_bias``) in a tensor of
    their own, trained in full: the audio rows are new, there is no base for a low-rank update."""

    def __init__(self, in_features: int, n_base: int, n_new: int, bias: bool, lora: LoraConfig) -> None:
        super().__init__(
            in_features, n_base, r=lora.r if lora.head else 0, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=bias
        )
        self.new = nn.Parameter(torch.empty(n_new, in_features))
        self.new_bias = nn.Parameter(torch.empty(n_new)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> logits over the whole table ``(..., padded_vocab_size)``."""
        return torch.cat([super().forward(x), F.linear(x, self.new, self.new_bias)], dim=-1)


def _lora_config(config: OmniConfig, lora: LoraConfig) -> litgpt_lora.Config:
    """litgpt's LoRA config of the same backbone: what its `Block` and `LoRALinear`s read."""
    values = {f.name: getattr(config, f.name) for f in fields(Config)}
    return litgpt_lora.Config(
        **values, lora_r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, lora_query=lora.query,
        lora_key=lora.key, lora_value=lora.value, lora_projection=lora.projection, lora_mlp=lora.mlp,
        lora_head=lora.head,
    )  # fmt: skip


def _materialize_lora(module: nn.Module) -> None:
    """Real LoRA matrices for the `LoRALinear`s of a module built on the meta device: litgpt's
    init (A Kaiming-uniform, B zero, so the update starts at exactly zero), beside their weight."""
    for layer in module.modules():
        if isinstance(layer, LoRALinear) and hasattr(layer, "lora_A"):
            like = layer.linear.weight
            for name in ("lora_A", "lora_B"):
                shape = getattr(layer, name).shape
                setattr(layer, name, nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype)))
            layer.reset_parameters()


class OmniGPT(GPT):
    def __init__(self, config: OmniConfig) -> None:
        super().__init__(config)  # lm_head, wte (both over the whole 8-layer table), h, ln_f
        self.config: OmniConfig = config
        self.lora: LoraConfig | None = None  # set by `add_lora`
        # recompute each block in backward instead of keeping its activations (``model.activation_checkpointing``)
        self.activation_checkpointing = False
        if config.asr_adapter == "mlp":
            self.whisper_adapter = nn.Linear(config.whisper_adapter_dim, config.n_embd)
        elif config.asr_adapter == "llamamlp":
            self.whisper_adapter = WhisperMLP(config)
        else:
            raise ValueError(f"asr_adapter must be 'mlp' or 'llamamlp', got {config.asr_adapter!r}")
        if config.post_adapter:
            self.transformer.update(
                dict(
                post_adapter=nn.ModuleList(Block(config, i) for i in range(config.post_adapter_layers)),
                post_adapter_audio_ln=config.norm_class(config.n_embd, eps=config.norm_eps),
                post_adapter_audio_lm_head=nn.Linear(
                    config.n_embd, config.cat_audio_vocab_size, bias=config.lm_head_bias
                ),
                )
            )

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (for inputs and caches)."""
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype its parameters compute in."""
        return self.transformer.wte.weight.dtype

    # ---- parts: what the stages train, named by role rather than by parameter ---------------------
    def part(self, name: str) -> Part:
        """The part parameter `name` belongs to.

        - ``adapter``: the Whisper adapter (audio in);
        - ``post_adapter``: the TTS adapter's blocks, norm and audio head (audio out, when present);
        - ``tables``: ``wte`` and ``lm_head``, which hold the base vocabulary's rows and the new
          omni specials and audio rows in one tensor each (see `new_rows`);
        - ``llm``: everything else, the base LLM's trunk.

        A model with LoRA (`add_lora`) has these instead of ``llm`` and ``tables``:

        - ``base``: the base LLM's own weights, the base vocabulary's rows of the tables included;
          they never train;
        - ``lora``: litgpt's LoRA matrices (``lora_A``, ``lora_B``), which train in their place;
        - ``new_rows``: the new rows of ``wte`` and ``lm_head``, in tensors of their own.
        """
        if lora_filter(name, None):
            return "lora"
        if name.startswith("whisper_adapter."):
            return "adapter"
        if name.startswith("transformer.post_adapter"):
            return "post_adapter"
        if name.startswith(("transformer.wte.", "lm_head.")):
            if name.endswith((".new", ".new_bias")):
                return "new_rows"
            return "base" if self.lora else "tables"
        return "base" if self.lora else "llm"

    def new_rows(self) -> slice:
        """The rows of the ``tables`` the base LLM never had: the omni specials and all audio rows."""
        return slice(self.config.vocab.base_vocab_size, None)

    # ---- LoRA: litgpt's layers in the base LLM ------------------------------------------------
    @torch.no_grad()
    def add_lora(self, lora: LoraConfig, seed: int = 0) -> None:
        """Put litgpt's LoRA layers into the base LLM, in place; the model computes the same function.

        Each trunk block becomes a `litgpt.lora.Block` holding the very same weight tensors, its
        chosen projections wrapped in `LoRALinear`/`LoRAQKVLinear` with fresh matrices (B = 0, so
        each update starts at exactly zero). ``wte`` and ``lm_head`` keep the base vocabulary's rows
        and move the new rows into tensors of their own (`NewRowsEmbedding`, `NewRowsHead`). The
        Whisper adapter and the post-adapter are new and stay as they are: they train in full.

        Args:
            lora: the rank, scale, dropout and projections (``model.lora``); ``r`` must be > 0.
            seed: seeds the LoRA matrices (the global RNG is left untouched), so a model rebuilt for
                a resume or on another rank gets the same ones.
        """
        if self.lora is not None:
            raise ValueError("this model has LoRA layers already")
        if lora.r <= 0:
            raise ValueError(f"LoRA needs a rank r > 0, got {lora.r}")
        config, n_base = _lora_config(self.config, lora), self.config.vocab.base_vocab_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, old in enumerate(self.transformer.h):
                with torch.device("meta"):
                    block = litgpt_lora.Block(config, i)
                # litgpt's LoRA modules map the plain names (attn.qkv.weight -> attn.qkv.linear.weight)
                result = block.load_state_dict(old.state_dict(keep_vars=True), strict=False, assign=True)
                if result.unexpected_keys:
                    raise RuntimeError(f"litgpt's LoRA block {i} has no place for {result.unexpected_keys}")
                _materialize_lora(block)
                self.transformer.h[i] = block
            wte = self.transformer.wte.weight
            self.transformer.wte = NewRowsEmbedding(wte[:n_base].clone(), wte[n_base:].clone())
            old_head = self.lm_head
            with torch.device("meta"):
                head = NewRowsHead(config.n_embd, n_base, config.padded_vocab_size - n_base, config.lm_head_bias, lora)
            weight, bias = old_head.weight, old_head.bias
            state = {"linear.weight": weight[:n_base].clone(), "new": weight[n_base:].clone()}
            if bias is not None:
                state.update({"linear.bias": bias[:n_base].clone(), "new_bias": bias[n_base:].clone()})
            head.load_state_dict(state, strict=False, assign=True)
            _materialize_lora(head)
            self.lm_head = head
        self.lora = lora
        self.train(self.training)  # the new modules take the model's mode (LoRA dropout only in training)
        for name, p in self.named_parameters():  # every tensor where the model is (none left on meta)
            if p.device != self.device:
                raise RuntimeError(f"add_lora left {name} on {p.device}, not on {self.device}")

    @torch.no_grad()
    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of the merged model: what a plain `OmniGPT` of this config loads, strictly.

        Each LoRA update is added to its weight (litgpt's ``get_lora_AB``: ``B @ A * alpha / r``,
        the rule of its ``merge``) and the new rows go back under the base rows of ``wte`` and
        ``lm_head``; the model itself is not changed. A model without LoRA gives its own state dict.
        """
        state = self.state_dict()
        if self.lora is None:
            return state
        merged: dict[str, dict[str, torch.Tensor]] = {}  # module prefix -> its plain tensors
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, NewRowsEmbedding):
                merged[prefix] = {"weight": torch.cat([module.weight, module.new])}
            elif isinstance(module, LoRALinear):
                weight = module.linear.weight
                if hasattr(module, "lora_A") and not module.merged:
                    weight = weight + module.get_lora_AB().to(weight.dtype)
                bias = module.linear.bias
                if isinstance(module, NewRowsHead):
                    weight = torch.cat([weight, module.new])
                    bias = None if bias is None else torch.cat([bias, module.new_bias])
                merged[prefix] = {"weight": weight} | ({} if bias is None else {"bias": bias})
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            owner = next((p for p in merged if key.startswith(p)), None)
            if owner is None:
                out[key] = value
            elif owner + "weight" not in out:  # the module's first key: all its plain tensors, once
                out.update({owner + k: v for k, v in merged[owner].items()})
        return out

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA matrices alone (litgpt's `lora_filter`), named as in this model."""
        return {k: v for k, v in self.state_dict().items() if lora_filter(k, v)}

    # ---- inputs -------------------------------------------------------------------------------
    def embed(
        self,
        input_ids: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Average the 8 layers' embeddings, with adapted Whisper frames in the audio layers.

        Args:
            input_ids: shape ``(B, 8, T)``; layers 0-6 audio, layer 7 text.
            audio_features: Whisper encoder output, shape ``(B, F, whisper_adapter_dim)``.
            audio_lengths: valid frames of each row of `audio_features`, shape ``(B,)``.
            audio_mask: where the frames go, shape ``(B, T)``; row b has ``audio_lengths[b]`` True
                positions, filled in order with that row's first frames.

        Returns:
            shape ``(B, T, n_embd)``.
        """
        if input_ids.dim() != 3 or input_ids.size(1) != N_LAYERS:
            raise ValueError(f"input_ids must have shape (B, {N_LAYERS}, T), got {tuple(input_ids.shape)}")
        emb = self.transformer.wte(input_ids)  # (B, 8, T, C)
        layers = list(emb.unbind(1))  # 8 x (B, T, C)
        if audio_features is not None:
            if audio_lengths is None or audio_mask is None:
                raise ValueError("audio_features need audio_lengths and audio_mask")
            n_frames = audio_features.size(1)
            valid = torch.arange(n_frames, device=audio_features.device) < audio_lengths[:, None]  # (B, F)
            # adapt only the real frames, never the batch padding
            adapted = self.whisper_adapter(audio_features[valid]).to(emb.dtype)  # (sum(lengths), C)
            placed = emb.new_zeros(emb.shape[0], emb.shape[2], emb.shape[3]).index_put(
                audio_mask.nonzero(as_tuple=True), adapted
            )  # (B, T, C)
            where = audio_mask.unsqueeze(-1)
            for i in range(N_AUDIO_LAYERS):  # the text layer keeps its pad_t embeddings
                layers[i] = torch.where(where, placed, layers[i])
        x = layers[0]
        for layer in layers[1:]:  # summed in Mini-Omni's order so the float results match it
            x = x + layer
        x = x / N_LAYERS
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)
        return x

    # ---- trunk --------------------------------------------------------------------------------
    def _rope_and_mask(self, T: int, input_pos: torch.Tensor | None, input_pos_maxp1: int | None):
        # Same bookkeeping as litgpt's `GPT.forward`, which starts from token ids and so cannot be reused.
        if self.max_seq_length < T:
            raise ValueError(f"Cannot forward sequence of length {T}, max seq length is only {self.max_seq_length}.")
        if input_pos is None:
            return self.cos[:T].unsqueeze(0), self.sin[:T].unsqueeze(0), None, None
        if input_pos.shape[-1] != T:
            raise ValueError(f"input_pos.shape[-1] = {input_pos.shape[-1]} != {T} = sequence length")
        if self.mask_cache is None:
            raise TypeError("You need to call `model.set_kv_cache()`")
        cos = batched_index_select(self.cos, 0, input_pos)
        sin = batched_index_select(self.sin, 0, input_pos)
        if input_pos.dim() == 1:
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        mask = batched_index_select(self.mask_cache, 2, input_pos)
        if mask.dim() > 4:
            mask = mask.view(*(mask.shape[0:1] + mask.shape[2:]))
        if input_pos_maxp1 is not None:
            mask = mask[..., :input_pos_maxp1]
        return cos, sin, mask, input_pos_maxp1

    def _run_blocks(self, blocks, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        rope_indices = self.config.rope_indices
        # Checkpointed, a block keeps only its inputs for backward, which runs it again first; the
        # non-reentrant checkpoint restores the RNG state, so LoRA's dropout draws the same masks
        # twice and the gradients are those of the plain run. Without gradients there is no backward.
        checkpointed = self.activation_checkpointing and torch.is_grad_enabled()
        for idx, block in enumerate(blocks):
            c, s = (cos, sin) if rope_indices is None else (cos[..., rope_indices[idx]], sin[..., rope_indices[idx]])
            if checkpointed:
                x = checkpoint(block, x, c, s, mask, input_pos, input_pos_maxp1, use_reentrant=False)
            else:
                x = block(x, c, s, mask, input_pos, input_pos_maxp1)
        return x

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
        with_audio: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normalised states the text and audio heads read, each ``(B, T, n_embd)``.

        The audio state is None when `with_audio` is False: text-only batches and text-only
        decoding then skip the post-adapter entirely.
        """
        T = input_ids.size(-1)
        cos, sin, mask, input_pos_maxp1 = self._rope_and_mask(T, input_pos, input_pos_maxp1)
        x = self.embed(input_ids, audio_features, audio_lengths, audio_mask)
        x = self._run_blocks(self.transformer.h, x, cos, sin, mask, input_pos, input_pos_maxp1)
        h_text = self.transformer.ln_f(x)
        if not with_audio:
            return h_text, None
        if not self.config.post_adapter:
            return h_text, h_text
        x = self._run_blocks(self.transformer.post_adapter, x, cos, sin, mask, input_pos, input_pos_maxp1)
        return h_text, self.transformer.post_adapter_audio_ln(x)

    # ---- heads --------------------------------------------------------------------------------
    def head_rows(self, layer: int) -> tuple[nn.Module, int, int]:
        """The Linear that scores `layer` (0-6 audio, 7 text) and its rows ``[start, stop)``.

        The loss takes whole heads and row ranges rather than sliced weights, so the layers that
        share `lm_head` accumulate into one weight gradient.
        """
        if layer == TEXT_LAYER:
            return self.lm_head, 0, self.config.text_vocab_size
        size = self.config.audio_vocab_size
        if self.config.post_adapter:
            return self.transformer.post_adapter_audio_lm_head, layer * size, (layer + 1) * size
        start = self.config.text_vocab_size + layer * size
        return self.lm_head, start, start + size

    def head_weight(self, head: nn.Module) -> tuple[Any, Any]:
        """The weight ``(V, C)`` and bias ``(V,)`` (or None) that `head` (from `head_rows`) scores with.

        A LoRA model's ``lm_head`` gives each as two row blocks, in order: the base rows (with
        their low-rank update added when ``lora.head``), then the new rows. `omni_train.loss`
        takes either form; the blocks spare it a full-size copy and a full-size gradient.
        """
        if not isinstance(head, NewRowsHead):
            return head.weight, head.bias
        base = head.linear.weight
        if hasattr(head, "lora_A") and not head.merged:
            base = base + head.get_lora_AB()
        bias = None if head.linear.bias is None else (head.linear.bias, head.new_bias)
        return (base, head.new), bias

    def _head(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        head, start, stop = self.head_rows(layer)
        weight, bias = self.head_weight(head)
        return _rows(weight, start, stop), None if bias is None else _rows(bias, start, stop)

    def text_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(text_vocab_size, C)`` and bias of the text head: only the text rows of `lm_head`."""
        return self._head(TEXT_LAYER)

    def audio_head(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(audio_vocab_size, C)`` and bias of audio layer `layer`'s head."""
        return self._head(layer)

    def logits(self, h: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        x = F.linear(h, *head)
        if self.config.final_logit_softcapping is not None:
            x = do_softcapping(x, self.config.final_logit_softcapping)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
        with_audio: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text logits ``(B, T, text_vocab_size)`` and audio logits ``(B, 7, T, audio_vocab_size)``.

        Training does not call this: the loss reads `hidden_states` and the heads chunk by chunk
        (`omni_train.loss`), so that 181k-wide logits never exist at once.
        """
        h_text, h_audio = self.hidden_states(
            input_ids, audio_features, audio_lengths, audio_mask, input_pos, input_pos_maxp1, with_audio
        )
        text = self.logits(h_text, self.text_head())
        if h_audio is None:
            return text, None
        audio = torch.stack([self.logits(h_audio, self.audio_head(i)) for i in range(N_AUDIO_LAYERS)], dim=1)
        return text, audio

    # ---- KV cache (the post-adapter blocks need one too) ---------------------------------------
    def _all_blocks(self):
        yield from self.transformer.h
        if self.config.post_adapter:
            yield from self.transformer.post_adapter

    def set_kv_cache(
        self,
        batch_size: int,
        max_seq_length: int | None = None,
        rope_cache_length: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().set_kv_cache(batch_size, max_seq_length, rope_cache_length, device, dtype)
        if self.config.post_adapter:
            rope_cache_length = rope_cache_length or self.rope_cache_length()
            for block in self.transformer.post_adapter:
                block.attn.kv_cache = block.attn.build_kv_cache(
                    batch_size, max_seq_length or self.max_seq_length, rope_cache_length, device, dtype
                )

    def clear_kv_cache(self) -> None:
        super().clear_kv_cache()
        for block in self._all_blocks():
            block.attn.kv_cache = None
