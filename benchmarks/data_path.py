"""Data path: samples/s per CPU core of the full loader vs what one GPU consumes in the published recipe.

The loader is the training one (`OmniStream`: parquet rows -> decode the question audio, resample
to 16 kHz, parse answer_snac, tokenise -> bucket -> collate; the log-mel is made in the training
step, batched on the GPU: `WhisperEncoder.encode_audio`), on A1A2 samples of VoiceAssistant-400K-
shaped rows written to a temporary parquet with the real columns. The questions are speech: the
demo's espeak-ng clips strung together to 2-15 s with short pauses, stored as 16-bit wav at
22.05 kHz (so resampling is included); the answers are the demo's sentences, 3-20 s of SNAC
frames; the tokenizer is a byte-level BPE of Qwen2's size (151,643 tokens) trained here on made-up
words. It runs in this process on one thread, as one loader worker does, and is timed in CPU
seconds of this process (`time.process_time`), so the figure is per core however busy the
machine is. Beside it, in alternating passes, the same loader with the log-mel made in the worker
(as before it moved to the step) gives the side-by-side ratio.

The demand: the recipe's batch of 192 over 8 GPUs is 24 samples a GPU a step; the step time is
estimated from FLOPs (litgpt's count for stage 3 at the rows' mean length, plus the frozen
whisper-small encoder) at the A100's 312 TFLOP/s bf16 peak and an MFU (60% by default).

    python benchmarks/data_path.py [--rows 64] [--reps 7] [--workers 2] [--mfu 0.6] [--tiny]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch
from common import (
    ANSWER_SECONDS,
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
from omni_train.audio import WHISPER_SAMPLE_RATE, load_audio, log_mel, log_mels, stack_clips
from omni_train.data import sources
from omni_train.data.collator import OmniCollator
from omni_train.data.datamodule import OmniStream, SampleEncoder
from omni_train.data.snac_format import format_answer_snac, parse_answer_snac
from omni_train.vocab import Vocab

DEMO = Path(omni_train.__file__).parent / "demo_data"
QWEN2_BPE = 151_643  # Qwen2's byte-level BPE tokens (its 151,936 rows add special tokens and padding)
SCHEMA = pa.schema(
    [
        ("split_name", pa.string()), ("index", pa.string()), ("round", pa.string()), ("question", pa.string()),
        ("question_audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("answer", pa.string()), ("answer_snac", pa.string()),
    ]
)  # fmt: skip


def demo_speech() -> tuple[list[torch.Tensor], list[str]]:
    """The demo's espeak-ng questions (16 kHz) and its answer sentences."""
    table = pq.read_table(DEMO / "voice_assistant.parquet").to_pylist()
    clips = [load_audio(r["question_audio"]["bytes"], WHISPER_SAMPLE_RATE) for r in table]
    texts = [r["answer"] for r in table]
    texts += [json.loads(line)["response"] for line in (DEMO / "textqa.jsonl").read_text().splitlines()]
    return clips, texts


def speech(seconds: float, clips: list[torch.Tensor], rate: int, rng: random.Random) -> np.ndarray:
    """Espeak clips strung together with 0.1-0.4 s pauses to `seconds`, resampled to `rate` (not timed)."""
    parts, n = [], 0
    while n < seconds * WHISPER_SAMPLE_RATE:
        clip = rng.choice(clips)
        pause = torch.zeros(int(rng.uniform(0.1, 0.4) * WHISPER_SAMPLE_RATE))
        parts += [clip, pause]
        n += clip.numel() + pause.numel()
    wave = torch.cat(parts)[: int(seconds * WHISPER_SAMPLE_RATE)]
    scale = rate / WHISPER_SAMPLE_RATE
    return torch.nn.functional.interpolate(wave[None, None], scale_factor=scale, mode="linear")[0, 0].numpy()


def train_tokenizer(folder: Path, vocab_size: int, texts: list[str]) -> Tokenizer:
    """A byte-level BPE (Qwen2's kind) of `vocab_size` tokens, trained on made-up words and the demo's text."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    syllables = [c + v + e for c in "bcdfghjklmnprstvwz" for v in "aeiou" for e in ("", "n", "r", "s", "t")]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(max(2000, 3 * vocab_size))]
    lines = [" ".join(words[i : i + 20]) for i in range(0, len(words), 20)] + texts * 20
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                                       show_progress=False))  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer(folder)


def write_parquet(path: Path, rows: int, rate: int, seed: int) -> None:
    rng, g = random.Random(seed), np.random.default_rng(seed)
    clips, texts = demo_speech()
    records = []
    for i in range(rows):
        question, answer = rng.uniform(*QUESTION_SECONDS), rng.uniform(*ANSWER_SECONDS)
        buf = io.BytesIO()
        sf.write(buf, speech(question, clips, rate, rng), rate, format="WAV", subtype="PCM_16")
        sentences = []
        while sum(len(t.split()) for t in sentences) < answer * 2.5:  # about 2.5 spoken words a second
            sentences.append(rng.choice(texts))
        records.append(
            {
                "split_name": "train", "index": str(i), "round": "0", "question": rng.choice(texts),
                "question_audio": {"bytes": buf.getvalue(), "path": f"{i}.wav"},
                "answer": ". ".join(sentences),
                "answer_snac": format_answer_snac(g.integers(0, 4096, (int(answer * SNAC_FRAMES_PER_SECOND), 7))),
            }
        )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path, row_group_size=32)


@dataclass
class LogMelInWorker(SampleEncoder):
    """The loader as it was: the worker also makes each question's log-mel (kept beside the audio)."""

    def __call__(self, sample):
        enc = super().__call__(sample)
        if enc.audio is not None:
            enc.mel = log_mel(enc.audio)
        return enc


def breakdown(path: Path, encoder: SampleEncoder, n: int) -> dict[str, float]:
    """CPU seconds a sample spends in each part of the path (one pass, for where the time goes)."""
    table = pq.read_table(path).slice(0, n).to_pylist()
    parts = {"decode + resample": 0.0, "parse answer_snac": 0.0, "tokenise": 0.0, "log-mel, alone (before)": 0.0}
    audio = []
    for row in table:
        t0 = time.process_time()
        audio.append(load_audio(row["question_audio"]["bytes"], WHISPER_SAMPLE_RATE))
        t1 = time.process_time()
        parse_answer_snac(row["answer_snac"])
        t2 = time.process_time()
        encoder.text_ids(row["answer"], "answer")
        t3 = time.process_time()
        log_mel(audio[-1])
        t4 = time.process_time()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k] += dt / len(table)
    t0 = time.process_time()
    log_mels(*stack_clips(audio))  # what the step now does, batched (on the GPU in a real run)
    parts["log-mel, batched in the step (CPU here)"] = (time.process_time() - t0) / len(table)
    return parts


def spread(rates: list[float]) -> str:
    every = " ".join(f"{r:.0f}" for r in rates)
    return f"min {min(rates):.1f}, median {statistics.median(rates):.1f}, max {max(rates):.1f} ({every})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows in the parquet; one pass over them is a rep")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rate", type=int, default=22050, help="sample rate of the stored question audio")
    parser.add_argument("--workers", type=int, default=2, help="loader workers a GPU (DataConfig.num_workers)")
    parser.add_argument("--mfu", type=float, default=0.60)
    parser.add_argument("--vocab", type=int, default=QWEN2_BPE, help="BPE tokens of the trained tokenizer")
    parser.add_argument("--tiny", action="store_true", help="8 rows, one rep, a 1000-token BPE (smoke test)")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.reps, args.vocab = 8, 1, 1000

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-00000-of-00001.parquet"
        write_parquet(path, args.rows, args.rate, seed=0)
        tokenizer = train_tokenizer(Path(tmp) / "tokenizer", args.vocab, demo_speech()[1])
        vocab = Vocab(max(151936, tokenizer.vocab_size))
        # A pass reads the file once, in order (the stream's validation mode): every pass does the
        # same work. A pass of the endless training mixture would not: its batches straddle the
        # bucketing buffers, so one pass encodes a buffer and a half and the next half of one.
        streams = {}
        for name, cls in (("log-mel in the step (now)", SampleEncoder), ("log-mel in the worker", LogMelInWorker)):
            source = sources.voice_assistant(path, tasks=("A1A2",))
            encoder = cls(tokenizer, vocab, max_seq_length=2048)
            streams[name] = OmniStream({"va": source}, encoder, OmniCollator(vocab, 8), 16384, buffer_size=args.rows)
        rates = {name: [] for name in streams}
        for rep in range(args.reps + 1):  # the first pass warms up (parquet open, first imports)
            for name, stream in streams.items():  # alternating, so both see the same machine
                t0 = time.process_time()
                n = sum(batch.input_ids.size(0) for batch in stream)
                if rep:
                    rates[name].append(n / (time.process_time() - t0))
        encoder = streams["log-mel in the step (now)"].encoder
        parts = breakdown(path, encoder, min(args.rows, 16))
        answers = [row["answer"] for row in pq.read_table(path, columns=["answer"]).to_pylist()]
        n_tokens = statistics.mean(len(encoder.text_ids(a, "answer")) for a in answers)

    now, before = rates["log-mel in the step (now)"], rates["log-mel in the worker"]
    row_length, frames = typical_row_length(), typical_audio_frames()
    flops = training_flops_per_sample("finetune", row_length, frames)
    per_gpu = RECIPE["batch"] / RECIPE["gpus"]
    step = a100_step_seconds(flops, per_gpu, args.mfu)
    demand = per_gpu / step
    print(f"tokenizer: byte-level BPE of {tokenizer.vocab_size} tokens; answers {n_tokens:.0f} tokens on average")
    for name, r in rates.items():
        print(f"loader, one core, {name}: samples per CPU-second over {args.reps} passes of {args.rows} A1A2 rows: "
              f"{spread(r)}")  # fmt: skip
    print("per sample: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in parts.items()))
    print(f"stage-3 sample: {row_length:.0f} positions, {frames:.0f} Whisper frames, "
          f"{flops / 1e12:.2f} TFLOP (litgpt count)")  # fmt: skip
    print(f"A100 step at {per_gpu:.0f} samples/GPU, MFU {args.mfu:.0%}: {step:.3f} s "
          f"-> demand {demand:.1f} samples/s/GPU")  # fmt: skip
    print(f"supply with {args.workers} workers (one core each): {spread([x * args.workers for x in now])} samples/s")
    print(f"ratio now/before (median): {statistics.median(now) / statistics.median(before):.2f}")
    bottom_before = min(before) * args.workers / demand
    print(f"supply/demand, before (log-mel in the worker), at the bottom of the spread: {bottom_before:.2f}")
    print(f"ratio loader supply/GPU demand at the bottom of the spread: {min(now) * args.workers / demand:.2f}")


if __name__ == "__main__":
    main()
