"""Spoken QA: the answer-matching rule on hand-worked cases, and the sets' published layouts."""

from __future__ import annotations

import json

import pytest
from bench_fixtures import llama_questions, trivia_qa, uro_jsonl, web_questions, write_hf_parquet

from omni_train.evals import spoken_qa


@pytest.mark.parametrize(("response", "answers", "right"), [
    ("Paris is the capital of France.", ["Paris"], True),
    ("The answer is Twenty-One.", ["21"], True),  # numbers as digits on both sides
    ("It has 8 legs.", ["eight"], True),
    ("The colour is grey.", ["gray"], True),  # British spellings American
    ("It was Mr. Smith.", ["mister smith"], True),
    ("Uh, it is Jupiter!", ["Jupiter"], True),  # fillers and punctuation gone
    ("I would say William Shakespeare wrote it.", ["Shakespeare", "William Shakespeare"], True),
    ("Let us start with art.", ["art"], True),
    ("Let us start.", ["art"], False),  # whole words only: "start" does not contain the answer "art"
    ("Shakespeare", ["William Shakespeare"], False),  # the whole answer, not a part of it
    ("the planet mars", ["Planet Mars", "Mars"], True),
    ("four plus one is five", ["five"], True),  # "4 +1 is 5"
    ("one plus five is three", ["five"], False),  # the normaliser writes "plus five" as "+5": an operand, not the answer
    ("", ["Paris"], False),
    ("Paris", ["", "  "], False),  # an empty answer matches nothing
])  # fmt: skip
def test_answer_rule(response, answers, right):
    assert spoken_qa.is_correct(response, answers) is right


def test_normalize():
    assert spoken_qa.normalize("  The answer is: Twenty-One!  ") == "the answer is 21"
    assert spoken_qa.normalize("St. Louis, in 1969") == "saint louis in 1969"


def test_accuracy_by_hand():
    items = [
        {"A1T2": {"correct": True}, "A1A2": {"correct": False, "text_correct": True}},
        {"A1T2": {"correct": True}, "A1A2": {"correct": True, "text_correct": True}},
        {"A1T2": {"correct": False}, "A1A2": {"correct": False, "text_correct": False}},
        {"A1T2": {"correct": False}, "A1A2": {"correct": False, "text_correct": True}},
    ]
    assert spoken_qa.accuracy(items) == {"A1T2": 50.0, "A1A2": 25.0, "A1A2_text": 75.0}
    assert spoken_qa.accuracy([{"A1T2": {"correct": True}}]) == {"A1T2": 100.0}


def test_llama_questions_layout(tmp_path):
    name, _source, items, total = spoken_qa.read_set(llama_questions(tmp_path))
    items = list(items)
    assert name == "llama-questions" and total == 3 and len(items) == 3
    assert items[0].text == "what is the capital of france" and items[0].answers == ["Paris"]
    assert items[0].id == "test-00000-of-00001.parquet:0"
    assert items[0].audio.data[:4] == b"fLaC"  # the clip's own bytes, still encoded


def test_trivia_qa_layout(tmp_path):
    name, _, items, total = spoken_qa.read_set(trivia_qa(tmp_path), split="validation")
    items = list(items)
    assert (
        name == "triviaqa" and total == 2
    )  # the folder is named as the hub dataset: the set's name and [i.id for i in items] == ["tqa_1", "tqa_2"]
    assert items[0].answers == ["Mars", "Planet Mars"]  # the aliases, then the value (deduplicated)
    assert items[1].answers == ["Pacific Ocean", "Pacific"]


@pytest.mark.parametrize("converted", [False, True], ids=["data-shard", "converted-parquet"])
def test_web_questions_layout(tmp_path, converted):
    name, source, items, total = spoken_qa.read_set(web_questions(tmp_path, converted))
    items = list(items)
    assert name == "web-questions" and total == 2  # the folder is named as the hub dataset: the set's name
    assert items[0].text == "what language do jamaican people speak?"
    assert items[0].answers == ["Jamaican English", "Jamaican Creole English Language"]  # the list, as it is
    assert items[1].answers == ["Barack Obama"] and items[1].audio.data[:4] == b"fLaC"
    assert spoken_qa.is_correct("They speak Jamaican English.", items[0].answers)


def test_uro_jsonl_layout(tmp_path):
    name, _, items, total = spoken_qa.read_set(uro_jsonl(tmp_path))
    items = list(items)
    assert name == "test" and total is None and len(items) == 2
    assert items[0].answers == ["Jamaican English", "Jamaican Creole"] and items[1].answers == ["Barack Obama"]
    assert items[0].audio.path == str(tmp_path / "WebQuestions-uro" / "audio" / items[0].audio.path.split("/")[-1])
    assert items[0].text == "question 0"


def test_bad_sets_name_the_problem(tmp_path):
    folder = tmp_path / "two-splits"
    clip = next(iter(llama_questions(tmp_path).rglob("*.parquet")))
    for split in ("test", "dev"):
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "data" / f"{split}-00000-of-00001.parquet").write_bytes(clip.read_bytes())
    with pytest.raises(ValueError, match="splits dev, test: pass --split"):
        spoken_qa.read_set(folder)
    with pytest.raises(ValueError, match="no split 'valid'"):
        spoken_qa.read_set(folder, "valid")

    columns = {"question": ["q"], "audio": [clip]}  # any file: only the columns are looked at
    no_answer = write_hf_parquet(tmp_path / "x" / "test-00000-of-00001.parquet", columns)
    with pytest.raises(ValueError, match="no answer column .*columns: question, audio"):
        spoken_qa.read_set(no_answer)

    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"audio": "missing.wav", "answers": ["x"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing audio file .*missing.wav"):
        list(spoken_qa.read_set(manifest)[2])
    manifest.write_text(json.dumps({"audio": str(clip), "answers": ["  "]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: no answer to score against"):
        list(spoken_qa.read_set(manifest)[2])
    with pytest.raises(FileNotFoundError, match="nor a set name"):
        spoken_qa.read_set(tmp_path / "nowhere")


def test_hub_name_goes_through_datasets(tmp_path, monkeypatch):
    """A set name reads its hub dataset with `datasets` (here a local stand-in: nothing downloads)."""
    import datasets

    local = next(llama_questions(tmp_path).rglob("*.parquet"))
    asked = []

    def fake_load(name, config=None, split=None, **kwargs):
        asked.append((name, config, split))
        return datasets.Dataset.from_parquet(str(local))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    _name, source, items, _ = spoken_qa.read_set("llama-questions")
    items = list(items)
    assert asked == [("fixie-ai/llama-questions", None, "test")] and source == "fixie-ai/llama-questions:test"
    assert [i.answers for i in items] == [["Paris"], ["eight"], ["William Shakespeare"]]
    assert items[0].audio.data[:4] == b"fLaC"
