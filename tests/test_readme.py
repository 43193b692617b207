"""The README's figures are those of a recorded run, so they cannot drift from it unnoticed.

`docs/demo_run.json` is what `omni-train experiment=demo` wrote to `summary.json` on the machine it
names (plus the command and the commit). The README quotes it; the first test checks every quoted
figure against the record. Whether the code still gives the record is the opt-in second test
(`OMNI_TEST_DEMO=1`: it runs the whole demo, minutes, so CI leaves it out), deterministic on one
machine: the demo's losses and weights are bit-identical across runs and thread counts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RECORD = ROOT / "docs" / "demo_run.json"


def readme() -> str:
    return " ".join(README.read_text().split())  # line breaks are layout, not content


def test_the_readme_quotes_the_recorded_demo_run():
    run = json.loads(RECORD.read_text())
    text = readme()
    assert f"held-out WER {run['wer_before']:.1f}% before stage 1" in text
    assert f"and {run['wer_after']:.1f}% after stage 3" in text
    answer = run["spoken_answer"]
    assert f'the spoken answer to "{answer["question"]}" is "{answer["text"]}"' in text
    took = re.search(r"the demo takes about (\d+) minutes? (\d+) seconds on 2 idle CPU cores \(([^)]*)\)", text)
    assert took, "README: the demo's time in the form 'the demo takes about M minutes S seconds on 2 idle CPU cores (machine)'"
    assert abs(60 * int(took[1]) + int(took[2]) - run["wall_time_s"]) <= 10, (took[0], run["wall_time_s"])
    assert took[3] == run["machine"]



def test_the_readme_quotes_the_recorded_dialogue_comparison():
    """README, "Conversations": the table of follow-ups answered right is `docs/dialogue_run.json`'s record."""
    run = json.loads((ROOT / "docs" / "dialogue_run.json").read_text())
    text, rows = README.read_text(), {"demo": "single turns (`demo`)", "demo_dialogue": "+ conversations (`demo_dialogue`)"}
    for trained, cells in run["results"].items():
        quoted = [f"{c['right']} / {c['n']}, WER {c['wer']:.1f}" for c in cells]
        if trained == "demo_dialogue":  # the with-history cells, in bold
            quoted = [f"**{q.split(',')[0]}**,{q.split(',')[1]}" if c["history"] else q for q, c in zip(quoted, cells)]
        assert f"| {rows[trained]} | " + " | ".join(quoted) + " |" in text, trained
    assert f"at commit {run['commit']}" in readme()

def test_the_readme_counts_the_tests(request):
    """Only when the whole suite was collected: a run of one file says nothing about the count."""
    files = {Path(item.fspath).name for item in request.session.items}
    every = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    if files != every:
        pytest.skip("only part of the suite was collected")
    said = re.search(r"about (\d+) tests", readme())
    assert said, "README: the test command's line says 'about N tests'"
    count = len(request.session.items)
    assert abs(int(said[1]) - count) <= 0.05 * count, f"README says about {said[1]} tests; the suite has {count}"


@pytest.mark.skipif(not os.environ.get("OMNI_TEST_DEMO"), reason="OMNI_TEST_DEMO is not set: runs the whole demo")
def test_the_demo_still_gives_the_recorded_figures(tmp_path):
    run = json.loads(RECORD.read_text())
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "omni_train.cli.train", "experiment=demo", f"hydra.run.dir={out}"],
        cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    got = json.loads((out / "summary.json").read_text())
    assert (got["wer_before"], got["wer_after"]) == (run["wer_before"], run["wer_after"])
    assert got["spoken_answer"]["text"] == run["spoken_answer"]["text"]
