"""Audio in and out: decoding and resampling, Whisper's log-mel and frozen encoder, the SNAC codec.

Everything here is frozen signal processing; nothing in this file is trained. The shapes follow
Mini-Omni: Whisper gives 50 frames a second and a clip of ``ms`` milliseconds fills
``T = int(ms / 20) + 1`` of them; SNAC 24 kHz gives coarse frames of 7 codes (see `vocab.py`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.transforms as AT
import whisper
from whisper.model import AudioEncoder, ModelDimensions
from whisper.tokenizer import get_tokenizer

from omni_train import webm
from omni_train.vocab import flatten_snac, unflatten_snac

WHISPER_SAMPLE_RATE = 16000
SNAC_SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 320  # Whisper: 160-sample mel hop x conv stride 2 = one encoder frame (20 ms)
N_MEL_FRAMES_30S = 3000  # whisper.audio.N_FRAMES: mel frames of a 30-s window
MAX_SECONDS = 30.0  # Whisper has 1500 positions (30 s at 50 frames/s)



@dataclass
class Audio:
    """Encoded audio as a source found it: a file path, or the bytes of a whole file (any container)."""

    path: str | Path | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("Audio needs exactly one of path or data")

    def __repr__(self) -> str:
        return f"Audio(path={self.path!r})" if self.path is not None else f"Audio(<{len(self.data)} bytes>)"


AudioSource = str | os.PathLike | bytes | Audio


class AudioError(ValueError):
    """Audio that cannot be used (unreadable, truncated, empty); the message names the source."""


class TooLongAudio(AudioError):
    """Audio longer than Whisper's window under the 'drop' rule; data loaders count it as a skip."""


class AudioModelError(ValueError):
    """A Whisper or SNAC that cannot be loaded (an unreadable file, or one that is not what it must be)."""


class DownloadFailed(AudioModelError):
    """A Whisper or SNAC given by name (``small``, ``hubertsiuzdak/snac_24khz``) whose download failed.

    Attributes:
        key: ``"whisper"`` or ``"snac"``, the setting that named it, so that a command can advise
            its own flag (`advice`).
    """

    def __init__(self, what: str, name: str, reason: BaseException, key: str, local: str) -> None:
        self.what, self.name, self.key, self.local = what, name, key, local
        self.reason = (str(reason).strip().splitlines() or [type(reason).__name__])[0][:160]
        super().__init__(self.advice(""))

    def advice(self, setting: str) -> str:
        """The error, advising `setting` followed by a local path (``model.whisper=`` for omni-train)."""
        return (f"cannot download {self.what} {self.name!r} ({self.reason}); without network, give a local copy "
                f"instead of the name: {setting}{self.local}")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Decoding


def _describe(src: AudioSource) -> str:
    if isinstance(src, Audio):
        src = src.path if src.path is not None else src.data
    return f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


# OSErrors that say nothing about the file being read (too many open files, a stale network mount,
# no memory): they stop the run as what they are instead of being counted as unreadable audio.
_NOT_THE_FILES_FAULT = {errno.EMFILE, errno.ENFILE, errno.ESTALE, errno.ENOMEM, errno.EIO}


def load_audio(src: AudioSource, sample_rate: int) -> torch.Tensor:
    """Decode a whole file to mono float32 at `sample_rate`.

    libsndfile decodes wav, flac, ogg (vorbis, opus) and mp3; WebM with Opus, what a browser's
    recorder writes, is rewrapped as Ogg Opus for it first (`omni_train.webm`). Channels are averaged
    and the result is resampled with torchaudio's band-limited sinc resampler.

    Args:
        src: a path, the bytes of a whole file, or an `Audio` holding either.
        sample_rate: the rate the caller needs (16000 for Whisper, 24000 for SNAC).

    Returns:
        ``(num_samples,)`` float32 on the CPU.

    Raises:
        AudioError: unreadable, truncated (fewer samples than the header declares), empty or
            non-finite audio; the message names the file, or ``<N bytes>`` for in-memory data.
    """
    name = _describe(src)
    if isinstance(src, Audio):
        src = src.path if src.path is not None else src.data
    handle = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else os.fspath(src)
    try:
        with _open(handle) as f:
            declared, rate = f.frames, f.samplerate
            data = f.read(dtype="float32", always_2d=True)  # (S, channels)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        if isinstance(e, TimeoutError) or getattr(e, "errno", None) in _NOT_THE_FILES_FAULT:
            raise  # the machine's trouble, not a bad row: counting it as one would hide it
        raise AudioError(f"cannot decode audio {name}: {e}") from e
    except webm.WebmError as e:
        raise AudioError(f"cannot decode audio {name}: {e}") from e
    # libsndfile returns what it can of a cut-off mp3; the header's frame count exposes that. The
    # slack covers mp3 encoder delay/padding, whose accounting differs between encoders.
    if declared > 0 and len(data) < declared - 2 * 1152:
        raise AudioError(f"truncated audio {name}: header declares {declared} samples, decoded {len(data)}")
    if len(data) == 0:
        raise AudioError(f"empty audio {name}")
    if not np.isfinite(data).all():
        raise AudioError(f"non-finite samples in audio {name}")
    wave = torch.from_numpy(data).mean(dim=1)  # (S,) mono
    if rate != sample_rate:
        wave = _resampler(rate, sample_rate)(wave)
    return wave.contiguous()


def _open(handle: io.BytesIO | str) -> sf.SoundFile:
    """libsndfile's reader of `handle`; what it cannot open and is WebM (a browser's recording) is
    rewrapped as the Ogg Opus it can (`webm.webm_to_ogg`), so other files cost no extra read."""
    try:
        return sf.SoundFile(handle)
    except sf.SoundFileError:
        if isinstance(handle, io.BytesIO):
            data = handle.getvalue()
        else:
            with open(handle, "rb") as f:
                data = f.read(4)
                data += f.read() if webm.is_webm(data) else b""
        if not webm.is_webm(data):
            raise
    return sf.SoundFile(io.BytesIO(webm.webm_to_ogg(data)))


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> AT.Resample:
    # torchaudio.functional.resample rebuilds its sinc kernel on every call, which costs more than
    # the resampling itself (22.05 -> 16 kHz: 5.4 ms vs 2.4 ms an 8.5-s clip); the module keeps it.
    return AT.Resample(orig, new)


def save_wav(path: str | os.PathLike, audio: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write mono audio as 16-bit PCM wav; samples are clipped to [-1, 1] (PCM would wrap otherwise).

    Args:
        path: the file to write (parent folders are created).
        audio: ``(num_samples,)`` float audio.
        sample_rate: its rate in Hz.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fspath(path), audio, sample_rate, subtype="PCM_16")


# ---------------------------------------------------------------------------------------------
# Whisper input


def whisper_frames(num_samples: int, sample_rate: int = WHISPER_SAMPLE_RATE, max_seconds: float = MAX_SECONDS) -> int:
    """Encoder frames a clip fills: Mini-Omni's ``int(duration_ms / 20) + 1``, capped at Whisper's window.

    The expression is Mini-Omni's, float arithmetic included, so the prompt lengths match its
    inference code. A clip of exactly 30 s would need 1501 frames; the cap (1500) matches what
    `log_mel` keeps under the 'cut' rule.
    """
    duration_ms = (num_samples / sample_rate) * 1000
    return min(int(duration_ms / 20) + 1, int(max_seconds * 50))


def whisper_max_samples(max_seconds: float = MAX_SECONDS) -> int:
    """The longest 16-kHz clip `log_mel` keeps whole; a longer one is cut or dropped (its ``too_long``)."""
    # the longest clip whose Mini-Omni T fits: int((S - 1) / 320) + 1 == 50 * max_seconds
    return SAMPLES_PER_FRAME * int(max_seconds * 50) - 1


def whisper_input(
    audio_16k: torch.Tensor, max_seconds: float = MAX_SECONDS, too_long: Literal["cut", "drop"] = "cut"
) -> torch.Tensor:
    """The part of a clip Whisper hears: all of it, or its first `max_seconds` when longer.

    Args:
        audio_16k: ``(num_samples,)`` mono audio at 16 kHz.
        max_seconds: longest clip kept, at most 30 (Whisper has 1500 positions).
        too_long: 'cut' keeps the first ``max_seconds`` (so that T = 50 * max_seconds); 'drop'
            raises `TooLongAudio`.

    Returns:
        ``(num_samples',)`` float32, at most `whisper_max_samples` long.
    """
    if not 0 < max_seconds <= MAX_SECONDS:
        raise ValueError(f"max_seconds must be in (0, {MAX_SECONDS}], got {max_seconds}")
    if too_long not in ("cut", "drop"):
        raise ValueError(f"too_long must be 'cut' or 'drop', got {too_long!r}")
    audio_16k = torch.as_tensor(audio_16k, dtype=torch.float32).reshape(-1)
    max_samples = whisper_max_samples(max_seconds)
    if audio_16k.numel() > max_samples:
        if too_long == "drop":
            raise TooLongAudio(f"audio of {audio_16k.numel() / WHISPER_SAMPLE_RATE:.2f} s exceeds {max_seconds} s")
        audio_16k = audio_16k[:max_samples]
    return audio_16k


def log_mels(
    audio: torch.Tensor,
    samples: torch.Tensor | list[int],
    n_mels: int = 80,
    pad_to_30s: bool = False,
    cache: MelCache | None = None,
) -> torch.Tensor:
    """Whisper's log-mel spectrogram of a batch of clips, on the clips' device: the one place it is made.

    Each row is openai-whisper's `log_mel_spectrogram` of its own clip, however long the others
    are: the clip is zero-padded to ``320 * T`` samples (T = `whisper_frames`), giving
    ``M = 2 * T`` mel frames (the encoder's conv stride 2 makes that T frames), or with
    ``pad_to_30s`` to 30 s as `whisper.pad_or_trim` does (Mini-Omni's input, ``M = 3000``).
    Training calls this in the step (`WhisperEncoder.encode_audio`), on the GPU where there is
    one, so loader workers only decode; inference and evaluation come the same way.

    Args:
        audio: ``(B, S)`` mono 16-kHz clips, zero-padded on the right.
        samples: ``(B,)`` each clip's length in samples, at most `whisper_max_samples`
            (`whisper_input` cuts longer ones).
        n_mels: 80, or 128 for whisper-large-v3.
        pad_to_30s: reproduce Mini-Omni's 30-s padded input.
        cache: where the log-mel of clips seen before is kept (`MelCache`); None: made anew.

    Returns:
        ``(B, n_mels, M)`` float32, ``M = 2 * max(T)`` (3000 with ``pad_to_30s``); each row's
        frames past its own ``2 * T`` are zeros.
    """
    samples = [int(n) for n in torch.as_tensor(samples).reshape(-1).tolist()]
    if audio.dim() != 2 or audio.size(0) != len(samples):
        raise ValueError(f"expected audio (B, S) and samples (B,), got {tuple(audio.shape)} and {len(samples)}")
    if samples and not 1 <= min(samples) <= max(samples) <= min(audio.size(1), whisper_max_samples()):
        raise ValueError(f"samples must be in [1, {min(audio.size(1), whisper_max_samples())}], got {samples}")
    # one clip at a time, at its own length: no STFT over batch padding (a few small kernels a row
    # on a GPU), and each row is openai-whisper's own function of its clip, exactly
    make = cache.log_mel if cache is not None else clip_log_mel
    mels = [make(clip[:n], n_mels, pad_to_30s) for clip, n in zip(audio.float(), samples)]
    M = max((m.size(1) for m in mels), default=0)
    return torch.stack([F.pad(m, (0, M - m.size(1))) for m in mels]) if mels else audio.new_zeros(0, n_mels, 0)


def clip_log_mel(clip: torch.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> torch.Tensor:
    """openai-whisper's log-mel of one clip ``(S,)``: ``(n_mels, 2T)``, or ``(n_mels, 3000)`` padded to 30 s."""
    if pad_to_30s:
        return whisper.log_mel_spectrogram(whisper.pad_or_trim(clip), n_mels)
    n = clip.numel()
    return whisper.log_mel_spectrogram(clip, n_mels, padding=SAMPLES_PER_FRAME * whisper_frames(n) - n)  # >= 0


class MelCache:
    """The log-mel of the clips a run has already heard, up to `max_mb` megabytes.

    A clip that comes again (every epoch of a small data set, and again in the next stage) gets its
    log-mel from here instead of from its STFT. The log-mel is a function of the clip alone (made
    one clip at a time, `log_mels`), so a cached one is the same bits as a new one, and a run trains
    the same weights with or without the cache. (The encoder's output is not cached: its batched
    convolutions round a row differently in another batch, about 1e-6, and the demo's held-out WER
    moves by several points with float-level changes; BENCHMARKS.md section 14, round 4.)

    A clip is known by its samples (a hash of them, their count included), so the same audio under
    two rows or tasks is one entry. Log-mels stay on the device they were made on. Once `max_mb` is
    reached no more are added (nothing is evicted: over a shuffled epoch, an evicting cache smaller
    than the data would keep none of what comes back).
    """

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self._mels: dict[tuple[bytes, int, bool], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._mels)

    def log_mel(self, clip: torch.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> torch.Tensor:
        """`clip_log_mel`, from the cache where the clip was heard before."""
        key = (hashlib.blake2b(clip.detach().cpu().numpy().tobytes(), digest_size=16).digest(), n_mels, pad_to_30s)
        mel = self._mels.get(key)
        if mel is not None:
            self.hits += 1
            return mel
        self.misses += 1
        mel = clip_log_mel(clip, n_mels, pad_to_30s)
        size = mel.numel() * mel.element_size()
        if self.bytes + size <= self.max_bytes:
            self._mels[key] = mel
            self.bytes += size
        return mel


def stack_clips(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``(S_i,)`` -> one zero-padded batch ``(B, max S_i)`` and their lengths ``(B,)`` (for `log_mels`)."""
    samples = torch.tensor([c.numel() for c in clips], dtype=torch.long)
    audio = torch.zeros(len(clips), int(samples.max()) if len(clips) else 0)
    for b, c in enumerate(clips):
        audio[b, : c.numel()] = c.reshape(-1)
    return audio, samples


def log_mel(
    audio_16k: torch.Tensor,
    n_mels: int = 80,
    pad_to_30s: bool = False,
    max_seconds: float = MAX_SECONDS,
    too_long: Literal["cut", "drop"] = "cut",
) -> torch.Tensor:
    """One clip's log-mel, ``(n_mels, M)`` (`log_mels` of a batch of one, after `whisper_input`)."""
    clip = whisper_input(audio_16k, max_seconds, too_long)
    return log_mels(clip[None], [clip.numel()], n_mels, pad_to_30s)[0]


# ---------------------------------------------------------------------------------------------
# Whisper encoder


def load_whisper(
    name_or_path: str | os.PathLike, device: str | torch.device | None = None, transcribes: bool = False
) -> whisper.model.Whisper:
    """`whisper.load_model`, with errors that say what to give instead.

    Args:
        name_or_path: a Whisper name (``small``: whisper downloads it once, to ~/.cache/whisper), an
            openai-whisper checkpoint file (``{"dims", "model_state_dict"}``, the whole model), or a
            Hugging Face ``WhisperForConditionalGeneration`` folder (``config.json`` and
            ``model.safetensors`` or ``pytorch_model.bin``, as ``save_pretrained`` writes it; e.g.
            a Whisper fine-tuned on the user's language), renamed into openai-whisper's modules.
        device: where to put it (default CPU).
        transcribes: it will transcribe, so its text decoder must cover Whisper's tokenizer; an
            encoder trained for omni-train (the demo's ``whisper.pt``) has a token table of 16.

    Raises:
        DownloadFailed: a name whose download failed.
        FileNotFoundError: neither a file nor a Whisper name.
        AudioModelError: a file that is not a whole openai-whisper model (unreadable, truncated, no
            decoder), or one that cannot transcribe when `transcribes` asks for that.
    """
    name = os.fspath(name_or_path)
    if name in whisper.available_models():
        try:
            model = whisper.load_model(name, device="cpu")
        except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError; a bad checksum a RuntimeError
            local = f"/path/to/{name}.pt (whisper keeps what it downloads in ~/.cache/whisper)"
            raise DownloadFailed("Whisper", name, err, key="whisper", local=local) from err
    elif os.path.isdir(name):
        model = _whisper_hf_folder(Path(name))
    else:
        model = _whisper_file(name)
    if transcribes:
        need = get_tokenizer(multilingual=False).encoding.n_vocab  # the smallest Whisper tokenizer
        if model.dims.n_vocab < need:
            raise AudioModelError(
                f"{name} cannot transcribe: its text decoder has {model.dims.n_vocab} tokens, Whisper's tokenizer "
                f"{need}; it is an encoder for training (as the demo's whisper.pt is), not a speech recogniser: "
                "give a whole Whisper (a name such as small, or its .pt file)"
            )
    return model.to(device or "cpu")


def _whisper_file(path: str) -> whisper.model.Whisper:
    """The file branch of `whisper.load_model`, one check at a time, each failure its own line."""
    if not os.path.isfile(path):
        names = ", ".join(whisper.available_models())
        raise FileNotFoundError(f"Whisper checkpoint not found: {path} (nor is it a Whisper name: {names})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise AudioModelError(
            f"cannot read Whisper checkpoint {path}: truncated, or not a PyTorch file ({reason})"
        ) from err
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise AudioModelError(f"{path} is not an openai-whisper checkpoint: it needs 'dims' and 'model_state_dict'")
    state = checkpoint["model_state_dict"]
    if not any(k.startswith("decoder.") for k in state):
        raise AudioModelError(
            f"{path} holds only Whisper's encoder: openai-whisper files hold the whole model (encoder and "
            "decoder weights with their dims), as whisper.load_model reads them"
        )
    try:
        model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))
        model.load_state_dict(state)
    except (TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise AudioModelError(f"{path}: its weights do not fit its dims ({reason})") from err
    return model


# Hugging Face's module names -> openai-whisper's, applied in order to every key of a
# WhisperForConditionalGeneration (transformers' convert_openai_to_hf.py maps the other way).
_HF_TO_OPENAI = [
    (r"^model\.", ""),
    (r"\.layers\.", ".blocks."),
    (r"\.(self|encoder)_attn\.q_proj\.", r".\1_attn.query."),
    (r"\.(self|encoder)_attn\.k_proj\.", r".\1_attn.key."),
    (r"\.(self|encoder)_attn\.v_proj\.", r".\1_attn.value."),
    (r"\.(self|encoder)_attn\.out_proj\.", r".\1_attn.out."),
    (r"\.(self|encoder)_attn_layer_norm\.", r".\1_attn_ln."),
    (r"\.self_attn", ".attn"),
    (r"\.encoder_attn", ".cross_attn"),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"\.embed_positions\.weight$", ".positional_embedding"),
    (r"\.embed_tokens\.", ".token_embedding."),
]
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _whisper_hf_folder(folder: Path) -> whisper.model.Whisper:
    """A Hugging Face Whisper folder as an openai-whisper `Whisper`: dims from ``config.json``,
    weights renamed (`_HF_TO_OPENAI`); ``proj_out`` is dropped (openai-whisper ties it to the
    token embedding). Half-precision weights are loaded into float32, as openai-whisper files are."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise AudioModelError(f"{folder}: no config.json; a Hugging Face Whisper folder holds config.json and weights")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AudioModelError(f"{config_file}: not JSON ({err})") from err
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise AudioModelError(f"{config_file}: model_type is {kind!r}, not 'whisper'")
    keys = {"n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions", "n_audio_state": "d_model",
            "n_audio_head": "encoder_attention_heads", "n_audio_layer": "encoder_layers", "n_vocab": "vocab_size",
            "n_text_ctx": "max_target_positions", "n_text_state": "d_model",
            "n_text_head": "decoder_attention_heads", "n_text_layer": "decoder_layers"}  # fmt: skip
    if missing := [hf for hf in keys.values() if not isinstance(config.get(hf), int)]:
        raise AudioModelError(f"{config_file}: no {', '.join(dict.fromkeys(missing))}")
    dims = ModelDimensions(**{ours: config[hf] for ours, hf in keys.items()})
    state = {}
    for key, tensor in _hf_state(folder).items():
        for pattern, new in _HF_TO_OPENAI:
            key = re.sub(pattern, new, key)
        if key != "proj_out.weight":
            state[key] = tensor.float()
    if not any(k.startswith("decoder.") for k in state):
        raise AudioModelError(f"{folder} holds only Whisper's encoder: give a WhisperForConditionalGeneration folder")
    model = whisper.model.Whisper(dims)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:200]
        raise AudioModelError(f"{folder}: its weights do not fit its config.json ({reason})") from err
    return model


def _hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder: one safetensors file, shards named by its index, or a .bin."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = next((n for n in HF_WEIGHTS if (folder / n).is_file()), None)
    if name is None:
        raise AudioModelError(f"{folder}: no weights ({' or '.join(HF_WEIGHTS)})")
    path = folder / name
    try:
        if name == "model.safetensors":
            return load_file(path)
        if name.endswith(".index.json"):
            shards = dict.fromkeys(json.loads(path.read_text())["weight_map"].values())
            return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, KeyError, pickle.UnpicklingError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise AudioModelError(f"cannot read {path}: truncated or not a weights file ({reason})") from err


class WhisperEncoder(nn.Module):
    """openai-whisper's `AudioEncoder`, frozen, encoding audio of any length up to 30 s.

    Whisper's own forward asserts a 30-s input. By default (``pad_to_30s=False``) this runs its
    convolutions, positional embedding, blocks and ``ln_post`` on each row's own ``2 * frames``
    mel frames: mel frames past them are zeroed (as the convs' own zero padding would be), and the
    blocks run on the real frames of all rows packed together, each row attending only to itself,
    so a row's frames are the same alone or in any batch (to float tolerance), batch padding costs
    no work, and padded frames are returned as zeros. ``pad_to_30s=True`` reproduces Mini-Omni
    instead: the whole 30-s window
    (real frames attending to the padding too), sliced to F. The two give different features;
    a model trained with one should be run with the same one.

    The encoder is frozen in every stage: it always stays in eval mode, its parameters do not
    require grad, and forward runs under `torch.no_grad` (so even a later ``requires_grad_(True)``
    on a parent module does not train it). The output is an ordinary tensor, fine as the input of
    a trained adapter.
    """

    def __init__(self, encoder: AudioEncoder, pad_to_30s: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_to_30s = pad_to_30s
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_dims(cls, dims: ModelDimensions, pad_to_30s: bool = False) -> WhisperEncoder:
        """A randomly initialised encoder of the given dimensions (for tests and tiny runs)."""
        return cls(
            AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer),
            pad_to_30s=pad_to_30s,
        )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None, pad_to_30s: bool = False
    ) -> WhisperEncoder:
        """Load with `whisper.load_model` and keep only the encoder.

        Args:
            name_or_path: an openai-whisper checkpoint file (``{"dims", "model_state_dict"}``), a
                model name such as ``"small"``, which whisper downloads to its cache, or a Hugging
                Face Whisper folder (`load_whisper`).
            device: where to put the encoder (default CPU).
        """
        model = load_whisper(name_or_path)
        encoder = cls(model.encoder, pad_to_30s=pad_to_30s)
        del model
        return encoder.to(device or "cpu")

    @property
    def n_mels(self) -> int:
        return self.encoder.conv1.in_channels

    @property
    def width(self) -> int:
        """n_audio_state: 768 for whisper-small (the adapter's input width)."""
        return self.encoder.conv1.out_channels

    @property
    def n_ctx(self) -> int:
        return self.encoder.positional_embedding.size(0)

    def train(self, mode: bool = True) -> WhisperEncoder:
        return super().train(False)  # frozen: a parent's .train() must not turn dropout/etc. on

    def encode_audio(self, audio: torch.Tensor, samples: torch.Tensor, cache: MelCache | None = None) -> torch.Tensor:
        """Encode a batch of clips: their log-mel (`log_mels`, on the clips' device), then `forward`.

        Training, evaluation and inference all come through here, so the features are made the
        same way everywhere.

        Args:
            audio: ``(B, S)`` mono 16-kHz clips, zero-padded (each cut by `whisper_input`).
            samples: ``(B,)`` each clip's length in samples.
            cache: the run's log-mel cache (``model.mel_cache_mb``), if any.

        Returns:
            ``(B, F, width)`` features, ``F = max(T)`` (T = `whisper_frames` of each clip).
        """
        samples = torch.as_tensor(samples).reshape(-1)
        frames = torch.tensor([whisper_frames(int(n)) for n in samples.tolist()], device=audio.device)
        return self(log_mels(audio, samples, self.n_mels, self.pad_to_30s, cache), frames)

    def encode_clips(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """16-kHz clips ``(S_i,)``, each cut to what Whisper hears, batched as training's batches
        are -> features ``(B, F, width)`` (on the encoder's device) and frames ``(B,)`` (each prompt's T)."""
        audio, samples = stack_clips([whisper_input(c) for c in clips])  # (B, S), (B,)
        device = next(self.parameters()).device
        features = self.encode_audio(audio.to(device), samples.to(device))
        return features, torch.tensor([whisper_frames(n) for n in samples.tolist()])

    def forward(self, mels: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Encode a batch of log-mels.

        Args:
            mels: ``(B, n_mels, M)`` log-mel, zero-padded across the batch; ``M >= 2 * max(frames)``
                (3000 for input made with ``log_mel(..., pad_to_30s=True)``).
            frames: ``(B,)`` encoder frames of each row (`whisper_frames`), at most 1500.

        Returns:
            ``(B, F, width)`` features, ``F = max(frames)``, in the encoder's dtype.
        """
        frames = torch.as_tensor(frames, device=mels.device).long().reshape(-1)
        if mels.dim() != 3 or mels.size(1) != self.n_mels or mels.size(0) != frames.numel():
            raise ValueError(
                f"expected mels (B, {self.n_mels}, M) and frames (B,), got {tuple(mels.shape)}, {tuple(frames.shape)}"
            )
        f_max = int(frames.max())
        if int(frames.min()) < 1 or f_max > self.n_ctx:
            raise ValueError(f"frames must be in [1, {self.n_ctx}], got {frames.tolist()}")
        if mels.size(2) < 2 * f_max:
            raise ValueError(f"{mels.size(2)} mel frames cannot hold {f_max} encoder frames (need {2 * f_max})")
        x = mels.to(self.encoder.conv1.weight.dtype)
        with torch.no_grad():
            if self.pad_to_30s:
                return self.encoder(self._silence_padded(x, frames))[:, :f_max]
            return self._encode_own_length(x, frames, f_max)

    def _silence_padded(self, mels: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Extend to 3000 mel frames as `whisper.pad_or_trim` would have: batch padding becomes silence.

        Zero frames past a row's ``2 * frames`` are padding (real log-mel is never all zeros); in
        Whisper's normalised log-mel, zero-padded audio is ``max(-1.5, row max - 2)``. A row that
        already holds its 30-s padded log-mel is left untouched, hence bit-identical to Mini-Omni.
        """
        x = F.pad(mels, (0, N_MEL_FRAMES_30S - mels.size(2)))  # (B, n_mels, 3000)
        t = torch.arange(N_MEL_FRAMES_30S, device=x.device)
        past = t[None, :] >= 2 * frames[:, None]  # (B, 3000)
        row_max = x.masked_fill(past[:, None, :], float("-inf")).amax(dim=(1, 2))  # (B,)
        silence = torch.clamp(row_max - 2.0, min=-1.5)
        fill = past & (x == 0).all(dim=1)  # (B, 3000)
        return torch.where(fill[:, None, :], silence[:, None, None], x)

    def _encode_own_length(self, mels: torch.Tensor, frames: torch.Tensor, f_max: int) -> torch.Tensor:
        """Whisper's encoder on each row's real frames only: no work is spent on batch padding.

        The convolutions run on the batch with the mel padding zeroed (their own zero padding at a
        clip's end is then what a row alone sees; they are ~2% of the time). After them the real
        frames of all rows are packed into one ``(N, width)`` sequence, ``N = sum(frames)``: the
        projections and MLPs, which are most of the work, run on that, and attention runs row by
        row on the row's own frames, so there is no mask (and no masked padding keys) either.
        """
        enc = self.encoder
        mel_valid = torch.arange(2 * f_max, device=mels.device)[None, :] < 2 * frames[:, None]  # (B, 2F)
        x = torch.where(mel_valid[:, None, :], mels[..., : 2 * f_max], 0.0)  # (B, n_mels, 2F)
        x = F.gelu(enc.conv1(x))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)  # (B, F, width)
        x = (x + enc.positional_embedding[:f_max]).to(x.dtype)
        valid = torch.arange(f_max, device=x.device)[None, :] < frames[:, None]  # (B, F)
        rows = frames.tolist()
        x = x[valid]  # (N, width): real frames, row after row
        for block in enc.blocks:
            x = self._block(block, x, rows)
        out = x.new_zeros(valid.shape + (x.size(-1),))  # (B, F, width): padded frames are zeros
        out[valid] = enc.ln_post(x)
        return out

    @staticmethod
    def _block(block: nn.Module, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Whisper's `ResidualAttentionBlock` on packed rows ``(N, width)``, each attending to itself.

        Whisper scales q and k by ``d**-0.25`` each, i.e. SDPA's default ``d**-0.5``. One SDPA
        call a row keeps attention exactly the row's own (a batch of a few rows; on a GPU a large
        batch of short rows pays one small kernel launch a row a layer).
        """
        attn = block.attn
        h = block.attn_ln(x)
        N, C = h.shape
        q, k, v = (p(h).view(N, attn.n_head, -1).transpose(0, 1) for p in (attn.query, attn.key, attn.value))
        a = [  # (n_head, F_i, head_size) a row
            F.scaled_dot_product_attention(qi, ki, vi)
            for qi, ki, vi in zip(q.split(rows, 1), k.split(rows, 1), v.split(rows, 1))
        ]
        x = x + attn.out(torch.cat(a, dim=1).transpose(0, 1).reshape(N, C))
        return x + block.mlp(block.mlp_ln(x))


# ---------------------------------------------------------------------------------------------
# SNAC codec


class SnacCodec(nn.Module):
    """`snac.SNAC`, frozen, speaking in Mini-Omni's coarse frames ``(N, 7)`` of layer-local codes.

    SNAC pads its input to a multiple of ``hop_length * lcm(vq_strides[0], attn_window)`` samples,
    so a clip of S samples gives ``N = num_frames(S)`` frames, each `samples_per_frame` samples.
    """

    def __init__(self, model: nn.Module, config: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config  # SNAC's config.json, when known (for `save_pretrained`)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, config: dict) -> SnacCodec:
        """A randomly initialised codec (keys as in SNAC's config.json; for tests and tiny runs)."""
        from snac import SNAC

        return cls(SNAC(**config), dict(config))

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, device: str | torch.device | None = None) -> SnacCodec:
        """Load a directory in SNAC's own layout (``config.json`` + ``pytorch_model.bin``).

        Anything that is not a directory is passed to `SNAC.from_pretrained` as a hub name
        (``"hubertsiuzdak/snac_24khz"`` is Mini-Omni's), which needs network access.
        """
        from snac import SNAC

        path, name = Path(path_or_name), os.fspath(path_or_name)
        if path.is_dir():
            config = json.loads((path / "config.json").read_text())
            codec = cls.from_config(config)
            try:
                state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
                raise AudioModelError(f"cannot read {path / 'pytorch_model.bin'}: truncated, or not a PyTorch file "
                                      f"({reason})") from err  # fmt: skip
            codec.model.load_state_dict(state)
        elif path.exists():
            raise NotADirectoryError(f"SNAC is a folder (config.json and pytorch_model.bin), not a file: {name}")
        elif not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name):
            raise FileNotFoundError(f"SNAC folder not found: {name} (nor is it a hub name such as "
                                    "hubertsiuzdak/snac_24khz)")  # fmt: skip
        else:
            try:
                codec = cls(SNAC.from_pretrained(name))
            except Exception as err:  # the hub client's many errors (offline, proxy, no such repo) mean one thing here
                local = f"/path/to/{name.split('/')[-1]} (a folder holding its config.json and pytorch_model.bin)"
                raise DownloadFailed("SNAC", name, err, key="snac", local=local) from err
        return codec.to(device or "cpu")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write SNAC's layout, loadable by `from_pretrained` and by `SNAC.from_pretrained`."""
        if self.config is None:
            raise ValueError("this codec was loaded from the hub without its config; nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config, indent=2))
        torch.save(self.model.state_dict(), directory / "pytorch_model.bin")

    def train(self, mode: bool = True) -> SnacCodec:
        return super().train(False)  # frozen in every stage

    @property
    def sample_rate(self) -> int:
        return int(self.model.sampling_rate)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples of one coarse frame (2048 for SNAC 24 kHz: about 11.7 frames per second)."""
        return int(self.model.hop_length) * self.model.vq_strides[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_frames(self, num_samples: int) -> int:
        """Coarse frames SNAC makes of ``num_samples`` (it pads to its own multiple first)."""
        pad_to = int(self.model.hop_length) * math.lcm(self.model.vq_strides[0], self.model.attn_window_size or 1)
        return math.ceil(num_samples / pad_to) * pad_to // self.samples_per_frame

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``(S,)`` at `sample_rate` -> layer-local frames ``(N, 7)`` int64 on the CPU."""
        return self.encode_batch([audio])[0]

    def encode_batch(self, audios: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode several clips in one forward pass (for data preparation).

        Clips are zero-padded to the longest and each row's codes cut to its own `num_frames`.
        SNAC's convolutions see the neighbouring padding, so the last frames of a shorter clip may
        differ from encoding it alone (clips of one padded length are identical); pass clips of
        similar length together, as length-sorted data preparation does anyway.

        Args:
            audios: clips ``(S_i,)`` at `sample_rate`, tensors or arrays.

        Returns:
            one ``(N_i, 7)`` int64 CPU tensor a clip.
        """
        if not audios:
            return []
        clips = [torch.as_tensor(a, dtype=torch.float32).reshape(-1) for a in audios]
        if any(c.numel() == 0 for c in clips):
            raise ValueError("cannot encode empty audio")
        longest = max(c.numel() for c in clips)
        batch = torch.stack([F.pad(c, (0, longest - c.numel())) for c in clips]).to(self.device)
        with torch.no_grad():
            codes = self.model.encode(batch[:, None, :])  # [(B, N), (B, 2N), (B, 4N)]
        out = []
        for i, clip in enumerate(clips):
            n = self.num_frames(clip.numel())
            out.append(flatten_snac([c[i, : n * s] for c, s in zip(codes, (1, 2, 4))]).long().cpu())
        return out

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """Layer-local frames ``(N, 7)`` -> audio ``(N * samples_per_frame,)`` float32 on the CPU.

        SNAC's decoder adds noise (``noise=True`` in its config), so decoding is not deterministic.
        """
        frames = torch.as_tensor(frames).long()
        size = self.model.codebook_size
        if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= size):
            raise ValueError(f"SNAC codes must be in [0, {size}); got [{int(frames.min())}, {int(frames.max())}]")
        codes = [c.to(self.device) for c in unflatten_snac(frames)]
        with torch.no_grad():
            audio = self.model.decode(codes)  # (1, 1, S)
        return audio.reshape(-1).float().cpu()
