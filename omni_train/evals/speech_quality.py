"""Spoken answers: how good they sound (a MOS predictor) and how fast they come (streaming latency).

Each question is answered by `omni_train.generate.stream_answer`, and in that one run we measure:
- time to first audio (TTFA): from the call until the first chunk of speech exists, the prompt's
  Whisper encoding and prefill included (on a GPU, after synchronising it);
- real-time factor (RTF): wall time of the whole answer over the seconds of speech it holds (below 1:
  faster than it plays);
- MOS: the whole streamed answer, resampled to 16 kHz, scored by the predictor the user gives.

The predictor is pluggable: a TorchScript file whose module maps 16 kHz waves ``(B, T)`` to one score
a clip ``(B,)`` (UTMOS-style). Any predictor scripts so, for example SpeechMOS's UTMOS22:

    class Mos(torch.nn.Module):
        def __init__(self, m): super().__init__(); self.m = m
        def forward(self, wave): return self.m(wave, 16000)
    torch.jit.script(Mos(torch.hub.load("tarepan/SpeechMOS:v1.2.0", "utmos22_strong"))).save("utmos.pt")
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch
import torchaudio.functional as AF

from omni_train.evaluate import Question
from omni_train.generate import stream_answer
from omni_train.tasks import Task

MOS_SAMPLE_RATE = 16_000


class MosPredictor:
    """A TorchScript MOS predictor: ``module(wave (B, T) at 16 kHz) -> (B,)`` scores."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such MOS predictor file (a TorchScript module)")
        try:
            self.module = torch.jit.load(str(self.path), map_location=device).eval()
        except RuntimeError as e:
            raise ValueError(f"{self.path}: not a TorchScript module ({str(e).splitlines()[0]})") from None
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor, sample_rate: int) -> float:
        """The predicted MOS of one clip ``(S,)`` at `sample_rate`."""
        wave = AF.resample(wave.detach().float().cpu().reshape(-1), sample_rate, MOS_SAMPLE_RATE)
        try:
            out = self.module(wave[None].to(self.device))
        except RuntimeError as e:
            raise ValueError(
                f"{self.path}: the module failed on a (1, {wave.numel()}) wave: {str(e).splitlines()[0]}"
            ) from None
        out = torch.as_tensor(out).float().reshape(-1)
        if out.numel() != 1 or not math.isfinite(out.item()):
            raise ValueError(f"{self.path}: expected one finite score for one clip, got {out.tolist()[:4]}")
        return out.item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_one(model, encoder, tokenizer, codec, question: Question, task: Task, **kwargs) -> dict:
    """Stream one answer; returns its text, speech (``wave``), TTFA, wall time and seconds of speech."""
    device = model.device
    source = {"audio": question.audio} if task.audio_in else {"text": question.text}
    _sync(device)
    start = time.perf_counter()
    stream = stream_answer(model, encoder, tokenizer, codec, task=task, **source, **kwargs)
    chunks, first = [], None
    while True:
        try:
            chunk = next(stream)
        except StopIteration as done:
            reply = done.value
            break
        _sync(device)
        first = time.perf_counter() - start if first is None else first
        chunks.append(chunk.detach().float().cpu())
    wall = time.perf_counter() - start
    wave = torch.cat(chunks) if chunks else torch.zeros(0)
    return {"text": reply.text, "wave": wave, "ttfa_s": first, "wall_s": wall,
            "seconds": wave.numel() / codec.sample_rate}  # fmt: skip


def measure(
    model, encoder, tokenizer, codec, questions: list[Question], *, task: Task | str = Task.A1A2,
    mos: MosPredictor | None = None, warmup: int = 1, chunk: int = 4, context: int = 3, max_new_tokens: int = 1024,
    save_dir: Path | None = None, desc: str | None = None,
) -> dict:  # fmt: skip
    """TTFA, RTF and MOS of each question's streamed spoken answer, and their summary.

    Args:
        warmup: answer the first question this many times unmeasured first (kernels, caches).
        chunk, context: `stream_decode`'s frames a chunk and frames of context.
        save_dir: write each answer's wav there.

    Returns:
        ``{"n", "summary": {ttfa_ms mean/median/p90, rtf mean, mos mean, seconds}, "items": [...]}``;
        an answer with no speech has no TTFA, RTF or MOS and is counted in ``summary.no_speech``.
    """
    from tqdm import tqdm

    from omni_train.audio import save_wav

    task = Task(task)
    if not task.audio_out:
        raise ValueError(f"task {task.value} has no spoken answer to measure")
    if not questions:
        raise ValueError("no questions")
    if missing := [q.id for q in questions if (q.audio if task.audio_in else q.text) is None]:
        raise ValueError(
            f"task {task.value} needs {'spoken' if task.audio_in else 'written'} questions; {missing[:3]} have none"
        )
    knobs = {"chunk": chunk, "context": context, "max_new_tokens": max_new_tokens}
    for _ in range(warmup):
        measure_one(model, encoder, tokenizer, codec, questions[0], task, **knobs)
    items = []
    for q in tqdm(questions, desc=desc, unit="answer", disable=desc is None):
        m = measure_one(model, encoder, tokenizer, codec, q, task, **knobs)
        item = {"id": q.id, "question": q.text, "text": m["text"], "seconds": round(m["seconds"], 4),
                "ttfa_ms": None, "rtf": None, "mos": None, "wall_s": round(m["wall_s"], 4)}  # fmt: skip
        if m["seconds"] > 0:
            item.update(ttfa_ms=round(1000 * m["ttfa_s"], 2), rtf=round(m["wall_s"] / m["seconds"], 4))
            if mos is not None:
                item["mos"] = round(mos(m["wave"], codec.sample_rate), 4)
            if save_dir is not None:
                item["wav"] = str(Path(save_dir) / f"{len(items):05d}.wav")
                save_wav(item["wav"], m["wave"], codec.sample_rate)
        items.append(item)
    return {"n": len(items), "task": task.value, "summary": summarize(items), "items": items}


def summarize(items: list[dict]) -> dict:
    spoken = [i for i in items if i["ttfa_ms"] is not None]
    ttfa = sorted(i["ttfa_ms"] for i in spoken)
    mos = [i["mos"] for i in spoken if i["mos"] is not None]
    out = {"answers": len(items), "no_speech": len(items) - len(spoken)}
    if spoken:
        out.update(
            ttfa_ms_mean=round(statistics.fmean(ttfa), 2), ttfa_ms_median=round(statistics.median(ttfa), 2),
            ttfa_ms_p90=round(ttfa[min(len(ttfa) - 1, math.ceil(0.9 * len(ttfa)) - 1)], 2),
            rtf_mean=round(statistics.fmean(i["rtf"] for i in spoken), 4),
            seconds_mean=round(statistics.fmean(i["seconds"] for i in spoken), 3),
        )  # fmt: skip
    if mos:
        out["mos_mean"] = round(statistics.fmean(mos), 3)
    return out


# ---- published ----------------------------------------------------------------------------------
# (model, metric, value, source); UTMOS on each paper's own test questions, latency on their hardware
PUBLISHED = [
    ("Mini-Omni", "UTMOS", 4.42, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.UTMOS)"),
    ("SLAM-Omni", "UTMOS", 4.45, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.UTMOS)"),
    ("Freeze-Omni", "UTMOS", 4.37, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.UTMOS)"),
    ("GLM-4-Voice", "UTMOS", 4.15, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.UTMOS)"),
    ("LLaMA-Omni", "UTMOS", 4.02, "URO-Bench, arXiv 2502.17810, basic-track EN leaderboard (Avg.UTMOS)"),
    ("Mini-Omni", "UTMOS", 4.430, "VocalNet, arXiv 2504.04060, 'Response Alignment and Acoustic Quality' table (Avg)"),
    ("LLaMA-Omni", "first-audio latency ms", 226, "LLaMA-Omni, arXiv 2409.06666, abstract"),
    (
        "VITA-Audio",
        "first-audio latency ms",
        53,
        "VITA-Audio, arXiv 2505.03739, README highlights (7B; 236 ms without MCTP)",
    ),
]


def table(results: dict[str, dict], published: bool = True) -> str:
    """Markdown: a row a model with TTFA, RTF, MOS; the published figures below.

    Args:
        results: ``{model name: measure() result}``.
    """
    lines = [
        "| model | answers | TTFA ms (mean / median / p90) | RTF | MOS | seconds of speech |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        s = r["summary"]
        ttfa = (
            " / ".join(f"{s[k]:.0f}" for k in ("ttfa_ms_mean", "ttfa_ms_median", "ttfa_ms_p90"))
            if "ttfa_ms_mean" in s
            else "-"
        )
        lines.append(f"| {model} | {s['answers']} ({s['no_speech']} silent) | {ttfa} | {s.get('rtf_mean', '-')} | "
                     f"{s.get('mos_mean', '-')} | {s.get('seconds_mean', '-')} |")  # fmt: skip
    if published:
        lines += ["", "| published | metric | value | source |", "|---|---|---|---|"]
        lines += [f"| {m} | {metric} | {v} | {src} |" for m, metric, v, src in PUBLISHED]
    return "\n".join(lines)
