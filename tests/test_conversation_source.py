"""The conversations source: the chat convention in JSONL and parquet, one sample a turn and task
with its earlier turns as history, bad turns counted, and long conversations trimmed from the oldest turn."""

import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from omni_train.data import sources
from omni_train.data.collator import OmniCollator
from omni_train.data.datamodule import OmniStream, SampleEncoder, SkipSample
from omni_train.data.samples import Turn
from omni_train.data.snac_format import format_answer_snac
from omni_train.data.sources.conversations import parse_messages
from omni_train.tasks import Task
from omni_train.vocab import Vocab


def flac(seconds: float = 0.05) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, format="FLAC")
    return buf.getvalue()


SNAC = format_answer_snac(torch.arange(14).view(2, 7))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def two_turns(q2_audio="q2.flac", snac=SNAC):
    return {"messages": [
        {"role": "user", "content": "what is two plus three", "audio": "q1.flac"},
        {"role": "assistant", "content": "two plus three is five", "answer_snac": snac},
        {"role": "user", "content": "and what is that plus one", "audio": q2_audio},
        {"role": "assistant", "content": "five plus one is six"},
    ]}  # fmt: skip


@pytest.fixture
def data(tmp_path):
    (tmp_path / "q1.flac").write_bytes(flac())
    (tmp_path / "q2.flac").write_bytes(flac())
    return tmp_path


def by_row(samples):
    return {(s.row, s.task.value): s for s in samples}


def test_each_turn_is_a_sample_with_the_earlier_turns_as_history(data):
    write_jsonl(data / "conv.jsonl", [two_turns()])
    src = sources.conversations(data / "conv.jsonl", tasks=["A1T2", "T1T2", "A1A2"])
    got = by_row(src)
    # turn 2 has no answer_snac: no A1A2 attempt there (absent is no attempt, not a skip)
    assert sorted(got) == [("conv.jsonl:1#1", t) for t in ("A1A2", "A1T2", "T1T2")] + [
        ("conv.jsonl:1#2", t) for t in ("A1T2", "T1T2")
    ]
    first, second = got["conv.jsonl:1#1", "T1T2"], got["conv.jsonl:1#2", "A1T2"]
    assert first.history == [] and first.question_text == "what is two plus three"
    assert second.history == [Turn("what is two plus three", "two plus three is five")]
    assert second.answer_text == "five plus one is six" and second.question_audio.path == str(data / "q2.flac")
    assert got["conv.jsonl:1#1", "A1A2"].answer_frames.tolist() == torch.arange(14).view(2, 7).tolist()
    assert src.name == "conv" and src.skips.n_skipped() == 0 and src.skips.n_seen() == 5
    assert not second.history_loss


def test_turns_last_and_history_loss(data):
    write_jsonl(data / "conv.jsonl", [two_turns(), {"messages": two_turns()["messages"][:2]}])
    src = sources.conversations(data / "conv.jsonl", tasks=["T1T2"], turns="last", history_loss=True)
    samples = list(src)
    assert [s.row for s in samples] == ["conv.jsonl:1#2", "conv.jsonl:2#1"]
    assert samples[0].history_loss and len(samples[0].history) == 1 and samples[1].history == []
    with pytest.raises(ValueError, match="turns must be 'all' or 'last'"):
        sources.conversations(data / "conv.jsonl", turns="first")
    with pytest.raises(ValueError, match="history_loss must be true or false, got 'no'"):
        sources.conversations(data / "conv.jsonl", history_loss="no")
    with pytest.raises(ValueError, match="task A1T1 is not available here"):
        sources.conversations(data / "conv.jsonl", tasks=["A1T1"])


def test_bad_turns_are_counted_skips_of_that_turn_only(data):
    rows = [
        two_turns(q2_audio="gone.flac"),  # turn 2's audio file is missing
        two_turns(snac="# 1 2 3"),  # turn 1's codes are malformed
        {"messages": [{"role": "assistant", "content": "hi"}]},  # does not start with a user turn
        {"messages": [{"role": "system", "content": "be brief"}, *two_turns()["messages"]]},
        {"messages": [{"role": "user", "audio": "q1.flac"}, {"role": "assistant", "content": "two"},
                      {"role": "user", "content": "and plus one"}, {"role": "assistant", "content": "three"}]},
    ]  # fmt: skip
    write_jsonl(data / "conv.jsonl", rows)
    (data / "conv.jsonl").write_text((data / "conv.jsonl").read_text() + "{not json\n")
    src = sources.conversations(data / "conv.jsonl", tasks=["A1T2", "A1A2", "T1T2"])
    got = by_row(src)
    skips = src.skips
    assert skips.skipped[("conv", "missing audio file")] == 1
    assert skips.skipped[("conv", "bad answer_snac")] == 1
    assert skips.skipped[("conv", "bad messages")] == 2 * 3  # a whole conversation: one skip a task
    assert skips.skipped[("conv", "bad json")] == 3
    assert skips.skipped[("conv", "earlier user turn without text")] == 1  # line 5, turn 2 (T1T2)
    where = {(e.row, e.reason) for e in skips.examples}
    assert ("conv.jsonl:1#2", "missing audio file") in where and ("conv.jsonl:2#1", "bad answer_snac") in where
    assert ("conv.jsonl:5#2", "earlier user turn without text") in where
    # the same conversations' good turns still make samples
    assert ("conv.jsonl:1#2", "T1T2") in got and ("conv.jsonl:2#1", "A1T2") in got and ("conv.jsonl:2#2", "A1T2") in got
    assert ("conv.jsonl:5#1", "A1T2") in got  # an audio-only question is fine as the current turn
    details = " | ".join(e.detail for e in skips.examples)
    assert "message 1 is 'assistant', expected 'user'" in details  # (the examples kept are the first 3 a reason)
    with pytest.raises(sources.BadRow) as bad:
        parse_messages(rows[3]["messages"])
    assert bad.value.detail == "message 1 has role 'system'; conversations alternate user and assistant"


def test_parquet_with_embedded_audio_and_typed_parts(tmp_path):
    audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    message = pa.struct([
        ("role", pa.string()), ("content", pa.string()), ("audio", audio), ("answer_snac", pa.string())
    ])
    rows = [{"messages": [
        {"role": "user", "content": "what does a cow say", "audio": None, "answer_snac": None},
        {"role": "assistant", "content": "a cow says moo", "audio": None, "answer_snac": SNAC},
        {"role": "user", "content": "how many legs does it have", "audio": {"bytes": flac(), "path": "q.flac"},
         "answer_snac": None},
        {"role": "assistant", "content": "a cow has four legs", "audio": None, "answer_snac": None},
    ]}]  # fmt: skip
    schema = pa.schema([("messages", pa.list_(message))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "c.parquet")
    src = sources.conversations(tmp_path / "c.parquet", tasks=["A1T2", "T1A2"])
    got = by_row(src)
    assert sorted(got) == [("c.parquet:0#1", "T1A2"), ("c.parquet:0#2", "A1T2")]
    assert got["c.parquet:0#2", "A1T2"].question_audio.data == flac()
    assert got["c.parquet:0#2", "A1T2"].history == [Turn("what does a cow say", "a cow says moo")]
    assert pickle.loads(pickle.dumps(src)).name == "c"

    typed = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is one plus one"}]},
        {"role": "assistant", "content": "one plus one is two"},
        {"role": "user", "content": {"type": "audio", "audio": "q.flac"}},
        {"role": "assistant", "content": [{"type": "text", "text": "two plus"}, {"type": "text", "text": "one is"},
                                          {"type": "text", "text": "three"}]},
    ]}  # fmt: skip
    (tmp_path / "q.flac").write_bytes(flac())
    write_jsonl(tmp_path / "typed.jsonl", [typed])
    got = by_row(sources.conversations(tmp_path / "typed.jsonl", tasks=["A1T2", "T1T2"]))
    assert sorted(got) == [("typed.jsonl:1#1", "T1T2"), ("typed.jsonl:1#2", "A1T2")]
    assert got["typed.jsonl:1#2", "A1T2"].answer_text == "two plus one is three"


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        sources.conversations(tmp_path / "nowhere.jsonl")
    write_jsonl(tmp_path / "c.jsonl", [{"conversation": []}])
    with pytest.raises(sources.MissingColumnError, match="no column 'messages'"):
        sources.conversations(tmp_path / "c.jsonl")


def test_read_conversation_for_inference(data):
    write_jsonl(data / "one.jsonl", [two_turns()])
    turns, base = sources.read_conversation(data / "one.jsonl")
    assert [t.user.text for t in turns] == ["what is two plus three", "and what is that plus one"] and base == data
    (data / "one.json").write_text(json.dumps(two_turns()["messages"][:3], indent=1))  # a bare list, unanswered last
    turns, _ = sources.read_conversation(data / "one.json")
    assert turns[-1].assistant is None and turns[-1].user.audio == "q2.flac"
    write_jsonl(data / "two.jsonl", [two_turns(), two_turns()])
    with pytest.raises(ValueError, match="holds 2 conversations"):
        sources.read_conversation(data / "two.jsonl")
    assert len(sources.read_conversation(data / "two.jsonl", row=2)[0]) == 2
    write_jsonl(data / "bad.jsonl", [{"messages": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: bad messages \(message 1 is 'assistant'"):
        sources.read_conversation(data / "bad.jsonl")


class Words:
    """A tokenizer of one id a word (litgpt's encode signature)."""

    def encode(self, text, bos=False, eos=False):
        return torch.tensor([len(w) for w in text.split()])


def test_long_conversations_drop_their_oldest_turns_counted(tmp_path):
    turns = []
    for k in range(6):
        turns.append({"role": "user", "content": f"question {k} " + "word " * 10})
        turns.append({"role": "assistant", "content": f"answer {k}"})
    write_jsonl(tmp_path / "long.jsonl", [{"messages": turns}])
    src = sources.conversations(tmp_path / "long.jsonl", tasks=["T1T2"], turns="last")
    encoder = SampleEncoder(Words(), Vocab(100), max_seq_length=40)  # a turn of history takes 18 positions
    stream = OmniStream({"long": src}, encoder, OmniCollator(Vocab(100)), max_tokens=1000)
    (batch,) = list(stream)
    assert batch.lengths.tolist() == [35]  # 1 earlier turn (18) + the current one (17)
    assert src.skips.dropped_turns["long"] == 4 and src.skips.n_skipped() == 0
    assert src.skips.as_dict()["long"]["dropped_turns"] == 4
    # even alone the current turn is too long: a counted skip, as for any sample
    sample = next(iter(src))
    with pytest.raises(SkipSample, match="longer than max_seq_length"):
        SampleEncoder(Words(), Vocab(100), max_seq_length=10)(sample)


def test_demo_conversations_read_without_skips():
    from omni_train.config import DEMO_DATA

    train = sources.conversations(DEMO_DATA / "conversations" / "train.jsonl", tasks=["A1T2", "T1T2"])
    held = sources.conversations(DEMO_DATA / "conversations" / "heldout.jsonl", tasks=["T1T2"], turns="last")
    samples, last = list(train), list(held)
    assert train.skips.n_skipped() == 0 and held.skips.n_skipped() == 0
    assert {s.task for s in samples} == {Task.A1T2, Task.T1T2}
    assert len(last) >= 30 and all(len(s.history) == 1 for s in last)
    seen = {(s.history[0].question, s.question_text) for s in samples if s.history}
    assert not {(s.history[0].question, s.question_text) for s in last} & seen  # held-out conversations are new
