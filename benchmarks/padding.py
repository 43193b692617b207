"""Padding: fraction of padded positions per batch, length-bucketed vs stream-order batching.

Same rows, same token budget, side by side. Row lengths follow a VoiceAssistant-like mix: a spoken
question of 2-15 s (50 Whisper frames/s) and a spoken answer of 3-20 s (about 12 SNAC frames/s).

    python benchmarks/padding.py [--rows 20000] [--max-tokens 16384]
"""

import argparse
import random

from omni_train.data.sampler import bucket_batches, random_batches


def padding_fraction(batches) -> float:
    real = sum(sum(b) for b in batches)
    return 1 - real / sum(len(b) * max(b) for b in batches)


def row_lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        question = int(rng.uniform(2, 15) * 50) + 1 + 3  # Whisper frames + input/eoa/answer markers
        answer = int(rng.uniform(3, 20) * 12) + 8  # SNAC frames + the 7-step delay + eoa
        lengths.append(question + answer - 1)
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--max-tokens", type=int, default=16_384)
    parser.add_argument("--buffer", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lengths = row_lengths(args.rows, args.seed)
    plain = padding_fraction(list(random_batches(lengths, int, args.max_tokens)))
    bucketed = padding_fraction(list(bucket_batches(lengths, int, args.max_tokens, args.buffer, args.seed)))
    print(f"rows={args.rows} max_tokens={args.max_tokens} buffer={args.buffer}")
    print(f"padding fraction, stream order: {plain:.4f}")
    print(f"padding fraction, bucketed:     {bucketed:.4f}")
    print(f"ratio bucketed/stream-order: {bucketed / plain:.3f}")


if __name__ == "__main__":
    main()
