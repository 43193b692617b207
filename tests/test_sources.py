import inspect
import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from tiny import VA_SCHEMA

from omni_train.data import sources
from omni_train.data.skips import SkipCounter, TooManySkips
from omni_train.data.snac_format import format_answer_snac
from omni_train.data.sources import (
    MissingColumnError,
    asr_manifest,
    hf_asr,
    librispeech,
    moss_audioqa,
    open_orca,
    slam_s2s_jsonl,
    voice_assistant,
)
from omni_train.tasks import Task


def audio_bytes(fmt: str = "FLAC", seconds: float = 0.05, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(sr * seconds), dtype=np.float32), sr, format=fmt)
    return buf.getvalue()


def frames(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 4096, (n, 7), generator=torch.Generator().manual_seed(seed))


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def by_key(samples):
    return {(s.row, s.task): s for s in samples}


class ParquetSpy:
    """Records which parquet files are opened and which columns are read."""

    def __init__(self, monkeypatch):
        self.opened, self.columns = [], []
        spy, original = self, pq.ParquetFile

        class Spy(original):
            def __init__(self, source, *args, **kwargs):
                spy.opened.append(str(source))
                super().__init__(source, *args, **kwargs)

            def iter_batches(self, *args, columns=None, **kwargs):
                spy.columns.append(list(columns) if columns is not None else None)
                return super().iter_batches(*args, columns=columns, **kwargs)

        monkeypatch.setattr(sources.files.pq, "ParquetFile", Spy)


# ---------------------------------------------------------------------------------------------- VoiceAssistant

@pytest.fixture(scope="module")
def va_dir(tmp_path_factory):
    """VoiceAssistant-400K-shaped: 2 shards, 5 rows, row groups of 2; row 1 has a broken answer_snac,
    row 3 an empty answer, row 4 is an "identity" row."""
    root = tmp_path_factory.mktemp("va") / "data"
    root.mkdir()
    rows = []
    for i in range(5):
        rows.append(
            dict(
                split_name="identity" if i == 4 else "train",
                index=str(i), round="0", question=f"question {i}?",
                question_audio={"bytes": audio_bytes("WAV"), "path": f"{i}.wav"},
                answer="" if i == 3 else f"answer {i}.",
                answer_snac=format_answer_snac(frames(3 + i, seed=i)),
            )
        )
    rows[1]["answer_snac"] = rows[1]["answer_snac"].rsplit(" ", 1)[0]  # last frame has 6 codes
    for shard, part in enumerate((rows[:3], rows[3:])):
        table = pa.Table.from_pylist(part, schema=VA_SCHEMA)
        pq.write_table(table, root / f"train-{shard:05d}-of-00002.parquet", row_group_size=2)
    return root


def test_voice_assistant_yields_each_task_per_row(va_dir):
    src = voice_assistant(va_dir, tasks=["A1A2", "A1T2", "T1A2", "T1T2"])
    samples = by_key(src)
    a = samples[("train-00000-of-00002.parquet:0", Task.A1A2)]
    assert a.answer_text == "answer 0." and a.question_audio.data == audio_bytes("WAV")
    assert torch.equal(a.answer_frames, frames(3, seed=0)) and a.source == "voice_assistant"
    t = samples[("train-00000-of-00002.parquet:2", Task.T1A2)]
    assert t.question_text == "question 2?" and t.question_audio is None and torch.equal(t.answer_frames, frames(5, 2))
    t = samples[("train-00001-of-00002.parquet:1", Task.T1T2)]  # second shard, row ids count within the file
    assert (t.question_text, t.answer_text, t.answer_frames) == ("question 4?", "answer 4.", None)
    # row 1: bad answer_snac costs the spoken-answer tasks only; row 3: empty answer costs every task
    keys = {k for k in samples if k[0] == "train-00000-of-00002.parquet:1"}
    assert keys == {("train-00000-of-00002.parquet:1", Task.A1T2), ("train-00000-of-00002.parquet:1", Task.T1T2)}
    assert not any(k[0] == "train-00001-of-00002.parquet:0" for k in samples)
    assert len(samples) == 5 * 4 - 2 - 4
    assert src.skips.n_seen("voice_assistant") == 20
    assert src.skips.skipped == {("voice_assistant", "bad answer_snac"): 2, ("voice_assistant", "empty answer"): 4}
    example = next(e for e in src.skips.examples if e.reason == "bad answer_snac")
    assert example.row == "train-00000-of-00002.parquet:1" and "frame 3 has 6 codes, expected 7" in example.detail


def test_voice_assistant_reads_only_the_needed_columns_lazily(va_dir, monkeypatch):
    spy = ParquetSpy(monkeypatch)
    src = voice_assistant(va_dir, tasks=("T1T2",))
    it = iter(src)
    assert inspect.isgenerator(it) and spy.opened == []  # nothing read before the first sample
    first = next(it)
    assert first.task is Task.T1T2 and first.row == "train-00000-of-00002.parquet:0"
    assert [p.endswith("00000-of-00002.parquet") for p in spy.opened] == [True]  # the second shard is still unopened
    assert spy.columns[0] == ["answer", "question"]  # no audio bytes, no codes
    list(it)
    assert all(c == ["answer", "question"] for c in spy.columns)

    spy.columns.clear()
    list(voice_assistant(va_dir, tasks=("A1A2",)))
    assert all(c == ["answer", "question_audio", "answer_snac"] for c in spy.columns)


def test_voice_assistant_split_filter_and_glob(va_dir):
    src = voice_assistant(str(va_dir / "*.parquet"), tasks="A1T2", exclude_splits=["identity"])
    assert {s.row for s in src} == {"train-00000-of-00002.parquet:0", "train-00000-of-00002.parquet:1",
                                    "train-00000-of-00002.parquet:2"}
    only = voice_assistant(va_dir / "train-00001-of-00002.parquet", tasks="T1T2", splits=["identity"])
    assert [s.row for s in only] == ["train-00001-of-00002.parquet:1"]


def test_sources_are_re_iterable_shardable_and_picklable(va_dir):
    src = voice_assistant(va_dir, tasks=("A1T2", "T1T2"))
    full = [(s.row, s.task) for s in src]
    assert full == [(s.row, s.task) for s in src]  # a second epoch reads it all again
    shards = [[(s.row, s.task) for s in src.sharded(i, 2)] for i in range(2)]
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(full)
    quarters = [(s.row, s.task) for i in range(2) for j in range(2) for s in src.sharded(i, 2).sharded(j, 2)]
    assert sorted(quarters) == sorted(full) and len(set(quarters)) == len(full)
    clone = pickle.loads(pickle.dumps(src))  # DataLoader workers get a copy
    assert [(s.row, s.task) for s in clone] == full


def test_more_shards_than_row_groups_shard_by_row(va_dir):
    src = voice_assistant(va_dir, tasks=("T1T2",))
    full = [s.row for s in src]
    n = 2 * len(full)  # more shards than rows, let alone row groups
    shards = [[s.row for s in src.sharded(i, n)] for i in range(n)]
    assert sorted(r for part in shards for r in part) == sorted(full)  # each row once
    assert sum(1 for part in shards if part) == len(full)  # every row its own shard: none starves


def test_voice_assistant_config_errors(va_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        voice_assistant(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path / 'nope'}: no such file or directory"
    with pytest.raises(FileNotFoundError, match="no files match"):
        voice_assistant(str(tmp_path / "*.parquet"))
    with pytest.raises(FileNotFoundError, match="no .parquet files in this folder"):
        voice_assistant(tmp_path)
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), broken)
    with pytest.raises(MissingColumnError, match=r"broken\.parquet: no column 'question_audio'"):
        voice_assistant(broken, tasks=["A1T2"])
    voice_assistant(broken, tasks=["T1T2"])  # fine: that task needs neither audio nor codes
    with pytest.raises(ValueError, match="unknown task 'A2A1'"):
        voice_assistant(va_dir, tasks=["A2A1"])


def test_too_many_skips(va_dir):
    src = voice_assistant(va_dir, tasks=["A1A2"], max_skip_fraction=0.2)
    with pytest.raises(TooManySkips, match=r"voice_assistant: skipped 2 of 5 samples \(40.0%\).*bad answer_snac 1"):
        list(src)
    list(voice_assistant(va_dir, tasks=["A1A2"], max_skip_fraction=0.5))


# ---------------------------------------------------------------------------------------------- LibriSpeech


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri") / "LibriSpeech" / "train-clean-100"
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198-0000.flac").write_bytes(audio_bytes("FLAC"))
    (chapter / "19-198-0001.wav").write_bytes(audio_bytes("WAV"))
    (chapter / "19-198-0003.flac").write_bytes(audio_bytes("FLAC"))  # 0002 has no audio
    (chapter / "19-198-0000.flac").with_name("19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 CHAPTER ONE\n19-198-0002 NO AUDIO HERE\n19-198-0003\n"
    )
    other = root / "27" / "123"
    other.mkdir(parents=True)
    sf.write(other / "27-123-0000.flac", np.zeros(800, dtype=np.float32), 16000)
    (other / "27-123.trans.txt").write_text("27-123-0000 A SECOND SPEAKER\n")
    codes = tmp_path_factory.mktemp("codes") / "libri_snac.parquet"
    pq.write_table(
        pa.table({
            "id": ["19-198-0000", "19-198-0001", "27-123-0000"],
            "answer_snac": [format_answer_snac(frames(2, 0)), "# 1 2 3", format_answer_snac(frames(4, 1))],
        }),
        codes,
    )
    return root.parent, codes


def test_librispeech_asr(libri):
    root, _ = libri
    src = librispeech(root)
    samples = list(src)
    assert [s.row for s in samples] == ["19-198-0000", "19-198-0001", "27-123-0000"]
    assert all(s.task is Task.A1T1 for s in samples)
    assert samples[0].answer_text == "NORTHANGER ABBEY" and samples[0].question_audio.path.endswith("19-198-0000.flac")
    assert samples[1].question_audio.path.endswith("19-198-0001.wav")
    assert sf.info(samples[2].question_audio.path).samplerate == 16000
    assert src.skips.skipped == {("librispeech", "missing audio file"): 1, ("librispeech", "empty text"): 1}
    assert [s.row for s in librispeech(root).sharded(1, 2)] == ["19-198-0001"]  # utterances 1 and 3 (3 is empty)


def test_librispeech_feeds_tts_when_codes_exist(libri):
    root, codes = libri
    src = librispeech(root, tts_snac=codes)
    samples = by_key(src)
    tts = samples[("19-198-0000", Task.T1A2)]
    assert tts.question_text == tts.answer_text == "NORTHANGER ABBEY" and tts.question_audio is None
    assert torch.equal(tts.answer_frames, frames(2, 0)) and tts.answer_frames.dtype == torch.long
    assert torch.equal(samples[("27-123-0000", Task.T1A2)].answer_frames, frames(4, 1))
    assert ("19-198-0001", Task.T1A2) not in samples and ("19-198-0001", Task.A1T1) in samples
    # 0002 has text but neither audio nor codes; 0003 has audio but no text
    assert src.skips.skipped == {
        ("librispeech", "bad tts codes"): 1,
        ("librispeech", "missing audio file"): 1,
        ("librispeech", "no tts codes"): 1,
        ("librispeech", "empty text"): 2,
    }
    shard = src.sharded(0, 2)  # utterances 0, 2 and 4: the shard parses and keeps only their codes
    assert [(s.row, s.task.value) for s in shard] == [
        ("19-198-0000", "A1T1"), ("19-198-0000", "T1A2"), ("27-123-0000", "A1T1"), ("27-123-0000", "T1A2")
    ]
    assert set(shard.cache[("codes", (0, 2))]) == {"19-198-0000", "27-123-0000"}
    only_tts = librispeech(root, tts_snac=codes, tasks=["T1A2"])
    assert {s.task for s in only_tts} == {Task.T1A2}


def test_librispeech_errors(libri, tmp_path):
    root, codes = libri
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        librispeech(tmp_path / "missing")
    with pytest.raises(ValueError, match="T1A2 needs tts_snac"):
        librispeech(root, tasks=["T1A2"])
    with pytest.raises(MissingColumnError, match="no column 'utt'"):
        librispeech(root, tts_snac=codes, tts_id_column="utt")
    with pytest.raises(ValueError, match="task A1A2 is not available here"):
        librispeech(root, tasks=["A1A2"])


# ---------------------------------------------------------------------------------------------- HF datasets


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    import datasets

    tmp = tmp_path_factory.mktemp("hf")
    wav = tmp / "from_path.wav"
    wav.write_bytes(audio_bytes("WAV"))
    ds = datasets.Dataset.from_dict(
        {
            "audio": [{"bytes": audio_bytes("FLAC"), "path": "a.flac"}, {"bytes": None, "path": str(wav)},
                      {"bytes": audio_bytes("FLAC"), "path": "c.flac"}],
            "sentence": ["first", "second", "   "],
            "utt": ["u0", "u1", "u2"],
        }
    ).cast_column("audio", datasets.Audio())  # encoding needs no torchcodec when bytes/paths are given
    ds.save_to_disk(tmp / "disk")
    datasets.DatasetDict(train=ds, test=ds.select([0])).save_to_disk(tmp / "dict")
    ds.to_parquet(tmp / "files" / "part-0.parquet")
    return tmp


def test_hf_asr_from_disk(hf_data):
    src = hf_asr(hf_data / "disk", text_column="sentence")
    samples = list(src)
    assert [(s.row, s.task, s.answer_text) for s in samples] == [(0, Task.A1T1, "first"), (1, Task.A1T1, "second")]
    assert samples[0].question_audio.data == audio_bytes("FLAC")
    assert samples[1].question_audio.data == audio_bytes("WAV")  # save_to_disk embedded the file
    assert src.skips.skipped == {("disk", "empty sentence"): 1}
    assert [s.row for s in hf_asr(hf_data / "disk", text_column="sentence", id_column="utt")] == ["u0", "u1"]
    assert [s.row for s in hf_asr(hf_data / "disk", text_column="sentence").sharded(1, 2)] == [1]


def test_hf_asr_dataset_dict_and_parquet_files(hf_data, tmp_path):
    test = list(hf_asr(hf_data / "dict", text_column="sentence", split="test"))
    assert [s.answer_text for s in test] == ["first"]
    with pytest.raises(KeyError, match="no split 'dev'"):
        list(hf_asr(hf_data / "dict", text_column="sentence", split="dev"))
    files = list(hf_asr(hf_data / "files", text_column="sentence", cache_dir=tmp_path, name="hf"))
    assert [s.answer_text for s in files] == ["first", "second"] and files[0].source == "hf"
    assert files[0].question_audio.data == audio_bytes("FLAC")


def test_hf_asr_missing_column(hf_data, tmp_path):
    with pytest.raises(MissingColumnError, match="no column 'text'"):
        hf_asr(hf_data / "disk")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        hf_asr(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- JSONL manifests


def test_asr_manifest(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "a.wav").write_bytes(audio_bytes("WAV"))
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"audio": "wavs/a.wav", "text": "hello"},
            {"audio": "wavs/missing.wav", "text": "gone"},
            "{not json",
            "",
            {"audio": "wavs/a.wav"},
            {"audio": str(tmp_path / "wavs" / "a.wav"), "text": "absolute"},
        ],
    )
    src = asr_manifest(tmp_path / "train.jsonl")
    samples = list(src)
    assert [(s.row, s.answer_text) for s in samples] == [("train.jsonl:1", "hello"), ("train.jsonl:6", "absolute")]
    assert samples[0].question_audio.path == str(tmp_path / "wavs" / "a.wav") and samples[0].source == "train"
    assert src.skips.skipped == {
        ("train", "missing audio file"): 1, ("train", "bad json"): 1, ("train", "missing text"): 1,
    }
    write_jsonl(tmp_path / "other.jsonl", [{"wav": "wavs/a.wav", "text": "x"}])
    with pytest.raises(MissingColumnError, match=r"other\.jsonl: no column 'audio' \(columns: wav, text\)"):
        asr_manifest(tmp_path / "other.jsonl")
    assert [s.row for s in asr_manifest(tmp_path / "other.jsonl", audio_key="wav")] == ["other.jsonl:1"]


def test_open_orca(tmp_path):
    pq.write_table(
        pa.table({
            "id": ["a", "b", "c"],
            "system_prompt": ["You are a helpful assistant.", "", "x"],
            "question": ["What is 2+2?", "Name a colour.", "q"],
            "response": ["4", "Blue.", " "],
        }),
        tmp_path / "orca.parquet",
    )
    src = open_orca(tmp_path / "orca.parquet")
    samples = list(src)
    assert [s.task for s in samples] == [Task.T1T2, Task.T1T2]
    assert samples[0].question_text == "You are a helpful assistant.\n\nWhat is 2+2?" and samples[0].answer_text == "4"
    assert samples[1].question_text == "Name a colour." and samples[1].row == "orca.parquet:1"
    assert src.skips.skipped == {("open_orca", "empty response"): 1}
    write_jsonl(tmp_path / "orca.jsonl", [{"system_prompt": "", "question": "q?", "response": "r"}])
    assert [s.question_text for s in open_orca(tmp_path / "orca.jsonl")] == ["q?"]


def test_moss_audioqa(tmp_path):
    (tmp_path / "q0.wav").write_bytes(audio_bytes("WAV"))
    write_jsonl(
        tmp_path / "moss.jsonl",
        [
            {"question_audio": "q0.wav", "question": "How tall is Everest?", "answer": "8,849 m."},
            {"question_audio": None, "question": "No audio?", "answer": "Skipped."},
        ],
    )
    src = moss_audioqa(tmp_path / "moss.jsonl")
    (s,) = list(src)
    assert s.task is Task.A1T2 and s.question_text == "How tall is Everest?" and s.answer_text == "8,849 m."
    assert s.question_audio.path == str(tmp_path / "q0.wav")
    assert src.skips.skipped == {("moss_audioqa", "missing question_audio"): 1}
    pq.write_table(
        pa.table({"question_audio": [audio_bytes("FLAC")], "question": ["q"], "answer": ["a"]}), tmp_path / "m.parquet"
    )
    (p,) = list(moss_audioqa(tmp_path / "m.parquet", tasks=["A1T2"]))
    assert p.question_audio.data == audio_bytes("FLAC") and p.question_text == "q"
    with pytest.raises(MissingColumnError, match="no column 'question_wav'"):
        moss_audioqa(tmp_path / "moss.jsonl", audio_column="question_wav")


def test_slam_s2s_jsonl(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "0.wav").write_bytes(audio_bytes("WAV"))
    f0, f1 = frames(3, 0), frames(2, 1)
    write_jsonl(
        tmp_path / "s2s.jsonl",
        [
            {"key": "1", "source_wav": "audio/0.wav", "source_text": "hi?", "target_token": f0.reshape(-1).tolist(),
             "target_text": "hello."},
            {"key": "2", "source_wav": "audio/0.wav", "source_text": "b", "target_token": format_answer_snac(f1),
             "target_text": "string form"},
            {"key": "3", "source_wav": "audio/0.wav", "source_text": "c", "target_token": [742, 383, 455, 619, 180],
             "target_text": "CosyVoice tokens"},
            {"source_wav": "audio/0.wav", "source_text": "d", "target_token": f1.reshape(-1).tolist(),
             "target_text": "no key"},
        ],
    )
    src = slam_s2s_jsonl(tmp_path / "s2s.jsonl")
    samples = list(src)
    assert [s.row for s in samples] == ["1", "2", "s2s.jsonl:4"]
    assert samples[0].task is Task.A1A2 and samples[0].question_text == "hi?" and samples[0].answer_text == "hello."
    assert torch.equal(samples[0].answer_frames, f0) and torch.equal(samples[1].answer_frames, f1)
    assert samples[0].question_audio.path == str(tmp_path / "audio" / "0.wav")
    assert src.skips.skipped == {("s2s", "bad target_token"): 1}
    assert "5 codes is not a whole number of 7-code frames" in src.skips.examples[0].detail
    tts = list(slam_s2s_jsonl(tmp_path / "s2s.jsonl", tasks=["T1A2"]))
    assert [s.question_text for s in tts] == ["hi?", "b", "d"]


# ---------------------------------------------------------------------------------------------- SkipCounter


def test_skip_counter():
    c = SkipCounter(max_examples=2)
    assert c.fraction() == 0.0
    c.check(0.0)  # nothing seen, nothing to judge
    c.seen("a", 10)
    for i in range(4):
        c.skip("a", i, "bad answer_snac", f"frame {i}", task="A1A2")
    c.seen("b", 10)
    c.skip("b", "x", "empty answer")
    assert c.fraction("a") == 0.4 and c.fraction("b") == 0.1 and c.fraction() == 0.25
    assert [e.row for e in c.examples if e.source == "a"] == [0, 1]  # only the first few are kept
    assert str(c.examples[0]) == "a row 0 (A1A2): bad answer_snac: frame 0"
    c.check(0.5)
    c.check(0.2, source="b")
    with pytest.raises(TooManySkips, match=r"a: skipped 4 of 10 samples \(40.0%\), more than the allowed 20.0%"):
        c.check(0.2)
    c.check(0.2, early=True)  # mid-pass, 4 of 10 could be chance
    other = SkipCounter(max_examples=2)
    other.seen("a", 10)
    other.skip("a", 99, "missing question_audio")
    c.merge(pickle.loads(pickle.dumps(other)))
    assert c.n_seen("a") == 20 and c.n_skipped("a") == 5 and c.skipped[("a", "missing question_audio")] == 1
    assert "missing question_audio 1" in c.summary("a") and "empty answer" not in c.summary("a")
