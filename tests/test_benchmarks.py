"""Smoke runs of the benchmarks on their smallest shapes, so they do not rot (not timings)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_padding_benchmark_prints_both_fractions():
    out = run("padding.py", "--rows", "500", "--max-tokens", "4096", "--buffer", "200")
    assert "stream order:" in out and "bucketed:" in out
    assert out.strip().splitlines()[-1].startswith("ratio")
