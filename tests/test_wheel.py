"""A regular install (`pip install .`, a git URL, a dependency) has everything the demo needs.

The wheel is built from a copy of the source and installed into a fresh venv that sees this
environment's dependencies but not its omni_train (an editable install, or the worktree on
PYTHONPATH); then ``omni-train`` runs from a folder that is not the source tree.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "omni_train"


def run(*cmd, cwd: Path, env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # a copy, so the build's build/ and egg-info never land in (or go stale in) the source tree
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "omni_train", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    # no build isolation: the build uses this environment's setuptools (the dev extra), nothing is downloaded
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src,
        cwd=src, env=os.environ, timeout=300)  # fmt: skip
    (built,) = out.glob("omni_train-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """A venv with the wheel installed, and the environment to run it in."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # This environment's packages minus omni_train, linked rather than installed again (torch is GBs).
    # Added with site.addsitedir so their own .pth files work as they do here; our editable install's
    # .pth and finder are among those left out.
    deps = tmp_path_factory.mktemp("deps")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "omni_train" not in entry.name.lower():
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    (Path(purelib) / "_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=venv, env=env)
    return venv, env


def test_the_wheel_holds_the_configs_and_the_demo_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("configs", "demo_data"):
        shipped = {p.relative_to(ROOT).as_posix() for p in (PACKAGE / folder).rglob("*") if p.is_file()}
        assert shipped and shipped <= names, sorted(shipped - names)[:10]
    assert "omni_train/configs/experiment/demo.yaml" in names and "omni_train/demo_data/llm/lit_model.pth" in names


def test_the_installed_omni_train_runs_the_demo_from_anywhere(installed, tmp_path):
    venv, env = installed
    elsewhere = tmp_path / "elsewhere"  # not the source tree, not the venv
    elsewhere.mkdir()
    where = run(venv / "bin" / "python", "-c", "import omni_train; print(omni_train.__file__)", cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not this tree's

    help_ = run(venv / "bin" / "omni-train", "--help", cwd=elsewhere, env=env)
    packaged = sorted(p.stem for p in (ROOT / "omni_train" / "configs" / "experiment").glob("*.yaml"))
    assert f"experiment: {', '.join(packaged)}" in help_.stdout  # the installed configs are found

    # a user's own config folder adds to the packaged ones
    (elsewhere / "mine" / "experiment").mkdir(parents=True)
    (elsewhere / "mine" / "experiment" / "short.yaml").write_text(
        "# @package _global_\ndefaults:\n  - demo\nstages:\n  alignment:\n    max_steps: 2\n"
    )
    run_dir = tmp_path / "run"
    run(venv / "bin" / "omni-train", "--config-dir", "mine", "experiment=short", "stage=alignment",
        "data.buffer_size=16", "eval.asr=null", "eval.speak=null", f"hydra.run.dir={run_dir}",
        cwd=elsewhere, env=env)  # fmt: skip
    assert (run_dir / "alignment" / "model" / "lit_model.pth").is_file()
    assert '"steps": 2' in (run_dir / "alignment" / "summary.json").read_text()
