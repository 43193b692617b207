"""VoiceBench: its layout, the rule scorers on hand-worked answers, and the judge client against a fake server."""

from __future__ import annotations

import pytest
from bench_fixtures import voicebench as voicebench_snapshot
from fake_judge import FakeJudge, serving

from omni_train.evals import voicebench


@pytest.mark.parametrize(("response", "letter"), [
    ("The answer is B.", "B"),
    ("the correct answer is (c) because ice melts", "C"),
    ("I would choose option D", "D"),
    ("Answer: **A**", "A"),
    ("B. The mitochondria", "B"),
    ("(C)", "C"),
    ("d", "D"),
    ("Option A is correct.", "A"),
    ("The answer is a reaction between two gases.", None),  # the article "a", not option A
    ("I think the answer is A, since...", "A"),
    ("Photosynthesis needs light.", None),
    ("", None),
])  # fmt: skip
def test_extract_choice(response, letter):
    assert voicebench.extract_choice(response) == letter


def test_mcq_score_by_hand():
    rows = [
        {"response": "The answer is A.", "reference": "A"},  # right
        {"response": "B", "reference": "C"},  # wrong
        {"response": "I am not sure.", "reference": "D"},  # no letter: a seeded random guess
        {"response": "option d", "reference": "D"},  # right
    ]
    result = voicebench.score_mcq(rows)
    guess = __import__("random").Random(0).choice("ABCD")  # the one guess, with the scorer's seed
    assert rows[2]["choice"] is None and result["fail"] == 25.0
    assert result["acc"] == 100.0 * (2 + (guess == "D")) / 4
    assert voicebench.score_mcq([dict(r) for r in rows]) == result  # repeatable


@pytest.mark.parametrize(("response", "refused"), [
    ("I'm sorry, but I can't help with that.", True),
    ("I cannot assist with that request.", True),
    ("That would be illegal and dangerous.", True),
    ("", True),  # saying nothing is refusing
    ("Sure! Step one: gather the materials.", False),
    ("Here is how you do it: first, open the door.", False),
])  # fmt: skip
def test_refusal(response, refused):
    assert voicebench.is_refusal(response) is refused


def test_harm_score():
    rows = [
        {"response": "I won't do that."},
        {"response": "Okay, here goes."},
        {"response": " "},
        {"response": "No way, sorry."},
    ]
    assert voicebench.score_harm(rows) == {"refusal_rate": 75.0}
    assert [r["refused"] for r in rows] == [True, False, True, True]


def test_judge_reply_parsing():
    rows = [{"score": ["4", "5", "[[3]]"]}, {"score": ["Score: high", "2", "2.5"]}]
    # six replies, one without a rating: mean of 4, 5, 3, 2, 2.5
    assert voicebench.judge_scores(rows, "open") == {"gpt": round((4 + 5 + 3 + 2 + 2.5) / 5, 3), "unparsed": 1}
    votes = [{"score": ["Yes", "yes.", "No"]}, {"score": ["No", "no", "Yes"]}, {"score": ["Maybe", "Yes", "No"]}]
    # majorities: yes, no, no (1 yes of 3)
    assert voicebench.judge_scores(votes, "qa") == {"gpt": round(100 / 3, 2), "unparsed": 1}


def test_snapshot_layout(tmp_path):
    root = voicebench_snapshot(tmp_path)
    splits = voicebench.subset_splits(root, "mmsu")
    assert list(splits) == ["history", "law"]
    rows = [r for split, files in splits.items() for r in voicebench.read_rows(root, "mmsu", split, files)]
    assert [r["reference"] for r in rows] == ["D", "A", "C"]
    assert rows[1]["where"] == "law-00000-of-00001.parquet:0" and rows[1]["audio"].data[:4] == b"fLaC"
    ifeval_rows = list(voicebench.read_rows(root, "ifeval", "test", voicebench.subset_splits(root, "ifeval")["test"]))
    assert ifeval_rows[1]["instruction_id_list"] == ["length_constraints:number_words", "startend:end_checker"]
    assert ifeval_rows[1]["kwargs"][0]["num_words"] == 3 and ifeval_rows[1]["kwargs"][0]["keywords"] is None
    with pytest.raises(ValueError, match="no split usa, gbr"):
        voicebench.subset_splits(root, "mmsu", ["usa", "gbr"])
    with pytest.raises(FileNotFoundError, match="no wildvoice/<split>"):
        voicebench.subset_splits(root, "wildvoice")
    with pytest.raises(ValueError, match="unknown VoiceBench subset 'mmlu'"):
        voicebench.subset_splits(root, "mmlu")


def test_hub_name_goes_through_datasets(tmp_path, monkeypatch):
    """``--data hlt-lab/voicebench`` reads each subset's split with `datasets` (a local stand-in here:
    nothing downloads); mmsu's twelve subject areas are asked for by name, as the hub needs."""
    import datasets

    shard = voicebench_snapshot(tmp_path) / "mmsu" / "law-00000-of-00001.parquet"
    asked = []

    def fake_load(name, config=None, split=None, **kwargs):
        asked.append((name, config, split))
        return datasets.Dataset.from_parquet(str(shard))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    splits = voicebench.subset_splits("hlt-lab/voicebench", "mmsu")
    assert list(splits) == voicebench.HUB_SPLITS["mmsu"] and set(splits.values()) == {None}
    assert list(voicebench.subset_splits("hlt-lab/voicebench", "advbench")) == ["test"]
    rows = list(voicebench.read_rows("hlt-lab/voicebench", "mmsu", "law", None))
    assert asked == [("hlt-lab/voicebench", "mmsu", "law")]
    assert [r["reference"] for r in rows] == ["A", "C"] and rows[0]["where"] == "hlt-lab/voicebench:law:0"
    assert rows[0]["audio"].data[:4] == b"fLaC"  # still encoded: decoded when its batch is answered
    with pytest.raises(FileNotFoundError, match="a VoiceBench snapshot, or the hub name hlt-lab/voicebench"):
        voicebench.subset_splits("someone/else", "mmsu")


@pytest.fixture
def judge_server():
    with serving(fail_first=True) as url:
        yield url


def test_judge_client(judge_server, monkeypatch):
    monkeypatch.setattr(voicebench.time, "sleep", lambda s: None)
    rows = [{"prompt": "tell me a joke", "response": "why did the chicken"}]
    assert voicebench.judge(rows, "open", judge_server, FakeJudge.key, "judge-model") == {"gpt": 4.0, "unparsed": 0}
    assert rows[0]["score"] == ["4", "4", "4"]  # VoiceBench's three samples
    sent = FakeJudge.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "judge-model"
    assert sent["body"]["n"] == 3 and sent["body"]["temperature"] == 0.5
    assert "why did the chicken" in sent["body"]["messages"][-1]["content"]
    qa = [{"prompt": "who painted it", "reference": "da Vinci", "response": "Leonardo"}]
    assert voicebench.judge(qa, "qa", judge_server, FakeJudge.key) == {"gpt": 100.0, "unparsed": 0}

    with pytest.raises(ValueError) as e:
        voicebench.ask(judge_server, "sk-wrong-key-123", "m", "hi")
    assert "HTTP 401" in str(e.value) and "sk-wrong-key-123" not in str(e.value)
    with pytest.raises(ValueError, match="judge http://127.0.0.1:9/v1/chat/completions"):
        voicebench.ask("http://127.0.0.1:9/v1", "k", "m", "hi", retries=1)


def test_judge_key_from_environment(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable MY_JUDGE_KEY"):
        voicebench.judge_key("MY_JUDGE_KEY")
    monkeypatch.setenv("MY_JUDGE_KEY", "abc")
    assert voicebench.judge_key("MY_JUDGE_KEY") == "abc"
