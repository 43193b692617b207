"""Tiny models and inputs for tests that must run in seconds: litgpt configs of several architecture
families, a Whisper encoder and SNAC codec shape, a tokenizer trained on the spot, audio, a batch of every task."""

import numpy as np
import pyarrow as pa
import torch
import whisper
from litgpt.config import Config
from whisper.model import ModelDimensions

from omni_train.data.collator import OmniCollator
from omni_train.data.samples import Encoded
from omni_train.model import OmniConfig, OmniGPT
from omni_train.tasks import Task

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
WHISPER = ModelDimensions(**WHISPER_DIMS)
# the same encoder with a multilingual tokenizer's vocabulary, so that whisper's own decoding runs (the ASR judges)
JUDGE_DIMS = ModelDimensions(**{**WHISPER_DIMS, "n_vocab": 51864, "n_text_ctx": 16})
# SNAC 24 kHz's shape (no local attention, strides 4,2,1), shrunk: hop 8, so 32 samples a coarse frame
SNAC_TINY = dict(
    sampling_rate=24000, encoder_dim=8, encoder_rates=[2, 4], decoder_dim=16, decoder_rates=[4, 2],
    attn_window_size=None, codebook_size=4096, codebook_dim=4, vq_strides=[4, 2, 1],
    noise=False,  # deterministic decoding
)  # fmt: skip

# VoiceAssistant-400K's columns and types, as the real parquet files have them
VA_SCHEMA = pa.schema([
    ("split_name", pa.string()), ("index", pa.string()), ("round", pa.string()), ("question", pa.string()),
    ("question_audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("answer", pa.string()), ("answer_snac", pa.string()),
])  # fmt: skip


def tiny_base(family: str = "qwen2", **overrides) -> Config:
    name, extra = FAMILIES[family]
    return Config.from_name(name, **{**SMALL, **extra, **overrides})


def tiny_omni(family: str = "qwen2", whisper_dim: int = 32, **omni) -> OmniConfig:
    return OmniConfig.from_base(tiny_base(family), whisper_adapter_dim=whisper_dim, post_adapter_layers=2, **omni)


def whisper_model(dims: ModelDimensions) -> whisper.model.Whisper:
    """A random openai-whisper model; its decoder's positional embedding, which whisper leaves
    `torch.empty` for a checkpoint to fill, filled too (uninitialised memory may hold NaN)."""
    model = whisper.model.Whisper(dims)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.02)
    return model


def make_model(family: str = "qwen2", seed: int = 0, **omni) -> OmniGPT:
    torch.manual_seed(seed)
    return OmniGPT(tiny_omni(family, **omni)).eval()


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


def clips(*seconds: float, seed: int = 0) -> list[torch.Tensor]:
    """16-kHz noise clips of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000), generator=g) for s in seconds]


def tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A noisy sine (its pitch set by the seed): audio that round-trips through a codec differently per seed."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def all_tasks_batch(vocab):
    """One collated batch with a row of each of A1T1, T1A2, A1A2 and T1T2."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 4096, (3, 7), generator=g)
    samples = [
        Encoded(Task.A1T1, answer_ids=[5, 6], audio=speech(3, g), audio_frames=3),
        Encoded(Task.T1A2, question_ids=[1, 2], answer_ids=[1, 2], answer_frames=frames),
        Encoded(Task.A1A2, answer_ids=[7], audio=speech(2, g), audio_frames=2, answer_frames=frames),
        Encoded(Task.T1T2, question_ids=[3], answer_ids=[4, 9]),
    ]
    return OmniCollator(vocab)(samples)
