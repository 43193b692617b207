"""VoiceBench: its layout, the rule scorers on hand-worked answers, and the judge client against a fake server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from bench_fixtures import voicebench as voicebench_snapshot

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


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: answers "Yes" or "4" after checking the key; the first
    request gets a 503 (the client must retry)."""

    key, requests, fail_first = "sk-test-not-a-real-key", [], True

    def do_POST(self):  # http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
        if FakeJudge.fail_first:
            FakeJudge.fail_first = False
            return self._reply(503, {"error": "busy"})
        if self.headers["Authorization"] != f"Bearer {FakeJudge.key}":
            return self._reply(401, {"error": "bad key"})
        text = "Yes" if "Reference answer" in body["messages"][-1]["content"] else "4"
        self._reply(200, {"choices": [{"message": {"content": text}} for _ in range(body["n"])]})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    FakeJudge.requests, FakeJudge.fail_first = [], True
    server = HTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


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
