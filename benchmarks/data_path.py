"""Data path: samples/s per CPU core of the full loader vs what one GPU consumes in the published recipe.

The loader is the training one (`OmniStream`: parquet rows -> decode the question audio, resample
to 16 kHz, Whisper log-mel, parse answer_snac, tokenise -> bucket -> collate), on A1A2 samples of
VoiceAssistant-400K-shaped rows written to a temporary parquet with the real columns: questions of
2-15 s as 16-bit wav at 22.05 kHz (resampling included), answers of 3-20 s of SNAC frames. It
runs in this process on one thread, as one loader worker does, and is timed in CPU seconds of
this process (`time.process_time`), so the figure is per core however busy the machine is.

The demand: the recipe's batch of 192 over 8 GPUs is 24 samples a GPU a step; the step time is
estimated from FLOPs (litgpt's count for stage 3 at the rows' mean length, plus the frozen
whisper-small encoder) at the A100's 312 TFLOP/s bf16 peak and an assumed MFU (see common.py).

    python benchmarks/data_path.py [--rows 64] [--reps 3] [--workers 2] [--tiny]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from common import (
    ANSWER_SECONDS,
    ASSUMED_MFU,
    QUESTION_SECONDS,
    RECIPE,
    SNAC_FRAMES_PER_SECOND,
    a100_step_seconds,
    training_flops_per_sample,
    typical_audio_frames,
    typical_row_length,
)
from litgpt.tokenizer import Tokenizer

import omni_train
from omni_train.audio import load_audio, log_mel
from omni_train.data import sources
from omni_train.data.collator import OmniCollator
from omni_train.data.datamodule import OmniStream, SampleEncoder
from omni_train.data.snac_format import format_answer_snac, parse_answer_snac
from omni_train.vocab import Vocab

DEMO = Path(omni_train.__file__).parent / "demo_data"
WORDS = ["what", "is", "the", "red", "cat", "doing", "when", "big", "dog", "sees", "a", "small", "bird", "near"]  # fmt: skip
SCHEMA = pa.schema(
    [
        ("split_name", pa.string()), ("index", pa.string()), ("round", pa.string()), ("question", pa.string()),
        ("question_audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("answer", pa.string()), ("answer_snac", pa.string()),
    ]
)  # fmt: skip


def write_parquet(path: Path, rows: int, rate: int, seed: int) -> None:
    rng, g = random.Random(seed), np.random.default_rng(seed)
    records = []
    for i in range(rows):
        question, answer = rng.uniform(*QUESTION_SECONDS), rng.uniform(*ANSWER_SECONDS)
        t = np.arange(int(question * rate)) / rate
        wave = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.02 * g.standard_normal(t.size)
        buf = io.BytesIO()
        sf.write(buf, wave.astype("float32"), rate, format="WAV", subtype="PCM_16")
        n_words = max(1, round(answer * 2.5))  # about 2.5 spoken words a second
        records.append(
            {
                "split_name": "train", "index": str(i), "round": "0", "question": " ".join(rng.choices(WORDS, k=8)),
                "question_audio": {"bytes": buf.getvalue(), "path": f"{i}.wav"},
                "answer": " ".join(rng.choices(WORDS, k=n_words)),
                "answer_snac": format_answer_snac(g.integers(0, 4096, (int(answer * SNAC_FRAMES_PER_SECOND), 7))),
            }
        )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path, row_group_size=32)


def breakdown(path: Path, encoder: SampleEncoder, n: int) -> dict[str, float]:
    """CPU seconds a sample spends in each part of the path (one pass, for where the time goes)."""
    table = pq.read_table(path).slice(0, n).to_pylist()
    parts = {"decode + resample": 0.0, "log-mel": 0.0, "parse answer_snac": 0.0, "tokenise": 0.0}
    for row in table:
        t0 = time.process_time()
        audio = load_audio(row["question_audio"]["bytes"], 16_000)
        t1 = time.process_time()
        log_mel(audio)
        t2 = time.process_time()
        parse_answer_snac(row["answer_snac"])
        t3 = time.process_time()
        encoder.text_ids(row["answer"], "answer")
        t4 = time.process_time()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k] += dt / len(table)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows in the parquet; one pass over them is a rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rate", type=int, default=22050, help="sample rate of the stored question audio")
    parser.add_argument("--workers", type=int, default=2, help="loader workers a GPU (DataConfig.num_workers)")
    parser.add_argument("--mfu", type=float, default=ASSUMED_MFU)
    parser.add_argument("--tiny", action="store_true", help="8 rows, one rep (smoke test)")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.reps = 8, 1

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-00000-of-00001.parquet"
        write_parquet(path, args.rows, args.rate, seed=0)
        encoder = SampleEncoder(Tokenizer(DEMO / "tokenizer"), Vocab(151936), n_mels=80, max_seq_length=2048)
        source = sources.voice_assistant(path, tasks=("A1A2",))
        stream = OmniStream({"va": source}, encoder, OmniCollator(encoder.vocab, 8), max_tokens=16384,
                            weights={"va": 1.0}, buffer_size=args.rows)  # fmt: skip
        batches = iter(stream)
        rates = []
        for _ in range(args.reps + 1):  # the first pass warms up (parquet open, first imports)
            t0, n = time.process_time(), 0
            while n < args.rows:
                n += next(batches).input_ids.size(0)
            rates.append(n / (time.process_time() - t0))
        per_core = statistics.median(rates[1:])
        parts = breakdown(path, encoder, min(args.rows, 16))

    row_length, frames = typical_row_length(), typical_audio_frames()
    flops = training_flops_per_sample("finetune", row_length, frames)
    per_gpu = RECIPE["batch"] / RECIPE["gpus"]
    step = a100_step_seconds(flops, per_gpu, args.mfu)
    demand = per_gpu / step
    supply = per_core * args.workers
    print(
        f"loader, one core: {per_core:.1f} samples per CPU-second (median of {args.reps} passes over {args.rows} A1A2 rows)"
    )
    print("per sample: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in parts.items()))
    print(
        f"stage-3 sample: {row_length:.0f} positions, {frames:.0f} Whisper frames, {flops / 1e12:.2f} TFLOP (litgpt count)"
    )
    print(
        f"A100 step at {per_gpu:.0f} samples/GPU, MFU {args.mfu:.0%}: {step:.3f} s -> demand {demand:.1f} samples/s/GPU"
    )
    print(f"supply with {args.workers} workers (one core each): {supply:.1f} samples/s")
    print(f"ratio loader supply/GPU demand: {supply / demand:.2f}")


if __name__ == "__main__":
    main()
