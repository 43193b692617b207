"""Shared by the benchmark scripts: side-by-side timing and VoiceAssistant-shaped rows.

Other processes load this machine while a benchmark runs, so variants are never timed one after
the other: their repetitions alternate (A B A B ...), each reports its median, and time is this
process's CPU time (`time.process_time`; the benchmarks run torch on one thread), which waiting
for a busy core does not inflate.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from omni_train.data.samples import Encoded
from omni_train.tasks import Task

ROOT = Path(__file__).resolve().parents[1]


def package_at(rev: str, into: Path) -> Path:
    """The ``omni_train`` package as git revision `rev` has it, written under `into` (a folder to put
    first on a child process's PYTHONPATH): "before" variants run the old code beside the new."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "omni_train"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


# A VoiceAssistant-400K-like row: a spoken question of 2-15 s and a spoken answer of 3-20 s (as in
# padding.py); the answer text runs at about 3 tokens a second of speech.
QUESTION_SECONDS = (2.0, 15.0)
ANSWER_SECONDS = (3.0, 20.0)
TEXT_TOKENS_PER_SECOND = 3.0
SNAC_FRAMES_PER_SECOND = 24000 / 2048  # SNAC 24 kHz: 2048 samples a coarse frame

# --tiny: Qwen2's architecture shrunk to 64 wide with a 512-token base vocabulary (smoke tests)
TINY = {
    "n_embd": 64,
    "n_head": 4,
    "head_size": 16,
    "n_query_groups": 2,
    "intermediate_size": 96,
    "padded_vocab_size": 512,
}


def interleaved_times(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """CPU seconds of each repetition of each variant, run in alternation `reps` times after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + reps):
        for name, fn in variants.items():
            t0 = time.process_time()
            fn()
            if r >= warmup:
                times[name].append(time.process_time() - t0)
    return times


def interleaved(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median CPU seconds of each variant, run in alternation `reps` times after `warmup` rounds."""
    return {name: statistics.median(t) for name, t in interleaved_times(variants, reps, warmup).items()}


def paired_ratio(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """Median of the ratios a_i / b_i of repetitions run side by side, their range, and the relative
    standard error of their mean (the spread: how far another run's figure would likely move)."""
    ratios = [x / y for x, y in zip(a, b)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0], float("nan")
    spread = statistics.stdev(ratios) / len(ratios) ** 0.5 / statistics.mean(ratios)
    return statistics.median(ratios), min(ratios), max(ratios), spread


def voice_assistant_sample(rng: random.Random, text_vocab: int) -> Encoded:
    """An `Encoded` A1A2 sample of VoiceAssistant shape with random ids (the loss does not care which)."""
    question = rng.uniform(*QUESTION_SECONDS)
    answer = rng.uniform(*ANSWER_SECONDS)
    frames = int(question * 1000 / 20) + 1
    n_text = max(1, round(answer * TEXT_TOKENS_PER_SECOND))
    n_snac = max(1, int(answer * SNAC_FRAMES_PER_SECOND))
    return Encoded(
        task=Task.A1A2,
        answer_ids=[rng.randrange(text_vocab) for _ in range(n_text)],
        audio=torch.zeros(1).expand(320 * (frames - 1) + 1),  # T frames of silence, stored as one sample
        audio_frames=frames,
        answer_frames=torch.tensor([[rng.randrange(4096) for _ in range(7)] for _ in range(n_snac)]),
    )


# ---- the published recipe on A100s (estimates: no GPU here) ----------------------------------
A100_BF16_PEAK = 312e12  # FLOP/s, dense bf16 tensor cores
ASSUMED_MFU = 0.45  # the project's own goal for a stage-3 step (issue #8); benchmarks/gpu_mfu.py measures it
RECIPE = {"gpus": 8, "batch": 192, "steps_per_stage": 40_000, "stages": 3}


def typical_row_length(rows: int = 2000, seed: int = 0) -> float:
    """Mean positions of a VoiceAssistant-shaped A1A2 row, from the mix above (no padding)."""
    from omni_train.data.collator import sequence_length

    rng = random.Random(seed)
    return statistics.mean(sequence_length(voice_assistant_sample(rng, 100)) for _ in range(rows))


def a100_step_seconds(flops_per_sample: float, samples_per_gpu: float, mfu: float = ASSUMED_MFU) -> float:
    return flops_per_sample * samples_per_gpu / (A100_BF16_PEAK * mfu)


def typical_audio_frames(rows: int = 2000, seed: int = 0) -> float:
    """Mean Whisper frames of the question of such a row."""
    rng = random.Random(seed)
    return statistics.mean(int(rng.uniform(*QUESTION_SECONDS) * 1000 / 20) + 1 for _ in range(rows))


def training_flops_per_sample(stage: str, row_length: float, audio_frames: float, post_adapter: bool = False) -> float:
    """FLOPs of one sample in a training step, counted as litgpt's `estimate_flops` counts them.

    The LLM: 3 x (2 x trainable params x positions + attention) + 2 x the same for frozen params
    (their activations still need gradients), with the stage's own freeze rule. The frozen
    whisper-small encoder: one forward over the audio frames, counted the same way.
    """
    from litgpt.config import Config
    from litgpt.utils import estimate_flops, flops_per_param

    from omni_train.checkpoints import ModelBundle
    from omni_train.config import StageConfig
    from omni_train.model import OmniConfig, OmniGPT
    from omni_train.stages import STAGES

    with torch.device("meta"):
        model = OmniGPT(OmniConfig.from_base(Config.from_name("Qwen2.5-0.5B"), post_adapter=post_adapter))
        STAGES[stage](ModelBundle(model), StageConfig(tasks={}, max_steps=1))  # sets requires_grad by the stage's freeze rule
        model.max_seq_length = round(row_length)
    llm = estimate_flops(model, training=True)
    whisper_small = 87_002_112  # parameters of whisper-small's encoder (12 layers, 768 wide)
    encoder = flops_per_param(round(audio_frames), 12, 768, whisper_small)
    return llm + encoder
