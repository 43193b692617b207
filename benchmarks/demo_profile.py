"""Where the demo's CPU time goes: data, Whisper, the training step, checkpoints, evaluation.

Runs ``omni-train experiment=demo`` (any overrides after ``--``) in this process under cProfile
with CPU time as its clock (``time.process_time``: waiting for a busy core does not count, so the
shares hold on a loaded machine) and adds up the inclusive time of the functions that stand for
each part. The parts nest (Whisper runs inside the step), so each row says what it includes.

    python benchmarks/demo_profile.py [-- stages.adaption.max_steps=100 ...]
    python benchmarks/demo_profile.py --tiny    # 2 steps a stage (smoke test)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

# part -> (file suffix, function) whose inclusive time stands for it; nested parts are noted
PARTS = {
    "whole run": ("omni_train/train.py", "train"),
    "  forward and loss (Whisper included)": ("omni_train/stages.py", "training_step"),
    "    Whisper encoder (in the steps and the evaluation)": ("omni_train/audio.py", "forward"),
    "    log-mel features (in the steps and the evaluation)": ("omni_train/audio.py", "log_mels"),
    "  backward": ("torch/autograd/__init__.py", "backward"),
    "  optimizer update (AdamW)": ("torch/optim/adam.py", "adam"),
    "  data: reading, encoding and batching samples (main process)": ("omni_train/data/datamodule.py", "__iter__"),
    "  checkpoints and model folders": ("omni_train/resume.py", "save_checkpoint"),
    "  held-out WER (before and after)": ("omni_train/evaluate.py", "asr_wer"),
    "  spoken answer": ("omni_train/evaluate.py", "speak"),
    "  building models (load, init)": ("omni_train/builders.py", "build_model"),
}
TINY = ["stages.alignment.max_steps=2", "stages.adaption.max_steps=2", "stages.finetune.max_steps=2",
        "eval.asr_max_utterances=2", "eval.max_new_tokens=4"]  # fmt: skip


def inclusive(stats: pstats.Stats, suffix: str, name: str) -> float:
    """CPU seconds spent in the outermost calls of `name` in files ending in `suffix` (ct of pstats)."""
    return sum(ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()
               if func == name and file.endswith(suffix))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2 steps a stage (smoke test)")
    parser.add_argument("--stats", metavar="FILE", help="also keep the profile here (pstats), to look further")
    parser.add_argument("overrides", nargs="*", help="omni-train overrides, after --")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from omni_train.cli.train import CONFIGS
    from omni_train.config import register
    from omni_train.train import train

    register()
    with tempfile.TemporaryDirectory() as run_dir, initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", f"run_dir={run_dir}", *(TINY if args.tiny else []),
                                          *args.overrides])  # fmt: skip
        profile = cProfile.Profile(time.process_time)
        wall = time.perf_counter()
        summary = profile.runcall(train, cfg)
        wall = time.perf_counter() - wall
    stats = pstats.Stats(profile)
    if args.stats:
        stats.dump_stats(args.stats)
    total = inclusive(stats, *PARTS["whole run"])
    print(f"demo: WER {summary.get('wer_before')} -> {summary.get('wer_after')}; "
          f"{total:.1f} CPU-s in this process, {wall:.1f} s wall")  # fmt: skip
    for part, (suffix, name) in PARTS.items():
        seconds = inclusive(stats, suffix, name)
        print(f"{part:<66}{seconds:>8.1f} CPU-s {seconds / total:>6.1%}")
    steps = sum(inclusive(stats, *PARTS[p]) for p in PARTS if p.strip().startswith(("forward", "backward", "optim")))
    print(f"ratio forward + backward + update / whole run: {steps / total:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
