"""The demo beside a busy process: torch's default thread pool against the run's own choice.

Starts one CPU-bound process (a Python busy loop, the "other job"), then runs a shortened
``omni-train experiment=demo`` in a fresh process for each policy, one after the other, and
reports each run's wall time and CPU time (user + sys of the run and its children, from
``getrusage``), then stops the busy process:

- ``torch default``: ``threads`` set to torch's own default on this machine (its cores), which is
  what every run used before the policy (``OMP_NUM_THREADS`` unset);
- ``policy``: ``threads`` unset, so the run sizes its pool from the free cores (omni_train.threads).

Both runs train the same steps on the same data (the thread count changes speed, not results: 1
and 2 threads give bit-identical demo weights). On a machine that others load too, the figures
are for that load plus the busy process; ``uptime`` is printed before and after.

    python benchmarks/threads_under_load.py [--steps 10 40 10] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(threads: int | None, overrides: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, its 'torch threads' log line) of one shortened demo in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "omni_train.cli.train", "experiment=demo", f"hydra.run.dir={run_dir}",
               *overrides, "+trainer.enable_progress_bar=false", *([f"threads={threads}"] if threads else [])]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        log = (Path(run_dir) / "train.log").read_text() if (Path(run_dir) / "train.log").exists() else ""
    if out.returncode:
        sys.exit(f"the demo failed:\n{out.stderr[-3000:]}")
    line = next((ln.split(" - ", 1)[-1] for ln in log.splitlines() if "torch threads:" in ln), "?")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs=3, default=[10, 40, 10], help="steps of stages 1, 2, 3")
    parser.add_argument("--utterances", type=int, default=10, help="held-out utterances for the WER")
    parser.add_argument("--tiny", action="store_true", help="stage 1 alone, 1 step, no evaluation (smoke test)")
    args = parser.parse_args()
    if args.tiny:
        what = "stage 1 alone, 1 step, no evaluation"
        overrides = ["stage=alignment", "stages.alignment.max_steps=1", "eval.asr=null", "eval.speak=null"]
    else:
        what = f"steps {args.steps}, {args.utterances} held-out utterances"
        stages = ("alignment", "adaption", "finetune")
        overrides = [f"stages.{stage}.max_steps={n}" for stage, n in zip(stages, args.steps)]
        overrides += [f"eval.asr_max_utterances={args.utterances}", "eval.max_new_tokens=8"]

    import torch

    default = torch.get_num_threads() if not os.environ.get("OMP_NUM_THREADS") else len(os.sched_getaffinity(0))
    print("before:", os.popen("uptime").read().strip())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2)  # let the busy loop take its core
        rows = {"torch default": run_demo(default, overrides), "policy": run_demo(None, overrides)}
    finally:
        busy.kill()
        busy.wait()
    print("after:", os.popen("uptime").read().strip())
    print(f"shortened demo ({what}) beside one busy process:")
    for name, (wall, cpu, line) in rows.items():
        print(f"{name:<14} wall {wall:7.1f} s   CPU {cpu:7.1f} s   {line}")
    (w0, c0, _), (w1, c1, _) = rows.values()
    print(f"CPU time, policy / torch default: {c1 / c0:.2f}")
    print(f"ratio wall time, policy / torch default: {w1 / w0:.2f}")


if __name__ == "__main__":
    main()
