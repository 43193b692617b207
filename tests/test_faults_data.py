"""The data side of the fault matrix (issue 13): each test is a case a user meets, made with tiny
files, and fails without its fix.

- the skip limit stops a run promptly: early (a source losing most rows), whatever the fraction
  setting (a source that makes nothing), and a lost shard weighs the rows it held;
- a byte that is not UTF-8 in a JSONL line or a LibriSpeech transcript costs that line, named;
- audio over Whisper's 30 s is cut and counted, in the log and the stage's summary.json.
"""

import dataclasses
import json
import logging
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from litgpt.tokenizer import Tokenizer
from runs import SHORT, config

from omni_train.config import DEMO_DATA, DataConfig
from omni_train.data import sources
from omni_train.data.datamodule import OmniDataModule, SampleEncoder
from omni_train.data.samples import Sample
from omni_train.data.skips import SkipCounter, TooManySkips, UnreadableData
from omni_train.tasks import Task
from omni_train.train import train
from omni_train.vocab import Vocab

TRANSCRIPT = "THE DOG IS HAPPY"


@contextmanager
def within(seconds: int):
    """Fail, instead of hanging the suite, where the unfixed code spins forever."""

    def stop(*_):  # pytest's Failed is no Exception: no reader's `except` (TimeoutError is an OSError) eats it
        pytest.fail(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def write_wav(path, seconds: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)


def manifest(tmp_path, bad: list[bool], audio: str = "good.wav"):
    """An ASR manifest of ``len(bad)`` rows; the bad ones name an audio file that does not exist."""
    write_wav(tmp_path / "good.wav", 0.2)
    lines = [json.dumps({"audio": "missing.wav" if b else audio, "text": TRANSCRIPT}) for b in bad]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.jsonl"


@pytest.fixture(scope="module")
def encoder():
    return SampleEncoder(Tokenizer(DEMO_DATA / "tokenizer"), Vocab(1024), max_seq_length=512)


# ---------------------------------------------------------------------------------- the skip limit


def test_a_source_losing_most_rows_stops_after_a_few_attempts(tmp_path):
    # 61% of the rows bad, spread through the file (11 of every 18); the pass is 300 rows long
    path = manifest(tmp_path, [(7 * i) % 18 < 11 for i in range(300)])
    src = sources.asr_manifest(path, max_skip_fraction=0.01)
    limit = r"^m: skipped \d+ of \d+ samples .*more than the allowed 1.0%; reasons: missing audio file"
    with pytest.raises(TooManySkips, match=limit):
        list(src)
    assert src.skips.n_seen() < 20  # not at the end of the pass, nor after 1,000 attempts


def test_a_healthy_source_with_a_few_early_bad_rows_runs_on(tmp_path):
    # 2 bad of 200 (1%, allowed): the 4th and the 20th row. A plain "share over the limit after N
    # attempts" check would stop here (2 of 20 is 10%); only chance, not the data, put them early.
    path = manifest(tmp_path, [i in (3, 19) for i in range(200)])
    src = sources.asr_manifest(path, max_skip_fraction=0.01)
    assert len(list(src)) == 198 and src.skips.n_skipped() == 2


@pytest.mark.parametrize("where", ["reader", "encoder", "empty shard"])
def test_a_source_that_makes_nothing_stops_whatever_the_fraction(tmp_path, encoder, where):
    """max_skip_fraction=null (only count): a training stream over a source with no good sample
    used to spin for ever with no step and no output (or, where a whole pass made nothing, end in
    the mixture's traceback); now one line names the source and why."""
    workers = 0
    if where == "reader":  # every row names an audio file that is not there
        path = manifest(tmp_path, [True] * 5)
        says = "a whole pass over its rows made no sample; reasons: missing audio file 5"
    elif where == "encoder":  # every row's audio is there but cannot be decoded: the encoder, in the loader, skips it
        (tmp_path / "noise.wav").write_bytes(b"RIFF, but not a wav file")
        path = manifest(tmp_path, [False] * 5, audio="noise.wav")
        says = "the last 1,000 samples in a row were skipped, none made (1,000 of 1,000 skipped in all); reasons: "
        says += "unreadable audio 1,000"
    else:  # one good row, two loader workers: the second worker's share is empty
        path, workers = manifest(tmp_path, [False]), 2
        says = "its shard 1 of 2 (one per rank and loader worker) holds no rows"
    src = sources.asr_manifest(path, name="broken")
    cfg = DataConfig(max_tokens=600, buffer_size=16, num_workers=workers, max_skip_fraction=None)
    dm = OmniDataModule({"broken": src}, {"broken": 1.0}, encoder, cfg)
    with within(60), pytest.raises(TooManySkips) as err:
        batches = iter(dm.train_dataloader())
        for _ in range(2):  # with two workers, the second batch is worker 1's
            next(batches)
    message = str(err.value)  # from a loader worker too: our one line, not the worker's traceback
    assert message.startswith(f"broken: {says}") and "\n" not in message


def test_a_loader_worker_ends_on_the_trainers_sigterm_and_only_on_it(tmp_path, encoder):
    """multiprocessing (at the trainer's exit, for a worker still running: a loader held by a
    traceback, as in the test above) and torch stop a worker with SIGTERM from the trainer, then wait
    for it without a timeout. The worker used to ignore SIGTERM in torch's thread pool, started before
    our init, and the kernel handed it the signal there: that exit, and CI after the last test,
    waited for ever. A SIGTERM from anyone else (a scheduler's, to every process) it outlives."""
    src = sources.asr_manifest(manifest(tmp_path, [False] * 4), name="good")
    cfg = DataConfig(max_tokens=600, buffer_size=4, num_workers=2, max_skip_fraction=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a trainer on 2+ threads: its workers have torch's thread pool
    try:
        batches = iter(OmniDataModule({"good": src}, {"good": 1.0}, encoder, cfg).train_dataloader())
        next(batches)
    finally:
        torch.set_num_threads(threads)
    workers = batches._workers
    try:
        for worker in workers:
            subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
        time.sleep(1)
        assert all(w.is_alive() for w in workers)
        for worker in workers:
            worker.terminate()  # SIGTERM from this process, as multiprocessing sends it at exit
            worker.join(timeout=20)
            assert worker.exitcode == 0, f"worker {worker.pid}: {worker.exitcode}"
    finally:
        batches._shutdown_workers()


@pytest.fixture
def orca_shards(tmp_path):
    """Open-Orca parquet shards: a good one, one without the response column, one whose second row
    group is corrupt (its footer intact), and one truncated (its footer gone)."""
    rows = [{"system_prompt": "", "question": f"what is {i}", "response": f"it is {i}"} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=4)
    drift = [{k: v for k, v in r.items() if k != "response"} | {"answer": r["response"]} for r in rows[:7]]
    pq.write_table(pa.Table.from_pylist(drift), tmp_path / "b.parquet", row_group_size=4)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=4)
    chunk = pq.read_metadata(tmp_path / "c.parquet").row_group(1).column(2)  # rows 4-7's responses
    data = bytearray((tmp_path / "c.parquet").read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    (tmp_path / "c.parquet").write_bytes(bytes(data))
    whole = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "d.parquet").write_bytes(whole[: len(whole) // 2])
    return tmp_path


def test_a_lost_shard_counts_the_rows_it_held(orca_shards):
    src = sources.open_orca(orca_shards)  # the factory checks the first shard only
    made = list(src)
    assert len(made) == 10 + 6  # a.parquet whole, c.parquet but for its corrupt row group
    skipped = dict(src.skips.skipped)
    assert skipped == {
        ("open_orca", "missing column response"): 7,  # b.parquet: all its rows, from its metadata
        ("open_orca", "unreadable parquet data"): 4,  # c.parquet's row group 1
        ("open_orca", "unreadable parquet file"): 1,  # d.parquet: no footer, no row count
    }
    assert src.skips.n_seen() == 10 + 7 + 10 + 1
    examples = {e.reason: e for e in src.skips.examples}
    assert examples["missing column response"].row == "b.parquet"
    assert "whole shard, 7 rows: no column 'response'" in examples["missing column response"].detail
    assert examples["unreadable parquet data"].row == "c.parquet:4"
    assert examples["unreadable parquet file"].row == "d.parquet"
    assert examples["unreadable parquet file"].detail.startswith("whole shard, rows unknown")

    # loader workers (shards by row group, or by row when there are more shards than groups)
    # count each lost row once between them
    for count in (2, 16):
        whole = sources.open_orca(orca_shards)
        assert sum(len(list(whole.sharded(i, count))) for i in range(count)) == 16
        assert dict(whole.skips.skipped) == skipped and whole.skips.n_seen() == 28


def test_a_lost_shard_weighs_its_rows_against_the_limit(orca_shards):
    (orca_shards / "c.parquet").unlink()
    (orca_shards / "d.parquet").unlink()
    # 7 rows lost of 17 (41%): one lost "sample" of 11 (9%) would pass a 20% limit
    src = sources.open_orca(orca_shards, max_skip_fraction=0.2)
    with pytest.raises(TooManySkips, match=r"open_orca: skipped 7 of 17 samples \(41.2%\), more than the allowed 20"):
        list(src)


# ---------------------------------------------------------------------------------- bytes that are not UTF-8


def test_a_jsonl_line_that_is_not_utf8_is_a_counted_skip(tmp_path):
    path = manifest(tmp_path, [False] * 4)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"DOG", b"D\xd6G")  # latin-1, as an old export writes it
    path.write_bytes(b"\n".join(lines))
    src = sources.asr_manifest(path)
    assert len(list(src)) == 3
    (skip,) = src.skips.examples
    assert (skip.row, skip.reason) == ("m.jsonl:2", "not UTF-8")
    column = lines[1].index(b"\xd6") + 1
    assert skip.detail == f"byte 0xd6 at column {column}"


def test_a_jsonl_the_datasets_library_cannot_read_is_one_line_naming_it(tmp_path):
    """hf_asr streams JSON data files through the datasets library, which cannot skip a line."""
    from torch._utils import ExceptionWrapper

    path = manifest(tmp_path, [False] * 3)
    path.write_bytes(path.read_bytes().replace(b"DOG", b"D\xd6G", 1))
    src = sources.hf_asr(path, cache_dir=tmp_path / "cache")
    with pytest.raises(UnreadableData) as err:
        list(src)
    assert str(err.value).startswith(f"m: {path}: not UTF-8 (byte 0xd6: invalid continuation byte);")
    try:  # as a loader worker's error reaches the trainer: still our one line
        raise err.value
    except UnreadableData:
        with pytest.raises(UnreadableData) as again:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()
    assert str(again.value) == str(err.value)


@pytest.fixture
def libri_bad_line(tmp_path):
    chapter = tmp_path / "libri" / "19" / "198"
    chapter.mkdir(parents=True)
    for i in range(3):
        write_wav(chapter / f"19-198-000{i}.wav", 0.2, i)
    (chapter / "19-198.trans.txt").write_bytes(
        b"19-198-0000 THE DOG IS HAPPY\n19-198-0001 THE CAF\xc9 IS OPEN\n19-198-0002 THE CAT IS SAD\n"
    )
    return tmp_path / "libri"


def test_a_librispeech_transcript_line_that_is_not_utf8_is_a_counted_skip(libri_bad_line, caplog):
    src = sources.librispeech(libri_bad_line, name="asr")
    assert [s.row for s in src] == ["19-198-0000", "19-198-0002"]
    (skip,) = src.skips.examples
    assert (skip.row, skip.reason) == ("19-198.trans.txt:2", "not UTF-8")
    assert skip.detail.endswith("19-198.trans.txt:2: byte 0xc9 at column 20")
    shards = sources.librispeech(libri_bad_line, name="asr")
    assert sum(len(list(shards.sharded(i, 2))) for i in range(2)) == 2 and shards.skips.n_skipped() == 1

    # the evaluations and omni-prep scan the same way: the line is passed over, and said so
    with caplog.at_level(logging.WARNING):
        assert [u.id for u in sources.utterances(libri_bad_line)] == ["19-198-0000", "19-198-0002"]
    assert any("19-198.trans.txt:2: not UTF-8 (byte 0xc9 at column 20)" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------- cuts


def test_the_encoder_marks_a_cut_and_the_counter_keeps_it(tmp_path, encoder):
    encoder = dataclasses.replace(encoder, max_seq_length=2048)  # room for 30 s
    write_wav(tmp_path / "long.wav", 31.0)
    write_wav(tmp_path / "short.wav", 29.0)
    long = encoder(Sample(Task.A1T1, TRANSCRIPT, question_audio=sources.to_audio("long.wav", tmp_path, "audio")))
    short = encoder(Sample(Task.A1T1, TRANSCRIPT, question_audio=sources.to_audio("short.wav", tmp_path, "audio")))
    assert long.cut_from_s == pytest.approx(31.0) and long.audio_frames == 1500 and short.cut_from_s is None

    counter = SkipCounter()
    counter.seen("asr", 2)
    counter.cut("asr", "u1", "31.0 s of audio cut to Whisper's 30 s")
    back = SkipCounter.from_dict(json.loads(json.dumps(counter.as_dict())))  # summary.json / checkpoint form
    assert back.as_dict()["asr"]["cut"] == 1 and SkipCounter().merge(back, counter).cuts["asr"] == 2


def test_a_run_counts_cuts_and_names_bad_transcript_lines(tmp_path, caplog):
    """A real (shortened) run, the counting in a loader worker: a clip over 30 s is cut, trained on
    and counted; a transcript line that is not UTF-8 is skipped, named, and the run goes on."""
    chapter = tmp_path / "asr" / "108" / "1081"
    chapter.mkdir(parents=True)
    lines = (DEMO_DATA / "asr/train/108/1081/108-1081.trans.txt").read_bytes().splitlines()[:4]
    for line in lines:
        utt = line.split(b" ", 1)[0].decode()
        shutil.copy(DEMO_DATA / f"asr/train/108/1081/{utt}.flac", chapter / f"{utt}.flac")
    speech, rate = sf.read(DEMO_DATA / f"asr/train/108/1081/{lines[0].split()[0].decode()}.flac")
    sf.write(chapter / "108-1081-0900.flac", np.tile(speech, int(31 * rate / len(speech)) + 1), rate)
    lines += [b"108-1081-0900 " + lines[0].split(b" ", 1)[1], b"108-1081-0901 THE DOG IS H\xe4PPY"]
    (chapter / "108-1081.trans.txt").write_bytes(b"\n".join(lines) + b"\n")

    cfg = config(
        *SHORT, "stage=alignment", f"run_dir={tmp_path / 'run'}", "eval.asr=null", "eval.speak=null",
        "~data.val.asr_heldout", "~data.sources.voice_assistant", "~data.sources.textqa",
        f"data.sources.asr.root={tmp_path / 'asr'}", "stages.alignment.tasks.T1A2=0",
        "model=tiny-llama", "model.overrides.block_size=2048", "data.max_seq_length=2048",  # room for 30 s
        "data.num_workers=1", "data.max_skip_fraction=0.5", "stages.alignment.max_steps=2",
    )
    with caplog.at_level(logging.WARNING, logger="omni_train"):
        summary = train(cfg)["stages"]["alignment"]
    assert summary == json.loads((tmp_path / "run" / "alignment" / "summary.json").read_text())
    assert summary["cut_samples"]["asr:A1T1"] >= 1
    asr = summary["skipped_samples"]["asr:A1T1"]
    assert asr["cut"] == summary["cut_samples"]["asr:A1T1"] and set(asr["reasons"]) == {"not UTF-8"}
    (example,) = asr["examples"]
    assert example["row"] == "108-1081.trans.txt:6" and "byte 0xe4 at column 27" in example["detail"]
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("asr:A1T1: cut the audio of ") and "to Whisper's 30 s" in m for m in logged)


def test_a_source_given_as_one_truncated_parquet_file_names_it(tmp_path):
    """It named the folder ("/data: none of its 1 parquet files can be read"), which may hold many others."""
    whole = (DEMO_DATA / "voice_assistant.parquet").read_bytes()
    cut = tmp_path / "va.parquet"
    cut.write_bytes(whole[:-100])  # the footer lost
    with pytest.raises(ValueError) as err:
        sources.voice_assistant(cut, tasks=["A1T2"])
    assert str(err.value) == f"{cut}: cannot be read (a truncated or damaged parquet file, or not parquet)"
