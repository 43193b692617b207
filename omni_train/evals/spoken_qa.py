"""Spoken question answering accuracy: Llama Questions, Web Questions and TriviaQA, spoken.

The sets, as VITA-Audio (arXiv 2505.03739) and others evaluate them, are Hugging Face datasets of
spoken questions with their answers (`SETS`); a local copy in their published parquet layout, a
JSON Lines manifest (URO-Bench's ``source_wav`` / ``source_text`` / ``target_text`` rows, or
``audio`` / ``question`` / ``answers``), or the hub name itself is read (`read_set`).

Each question is answered twice: as A1T2 (spoken question, text answer) and as A1A2 (spoken
question, spoken answer, which a Whisper model transcribes), so text and speech accuracy sit side
by side; their gap is the speech-text consistency. The A1A2 row's own text channel is scored too.

The rule (`is_correct`): an answer is right when one of the acceptable answers, after Whisper's
English normaliser (lower case, no punctuation, numbers as digits: "twenty-one" -> "21", British
spellings American, "Mr." -> "mister"), appears as a whole-word phrase in the normalised response.
This is VITA-Audio's "answer contained in the response" accuracy with the normaliser the WER
numbers use, so "21" matches "twenty one" and "art" does not match "start".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import torch
from tqdm import tqdm

from omni_train.evals.bench_data import audio_of, columns_of, find_splits, hub_rows, local_rows, num_rows, pick_split
from omni_train.evaluate import Question, _normalize, spoken_answers, transcribe_speech
from omni_train.tasks import Task

# name -> (hub dataset, split): the spoken forms the papers evaluate on
SETS = {
    "llama-questions": ("fixie-ai/llama-questions", "test"),  # 300 questions (Spectron, arXiv 2305.15255)
    "web-questions": ("fixie-ai/spoken-web-questions", "test"),  # WebQuestions (Berant et al. 2013), spoken
    "triviaqa": ("fixie-ai/trivia_qa-audio", "validation"),  # 1,000 spoken TriviaQA questions
}
QUESTION_COLUMNS = ("question", "source_text", "prompt", "text")
AUDIO_COLUMNS = ("audio", "question_audio", "source_wav", "wav")
ANSWER_COLUMNS = ("answers", "answer", "target_text", "reference")
ID_COLUMNS = ("id", "question_id", "key")
TASKS = (Task.A1T2, Task.A1A2)


@dataclass
class QAItem(Question):
    """A spoken question (`audio`: an `Audio`, path or bytes) with every answer that counts as right."""

    answers: list[str] = field(default_factory=list)


def normalize(text: str) -> str:
    return " ".join(_normalize(text).split())


def is_correct(response: str, answers: Iterable[str]) -> bool:
    """Whether one of `answers`, normalised, is a whole-word phrase of the normalised `response`."""
    said = f" {normalize(response)} "
    return any(a and f" {a} " in said for a in map(normalize, answers))


# ---- reading ----------------------------------------------------------------------------------------
def _answers(value, where: str) -> list[str]:
    """str, a list of them, or TriviaQA's ``{aliases, value, ...}`` -> the acceptable answers."""
    if isinstance(value, dict):
        value = [*(value.get("aliases") or []), *([value["value"]] if value.get("value") else [])]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: answers must be a string, a list of strings or {{aliases}}, got {value!r:.80}")
    answers = list(dict.fromkeys(v for v in value if v.strip()))
    if not any(normalize(a) for a in answers):
        raise ValueError(f"{where}: no answer to score against ({value!r:.80})")
    return answers


def _columns(names: list[str], where: str) -> tuple[str | None, str, str, str | None]:
    """(question, audio, answers, id) columns among `names`; the question text and id are optional."""
    found = [next((c for c in wanted if c in names), None) for wanted in (QUESTION_COLUMNS, AUDIO_COLUMNS,
                                                                          ANSWER_COLUMNS, ID_COLUMNS)]  # fmt: skip
    for col, wanted, what in ((found[1], AUDIO_COLUMNS, "audio"), (found[2], ANSWER_COLUMNS, "answer")):
        if col is None:
            raise ValueError(f"{where}: no {what} column (looked for {', '.join(wanted)}; columns: {', '.join(names)})")
    return tuple(found)


def read_set(source: str | Path, split: str | None = None) -> tuple[str, str, Iterator[QAItem], int | None]:
    """Open a spoken QA set: a name of `SETS`, a hub name, a folder in HF's parquet layout, a
    ``.parquet`` file or a ``.jsonl`` manifest.

    Returns:
        (its name, where it was read, its items, read lazily so audio stays on disk until a batch
        needs it, and how many there are where the files say so without reading them).
    """
    source = str(source)
    path = Path(source)
    if path.exists():
        if path.is_dir():
            split, files = pick_split(find_splits(path), split, source)
            name = path.resolve().name
            name = next(
                (k for k, (hub, _) in SETS.items() if hub.split("/")[1] == name), name
            )  # a hub copy: its set name
        elif path.suffix in (".jsonl", ".parquet"):
            files, name = [path], path.stem
        else:
            raise ValueError(f"{path}: a spoken QA set is a folder, a .parquet or a .jsonl file")
        cols = _columns(columns_of(files), str(files[0]))
        rows = local_rows(files, [c for c in cols if c])
        return name, source, _items(rows, *cols), num_rows(files)
    hub, default_split = SETS.get(source, (source, "test"))
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub):
        raise FileNotFoundError(f"{source}: no such file or folder, nor a set name ({', '.join(SETS)}) or hub name")
    split = split or default_split
    rows = hub_rows(hub, None, split, list(AUDIO_COLUMNS))
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{hub} split {split!r} holds no rows")
    cols = _columns(list(first[2]), hub)
    return source, f"{hub}:{split}", _items(chain([first], rows), *cols), None


def _items(rows, q_col: str | None, audio_col: str, answer_col: str, id_col: str | None) -> Iterator[QAItem]:
    for where, folder, row in rows:
        yield QAItem(
            id=str(row[id_col]) if id_col and row.get(id_col) is not None else where,
            text=row.get(q_col) if q_col else None,
            audio=audio_of(row.get(audio_col), folder, where, audio_col),
            answers=_answers(row.get(answer_col), where),
        )


# ---- answering and scoring ------------------------------------------------------------------------
def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


@torch.inference_mode()
def evaluate_set(
    model, encoder, tokenizer, items: Iterator[QAItem], *, codec=None, judge=None, tasks=TASKS,
    limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 512, total: int | None = None,
    desc: str | None = None,
) -> dict:  # fmt: skip
    """Answer every question in each of `tasks` and score the answers.

    Args:
        codec, judge: the SNAC codec and the openai-whisper model, needed for A1A2.
        limit: answer only the first `limit` questions.

    Returns:
        ``{"n", "accuracy": {"A1T2", "A1A2", "A1A2_text"}: % , "items": [...]}``; each item has the
        question, answers, and per task the text (and for A1A2 the Whisper transcript and seconds
        of speech) with ``correct``.
    """
    tasks = [Task(t) for t in tasks]
    if Task.A1A2 in tasks and (codec is None or judge is None):
        raise ValueError("A1A2 needs the SNAC codec and a Whisper model to transcribe the spoken answers")
    items = islice(items, limit)
    known = [x for x in (total, limit) if x is not None]
    out = []
    bar = tqdm(total=min(known) if known else None, desc=desc, unit="question", disable=desc is None)
    for batch in _batches(items, batch_size):
        rows = [{"id": q.id, "question": q.text, "answers": q.answers} for q in batch]
        for task in tasks:
            answers = spoken_answers(model, encoder, tokenizer, batch, task, len(batch), max_new_tokens)
            for row, q, a in zip(rows, batch, answers):
                if task is Task.A1T2:
                    row["A1T2"] = {"text": a.text, "correct": is_correct(a.text, q.answers)}
                    continue
                wave = codec.decode(a.frames.to(codec.device)) if a.frames.size(0) else torch.zeros(0)
                heard = transcribe_speech(judge, wave, codec.sample_rate)
                row["A1A2"] = {"text": a.text, "text_correct": is_correct(a.text, q.answers), "transcript": heard,
                               "correct": is_correct(heard, q.answers),
                               "seconds": round(wave.numel() / codec.sample_rate, 2)}  # fmt: skip
        out.extend(rows)
        bar.update(len(batch))
    bar.close()
    if not out:
        raise ValueError("the set holds no questions")
    return {"n": len(out), "accuracy": accuracy(out), "items": out}


def accuracy(items: list[dict]) -> dict[str, float]:
    """% correct for each task the items were answered in (A1A2_text: the A1A2 answer's own text)."""
    acc = {}
    for key, task, field_ in (
        ("A1T2", "A1T2", "correct"),
        ("A1A2", "A1A2", "correct"),
        ("A1A2_text", "A1A2", "text_correct"),
    ):
        if all(task in i for i in items):
            acc[key] = round(100.0 * sum(i[task][field_] for i in items) / len(items), 2)
    return acc


# ---- published numbers ------------------------------------------------------------------------------
# Figures scored by a GPT judge on OpenAudioBench's copies of these sets (a different rule than the
# contained-answer rule above: comparable in kind, not to the decimal). % correct; "-" not reported.
_VOCALNET = "VocalNet, arXiv 2504.04060, 'Overall Performance' table (GPT judge)"
_KIMI = "Kimi-Audio, arXiv 2504.18425, Kimi-Audio-Evalkit LEADERBOARD 'Audio-to-Text Chat' (OpenAudioBench, GPT judge)"
PUBLISHED = [
    # model, {set: (A1T2, A1A2)}, source
    ("Mini-Omni", {"llama-questions": (2.7, 2.7)}, _VOCALNET),
    ("SLAM-Omni", {"llama-questions": (29.4, 26.7)}, _VOCALNET),
    ("LLaMA-Omni", {"llama-questions": (69.7, 55.1)}, _VOCALNET),
    ("Freeze-Omni", {"llama-questions": (77.7, 60.2)}, _VOCALNET),
    ("GLM-4-Voice", {"llama-questions": (77.4, 64.3)}, _VOCALNET),
    (
        "GLM-4-Voice",
        {"llama-questions": (76.00, None), "triviaqa": (51.80, None), "web-questions": (55.40, None)},
        _KIMI,
    ),
    (
        "Kimi-Audio",
        {"llama-questions": (79.33, None), "triviaqa": (62.10, None), "web-questions": (70.20, None)},
        _KIMI,
    ),
]


def table(results: dict[str, dict], published: bool = True) -> str:
    """Markdown: a row a (model, set) with A1T2, A1A2 and A1A2-text accuracy, published rows after.

    Args:
        results: ``{model name: {set name: evaluate_set result}}``.
    """
    lines = [
        "| model | set | questions | A1T2 % (text answer) | A1A2 % (spoken answer, Whisper) | A1A2 text % | source |",
        "|---|---|---|---|---|---|---|",
    ]
    cell = lambda v: "-" if v is None else f"{v:.2f}"
    for model, sets in results.items():
        for name, r in sets.items():
            acc = r["accuracy"]
            lines.append(f"| {model} | {name} | {r['n']} | {cell(acc.get('A1T2'))} | {cell(acc.get('A1A2'))} | "
                         f"{cell(acc.get('A1A2_text'))} | this run (contained-answer rule) |")  # fmt: skip
    if published:
        for model, sets, source in PUBLISHED:
            for name, (t, s) in sets.items():
                lines.append(f"| {model} (published) | {name} | - | {cell(t)} | {cell(s)} | - | {source} |")
    return "\n".join(lines)
