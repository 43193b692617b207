"""Demo settings side by side: held-out WER after each stage, CPU time, and a hash of the final weights.

Runs ``omni-train experiment=demo`` once per setting, each in its own process on one torch
thread: ``--before REF`` first, the demo as git revision REF has it (its code and its configs),
then each ``--setting`` (a string of overrides; "" is the demo as configured) on this working
tree; with ``--reps`` > 1 the runs alternate. The CPU time (`time.process_time` around the run:
waiting for a busy core does not count) is the budget to compare on a shared machine; the WER is
deterministic (1 and 2 threads give bit-identical weights), so it holds on a loaded machine. The
WER after the earlier stages is measured afterwards, outside the timing, on each stage's model
folder: how much each stage moves it.

    python benchmarks/demo_settings.py --before main --setting ""
    python benchmarks/demo_settings.py --setting "stages.adaption.max_lr=2e-3" --setting ""
    python benchmarks/demo_settings.py --tiny --setting "stages.adaption.max_lr=1e-3" --setting ""  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import package_at

ROOT = Path(__file__).resolve().parents[1]
TINY = ["stages.alignment.max_steps=2", "stages.adaption.max_steps=2", "stages.finetune.max_steps=2",
        "eval.asr_max_utterances=2", "eval.max_new_tokens=4", "eval.speak=null"]  # fmt: skip


def one_run(overrides: list[str], run_dir: str) -> dict:
    """The demo with `overrides` in this process: its CPU seconds and held-out WER after each stage."""
    import torch
    from hydra import compose, initialize_config_dir

    from omni_train import evaluate
    from omni_train.builders import build_model
    from omni_train.cli.train import CONFIGS
    from omni_train.config import register
    from omni_train.train import train

    torch.set_num_threads(1)  # the demo's weights do not depend on it; one thread spins on no barrier
    register()
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "threads=1", f"run_dir={run_dir}", *overrides])
    start = time.process_time()
    summary = train(cfg)
    cpu = time.process_time() - start
    wer = {"before": summary["wer_before"]}
    for stage in cfg.run_stages[:-1]:  # the last stage's is the run's own wer_after
        bundle = build_model(cfg.model, Path(run_dir) / stage / "model", seed=cfg.seed, run_dir=Path(run_dir), requested=())
        wer[stage] = evaluate.asr_wer(bundle, cfg.eval)[summary["asr_metric"]]
    wer[cfg.run_stages[-1]] = summary["wer_after"]
    return {"cpu": cpu, "wer": wer, "weights": weights_hash(Path(summary["final_model"]))}


def weights_hash(model_dir: Path) -> str:
    """sha256 of the final model's tensors (names and bytes, in order): equal means bit-identical weights."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for file in sorted(model_dir.glob("*.pth")):
        for name, tensor in sorted(torch.load(file, map_location="cpu", weights_only=True).items()):
            digest.update(name.encode())
            digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="first run: the demo of this git revision (e.g. main)")
    parser.add_argument("--setting", action="append", default=[],
                        help='omni-train overrides, quoted, one setting each time it is given ("": the demo as configured)')
    parser.add_argument("--reps", type=int, default=1, help="runs of each setting, alternating (the median CPU time)")
    parser.add_argument("--tiny", action="store_true", help="2 steps a stage (smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON [overrides, run_dir]: one run, printed as JSON
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(*json.loads(args.child))))
        return
    if not args.setting and not args.before:
        parser.error("give --before REF and/or --setting OVERRIDES")

    with tempfile.TemporaryDirectory() as tmp:
        runs = []  # (name, source tree, overrides)
        if args.before:
            tree = package_at(args.before, Path(tmp) / "before")
            runs.append((f"the demo at {args.before}", tree, []))
        runs += [(s or "the demo as configured here", ROOT, shlex.split(s)) for s in args.setting]
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        wer: dict[str, dict[str, float]] = {}
        weights: dict[str, str] = {}
        for rep in range(args.reps):
            for i, (name, tree, overrides) in enumerate(runs):
                child = json.dumps([overrides + (TINY if args.tiny else []), str(Path(tmp) / f"run-{i}-{rep}")])
                env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
                out = subprocess.run([sys.executable, __file__, "--child", child], env=env, cwd=tmp, check=True,
                                     stdout=subprocess.PIPE, text=True).stdout  # fmt: skip
                result = json.loads(out.strip().splitlines()[-1])
                cpu[name].append(result["cpu"])
                wer[name] = result["wer"]  # deterministic: every repetition's is the same
                weights[name] = result["weights"]
    first = statistics.median(cpu[runs[0][0]])
    for name, _, _ in runs:
        seconds = statistics.median(cpu[name])
        stages = ", ".join(f"{k} {v:.1f}%" for k, v in wer[name].items())
        print(f"{name}\n    held-out WER: {stages}\n    CPU {seconds:.1f} s ({seconds / first:.3f}x the first)"
              f"\n    final weights sha256 {weights[name]}")  # fmt: skip
    print(f"ratio CPU time last / first: {statistics.median(cpu[runs[-1][0]]) / first:.3f}")


if __name__ == "__main__":
    main()
