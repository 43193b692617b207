"""Memory across a ``stage=all`` run: RSS when each stage starts loading its model, and the peak.

In one process the three stages run one after the other; whatever a finished stage leaves resident
(its model, AdamW state, trainer, loaders) is under the next stage's own. Each variant runs the
same short ``stage=all`` run (the demo's data, a random base LLM at Qwen2-0.5B's width: 896 wide,
14 heads in 2 groups, a 4864-wide MLP, with fewer layers and a smaller text vocabulary than the real
one so that two runs fit beside other jobs) in a fresh process, which records its VmRSS each time
the run builds a stage's model and its VmHWM (peak RSS) at the end.

    python benchmarks/stage_memory.py [--before REV] [--layers 4] [--vocab 32768] [--steps 2] [--tiny]

``--before REV`` runs REV's ``omni_train`` (``git archive``; e.g. the commit before the change)
beside this tree's, so both figures come from one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import package_at

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def overrides(args, run_dir: Path) -> list[str]:
    shape = [] if args.tiny else [
        "model.checkpoint_dir=null", "model.overrides.n_embd=896", "model.overrides.n_head=14",
        "model.overrides.head_size=64", "model.overrides.n_query_groups=2", "model.overrides.intermediate_size=4864",
        f"model.overrides.n_layer={args.layers}", f"model.overrides.padded_vocab_size={args.vocab}",
    ]  # fmt: skip
    steps = [f"stages.{s}.{k}={args.steps}" for s in ("alignment", "adaption", "finetune")
             for k in ("max_steps", "checkpoint_every")]  # fmt: skip
    return ["experiment=demo", f"run_dir={run_dir}", "eval.asr=null", "eval.speak=null",
            "data.max_tokens=1024", "+trainer.enable_progress_bar=false", *shape, *steps]  # fmt: skip


def child(args) -> None:
    """One run in this process (the omni_train on PYTHONPATH); prints its memory as JSON."""
    import torch
    from hydra import compose, initialize_config_dir

    from omni_train import train as train_module
    from omni_train.cli.train import CONFIGS
    from omni_train.config import register

    torch.set_num_threads(1)
    starts, build = [], train_module.build_model

    def build_model(*a, **k):
        starts.append(round(rss_mb("VmRSS")))
        return build(*a, **k)

    train_module.build_model = build_model
    register()
    with tempfile.TemporaryDirectory() as run_dir, initialize_config_dir(CONFIGS, version_base="1.3"):
        train_module.train(compose("train", overrides=overrides(args, Path(run_dir))))
    print(json.dumps({"stage_starts_mb": starts[:3], "peak_mb": round(rss_mb("VmHWM"))}))


def run(tree: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "--layers", str(args.layers), "--vocab", str(args.vocab),
           "--steps", str(args.steps), *(["--tiny"] if args.tiny else [])]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"the run with {tree}/omni_train failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git revision whose omni_train runs beside this tree's")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32768, help="padded text vocabulary (Qwen2's: 151936)")
    parser.add_argument("--steps", type=int, default=2, help="steps a stage")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny model (smoke test)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"now": ROOT}
        if args.before:
            old = package_at(args.before, Path(tmp) / "before")
            trees = {f"before ({args.before})": old, **trees}
        rows = {name: run(tree, args) for name, tree in trees.items()}

    shape = "the demo's tiny model" if args.tiny else f"width 896, {args.layers} layers, vocabulary {args.vocab}"
    print(f"stage=all, {args.steps} steps a stage, {shape}; RSS in MB")
    print(f"{'omni_train':<26}{'alignment':>10}{'adaption':>10}{'finetune':>10}{'peak':>8}")
    for name, r in rows.items():
        print(f"{name:<26}" + "".join(f"{v:>10}" for v in r["stage_starts_mb"]) + f"{r['peak_mb']:>8}")
    if len(rows) == 2:
        before, now = rows.values()
        print(f"ratio peak RSS, now / before: {now['peak_mb'] / before['peak_mb']:.2f}")
    else:
        print(f"ratio peak RSS / RSS at the first stage's start: {rows['now']['peak_mb'] / rows['now']['stage_starts_mb'][0]:.2f}")


if __name__ == "__main__":
    main()
