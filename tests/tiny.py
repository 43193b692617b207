"""Tiny litgpt configs of several architecture families, for tests that must run in seconds."""

import torch
from litgpt.config import Config

from omni_train.model import OmniConfig

SMALL = dict(n_layer=2, n_embd=64, n_head=4, head_size=16, padded_vocab_size=512, vocab_size=500, block_size=256)

FAMILIES = {
    # qkv bias, grouped queries, RMSNorm, gated MLP (Mini-Omni's backbone family)
    "qwen2": ("Qwen2.5-0.5B", dict(n_query_groups=2, intermediate_size=96)),
    # no biases, grouped queries, llama3 rope scaling
    "llama": ("Llama-3.2-1B", dict(n_query_groups=2, intermediate_size=96)),
    # parallel residual, LayerNorm, GELU MLP, partial rotary, biases everywhere
    "phi": ("phi-2", dict(intermediate_size=128)),
    # scaled embeddings, GeGLU MLP, unit-offset RMSNorm
    "gemma": ("gemma-2b", dict(n_query_groups=1, intermediate_size=96)),
}


# openai-whisper ModelDimensions of a tiny encoder (the text decoder is unused but must exist)
WHISPER_DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
    n_vocab=10, n_text_ctx=4, n_text_state=32, n_text_head=2, n_text_layer=1,
)  # fmt: skip
# SNAC 24 kHz's shape (no local attention, strides 4,2,1), shrunk: hop 8, so 32 samples a coarse frame
SNAC_TINY = dict(
    sampling_rate=24000, encoder_dim=8, encoder_rates=[2, 4], decoder_dim=16, decoder_rates=[4, 2],
    attn_window_size=None, codebook_size=4096, codebook_dim=4, vq_strides=[4, 2, 1],
)  # fmt: skip


def tiny_base(family: str = "qwen2", **overrides) -> Config:
    name, extra = FAMILIES[family]
    return Config.from_name(name, **{**SMALL, **extra, **overrides})


def tiny_omni(family: str = "qwen2", whisper_dim: int = 32, **omni) -> OmniConfig:
    return OmniConfig.from_base(tiny_base(family), whisper_adapter_dim=whisper_dim, post_adapter_layers=2, **omni)


def train_tokenizer(directory, vocab_size: int = 300):
    """A byte-level BPE trained in the test, saved so litgpt's `Tokenizer(directory)` loads it."""
    import json
    from pathlib import Path

    from litgpt.tokenizer import Tokenizer as LitTokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the model hears and talks", "question answer speech", "what is two plus three"] * 20, trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "add_bos_token": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return LitTokenizer(directory)


def speech(T: int, generator=None):
    """A 16-kHz clip of exactly T Whisper frames (the shortest such: ``320 * (T - 1) + 1`` samples), noise."""
    return 0.1 * torch.randn(320 * (T - 1) + 1, generator=generator)
