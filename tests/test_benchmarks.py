"""Smoke runs of the benchmarks on their smallest shapes, so they do not rot (not timings).

Each script prints its ratio last. They run in this process (runpy) to spare a Python start-up
each; loss_memory.py still starts one process a variant, by design.
"""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=True)
    return out.stdout


def run_here(script: str, *args: str, monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import benchmarks/common.py
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(BENCH / script), run_name="__main__")
    return capsys.readouterr().out


def last_ratio(out: str) -> float:
    last = out.strip().splitlines()[-1]
    assert "ratio" in last, out
    return float(last.rsplit(" ", 1)[-1])


def test_padding_benchmark_prints_both_fractions():
    out = run("padding.py", "--rows", "500", "--max-tokens", "4096", "--buffer", "200")
    assert "stream order:" in out and "bucketed:" in out
    assert out.strip().splitlines()[-1].startswith("ratio")


@pytest.mark.parametrize(
    "script, args, expect",
    [
        (
            "step_overhead.py",
            ["--tiny", "--layers", "1", "--spread", "0.01", "--max-reps", "2"],
            ["lm_head", "post_adapter", "voice_assistant", "dense", "omni / own vocab (512 vocab)", "(2 repetitions)"],
        ),
        ("whisper_encoder.py", ["--tiny"], ["cosine similarity"]),
        ("data_path.py", ["--tiny"], ["samples per CPU-second", "demand"]),
        ("scaling.py", ["--tiny"], ["GPU-h", "finetune"]),
        ("gpu_mfu.py", ["--device", "cpu", "--tiny"], ["omni", "plain"]),
        ("serve_latency.py", ["--tiny"], ["first audio, streamed", "real-time factor"]),
        ("checkpoint_size.py", ["--tiny"], ["alignment", "keep_checkpoints=1"]),
        ("demo_profile.py", ["--tiny"], ["forward and loss", "Whisper encoder", "held-out WER"]),
        ("demo_settings.py", ["--tiny", "--setting", ""], ["held-out WER: before", "adaption", "finetune", "CPU", "sha256"]),
        ("demo_reading.py", ["--tiny"], ["adapter output", "another's audio", "layer 3:"]),
    ],
)
def test_benchmark_runs_on_its_smallest_shape(script, args, expect, monkeypatch, capsys):
    out = run_here(script, *args, monkeypatch=monkeypatch, capsys=capsys)
    assert all(word in out for word in expect), out
    assert last_ratio(out) > 0


def test_loss_memory_benchmark_measures_both_paths_in_fresh_processes(monkeypatch, capsys):
    out = run_here("loss_memory.py", "--tiny", monkeypatch=monkeypatch, capsys=capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("chunked ", "naive "))}
    assert set(rows) == {"chunked", "naive"}
    assert float(rows["chunked"][-1]) < 1e-5  # the gradient, sampled, against the naive path's
    assert float(out.split("loss relative difference: ")[1].split()[0]) < 1e-5
    assert last_ratio(out) > 0


def test_gpu_benchmark_says_it_needs_cuda(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        run_here("gpu_mfu.py", monkeypatch=monkeypatch, capsys=capsys)


@pytest.mark.skipif(not os.environ.get("MINI_OMNI_DIR"), reason="MINI_OMNI_DIR names a gpt-omni/mini-omni checkout (not vendored)")
def test_mini_omni_kv_cache_benchmark_loads_both_exports_in_mini_omni_code():
    out = run("mini_omni_kv_cache.py", "--mini-omni", os.environ["MINI_OMNI_DIR"], "--tiny")
    assert "32768" in out and "2048" in out
    assert 0 < last_ratio(out) < 0.1  # the cache shrinks with block_size


@pytest.mark.parametrize(
    "script, expect", [("stage_memory.py", ["alignment", "finetune", "peak"]), ("threads_under_load.py", ["policy"])]
)
def test_benchmark_of_whole_runs_on_its_smallest_shape(script, expect):
    out = run(script, "--tiny")  # each run in a process of its own, by design
    assert all(word in out for word in expect), out
    assert last_ratio(out) > 0


def test_lora_memory_benchmark_measures_both_variants_in_fresh_processes(monkeypatch, capsys):
    # two of the four default variants, as many processes as before checkpointing was measured
    out = run_here("lora_memory.py", "--tiny", "--variants", "full,lora+ckpt", monkeypatch=monkeypatch, capsys=capsys)
    measured = [line.strip() for line in out.splitlines() if line.startswith(("  full", "  lora"))]
    assert len(measured) == 4 and all("peak" in line for line in measured)  # 2 variants x 2 depths
    lines = {line.split()[0]: line for line in measured}  # the deeper model's
    assert lines.keys() == {"full", "lora+ckpt"}
    # B starts at zero, so the LoRA model's first step scores exactly what the full model's does, and
    # activation checkpointing changes no number
    first_loss = {v: float(line.rsplit("loss ", 1)[1]) for v, line in lines.items()}
    assert all(loss == pytest.approx(first_loss["full"], rel=1e-5) for loss in first_loss.values())
    assert "ratio lora+ckpt/full step time" in out and "ratio lora+ckpt/full peak memory" in out
    assert last_ratio(out) > 0
