"""omni-infer against Mini-Omni's own generation code: the same greedy tokens on an exported checkpoint.

Opt-in: it needs a checkout of gpt-omni/mini-omni (its inference.py and vendored litgpt 0.4), which
the project does not vendor. ``MINI_OMNI_DIR=/path/to/mini-omni python -m pytest tests/test_mini_omni_parity.py``
runs scripts/compare_with_mini_omni.py on a tiny checkpoint it builds (a few CPU minutes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "compare_with_mini_omni.py"
MINI_OMNI = os.environ.get("MINI_OMNI_DIR")


@pytest.mark.skipif(
    not MINI_OMNI, reason="MINI_OMNI_DIR is not set: it names a gpt-omni/mini-omni checkout, which is not vendored"
)
@pytest.mark.timeout(1200)
def test_omni_infer_gives_mini_omni_greedy_tokens_for_every_task(tmp_path):
    result = tmp_path / "result.json"
    cmd = [sys.executable, str(SCRIPT), "--mini-omni", MINI_OMNI, "--make-tiny", str(tmp_path / "tiny"),
           "--json-out", str(result)]  # fmt: skip
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1100)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    rows = {r["task"]: r for r in json.loads(result.read_text())}
    assert set(rows) == {"A1T1", "A1T2", "A1A2", "A1A2-batch", "T1A2", "T1T2"}
    assert all(r["match"] and r["text_tokens"] > 0 for r in rows.values()), run.stdout
    for task in ("A1A2", "A1A2-batch", "T1A2"):  # spoken answers that ended with eoa, token for token
        assert rows[task]["audio_match"] and rows[task]["audio_tokens"] > 0, run.stdout
