"""Whisper encoder: audio-length encoding vs Mini-Omni's pad-to-30-s, on a 2-15 s length mix.

Both run `omni_train.audio.WhisperEncoder` on the same clips in the same length-sorted batches:
ours on each clip's own length (log-mel of the clip; the blocks run on the rows' real frames
packed together, so batch padding costs nothing), Mini-Omni's on the 30-s padded log-mel (3000
mel frames a clip). Only the encoder is timed; the log-mel is made before it either way (and is
30 s long there too under pad-to-30-s). Our real frames are checked against whisper's own
modules run on each clip alone (`alone`), which is what a clip's features must be.

No whisper-small weights can be downloaded here, so the encoder is randomly initialised with
whisper-small's shape (80 mels, 1500 positions, 768 wide, 12 heads, 12 layers). Speed does not
depend on the weights; the cosine similarity of the real frames' features does, so on random
weights it is only indicative of what trained weights give.

    python benchmarks/whisper_encoder.py [--clips 12] [--batch 2] [--reps 2] [--random SEED] [--tiny]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F
from common import QUESTION_SECONDS, interleaved
from whisper.model import ModelDimensions

from omni_train.audio import WHISPER_SAMPLE_RATE, WhisperEncoder, log_mel, whisper_frames

WHISPER_SMALL = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 768, "n_audio_head": 12, "n_audio_layer": 12}
WHISPER_TINY = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 1}
TEXT_SIDE = {
    "n_vocab": 10,
    "n_text_ctx": 4,
    "n_text_state": 32,
    "n_text_head": 2,
    "n_text_layer": 1,
}  # unused, must exist


def clip(seconds: float, seed: int) -> torch.Tensor:
    """Speech-like test audio: a few drifting tones in noise, 16 kHz."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * WHISPER_SAMPLE_RATE)) / WHISPER_SAMPLE_RATE
    tones = sum(torch.sin(2 * torch.pi * (f + 40 * torch.sin(t)) * t) for f in (180.0, 420.0, 1100.0))
    return 0.05 * tones + 0.02 * torch.randn(t.numel(), generator=g)


def batches(mels: list[torch.Tensor], frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad log-mels ``(n_mels, M_i)`` to one ``(B, n_mels, M)`` batch, as the collator does."""
    M = max(m.size(1) for m in mels)
    return torch.stack([F.pad(m, (0, M - m.size(1))) for m in mels]), torch.tensor(frames)


def encoder_flops(dims: ModelDimensions, frames: int) -> float:
    """Multiply-adds of the encoder on one clip of `frames` encoder frames (convs, projections, MLP, attention)."""
    d = dims.n_audio_state
    convs = 2 * frames * dims.n_mels * 3 * d + frames * 3 * d * d  # conv1 on 2F mel frames, conv2 (stride 2)
    return convs + dims.n_audio_layer * frames * (12 * d * d + 2 * frames * d)


def alone(encoder: WhisperEncoder, mel: torch.Tensor, frames: int) -> torch.Tensor:
    """Whisper's own `AudioEncoder.forward` on one clip's ``(n_mels, 2 * frames)`` log-mel, minus its 30-s assert."""
    enc = encoder.encoder
    with torch.no_grad():
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel[None, :, : 2 * frames])))).permute(0, 2, 1)
        x = x + enc.positional_embedding[:frames]
        for block in enc.blocks:
            x = block(x)  # whisper's ResidualAttentionBlock, no mask: the clip is alone
        return enc.ln_post(x)[0]  # (frames, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2, help="clips a batch (length-sorted, as bucketing gives)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--random", type=int, metavar="SEED", help="draw lengths at random (default: quantiles)")
    parser.add_argument("--tiny", action="store_true", help="a 32-wide, 1-layer encoder on two clips (smoke test)")
    args = parser.parse_args()
    if args.tiny:
        args.clips, args.batch, args.reps = 2, 2, 1

    torch.manual_seed(0)
    dims = ModelDimensions(**(WHISPER_TINY if args.tiny else WHISPER_SMALL), **TEXT_SIDE)
    ours, padded = WhisperEncoder.from_dims(dims), WhisperEncoder.from_dims(dims, pad_to_30s=True)
    padded.encoder = ours.encoder  # the very same weights

    lo, hi = QUESTION_SECONDS
    if args.random is None:  # the mix's quantiles: their mean is the mix's (8.5 s) whatever the clip count
        seconds = [lo + (hi - lo) * (i + 0.5) / args.clips for i in range(args.clips)]
    else:  # a random draw: 12 clips' mean strays by +-1 s, and the ratio with it
        rng = random.Random(args.random)
        seconds = sorted(rng.uniform(lo, hi) for _ in range(args.clips))
    audio = [clip(s, i) for i, s in enumerate(seconds)]
    frames = [whisper_frames(a.numel()) for a in audio]
    groups = [range(i, min(i + args.batch, args.clips)) for i in range(0, args.clips, args.batch)]
    own = [batches([log_mel(audio[i]) for i in g], [frames[i] for i in g]) for g in groups]
    full = [batches([log_mel(audio[i], pad_to_30s=True) for i in g], [frames[i] for i in g]) for g in groups]

    features = {}

    def run(name, encoder, inputs):
        def go():
            features[name] = [encoder(mels, f) for mels, f in inputs]

        return go

    t = interleaved({"own length": run("own", ours, own), "pad to 30 s": run("padded", padded, full)}, args.reps)
    cos = torch.cat(
        [
            F.cosine_similarity(a[j, :n], b[j, :n], dim=-1)
            for a, b, (_, f) in zip(features["own"], features["padded"], own)
            for j, n in enumerate(f.tolist())
        ]
    )  # one per real frame
    diff = max(
        (out[j, :n] - alone(ours, mels[j], n)).abs().max().item()
        for out, (mels, f) in zip(features["own"], own)
        for j, n in enumerate(f.tolist())
    )
    print(f"encoder n_audio_state={dims.n_audio_state} layers={dims.n_audio_layer} threads={torch.get_num_threads()}")
    print(f"clips {', '.join(f'{s:.1f}' for s in seconds)} s in batches of {args.batch}")
    print(f"encoder frames: own length {sum(f.size(2) // 2 * f.size(0) for f, _ in own)}, "
          f"padded {sum(f.size(2) // 2 * f.size(0) for f, _ in full)} "
          f"(real {sum(frames)}: what our blocks see)")  # fmt: skip
    bound = sum(encoder_flops(dims, 1500) for _ in frames) / sum(encoder_flops(dims, f) for f in frames)
    print(f"FLOP ratio padded/own (the ratio at equal speed per FLOP): {bound:.2f}")
    print(f"time: own length {t['own length']:.3f} s, pad to 30 s {t['pad to 30 s']:.3f} s")
    print(f"own length vs whisper's modules on each clip alone: max abs difference {diff:.1e}")
    print(f"cosine similarity of real frames (random weights, indicative): mean {cos.mean():.4f} min {cos.min():.4f}")
    print(f"ratio pad-to-30s/own-length time: {t['pad to 30 s'] / t['own length']:.2f}")


if __name__ == "__main__":
    main()
