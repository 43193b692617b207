"""The package's layer order (pyproject.toml, [tool.importlinter]) holds: no import runs back up the stack."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""})  # fmt: skip


def test_the_layer_contracts_are_kept():
    run = lint_imports(ROOT)
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


def test_an_import_back_up_the_stack_breaks_them(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "omni_train", copy / "omni_train", ignore=shutil.ignore_patterns("demo_data", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    collator = copy / "omni_train" / "data" / "collator.py"
    collator.write_text(collator.read_text() + "\nfrom omni_train.stages import STAGES  # noqa: E402\n")
    run = lint_imports(copy)
    assert run.returncode != 0 and "omni_train.data.collator -> omni_train.stages" in run.stdout, run.stdout[-3000:]


def test_a_module_outside_the_order_breaks_them(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "omni_train", copy / "omni_train", ignore=shutil.ignore_patterns("demo_data", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    (copy / "omni_train" / "helpers.py").write_text('"""A module nobody placed in the layers."""\n')
    run = lint_imports(copy)
    assert run.returncode != 0 and "omni_train.helpers" in run.stdout, run.stdout[-3000:]
