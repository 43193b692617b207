"""The token layout of Mini-Omni, derived from the base LLM's text vocabulary.

One text layer and seven audio layers share a single embedding table:

    [0, V)                      base text tokens (V = the base model's padded vocab)
    [V, V + 64)                 text specials (eot, pad_t, input_t, answer_t, asr, ...)
    text_vocab_size + i * 4160  start of audio layer i (4096 SNAC codes + 64 audio specials)

Nothing here names a particular LLM: every id follows from ``V``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

N_AUDIO_LAYERS = 7  # one SNAC coarse frame = 7 tokens, one per audio layer
N_LAYERS = N_AUDIO_LAYERS + 1  # + the text layer, which is always the last
TEXT_LAYER = N_AUDIO_LAYERS

# The target id of positions that carry no loss (prompts, batch padding, text-only answers' audio).
IGNORE_INDEX = -100

# Audio specials, given as codes inside an audio layer (so `audio_id(i, EOA)` is layer i's eoa).
EOA, PAD_A, INPUT_A, ANSWER_A, SPLIT = 4096, 4097, 4098, 4099, 4100

# Position inside a coarse frame -> (codebook, offset within the frame's share of that codebook).
# The flattened order is c0[t], c1[2t], c2[4t], c2[4t+1], c1[2t+1], c2[4t+2], c2[4t+3].
FRAME_ORDER = ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))


@dataclass(frozen=True)
class Vocab:
    """Every id of the layout, from the base model's padded text vocabulary size."""

    base_vocab_size: int  # V
    text_specials: int = 64
    codebook_size: int = 4096  # SNAC codes per codebook
    audio_specials: int = 64

    def __post_init__(self) -> None:
        if self.base_vocab_size <= 0:
            raise ValueError(f"base_vocab_size must be positive, got {self.base_vocab_size}")
        if self.audio_specials < 5 or self.text_specials < 5:
            raise ValueError("need room for at least 5 special tokens per modality")

    # text side
    @property
    def text_vocab_size(self) -> int:
        return self.base_vocab_size + self.text_specials

    @property
    def eot(self) -> int:
        return self.base_vocab_size

    @property
    def pad_t(self) -> int:
        return self.base_vocab_size + 1

    @property
    def input_t(self) -> int:
        return self.base_vocab_size + 2

    @property
    def answer_t(self) -> int:
        return self.base_vocab_size + 3

    @property
    def asr(self) -> int:
        return self.base_vocab_size + 4

    # audio side
    @property
    def audio_vocab_size(self) -> int:
        """Ids per audio layer (Mini-Omni: 4160)."""
        return self.codebook_size + self.audio_specials

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the shared embedding table (Qwen2: 181120)."""
        return self.text_vocab_size + N_AUDIO_LAYERS * self.audio_vocab_size

    def audio_offset(self, layer: int) -> int:
        if not 0 <= layer < N_AUDIO_LAYERS:
            raise ValueError(f"audio layer must be in [0, {N_AUDIO_LAYERS}), got {layer}")
        return self.text_vocab_size + layer * self.audio_vocab_size

    def audio_id(self, layer: int, code):
        """Layer-local code or audio special -> id in the shared table ("layershift")."""
        return code + self.audio_offset(layer)

    def audio_layer_ids(self, code: int) -> list[int]:
        """The id of one code (usually a special) in each of the 7 audio layers."""
        return [self.audio_id(i, code) for i in range(N_AUDIO_LAYERS)]

    def shift_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Layer-local codes ``(..., 7)`` -> ids; the last dim is the audio layer."""
        offsets = torch.arange(N_AUDIO_LAYERS, device=codes.device) * self.audio_vocab_size
        return codes + offsets + self.text_vocab_size


def flatten_snac(codes: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """SNAC's three codebooks -> coarse frames.

    Args:
        codes: ``[c0, c1, c2]`` of shapes ``(N,)``, ``(2N,)``, ``(4N,)`` (a leading batch dim of 1,
            as `SNAC.encode` returns, is accepted).

    Returns:
        ``(N, 7)`` codes; column k is the token for audio layer k.
    """
    c0, c1, c2 = (c.reshape(-1) for c in codes)
    n = c0.numel()
    if c1.numel() != 2 * n or c2.numel() != 4 * n:
        raise ValueError(f"SNAC codebooks must have N, 2N, 4N codes, got {c0.numel()}, {c1.numel()}, {c2.numel()}")
    per_frame = (c0.view(n, 1), c1.view(n, 2), c2.view(n, 4))  # each (N, share)
    return torch.stack([per_frame[book][:, k] for book, k in FRAME_ORDER], dim=1)  # (N, 7)


def unflatten_snac(frames: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of `flatten_snac`: ``(N, 7)`` -> ``[c0 (1, N), c1 (1, 2N), c2 (1, 4N)]`` for `SNAC.decode`."""
    if frames.dim() != 2 or frames.size(1) != N_AUDIO_LAYERS:
        raise ValueError(f"expected frames of shape (N, 7), got {tuple(frames.shape)}")
    n = frames.size(0)
    books = [frames.new_empty(n, share) for share in (1, 2, 4)]
    for col, (book, k) in enumerate(FRAME_ORDER):
        books[book][:, k] = frames[:, col]
    return [b.reshape(1, -1) for b in books]


def apply_delay(frames: torch.Tensor) -> torch.Tensor:
    """Layer-local frames ``(N, 7)`` -> the answer's audio layers ``(7, N + 8)`` (layer-local codes).

    Layer i is ``pad_a x (i+1), its N codes, eoa, pad_a x (6-i)``: text leads and layer i lags it by
    i+1 steps, which lets the model finish each frame's coarse codes before the finer ones.
    """
    n = frames.size(0)
    out = torch.full((N_AUDIO_LAYERS, n + N_AUDIO_LAYERS + 1), PAD_A, dtype=frames.dtype, device=frames.device)
    for i in range(N_AUDIO_LAYERS):
        out[i, i + 1 : i + 1 + n] = frames[:, i]
        out[i, i + 1 + n] = EOA
    return out


def remove_delay(layers: torch.Tensor) -> torch.Tensor:
    """Inverse of `apply_delay` for generated audio: ``(7, L)`` layer-local codes -> ``(N, 7)`` frames.

    Layer i's codes start at step i+1 and end at its first eoa (or the end); N is the number of frames
    that every layer completed, so a truncated generation still decodes.
    """
    if layers.dim() != 2 or layers.size(0) != N_AUDIO_LAYERS:
        raise ValueError(f"expected audio layers of shape (7, L), got {tuple(layers.shape)}")
    columns = []
    for i in range(N_AUDIO_LAYERS):
        codes = layers[i, i + 1 :]
        stop = (codes >= EOA).nonzero()
        columns.append(codes[: stop[0, 0]] if len(stop) else codes)
    n = min(c.numel() for c in columns)
    return torch.stack([c[:n] for c in columns], dim=1)
