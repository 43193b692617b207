"""omni-prep on conversations: stats report turns per conversation; snac-encode turns the assistants'
audio into answer_snac, in shards the conversations source reads."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from tiny import SNAC_TINY, tone

from omni_train import prep
from omni_train.audio import SnacCodec, load_audio
from omni_train.cli.prep import main
from omni_train.data import sources
from omni_train.data.snac_format import format_answer_snac, parse_answer_snac


@pytest.fixture
def chats(tmp_path):
    for i, sec in enumerate([0.05, 0.1, 0.08]):
        sf.write(tmp_path / f"a{i}.wav", tone(sec, 24000, i), 24000)
    sf.write(tmp_path / "q.flac", tone(0.1, 16000, 5), 16000)
    rows = [
        {"id": "c1", "messages": [
            {"role": "user", "content": "what is two plus three", "audio": "q.flac"},
            {"role": "assistant", "content": "two plus three is five", "audio": "a0.wav"},
            {"role": "user", "content": "and what is that plus one"},
            {"role": "assistant", "content": "five plus one is six", "audio": "a1.wav"},
        ]},
        {"id": "c2", "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi", "audio": "gone.wav"},  # missing: the turn keeps its text
            {"role": "user", "content": "who are you"},
            {"role": "assistant", "content": "omni", "audio": "a2.wav"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "bye", "answer_snac": "# 1 2 3 4 5 6 7"},  # codes already there
        ]},
        {"id": "c3", "messages": [{"role": "assistant", "content": "no question"}]},  # malformed
    ]  # fmt: skip
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stats_report_turns_per_conversation(chats, capsys):
    s = prep.stats(chats)
    assert (s.rows, s.turns, s.bad_rows, s.lengths) == (2, 5, 1, [2, 3])
    assert s.audio_rows == 1 and s.seconds == pytest.approx(0.1) and s.snac_frames == 1
    main(["stats", str(chats)])
    out = capsys.readouterr().out
    assert "conversations: 2 (1 malformed, not counted)" in out
    assert "turns: 5 answered (mean 2.50 a conversation)" in out
    assert "turns per conversation:" in out and "     2 | " in out and "     3 | " in out
    assert "text tokens (user): 16" in out and "SNAC frames (answer_snac): 1 in 1 assistant turns" in out


def test_snac_encode_fills_the_assistants_codes(chats, tmp_path):
    snac = tmp_path / "snac"
    SnacCodec.from_config(SNAC_TINY).save_pretrained(snac)
    out = tmp_path / "out"
    report = prep.snac_encode(chats, out, snac, id_column="id", batch_size=1, device="cpu", progress=False)
    assert report.rows == 2 and report.shards_written == 1
    assert sum(report.skips.values()) == 2  # the missing answer audio and the malformed conversation
    assert any("gone.wav" in e for e in report.examples.values()) and "c2#2" in str(report)

    codec = SnacCodec.from_pretrained(snac)
    table = pq.read_table(out / "part-00000.parquet").to_pylist()
    assert [r["id"] for r in table] == ["c1", "c2"]
    c1, c2 = (r["messages"] for r in table)
    expected = format_answer_snac(codec.encode(load_audio(tmp_path / "a1.wav", 24000)))
    assert c1[3]["answer_snac"] == expected and c1[0]["audio"]["bytes"] == (tmp_path / "q.flac").read_bytes()
    assert c2[1]["answer_snac"] is None and c2[1]["content"] == "hi" and c2[5]["answer_snac"] == "# 1 2 3 4 5 6 7"

    # the conversations source reads the shards: every turn with codes makes a spoken-answer sample
    src = sources.conversations(out, tasks=["T1A2", "A1A2"])
    got = {(s.row, s.task.value): s for s in src}
    assert sorted(got) == [("part-00000.parquet:0#1", "A1A2"), ("part-00000.parquet:0#1", "T1A2"),
                           ("part-00000.parquet:0#2", "T1A2"), ("part-00000.parquet:1#2", "T1A2"),
                           ("part-00000.parquet:1#3", "T1A2")]  # fmt: skip
    assert torch.equal(got["part-00000.parquet:0#2", "T1A2"].answer_frames, parse_answer_snac(expected))
    assert src.skips.n_skipped() == 0
