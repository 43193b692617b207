"""How intelligible the demo codec is: the demo recogniser's CER on held-out speech, original vs codec round trip.

    python data_prep/eval_demo_snac.py [--data omni_train/demo_data] [--snac DIR] [--wavs DIR]

The held-out sentences (``asr/heldout``) are never in the codec's training speech. Two versions of
each are scored by the demo's CTC recogniser (`omni_train.demo_asr`), as they are and after a
codec round trip (24 kHz -> SNAC codes -> 24 kHz -> 16 kHz):

- the shipped 16 kHz FLACs, spoken by the 8 ASR voices;
- the same sentences spoken by the voice assistant's voice (espeak-ng), the voice the demo
  model learns to answer in, so the one its spoken answers are decoded to.

``--wavs DIR`` keeps the first few originals and round trips to listen to. The strongest peaks of
their average spectrum below 4 kHz are printed too: an original's are harmonics of the voice's
pitch; a codec that makes up its own periodicity shows other ones (the demo codec's are multiples
of its frame rate, 24000 / 512 = 46.875 Hz).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from make_demo_data import ASR_RATE, ASSISTANT, SNAC_RATE, resample, speak_all
from omni_train.audio import SnacCodec, load_audio, save_wav
from omni_train.demo_asr import DemoRecognizer
from omni_train.evaluate import librispeech_utterances


def round_trip(codec: SnacCodec, clip_16k: torch.Tensor) -> torch.Tensor:
    """16 kHz -> codes -> 16 kHz, cut to the original length."""
    clip = resample(clip_16k.numpy(), ASR_RATE, SNAC_RATE)
    return resample(codec.decode(codec.encode(clip)).numpy(), SNAC_RATE, ASR_RATE)[: clip_16k.numel()]


def spectral_peaks(clips: list[torch.Tensor], rate: int, n: int = 8, below: float = 4000.0) -> list[int]:
    """The ``n`` strongest local maxima (Hz, ascending) under ``below`` of the clips' mean power spectrum.

    Args:
        clips: ``(S_i,)`` audio at ``rate``; a 4096-point STFT (hop 1024) of each is averaged.
    """
    window = torch.hann_window(4096)
    power = sum(torch.stft(c, 4096, 1024, window=window, return_complex=True).abs().pow(2).mean(1) for c in clips)
    db, freqs = 10 * power.clamp(min=1e-20).log10(), torch.arange(power.numel()) * rate / 4096
    peak = (db[1:-1] > db[:-2]) & (db[1:-1] > db[2:]) & (freqs[1:-1] < below)
    idx = torch.nonzero(peak).reshape(-1) + 1
    return sorted(round(float(freqs[i])) for i in idx[db[idx].argsort(descending=True)[:n]])


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Print the CER table; returns it: speech -> (CER of the originals, CER of the round trips), in %."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "omni_train" / "demo_data")
    parser.add_argument("--snac", type=Path, default=None, help="codec folder (default: the data's snac/)")
    parser.add_argument("--wavs", type=Path, default=None, help="write the first 4 originals and round trips here")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out sentences")
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # a SNAC with noise blocks (noise=True) adds noise when decoding
    codec = SnacCodec.from_pretrained(args.snac or args.data / "snac")
    recognizer = DemoRecognizer.load(args.data / "whisper.pt")
    utts = librispeech_utterances(args.data / "asr" / "heldout")[: args.limit]
    texts = [text for _, _, text in utts]
    voices = {
        "asr/heldout (8 voices)": [load_audio(path, ASR_RATE) for _, path, _ in utts],
        "assistant voice": [resample(a, r, ASR_RATE) for a, r in speak_all([(t.lower(), ASSISTANT) for t in texts], 2)],
    }
    print(f"{len(texts)} held-out sentences; CER of the demo recogniser (%)")
    print(f"{'speech':<24} {'original':>8} {'round trip':>10}")
    table = {}
    for name, originals in voices.items():
        trips = [round_trip(codec, c) for c in originals]
        cer_orig = recognizer.score_clips(originals, texts)[1]
        hyps, cer_trip = recognizer.score_clips(trips, texts)
        print(f"{name:<24} {cer_orig:>8.1f} {cer_trip:>10.1f}")
        table[name] = (cer_orig, cer_trip)
        if args.wavs:
            for i in range(min(4, len(texts))):
                stem = f"{name.split()[0].replace('/', '-')}-{i}"
                save_wav(args.wavs / f"{stem}-original.wav", originals[i], ASR_RATE)
                save_wav(args.wavs / f"{stem}-codec.wav", trips[i], ASR_RATE)
        for hyp, ref in zip(hyps[:3], texts):
            print(f"    round trip: {ref!r} -> {hyp!r}")
        print(
            f"    spectral peaks (Hz): original {spectral_peaks(originals[:10], ASR_RATE)}, "
            f"round trip {spectral_peaks(trips[:10], ASR_RATE)}"
        )
    return table


if __name__ == "__main__":
    main()
