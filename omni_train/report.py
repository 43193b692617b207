"""The table a run prints at its end (the same numbers are in the run's summary.json)."""

from __future__ import annotations

from omni_train.tasks import TASKS


def summary_table(summary: dict) -> str:
    """Per stage: steps, wall time and the first -> last loss of each task (text and audio layers)."""
    lines = [f"{'stage':<10} {'steps':>6} {'time':>7}  {'task':<5} {'text loss':>16} {'audio loss':>16}"]
    for stage, s in summary.get("stages", {}).items():
        loss, head = s.get("loss", {}), f"{stage:<10} {s.get('steps', 0):>6} {s.get('wall_time_s', 0):>6.0f}s"
        for task in TASKS:
            text, audio = loss.get(f"loss_{task.value}/text"), loss.get(f"loss_{task.value}/audio")
            if text is None and audio is None:
                continue
            cell = lambda v: f"{v['first']:7.3f} -> {v['last']:6.3f}" if v else f"{'-':>16}"  # noqa: E731
            lines.append(f"{head}  {task.value:<5} {cell(text):>16} {cell(audio):>16}")
            head = " " * len(head)
    if "wer_before" in summary or "wer_after" in summary:
        before, after = summary.get("wer_before"), summary.get("wer_after")
        first, last = summary.get("wer_before_stage", "the first stage"), summary.get("wer_after_stage", "the last stage")
        metric = summary.get("asr_metric", "wer").upper()  # CER for languages written without spaces
        lines.append(f"held-out ASR {metric}: {before}% before {first} -> {after}% after {last}")
    if summary.get("spoken_answer"):
        a = summary["spoken_answer"]
        lines.append(f"spoken answer to {a['question']!r}: {a['text']!r} ({a['seconds']} s, {a['wav']})")
        if "cer" in a:
            lines.append(f"the spoken answer as the demo recogniser hears it: {a['heard']!r}, "
                         f"CER {a['cer']}% against the text")
    if "wall_time_s" in summary:
        lines.append(f"total {summary['wall_time_s']:.0f} s; final model: {summary.get('final_model')}")
    return "\n".join(lines)
