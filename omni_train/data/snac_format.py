"""The text form of SNAC answer codes in VoiceAssistant-400K's ``answer_snac`` column.

A string of coarse frames, each a ``#`` followed by the frame's 7 layer-local codes in the flattened
order of `omni_train.vocab.FRAME_ORDER`, all separated by single spaces:

    "# 1942 2031 2825 2111 2743 271 3545 # 1399 ..."

`format_answer_snac` writes exactly that (no leading or trailing space), which is what joining
Mini-Omni's ``reconscruct_snac`` list (``["#", c0, ..., c6, "#", ...]``) with ``" "`` gives.
`parse_answer_snac` is as lenient about whitespace as SLAM-LLM's reader (``str.split()``: any run of
spaces, tabs or newlines, leading and trailing whitespace ignored) and also takes ``#`` glued to a
code (``"#1942 ..."``), but strict about everything that would silently shift codes between audio
layers: every frame must hold exactly 7 integers in ``[0, 4096)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from omni_train.vocab import N_AUDIO_LAYERS

CODEBOOK_SIZE = 4096  # SNAC 24 kHz: 4096 codes per codebook
_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take "+5", "1_0" and non-ASCII digits
_CODES = re.compile(r"[0-9]{1,4}(?: [0-9]{1,4})*")


class SnacFormatError(ValueError):
    """An ``answer_snac`` string (or codes meant to become one) that is not well formed."""


def parse_answer_snac(text: str) -> torch.Tensor:
    """``"# a b c d e f g # ..."`` -> layer-local codes of shape ``(N, 7)``, dtype int64.

    Raises:
        SnacFormatError: the string is empty, has text before its first ``#``, a frame without
            exactly 7 codes, a code that is not an integer, or one outside ``[0, 4096)``. The
            message names the frame (0-based) and the code's position in it.
    """
    if not isinstance(text, str):
        raise SnacFormatError(f"answer_snac must be a string, got {type(text).__name__}")
    tokens = text.split()
    # Fast path, the well-formed common case: '#' at every 8th token, codes in between.
    n = len(tokens) // (N_AUDIO_LAYERS + 1)
    if n and len(tokens) == n * (N_AUDIO_LAYERS + 1) and tokens[:: N_AUDIO_LAYERS + 1] == ["#"] * n:
        del tokens[:: N_AUDIO_LAYERS + 1]
        joined = " ".join(tokens)
        if _CODES.fullmatch(joined):  # 1-4 ASCII digits each: no signs, junk or overflow below
            codes = np.array(tokens, dtype=np.int64)
            if codes.max() < CODEBOOK_SIZE:
                return torch.from_numpy(codes).view(n, N_AUDIO_LAYERS)
    return _parse_slowly(text)


def _parse_slowly(text: str) -> torch.Tensor:
    """The same parse, one frame at a time, to say precisely what is wrong."""
    body = text.strip()
    if not body:
        raise SnacFormatError("answer_snac is empty")
    if not body.startswith("#"):
        head = body.split("#", 1)[0].strip()
        raise SnacFormatError(f"answer_snac must start with '#', found {_clip(head)!r} before the first frame")
    frames = []
    for k, chunk in enumerate(body[1:].split("#")):
        tokens = chunk.split()
        if len(tokens) != N_AUDIO_LAYERS:
            raise SnacFormatError(f"frame {k} has {len(tokens)} codes, expected {N_AUDIO_LAYERS}")
        frame = []
        for j, tok in enumerate(tokens):
            if not _INT.fullmatch(tok):
                raise SnacFormatError(f"frame {k}, code {j}: {_clip(tok)!r} is not an integer")
            code = int(tok) if len(tok) <= 12 else -1  # int() refuses > 4300 digits with a ValueError
            if not 0 <= code < CODEBOOK_SIZE:
                raise SnacFormatError(f"frame {k}, code {j}: {_clip(tok)} is out of range [0, {CODEBOOK_SIZE})")
            frame.append(code)
        frames.append(frame)
    return torch.tensor(frames, dtype=torch.long)


def format_answer_snac(frames: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> str:
    """Layer-local codes ``(N, 7)`` -> ``"# a b c d e f g # ..."``; the exact inverse of `parse_answer_snac`.

    Raises:
        SnacFormatError: not a non-empty ``(N, 7)`` array of integers in ``[0, 4096)`` (the text
            form has no way to say "no frames", and specials such as eoa are not SNAC codes).
    """
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 2 or arr.shape[1] != N_AUDIO_LAYERS or arr.shape[0] == 0:
        raise SnacFormatError(f"expected frames of shape (N, 7) with N >= 1, got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise SnacFormatError(f"expected integer codes, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= CODEBOOK_SIZE)
    if bad.any():
        k, j = np.argwhere(bad)[0]
        raise SnacFormatError(f"frame {k}, code {j}: {arr[k, j]} is out of range [0, {CODEBOOK_SIZE})")
    return " ".join("# " + " ".join(map(str, row)) for row in arr.tolist())


def frames_from_flat(codes: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A flat list of codes, 7 per frame in frame order (no ``#`` markers) -> ``(N, 7)``.

    This is the ``answer_snac`` string with the ``#`` removed, the form a JSONL ``target_token``
    list takes when it holds SNAC codes.
    """
    try:
        arr = np.asarray(codes)
    except (ValueError, TypeError) as err:  # ragged or mixed lists
        raise SnacFormatError(f"codes are not a flat list of integers: {err}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise SnacFormatError(f"expected a non-empty flat list of codes, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise SnacFormatError(f"expected integer codes, got {arr.dtype} values such as {_clip(repr(arr[0]))}")
    if arr.size % N_AUDIO_LAYERS:
        raise SnacFormatError(f"{arr.size} codes is not a whole number of {N_AUDIO_LAYERS}-code frames")
    bad = np.flatnonzero((arr < 0) | (arr >= CODEBOOK_SIZE))
    if bad.size:
        i = int(bad[0])
        k, j = divmod(i, N_AUDIO_LAYERS)
        raise SnacFormatError(f"frame {k}, code {j}: {arr[i]} is out of range [0, {CODEBOOK_SIZE})")
    return torch.from_numpy(arr.astype(np.int64)).view(-1, N_AUDIO_LAYERS)


def _clip(s: str, n: int = 20) -> str:
    return s if len(s) <= n else s[:n] + "..."
