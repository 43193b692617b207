"""The code is clear of pyflakes' findings (`ruff check`, rules in pyproject.toml [tool.ruff.lint])."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args], cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip


def test_the_code_has_no_pyflakes_findings():
    run = ruff(".")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_an_undefined_name_is_found(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("def f():\n    return undefined_name\n")
    run = ruff(".", cwd=tmp_path)
    assert run.returncode != 0 and "F821" in run.stdout, run.stdout + run.stderr
