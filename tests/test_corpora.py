"""The corpus layouts (wav-txt, LJSpeech, Common Voice, MLS, LibriTTS, VCTK): good clips read as ASR
and TTS samples, bad rows counted with file:line, and omni-prep's snac-encode/convert on each."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from tiny import SNAC_TINY

from omni_train import prep
from omni_train.audio import SnacCodec, load_audio
from omni_train.cli.prep import main
from omni_train.data.snac_format import parse_answer_snac
from omni_train.data.sources import LAYOUTS, MissingColumnError, clips, corpus
from omni_train.tasks import Task


def tone(n: int, seed: int, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(0.05 * rate) + 160 * n) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t)).astype(np.float32)


def write(path: Path, seed: int, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seed, seed), 16000, format=fmt)
    return path


def make_wav_txt(root: Path) -> None:
    write(root / "a" / "eins.wav", 0)
    (root / "a" / "eins.txt").write_text("Guten Morgen\n")
    write(root / "b" / "zwei.flac", 1)
    (root / "b" / "zwei.txt").write_text("wie geht es dir")
    write(root / "b" / "drei.wav", 2)  # no drei.txt: a bad row
    write(root / "b" / "vier.wav", 3)
    (root / "b" / "vier.txt").write_text("  \n")  # empty: a bad row
    (root / "b" / "fuenf.txt").write_text("no audio: not a clip")
    write(root / "c" / "sechs.wav", 4)
    (root / "c" / "sechs.txt").write_bytes("Grüße".encode("latin-1"))  # not UTF-8: a bad row


def make_ljspeech(root: Path) -> None:
    for i in range(3):
        write(root / "wavs" / f"LJ001-000{i}.wav", i)
    (root / "metadata.csv").write_text(
        "LJ001-0000|Printing, in 1 sense|Printing, in one sense\n"
        "LJ001-0001|only raw text|\n"  # no normalised text: the raw one is used
        "just garbage\n"  # line 3: malformed
        "LJ001-0002|the third clip|the third clip\n"
        "LJ001-0009|missing wav|missing wav\n"  # line 5: its wav is missing
    )
    write(root / "wavs" / "LJ001-0003.wav", 3)
    with open(root / "metadata.csv", "ab") as f:
        f.write("LJ001-0003|café|café\n".encode("latin-1"))  # line 6: not UTF-8


def make_common_voice(root: Path) -> None:
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    rows = [
        'c1\tcommon_voice_de_1.mp3\tDas ist "gut".\t2\t0\t\t\t\tde\t\n',  # quotes stay text (QUOTE_NONE)
        "c2\tcommon_voice_de_2.mp3\tZwei Wörter\t2\t0\t\t\t\tde\t\n",
        "c3\tcommon_voice_de_3.mp3\n",  # line 4: too few fields
        "c4\tcommon_voice_de_4.mp3\t\t2\t0\t\t\t\tde\t\n",  # line 5: empty sentence
    ]
    (root / "train.tsv").parent.mkdir(parents=True, exist_ok=True)
    (root / "train.tsv").write_text(header + "".join(rows))
    for i in (1, 2, 4):
        write(root / "clips" / f"common_voice_de_{i}.mp3", i, fmt="MP3")


def make_mls(root: Path) -> None:
    write(root / "audio" / "1844" / "931" / "1844_931_000001.flac", 0)
    write(root / "audio" / "1844" / "931" / "1844_931_000002.flac", 1)
    (root / "transcripts.txt").write_text(
        "1844_931_000001\tdas erste buch\n"
        "1844_931_000002\tdas zweite buch\n"
        "1844_931\tno utterance number\n"  # line 3: malformed id
        "1844_931_000003\tno audio\n"  # its flac is missing
    )


LIBRITTS = "train-clean-100/19/198"


def make_libritts(root: Path) -> None:
    folder = root / LIBRITTS
    for i, (norm, orig) in enumerate([("Northanger Abbey.", "NORTHANGER ABBEY."), ("Chapter one.", "CHAPTER 1.")]):
        uid = f"19_198_000000_00000{i}"
        write(folder / f"{uid}.wav", i)
        (folder / f"{uid}.normalized.txt").write_text(norm)
        (folder / f"{uid}.original.txt").write_text(orig)
    (folder / "19_198_000000_000009.normalized.txt").write_text("no audio")


def make_vctk(root: Path) -> None:
    for spk, i in (("p225", 1), ("p226", 2)):
        (root / "txt" / spk).mkdir(parents=True)
        (root / "txt" / spk / f"{spk}_00{i}.txt").write_text("Please call Stella.\n")
        write(root / "wav48_silence_trimmed" / spk / f"{spk}_00{i}_mic1.flac", i)
        write(root / "wav48_silence_trimmed" / spk / f"{spk}_00{i}_mic2.flac", i + 5)
    (root / "txt" / "p315").mkdir()
    (root / "txt" / "p315" / "p315_001.txt").write_text("No audio for this speaker.")


# layout -> (maker, the path the reader takes, relative to the corpus root)
CORPORA = {
    "wav-txt": (make_wav_txt, "."),
    "ljspeech": (make_ljspeech, "."),
    "common-voice": (make_common_voice, "train.tsv"),
    "mls": (make_mls, "."),
    "libritts": (make_libritts, "."),
    "vctk": (make_vctk, "."),
}
# what each corpus holds: (row, text) of the good clips, and {reason: count} of its bad rows
EXPECTED = {
    "wav-txt": ([("a/eins.txt", "Guten Morgen"), ("b/zwei.txt", "wie geht es dir")],
                {"no transcript": 1, "empty text": 1, "not UTF-8": 1}),
    "ljspeech": ([("metadata.csv:1", "Printing, in one sense"), ("metadata.csv:2", "only raw text"),
                  ("metadata.csv:4", "the third clip")],
                 {"malformed line": 1, "missing audio file": 1, "not UTF-8": 1}),
    "common-voice": ([("train.tsv:2", 'Das ist "gut".'), ("train.tsv:3", "Zwei Wörter")],
                     {"malformed line": 1, "empty text": 1}),
    "mls": ([("transcripts.txt:1", "das erste buch"), ("transcripts.txt:2", "das zweite buch")],
            {"malformed line": 1, "missing audio file": 1}),
    "libritts": ([(f"{LIBRITTS}/19_198_000000_000000.normalized.txt", "Northanger Abbey."),
                  (f"{LIBRITTS}/19_198_000000_000001.normalized.txt", "Chapter one.")], {"missing audio file": 1}),
    "vctk": ([("txt/p225/p225_001.txt", "Please call Stella."), ("txt/p226/p226_002.txt", "Please call Stella.")],
             {"missing audio file": 1}),
}  # fmt: skip
# the rows the bad ones are counted under: file:line where a line is at fault
BAD_ROWS = {
    "wav-txt": {"b/drei.wav", "b/vier.txt", "c/sechs.txt"},
    "ljspeech": {"metadata.csv:3", "metadata.csv:5", "metadata.csv:6"},
    "common-voice": {"train.tsv:4", "train.tsv:5"},
    "mls": {"transcripts.txt:3", "transcripts.txt:4"},
    "libritts": {f"{LIBRITTS}/19_198_000000_000009.normalized.txt"},
    "vctk": {"txt/p315/p315_001.txt"},
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for layout, (make, rel) in CORPORA.items():
        root = tmp_path_factory.mktemp(layout)
        make(root)
        out[layout] = root / rel
    return out


def test_every_layout_is_tested():
    assert set(CORPORA) == set(LAYOUTS)


@pytest.mark.parametrize("layout", list(CORPORA))
def test_good_clips_read_and_bad_rows_counted_where_they_are(layout, corpora):
    src = corpus(layout, corpora[layout])
    samples = list(src)
    good, bad = EXPECTED[layout]
    assert [(s.row, s.answer_text) for s in samples] == good
    assert all(s.task is Task.A1T1 for s in samples)
    for s in samples:  # each clip's audio decodes (Common Voice's mp3 too)
        assert load_audio(s.question_audio, 16000).numel() > 0
    name = layout.replace("-", "_")
    assert src.skips.skipped == {(name, reason): n for reason, n in bad.items()}
    assert {e.row for e in src.skips.examples} == BAD_ROWS[layout]  # every bad row is named where it is
    # shards read disjoint shares that together are the whole
    halves = [[s.row for s in corpus(layout, corpora[layout]).sharded(i, 2)] for i in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(s.row for s in samples) and not set(halves[0]) & set(halves[1])
    assert [s.row for s in pickle.loads(pickle.dumps(src))] == [s.row for s in samples]  # into loader workers


def test_layout_options_and_mistakes(corpora, tmp_path):
    libritts = corpora["libritts"]
    assert [s.answer_text for s in corpus("libritts", libritts, text="original")] == ["NORTHANGER ABBEY.", "CHAPTER 1."]
    mic2 = [c.audio.name for c in clips("vctk", corpora["vctk"], mic="mic2") if c.audio.is_file()]
    assert mic2 == ["p225_001_mic2.flac", "p226_002_mic2.flac"]
    with pytest.raises(ValueError, match="text must be 'normalized' or 'original'"):
        corpus("libritts", libritts, text="raw")
    with pytest.raises(ValueError, match="ljspeech: .*unexpected keyword argument 'mic'"):
        corpus("ljspeech", corpora["ljspeech"], mic="mic1")
    with pytest.raises(FileNotFoundError, match="no metadata.csv"):
        corpus("ljspeech", tmp_path)
    with pytest.raises(FileNotFoundError, match="no transcripts.txt"):
        corpus("mls", corpora["ljspeech"])
    with pytest.raises(ValueError, match="reads a .tsv file"):
        corpus("common-voice", corpora["common-voice"].parent)
    (tmp_path / "bad.tsv").write_text("client_id\tfile\ttext\n")
    with pytest.raises(MissingColumnError, match=r"bad.tsv: no column path, sentence \(columns: client_id, file"):
        corpus("common-voice", tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="unknown layout 'kaldi'"):
        corpus("kaldi", tmp_path)
    with pytest.raises(ValueError, match="T1A2 needs tts_snac"):
        corpus("vctk", corpora["vctk"], tasks=["T1A2"])
    with pytest.raises(ValueError, match="task A1A2 is not available"):
        corpus("vctk", corpora["vctk"], tasks=["A1A2"])


@pytest.fixture(scope="module")
def snac_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("snac")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(d)
    return d


@pytest.mark.parametrize("layout", list(CORPORA))
def test_snac_encode_then_the_corpus_speaks_its_texts(layout, corpora, snac_dir, tmp_path, capsys):
    """omni-prep snac-encode --layout: codes keyed by clip id, read back as T1A2 samples in the corpus's voice."""
    out = tmp_path / "snac"
    main(["snac-encode", str(corpora[layout]), str(out), "--snac", str(snac_dir), "--layout", layout,
          "--device", "cpu", "--batch-size", "1", "--shard-size", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    good, bad = EXPECTED[layout]
    assert printed.startswith(f"{len(good)} rows in ")
    for reason, n in bad.items():
        assert f"skipped {n} rows: {reason}" in printed
    table = pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist()
    assert [r["text"] for r in table] == [text for _, text in good]
    src = corpus(layout, corpora[layout], tts_snac=out)
    tts = [s for s in src if s.task is Task.T1A2]
    assert [s.answer_text for s in tts] == [s.question_text for s in tts] == [text for _, text in good]
    codec = SnacCodec.from_pretrained(snac_dir)
    asr = [s for s in src if s.task is Task.A1T1]
    for s, heard in zip(tts, asr, strict=True):  # the codes are the clip's own speech
        wave = load_audio(heard.question_audio, codec.sample_rate)
        assert torch.equal(s.answer_frames, codec.encode(wave).long())
    # a rerun keeps the finished shards
    main(["snac-encode", str(corpora[layout]), str(out), "--snac", str(snac_dir), "--layout", layout,
          "--device", "cpu", "--shard-size", "2"])  # fmt: skip
    assert "0 new shards" in capsys.readouterr().out


@pytest.mark.parametrize("layout", list(CORPORA))
def test_convert_corpus_to_parquet(layout, corpora, tmp_path):
    report = prep.convert_corpus(layout, corpora[layout], tmp_path / "out", shard_size=2)
    good, bad = EXPECTED[layout]
    assert report.rows == len(good) and dict(report.skips) == bad
    rows = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet"))).to_pylist()
    assert [r["text"] for r in rows] == [text for _, text in good]
    assert all(r["audio"]["bytes"] for r in rows)
    again = prep.convert_corpus(layout, corpora[layout], tmp_path / "out", shard_size=2)
    assert again.shards_written == 0 and again.shards_kept == report.shards_written + report.shards_kept


def test_snac_encode_codes_equal_single_clip_codes(corpora, snac_dir, tmp_path):
    report = prep.snac_encode(corpora["mls"], tmp_path / "o", snac_dir, layout="mls", batch_size=1, device="cpu",
                              progress=False)  # fmt: skip
    assert report.rows == 2
    codec = SnacCodec.from_pretrained(snac_dir)
    for row in pq.read_table(tmp_path / "o" / "part-00000.parquet").to_pylist():
        audio = next(c.audio for c in clips("mls", corpora["mls"]) if c.id == row["id"])
        assert torch.equal(parse_answer_snac(row["answer_snac"]), codec.encode(load_audio(audio, 24000)).long())


# ---- the voice path -------------------------------------------------------------------------------
def test_voice_rows_teach_the_answers_in_the_given_voice(corpora, snac_dir, tmp_path, capsys):
    """omni-prep voice: question + answer text + the answer spoken in the target voice -> VoiceAssistant rows."""
    from omni_train.data.sources import voice_assistant

    voice = tmp_path / "my_voice"
    for i in range(3):
        write(voice / f"answer{i}.wav", i + 10)
    write(voice / "asked.wav", 20)
    manifest = voice / "manifest.jsonl"
    rows = [
        {"question": "what is two plus three", "answer": "five", "answer_audio": "answer0.wav",
         "question_audio": "asked.wav"},
        {"question": "say hello", "answer": "hello there", "answer_audio": "answer1.wav"},
        {"question": "and now?", "answer": "", "answer_audio": "answer2.wav"},  # line 3: empty answer
        {"question": "where is it", "answer": "gone", "answer_audio": "missing.wav"},  # line 4: no audio
        {"question": "last one", "answer": "the end", "answer_audio": str(voice / "answer2.wav")},
    ]  # fmt: skip
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")  # line 6: bad JSON
    out = tmp_path / "va"
    main(["voice", str(manifest), str(out), "--snac", str(snac_dir), "--device", "cpu", "--batch-size", "1",
          "--shard-size", "4", "--split-name", "my_voice"])  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("3 rows in 2 new shards")
    assert "skipped 1 rows: empty answer (e.g. manifest.jsonl:3" in printed
    assert "skipped 1 rows: missing audio file (e.g. manifest.jsonl:4" in printed
    assert "(e.g. manifest.jsonl:6" in printed

    codec = SnacCodec.from_pretrained(snac_dir)
    src = voice_assistant(out, tasks=["T1A2", "A1A2", "T1T2"])
    samples = {(s.row, s.task): s for s in src}
    spoken = {"manifest.jsonl:1": "answer0.wav", "manifest.jsonl:2": "answer1.wav", "manifest.jsonl:5": "answer2.wav"}
    table = pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist()
    assert [r["id"] for r in table] == list(spoken) and {r["split_name"] for r in table} == {"my_voice"}
    assert [r["index"] for r in table] == ["0", "1", "4"] and {r["round"] for r in table} == {"0"}
    for r in table:
        wave = load_audio(voice / spoken[r["id"]], codec.sample_rate)
        assert torch.equal(parse_answer_snac(r["answer_snac"]), codec.encode(wave).long())  # the voice's own codes
    t1a2 = [s for (_, task), s in samples.items() if task is Task.T1A2]
    assert [(s.question_text, s.answer_text) for s in t1a2] == [
        ("what is two plus three", "five"),
        ("say hello", "hello there"),
        ("last one", "the end"),
    ]
    a1a2 = [s for (_, task), s in samples.items() if task is Task.A1A2]
    assert len(a1a2) == 1 and load_audio(a1a2[0].question_audio, 16000).numel() == tone(20, 20).size
    assert src.skips.skipped == {("voice_assistant", "missing question_audio"): 2}  # spoken questions are optional
    # resumable: a rerun keeps the finished shards
    main(["voice", str(manifest), str(out), "--snac", str(snac_dir), "--device", "cpu", "--shard-size", "4",
          "--split-name", "my_voice"])  # fmt: skip
    assert capsys.readouterr().out.startswith("0 rows in 0 new shards; 2 complete shards kept")
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(SystemExit, match=r"q.jsonl: no column 'answer_audio' \(columns: question, answer\)"):
        main(["voice", str(tmp_path / "q.jsonl"), str(tmp_path / "x"), "--snac", str(snac_dir)])
