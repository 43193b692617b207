"""Scaling estimate: wall time and GPU-hours of Mini-Omni's published recipe on 8x A100.

How: FLOPs per training sample are counted as litgpt's `estimate_flops` counts them (3 x for
trainable parameters, 2 x for frozen ones whose activations still need gradients, plus litgpt's
attention term), for OmniGPT at Qwen2-0.5B's full shape with each stage's own freeze rule, on a
VoiceAssistant-shaped row of mean length (no padding: bucketing leaves about 2%), plus one forward
of the frozen whisper-small encoder over the question's frames. A step is 192 such samples over 8
GPUs; its time is those FLOPs at the A100's 312 TFLOP/s bf16 peak times an assumed MFU. Nothing
here is measured on a GPU (there is none on this machine); gpu_mfu.py measures the MFU where
there is one, and its figure can be passed as --mfu.

    python benchmarks/scaling.py [--mfu 0.45] [--post-adapter]
"""

from __future__ import annotations

import argparse

from common import (
    A100_BF16_PEAK,
    ASSUMED_MFU,
    RECIPE,
    training_flops_per_sample,
    typical_audio_frames,
    typical_row_length,
)

STAGES = ("alignment", "adaption", "finetune")
MAINTAINERS_STEPS = {"alignment": 15_000, "adaption": 25_000, "finetune": 55_000}  # midpoints they gave in issues


def plain_flops_per_sample(row_length: float) -> float:
    """The plain litgpt Qwen2.5-0.5B (text vocabulary, everything trains) on the same rows."""
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import estimate_flops

    with torch.device("meta"):
        model = GPT(Config.from_name("Qwen2.5-0.5B"))
        model.max_seq_length = round(row_length)
    return estimate_flops(model, training=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=ASSUMED_MFU)
    parser.add_argument("--post-adapter", action="store_true", help="the paper's TTS adapter instead of lm_head slices")
    parser.add_argument("--tiny", action="store_true", help="fewer rows for the mean length (smoke test)")
    args = parser.parse_args()
    rows = 200 if args.tiny else 2000

    gpus, batch = RECIPE["gpus"], RECIPE["batch"]
    row_length, frames = typical_row_length(rows), typical_audio_frames(rows)
    print(f"rows of {row_length:.0f} positions, {frames:.0f} Whisper frames; batch {batch} over {gpus} A100s")
    print(f"A100 bf16 peak {A100_BF16_PEAK / 1e12:.0f} TFLOP/s, MFU {args.mfu:.0%} (assumed)")
    total_s = total_flops = 0.0
    alt_s = 0.0
    for stage in STAGES:
        flops = training_flops_per_sample(stage, row_length, frames, args.post_adapter) * batch
        step = flops / (gpus * A100_BF16_PEAK * args.mfu)
        seconds = step * RECIPE["steps_per_stage"]
        total_s, total_flops = total_s + seconds, total_flops + flops * RECIPE["steps_per_stage"]
        alt_s += step * MAINTAINERS_STEPS[stage]
        print(
            f"{stage:10s} {flops / 1e15:6.1f} PFLOP a step, {step:.3f} s a step, "
            f"{RECIPE['steps_per_stage']} steps: {seconds / 3600:5.1f} h, {gpus * seconds / 3600:6.1f} GPU-h"
        )
    print(
        f"published recipe (3 x 40k steps): {total_s / 3600:.1f} h on {gpus} A100s = {gpus * total_s / 3600:.0f} GPU-h"
    )
    print(f"maintainers' later counts (15k + 25k + 55k steps): {alt_s / 3600:.1f} h = {gpus * alt_s / 3600:.0f} GPU-h")
    for mfu in (0.3, 0.6):
        print(f"  at MFU {mfu:.0%}: {total_s * args.mfu / mfu / 3600:.1f} h")
    plain = plain_flops_per_sample(row_length) * batch * RECIPE["steps_per_stage"] * len(STAGES)
    print(f"ratio recipe FLOPs / plain Qwen2.5-0.5B fine-tuning on the same rows: {total_flops / plain:.3f}")


if __name__ == "__main__":
    main()
