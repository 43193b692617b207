"""Bad data in a real (shortened) run: each kind of bad row is skipped, counted where the user sees
it (the log and the stage's summary.json, from inside the loader workers), and only too many of
them stop the run, with one line naming the source."""

import json
import logging
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runs import SHORT, config

from omni_train.config import DEMO_DATA
from omni_train.data import sources
from omni_train.data.skips import SkipCounter, TooManySkips
from omni_train.train import train

GOOD_UTTERANCES = 6


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")
    # LibriSpeech layout: 6 good utterances, one whose flac is garbage, one with an empty transcript
    speaker = root / "asr" / "108" / "1081"
    speaker.mkdir(parents=True)
    lines = (DEMO_DATA / "asr/train/108/1081/108-1081.trans.txt").read_text().splitlines()[:GOOD_UTTERANCES]
    for line in lines:
        utt = line.split(" ", 1)[0]
        shutil.copy(DEMO_DATA / f"asr/train/108/1081/{utt}.flac", speaker / f"{utt}.flac")
    (speaker / "108-1081-0900.flac").write_bytes(b"fLaC but then nothing an audio decoder could read")
    lines += ["108-1081-0900 THE DOGS ARE SAD", "108-1081-0901 "]
    (speaker / "108-1081.trans.txt").write_text("\n".join(lines) + "\n")

    # VoiceAssistant-400K shards: one with three bad rows, one truncated (a download cut short)
    table = pq.read_table(DEMO_DATA / "voice_assistant.parquet")
    rows = table.to_pylist()
    good = rows[:20]
    good[3]["answer_snac"] = "# 1 2 3"  # a frame of 3 codes
    good[5]["answer_snac"] = "# 5000 " + good[5]["answer_snac"].split(" ", 2)[2]  # a code out of range
    good[7]["answer_snac"] = " ".join(["# 1 2 3 4 5 6 7"] * 600)  # 600 frames: over max_seq_length
    va = root / "va"
    va.mkdir()
    pq.write_table(pa.Table.from_pylist(good, schema=table.schema), va / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[20:], schema=table.schema), va / "train-00001-of-00002.parquet")
    data = (va / "train-00001-of-00002.parquet").read_bytes()
    (va / "train-00001-of-00002.parquet").write_bytes(data[: len(data) // 2])
    return root


def run_config(tmp_path, data, *overrides):
    return config(
        *SHORT, "stage=alignment", f"run_dir={tmp_path}", "eval.asr=null", "eval.speak=null", "~data.val.asr_heldout",
        f"data.sources.asr.root={data / 'asr'}", f"data.sources.voice_assistant.path={data / 'va'}",
        "data.num_workers=1",  # the counting happens in a loader worker process, as in real runs
        "stages.alignment.max_steps=3", *overrides,
    )


def test_a_truncated_parquet_shard_is_a_counted_skip(bad_data):
    va = sources.voice_assistant(bad_data / "va", tasks=["T1T2"])
    samples = list(va)
    assert len(samples) == 20  # the readable shard's rows; the truncated one gives none
    assert va.skips.skipped[("voice_assistant", "unreadable parquet file")] == 1
    (skip,) = [e for e in va.skips.examples if e.reason == "unreadable parquet file"]
    assert skip.row == "train-00001-of-00002.parquet" and "magic bytes" in skip.detail


def test_bad_rows_are_skipped_counted_and_reported(tmp_path, bad_data, caplog):
    cfg = run_config(
        tmp_path, bad_data, "data.max_skip_fraction=0.5",
        "+callbacks.nan._target_=test_numeric_faults.NaNGrads", "+callbacks.nan.steps=[1]",  # and one bad step
    )
    with caplog.at_level(logging.WARNING, logger="omni_train"):
        summary = train(cfg)
    stage = summary["stages"]["alignment"]
    assert stage["steps"] == 3 and stage["bad_steps"] == 1
    skipped = json.loads((tmp_path / "alignment" / "summary.json").read_text())["skipped_samples"]
    assert skipped == stage["skipped_samples"]

    asr = skipped["asr:A1T1"]
    assert set(asr["reasons"]) == {"unreadable audio", "empty text"}
    assert asr["seen"] >= GOOD_UTTERANCES + 2 and asr["fraction"] == pytest.approx(2 / 8, abs=0.05)  # mid-pass
    assert sorted((e["row"], e["reason"]) for e in asr["examples"]) == [  # the rows, once each, every pass counted
        ("108-1081-0900", "unreadable audio"), ("108-1081-0901", "empty text")
    ]

    va = skipped["voice_assistant:T1A2"]
    assert set(va["reasons"]) == {"bad answer_snac", "longer than max_seq_length", "unreadable parquet file"}
    where = {(e["row"], e["reason"]) for e in va["examples"]}
    assert ("train-00000-of-00002.parquet:3", "bad answer_snac") in where  # a frame of 3 codes
    assert ("train-00000-of-00002.parquet:5", "bad answer_snac") in where  # a code of 5000
    assert ("train-00000-of-00002.parquet:7", "longer than max_seq_length") in where
    assert ("train-00001-of-00002.parquet", "unreadable parquet file") in where
    details = " ".join(e["detail"] for e in va["examples"])
    assert "frame 0 has 3 codes" in details and "5000 is out of range" in details

    logged = [r.getMessage() for r in caplog.records if r.name == "omni_train.data.skips"]
    assert any(m.startswith("voice_assistant:T1A2: skipped ") for m in logged)
    assert any(m.startswith("asr:A1T1: skipped ") and "unreadable audio" in m for m in logged)


def test_too_many_skips_stop_the_run_naming_the_source(tmp_path, bad_data):
    cfg = run_config(tmp_path, bad_data, "data.max_skip_fraction=0.5", "+data.sources.voice_assistant.max_skip_fraction=0.1")
    with pytest.raises(TooManySkips) as err:
        train(cfg)
    message = str(err.value)  # re-raised from the loader worker: still our one line, no worker traceback
    assert message.startswith("voice_assistant:T1A2: skipped 4 of 21 samples (19.0%), more than the allowed 10.0%")
    assert "\n" not in message and "Traceback" not in message


def test_skip_counts_survive_the_trip_from_workers_and_a_resume():
    worker = SkipCounter()
    worker.seen("va", 10)
    worker.skip("va", "f.parquet:3", "bad answer_snac", "frame 0 has 3 codes", "T1A2")
    back = SkipCounter.from_dict(json.loads(json.dumps(worker.as_dict())))  # summary.json / checkpoint form
    assert back.as_dict() == worker.as_dict() and back.fraction("va") == 0.1
    assert SkipCounter().merge(back, worker).n_skipped("va") == 2
