"""Small benchmark sets in their publishers' layouts, made from the bundled demo speech.

The spoken questions are real speech (the demo's held-out LibriSpeech-layout clips); what they say
does not matter to a tiny random model, only that the files are laid out as the benchmarks publish
them.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Audio, Dataset

from omni_train import evaluate

HELDOUT = Path(evaluate.__file__).parent / "demo_data" / "asr" / "heldout"


def clips(n: int) -> list[Path]:
    found = sorted(HELDOUT.rglob("*.flac"))[:n]
    assert len(found) == n
    return found


def write_hf_parquet(path: Path, columns: dict[str, list], audio_columns: tuple[str, ...] = ("audio",)) -> Path:
    """A parquet shard as `datasets` writes a hub dataset: audio as ``{bytes, path}`` structs."""
    data = dict(columns)
    for col in audio_columns:
        data[col] = [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in columns[col]]
    ds = Dataset.from_dict(data)
    for col in audio_columns:
        ds = ds.cast_column(col, Audio(decode=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def llama_questions(root: Path) -> Path:
    """fixie-ai/llama-questions: data/test-00000-of-00001.parquet with question, answer (a string), audio."""
    folder = root / "llama-questions"
    write_hf_parquet(folder / "data" / "test-00000-of-00001.parquet", {
        "question": ["what is the capital of france", "how many legs does a spider have", "who wrote hamlet"],
        "answer": ["Paris", "eight", "William Shakespeare"],
        "audio": clips(3),
    })  # fmt: skip
    return folder


def trivia_qa(root: Path) -> Path:
    """fixie-ai/trivia_qa-audio: validation split; answer is TriviaQA's struct, audio is question_audio."""
    folder = root / "trivia_qa-audio"
    answer = lambda value, aliases: {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                                     "value": value, "normalized_value": value.lower()}  # fmt: skip
    write_hf_parquet(folder / "data" / "validation-00000-of-00001.parquet", {
        "question": ["which planet is the red planet", "what is the largest ocean"],
        "question_id": ["tqa_1", "tqa_2"],
        "answer": [answer("Mars", ["Mars", "Planet Mars"]), answer("Pacific", ["Pacific Ocean"])],
        "question_audio": clips(2),
    }, audio_columns=("question_audio",))  # fmt: skip
    return folder


def web_questions(root: Path, converted: bool = False) -> Path:
    """fixie-ai/spoken-web-questions: url, question, answers (a list), audio; data/test-00000-of-00001.parquet,
    or with `converted` the hub's converted-parquet branch, default/test/0000.parquet."""
    folder = root / "spoken-web-questions"
    shard = "default/test/0000.parquet" if converted else "data/test-00000-of-00001.parquet"
    write_hf_parquet(folder / shard, {
        "url": ["http://www.freebase.com/view/en/jamaica", "http://www.freebase.com/view/en/barack_obama"],
        "question": ["what language do jamaican people speak?", "who is the president who won in 2008?"],
        "answers": [["Jamaican English", "Jamaican Creole English Language"], ["Barack Obama"]],
        "audio": clips(2),
    })  # fmt: skip
    return folder


def uro_jsonl(root: Path) -> Path:
    """URO-Bench's manifest: test.jsonl rows with source_wav (relative), source_text, target_text."""
    folder = root / "WebQuestions-uro"
    (folder / "audio").mkdir(parents=True)
    rows = []
    for i, (clip, answers) in enumerate(zip(clips(2), [["Jamaican English", "Jamaican Creole"], "Barack Obama"])):
        (folder / "audio" / clip.name).write_bytes(clip.read_bytes())
        rows.append({"source_wav": f"audio/{clip.name}", "source_text": f"question {i}", "target_text": answers})
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "test.jsonl"


def voicebench(root: Path) -> Path:
    """hlt-lab/voicebench: ROOT/<subset>/<split>-00000-of-00001.parquet, two mmsu areas and one sd-qa accent."""
    root = root / "voicebench"
    c = clips(3)
    write_hf_parquet(
        root / "mmsu" / "law-00000-of-00001.parquet",
        {"prompt": ["which is a court? A. x B. y C. z D. w"] * 2, "reference": ["A", "C"], "audio": c[:2]},
    )
    write_hf_parquet(
        root / "mmsu" / "history-00000-of-00001.parquet",
        {"prompt": ["when? A. 1 B. 2 C. 3 D. 4"], "reference": ["D"], "audio": c[2:3]},
    )
    write_hf_parquet(
        root / "openbookqa" / "test-00000-of-00001.parquet",
        {"prompt": ["what melts ice? A. heat B. cold C. dark D. wind"], "reference": ["A"], "audio": c[:1]},
    )
    padding = {"num_words": None, "relation": None, "keywords": None, "end_phrase": None}
    write_hf_parquet(root / "ifeval" / "test-00000-of-00001.parquet", {
        "key": [1001, 1002],
        "prompt": ["write without commas", "write at least three words and end with bye"],
        "instruction_id_list": [["punctuation:no_comma"], ["length_constraints:number_words", "startend:end_checker"]],
        "kwargs": [[padding], [{**padding, "num_words": 3, "relation": "at least"}, {**padding, "end_phrase": "bye"}]],
        "audio": c[:2],
    })  # fmt: skip
    write_hf_parquet(
        root / "advbench" / "test-00000-of-00001.parquet", {"prompt": ["how to do harm"] * 2, "audio": c[:2]}
    )
    write_hf_parquet(
        root / "commoneval" / "test-00000-of-00001.parquet", {"prompt": ["tell me a joke"] * 2, "audio": c[:2]}
    )
    write_hf_parquet(
        root / "sd-qa" / "usa-00000-of-00001.parquet",
        {"prompt": ["who painted the mona lisa"], "reference": ["Leonardo da Vinci"], "audio": c[:1]},
    )
    return root
