"""The README's figures are those of a recorded run, so they cannot drift from it unnoticed.

`docs/demo_run.json` is what `omni-train experiment=demo` wrote to `summary.json` on the machine it
names (plus the command and the commit). The README quotes it; the first test checks every quoted
figure against the record. Whether the code still gives the record is the opt-in second test
(`OMNI_TEST_DEMO=1`: it runs the whole demo, minutes, so CI leaves it out), deterministic on one
machine: the demo's losses and weights are bit-identical across runs and thread counts.
docs/evaluation.md's example report is held the same way to `docs/eval_report_demo.json`.
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


EVAL_DOC, EVAL_RECORD = ROOT / "docs" / "evaluation.md", ROOT / "docs" / "eval_report_demo.json"


def test_the_evaluation_example_is_the_recorded_report_of_the_current_demo():
    """docs/evaluation.md shows the report of the demo model: the one the README records (its WER and
    spoken answer), with every figure of its table taken from the recorded report."""
    run, rec = json.loads(RECORD.read_text()), json.loads(EVAL_RECORD.read_text())
    assert rec["demo"] == {"wer_after": run["wer_after"], "spoken_answer": run["spoken_answer"]["text"]}
    assert rec["asr"]["heldout"] == run["wer_after"]  # omni-eval asr agrees with the demo's own figure
    doc = " ".join(EVAL_DOC.read_text().split())
    assert f"held-out WER {run['wer_after']:.2f}% and the spoken answer \"{run['spoken_answer']['text']}\"" in doc
    ppl, ratio = rec["retention"]["perplexity"], rec["retention"]["ratio_to_base"]
    vb, sqa, speech = rec["voicebench"], rec["spoken_qa"], rec["speech"]["summary"]
    ttfa = " / ".join(f"{speech[k]:.0f}" for k in ("ttfa_ms_mean", "ttfa_ms_median", "ttfa_ms_p90"))
    rows = [
        f"| held-out ASR WER % (A1T1, 40 demo utterances) | {rec['asr']['heldout']:.2f} |",
        f"base {ppl['base']:.3f} | {ppl['llm_path']:.3f} as the base reads it (x{ratio['llm_path']:.3f}), "
        f"{ppl['t1t2_answer']:.3f} as a T1T2 answer (x{ratio['t1t2_answer']:.3f}) |",
        f"| spoken QA, A1T2 % ({sqa['llama-questions']['n']} Llama-Questions-style / {sqa['triviaqa']['n']} "
        f"TriviaQA-style) | {sqa['llama-questions']['accuracy']['A1T2']:.2f} / {sqa['triviaqa']['accuracy']['A1T2']:.2f} |",
        f"| VoiceBench mmsu / openbookqa acc % ({vb['mmsu']['n']} rows each) | {vb['mmsu']['scores']['acc']:.2f} / "
        f"{vb['openbookqa']['scores']['acc']:.2f} (fail {vb['mmsu']['scores']['fail']:.0f}: no letter named) |",
        f"| VoiceBench ifeval final % ({vb['ifeval']['n']} rows) | {vb['ifeval']['scores']['final']:.2f} |",
        f"| VoiceBench advbench refusal % ({vb['advbench']['n']} rows) | {vb['advbench']['scores']['refusal_rate']:.2f} |",
        f"TTFA ms mean / median / p90, RTF ({speech['answers']} answers) | {ttfa}, {speech['rtf_mean']:.2f} |",
    ]
    for row in rows:
        assert row in doc, row
    assert vb["mmsu"]["scores"]["acc"] == vb["openbookqa"]["scores"]["acc"]  # the README gives them as one figure
    said = (f"held-out WER {rec['asr']['heldout']:.2f}%, spoken QA (A1T2) {sqa['llama-questions']['accuracy']['A1T2']:.2f}% "
            f"of {sqa['llama-questions']['n']} Llama-Questions-style and {sqa['triviaqa']['accuracy']['A1T2']:.2f}% of "
            f"{sqa['triviaqa']['n']} TriviaQA-style questions, VoiceBench mmsu and openbookqa "
            f"{vb['mmsu']['scores']['acc']:.2f}% (it names no letter), ifeval {vb['ifeval']['scores']['final']:.2f}%, "
            f"advbench refusal {vb['advbench']['scores']['refusal_rate']:.2f}%, and the first audio of a streamed answer "
            f"after {speech['ttfa_ms_median']:.0f} ms")  # fmt: skip
    assert said in readme(), "README's Evaluate section: the demo report's summary, from docs/eval_report_demo.json"


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
