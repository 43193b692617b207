"""One report of a checkpoint's evaluation: every ``omni-eval`` result under a folder, in tables with
the published rows beside them (each figure with its source), as markdown, JSON and a figure.

Results are recognised by their content, whatever their file names: ``asr`` (``splits``),
``consistency`` (``task`` + ``wer``), ``retention`` (``perplexity``), and the files of the
``spoken-qa``, ``voicebench`` and ``speech`` commands (``command``). Other JSON files are skipped,
and the folders of a run that hold no results (``checkpoints``, ``model``, ``logs``) are not read.
A checkpoint evaluated twice by one command keeps the newer file's numbers (by modification time).
"""

from __future__ import annotations

import json
from pathlib import Path

from omni_train import evaluate
from omni_train.evals import speech_quality, spoken_qa, voicebench

SKIP_DIRS = {"checkpoints", "model", "logs", ".hydra", "snac"}
# speech-text consistency (WER % of the transcribed spoken answer against the text answer)
CONSISTENCY_PUBLISHED = [
    ("Mini-Omni", 25, "GLM-4-Voice, arXiv 2412.02612, speech-text alignment table (about 25; see docs/DESIGN.md)"),
    ("Mini-Omni", 6.05, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.ASR-WER)"),
    ("SLAM-Omni", 4.54, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.ASR-WER)"),
    ("GLM-4-Voice", 12.71, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.ASR-WER)"),
    ("Mini-Omni", 8.66, "VocalNet, arXiv 2504.04060, 'Response Alignment and Acoustic Quality' table (Avg WER)"),
]
ASR_SOURCE = "Mini-Omni, arXiv 2408.16725, LibriSpeech ASR table (docs/DESIGN.md 'Published results')"


def classify(data) -> str | None:
    """Which ``omni-eval`` command wrote `data`, or None if none did."""
    if not isinstance(data, dict):
        return None
    if data.get("command") in ("spoken-qa", "voicebench", "speech"):
        return data["command"]
    if "checkpoint" not in data:
        return None
    if isinstance(data.get("splits"), dict):
        return "asr"
    if isinstance(data.get("perplexity"), dict):
        return "retention"
    if "task" in data and data.get("metric", "wer") in data and isinstance(data.get("items"), list):
        return "consistency"
    return None


def collect(folder: str | Path) -> list[tuple[Path, str, dict]]:
    """(file, command, data) of every result JSON under `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = []
    for f in sorted(folder.rglob("*.json"), key=lambda p: (p.stat().st_mtime, str(p))):
        if SKIP_DIRS & set(f.relative_to(folder).parts[:-1]):
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # not ours
        if kind := classify(data):
            found.append((f, kind, data))
    return found


def _model_name(checkpoint: str, folder: Path) -> str:
    """A checkpoint path relative to the run folder where it lies inside it."""
    try:
        return str(Path(checkpoint).resolve().relative_to(folder.resolve())) or "."
    except ValueError:
        return checkpoint


def _scored(name: str, result: dict) -> str:
    """A column (split, task) named with its metric where that is not WER: CER for languages without spaces."""
    metric = result.get("metric", "wer")
    return name if metric == "wer" else f"{name} ({metric.upper()})"


def build(folder: str | Path) -> dict:
    """The report of every result under `folder`: per section this run's rows, the published rows
    with their sources, and the markdown of it all (``markdown``)."""
    folder = Path(folder)
    results = collect(folder)
    if not results:
        raise FileNotFoundError(
            f"{folder}: no omni-eval results (JSON written by asr, consistency, retention, spoken-qa, voicebench or "
            "speech; write them there with --out / --out-dir)"
        )
    report: dict = {"folder": str(folder), "files": [], "asr": {}, "consistency": {}, "retention": {},
                    "spoken_qa": {}, "voicebench": {}, "speech": {}}  # fmt: skip
    for f, kind, data in results:
        model = _model_name(str(data["checkpoint"]), folder)
        report["files"].append({"file": str(f.relative_to(folder)), "command": kind, "checkpoint": model})
        if kind == "asr":
            report["asr"].setdefault(model, {}).update({_scored(s, r): r[r.get("metric", "wer")]
                                                        for s, r in data["splits"].items()})  # fmt: skip
        elif kind == "consistency":
            kept = {k: data.get(k) for k in ("n", "scored", "whisper")}
            kept["wer"] = data.get(data.get("metric", "wer"))
            report["consistency"].setdefault(model, {})[_scored(data["task"], data)] = kept
        elif kind == "retention":
            report["retention"][model] = {k: data[k] for k in ("base", "perplexity", "ratio_to_base", "tokens")}
        elif kind == "spoken-qa":
            sets = report["spoken_qa"].setdefault(model, {})
            sets.update({name: {"n": r["n"], "accuracy": r["accuracy"]} for name, r in data["sets"].items()})
        elif kind == "voicebench":
            subsets = report["voicebench"].setdefault(model, {})
            subsets.update({s: {"n": r["n"], "scores": r["scores"]} for s, r in data["subsets"].items()})
        elif kind == "speech":
            report["speech"][model] = {"summary": data["summary"], "task": data["task"], "mos": data.get("mos")}
    report["published"] = {
        "asr": {name: {"wer": r, "source": ASR_SOURCE} for name, r in evaluate.PUBLISHED.items()},
        "consistency": [{"model": m, "wer": v, "source": s} for m, v, s in CONSISTENCY_PUBLISHED],
        "spoken_qa": [{"model": m, "accuracy": r, "source": s} for m, r, s in spoken_qa.PUBLISHED],
        "voicebench": {
            "columns": voicebench.COLUMNS, "rows": voicebench.LEADERBOARD, "source": voicebench.LEADERBOARD_SOURCE,
        },
        "speech": [{"model": m, "metric": k, "value": v, "source": s} for m, k, v, s in speech_quality.PUBLISHED],
    }  # fmt: skip
    report["markdown"] = markdown(report)
    return report


def markdown(report: dict) -> str:
    intro = (
        "Rows marked (published) are other models' figures as their papers or the benchmarks' leaderboards give "
        "them, each with its source; their test conditions (judge, Whisper size, hardware) are theirs."
    )
    out = [f"# Evaluation of {report['folder']}", "", intro, ""]
    if report["asr"]:
        out += ["## LibriSpeech ASR (WER %, A1T1)", "", evaluate.wer_table(report["asr"]), "",
                f"Published rows: {ASR_SOURCE}.", ""]  # fmt: skip
    if report["consistency"]:
        out += ["## Speech-text consistency (WER % of the transcribed spoken answer against the text answer)", "",
                "| model | task | answers | scored | WER % | source |", "|---|---|---|---|---|---|"]  # fmt: skip
        for model, tasks in report["consistency"].items():
            for task, r in tasks.items():
                wer = "-" if r["wer"] is None else f"{r['wer']:.2f}"
                out.append(
                    f"| {model} | {task} | {r['n']} | {r['scored']} | {wer} | this run (Whisper {r['whisper']}) |"
                )
        out += [f"| {m} (published) | - | - | - | {v} | {s} |" for m, v, s in CONSISTENCY_PUBLISHED] + [""]
    if report["retention"]:
        out += ["## Text retention (perplexity on held-out text)", "",
                "| model | base | tokens | base ppl | as the base reads it | as a T1T2 answer |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for model, r in report["retention"].items():
            p, q = r["perplexity"], r["ratio_to_base"]
            out.append(f"| {model} | {r['base']} | {r['tokens']} | {p['base']:.3f} | {p['llm_path']:.3f} "
                       f"(x{q['llm_path']:.3f}) | {p['t1t2_answer']:.3f} (x{q['t1t2_answer']:.3f}) |")  # fmt: skip
        out.append("")
    if report["spoken_qa"]:
        tasks = ("A1T2: spoken question, text answer. A1A2: spoken question, spoken answer, transcribed by Whisper; "
                 "'A1A2 text' is that answer's own text channel.")  # fmt: skip
        out += [
            "## Spoken question answering (% answered right)",
            "",
            tasks,
            "",
            spoken_qa.table(report["spoken_qa"]),
            "",
        ]
    if report["voicebench"]:
        note = (f"Published rows: {voicebench.LEADERBOARD_SOURCE}. The leaderboard's AlpacaEval is alpacaeval_full; "
                "open-ended subsets show '-' until judged.")  # fmt: skip
        out += ["## VoiceBench (A1T2 answers; GPT scores 1-5, the rest %)", "", voicebench.table(report["voicebench"]),
                "", note, ""]  # fmt: skip
    if report["speech"]:
        out += ["## Spoken answers: latency and quality", "",
                "TTFA: time to the first audio chunk; RTF: wall time over seconds of speech (streamed).", "",
                speech_quality.table(report["speech"]), ""]  # fmt: skip
    out += ["## Files", ""] + [f"- `{f['file']}`: {f['command']} of {f['checkpoint']}" for f in report["files"]]
    return "\n".join(out) + "\n"


def plot(report: dict, out: str | Path) -> list[str]:
    """One PNG, a panel a section where bars read better than a table: ASR WER, spoken QA accuracy
    (text vs speech), VoiceBench rule-scored subsets; each beside the published Mini-Omni figures.

    Returns:
        the panels drawn (empty: nothing to draw, no file written).
    """
    from matplotlib.figure import Figure

    panels = [p for p in ("asr", "spoken_qa", "voicebench") if report[p]]
    if not panels:
        return []
    fig = Figure(figsize=(6 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "asr":
            rows = {**report["asr"], "Mini-Omni (published)": evaluate.PUBLISHED["Mini-Omni"]}
            splits = [*evaluate.SPLITS, *dict.fromkeys(s for r in report["asr"].values() for s in r)]
            _bars(ax, rows, list(dict.fromkeys(splits)), "LibriSpeech WER % (lower is better)")
        elif panel == "spoken_qa":
            rows = {}
            for m, sets in report["spoken_qa"].items():
                for task in ("A1T2", "A1A2"):
                    rows[f"{m} {task}"] = {s: r["accuracy"].get(task) for s, r in sets.items()}
            for m, sets, _ in spoken_qa.PUBLISHED:
                if m == "Mini-Omni":
                    for k, task in enumerate(("A1T2", "A1A2")):
                        rows[f"Mini-Omni {task} (published, GPT judge)"] = {s: v[k] for s, v in sets.items()}
            names = list(dict.fromkeys(s for sets in report["spoken_qa"].values() for s in sets))
            _bars(ax, rows, names, "spoken QA accuracy %")
        else:
            cols = ["mmsu", "openbookqa", "ifeval", "advbench"]
            rows = {m: {s: voicebench.headline(s, r.get(s, {})) for s in cols} for m, r in report["voicebench"].items()}
            for m in ("Mini-Omni", "Kimi-Audio"):
                rows[f"{m} (published)"] = dict(zip(voicebench.COLUMNS, voicebench.LEADERBOARD[m]))
            _bars(ax, rows, cols, "VoiceBench, rule-scored subsets %")
    fig.suptitle(f"omni-eval report: {Path(report['folder']).resolve().name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return panels


def _bars(ax, rows: dict[str, dict], groups: list[str], title: str) -> None:
    """Grouped bars: a group a column of `groups`, a bar a row; groups and rows with no value are left out."""
    groups = [g for g in groups if any(values.get(g) is not None for values in rows.values())]
    rows = {name: values for name, values in rows.items() if any(values.get(g) is not None for g in groups)}
    width = 0.8 / max(len(rows), 1)
    for k, (name, values) in enumerate(rows.items()):
        xs = [g + k * width for g, col in enumerate(groups) if values.get(col) is not None]
        ys = [values[col] for col in groups if values.get(col) is not None]
        bars = ax.bar(xs, ys, width, label=name, hatch="//" if "published" in name else None, alpha=0.85)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize="small")
    ax.set_title(title, fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="x-small")
