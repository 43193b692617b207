"""omni-prep end to end on tiny inputs made here: a tiny random SNAC and a few-utterance LibriSpeech folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from tiny import SNAC_TINY, tone

from omni_train import prep
from omni_train.audio import SnacCodec, load_audio
from omni_train.cli.prep import main
from omni_train.data import sources
from omni_train.data.snac_format import parse_answer_snac

# 16 kHz clips, as LibriSpeech; in a shard of 4, length-sorted batches of 2 pair equal lengths, so the
# batched codes must equal single-clip codes exactly
SECONDS = [0.05, 0.1, 0.05, 0.1, 0.02]
TEXTS = ["HELLO WORLD", "THE MODEL HEARS", "AND TALKS BACK", "ONE TWO THREE FOUR", "YES"]


@pytest.fixture(scope="module")
def snac_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("snac")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    """speaker/chapter/UTT.flac + speaker-chapter.trans.txt, two chapters."""
    root = tmp_path_factory.mktemp("libri")
    utts = []
    for i, (sec, text) in enumerate(zip(SECONDS, TEXTS)):
        spk, chap = ("19", "198") if i < 3 else ("26", "495")
        folder = root / spk / chap
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{spk}-{chap}-{i:04d}"
        sf.write(folder / f"{utt}.flac", tone(sec, 16000, i), 16000)
        with open(folder / f"{spk}-{chap}.trans.txt", "a") as f:
            f.write(f"{utt} {text}\n")
        utts.append((utt, folder / f"{utt}.flac", text))
    return root, utts


def read_dir(d):
    return pq.read_table(sorted(d.glob("part-*.parquet"))).to_pylist()


def test_snac_encode_decode_and_resume(tmp_path, snac_dir, libri, capsys):
    root, utts = libri
    out = tmp_path / "codes"
    argv = ["snac-encode", str(root), str(out), "--snac", str(snac_dir), "--batch-size", "2", "--shard-size", "4",
            "--device", "cpu"]  # fmt: skip
    main(argv)
    shards = sorted(out.glob("part-*.parquet"))
    assert [s.name for s in shards] == ["part-00000.parquet", "part-00001.parquet"]
    rows = read_dir(out)
    codec = SnacCodec.from_pretrained(snac_dir)
    assert [r["id"] for r in rows] == [u for u, _, _ in utts]  # input order kept despite length sorting
    for r, (utt, path, text) in zip(rows, utts):
        assert r["text"] == text
        wave = load_audio(path, 24000)
        assert parse_answer_snac(r["answer_snac"]).tolist() == codec.encode(wave).tolist()

    # the codes feed librispeech's T1A2 task directly
    samples = list(sources.librispeech(root, tts_snac=out))
    assert sum(s.task.value == "T1A2" for s in samples) == len(utts)

    # a rerun skips complete shards; a lost shard is remade
    mtimes = [s.stat().st_mtime_ns for s in shards]
    capsys.readouterr()
    main(argv)
    assert "0 new shards; 2 complete shards kept" in capsys.readouterr().out
    assert [s.stat().st_mtime_ns for s in shards] == mtimes
    shards[1].unlink()
    main(argv)
    assert "1 rows in 1 new shards; 1 complete shards kept" in capsys.readouterr().out
    assert read_dir(out) == rows
    assert not list(out.glob(".*tmp*"))
    with pytest.raises(SystemExit, match="shard_size 4 -> 3"):  # other settings, same folder: refused
        main(argv[:-4] + ["--shard-size", "3", "--device", "cpu"])

    # decode: one wav per row, N frames of 32 samples each
    wavs = tmp_path / "wavs"
    main(["snac-decode", str(shards[0]), str(wavs), "--snac", str(snac_dir), "--limit", "1", "--device", "cpu"])
    files = sorted(wavs.glob("*.wav"))
    assert [f.name for f in files] == [f"{utts[0][0]}.wav"]
    n = parse_answer_snac(rows[0]["answer_snac"]).shape[0]
    info = sf.info(files[0])
    assert info.samplerate == 24000 and info.frames == n * codec.samples_per_frame
    main(["snac-decode", rows[4]["answer_snac"], str(wavs), "--snac", str(snac_dir), "--device", "cpu"])
    assert sf.info(wavs / "answer.wav").frames == parse_answer_snac(rows[4]["answer_snac"]).shape[0] * 32


def test_snac_encode_table_inputs(tmp_path, snac_dir, libri):
    root, utts = libri
    manifest = tmp_path / "m.jsonl"
    lines = [{"key": u, "audio": str(p.relative_to(root)), "text": t} for u, p, t in utts]
    lines.append({"key": "gone", "audio": "missing.flac", "text": "NOTHING"})
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "19").symlink_to(root / "19")  # relative paths are relative to the manifest
    (tmp_path / "26").symlink_to(root / "26")
    out = tmp_path / "codes"
    report = prep.snac_encode(manifest, out, snac_dir, id_column="key", batch_size=1, device="cpu", progress=False)
    assert report.rows == len(utts) and sum(report.skips.values()) == 1
    assert [r["id"] for r in read_dir(out)] == [u for u, _, _ in utts]

    # parquet with HF Audio structs, no text
    conv = tmp_path / "conv"
    main(["convert", "librispeech", str(root), str(conv)])
    out2 = tmp_path / "codes2"
    main(["snac-encode", str(conv), str(out2), "--snac", str(snac_dir), "--id-column", "id", "--text-column", "none",
          "--batch-size", "1", "--device", "cpu"])  # fmt: skip
    rows = read_dir(out2)
    assert set(rows[0]) == {"id", "answer_snac"}
    assert [r["answer_snac"] for r in rows] == [r["answer_snac"] for r in read_dir(out)]


def test_convert_readable_by_sources(tmp_path, libri):
    root, utts = libri
    out = tmp_path / "libri"
    main(["convert", "librispeech", str(root), str(out), "--shard-size", "3"])
    assert len(list(out.glob("part-*.parquet"))) == 2
    samples = list(sources.hf_asr(out, id_column="id", cache_dir=tmp_path / "hf"))
    assert [(s.row, s.answer_text) for s in samples] == [(u, t) for u, _, t in utts]
    assert samples[0].question_audio.data == utts[0][1].read_bytes()  # flac bytes embedded unchanged

    orca = tmp_path / "orca.jsonl"
    rows = [
        {"id": "a", "system_prompt": "Be brief.", "question": "Two plus three?", "response": "Five."},
        {"id": "b", "question": "Capital of France?", "response": "Paris."},  # no system prompt
        {"id": "c", "system_prompt": "", "question": "Empty?", "response": ""},  # skipped
    ]
    orca.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["convert", "open-orca", str(orca), str(tmp_path / "orca")])
    got = list(sources.open_orca(tmp_path / "orca"))
    assert [s.question_text for s in got] == ["Be brief.\n\nTwo plus three?", "Capital of France?"]
    assert [s.answer_text for s in got] == ["Five.", "Paris."]

    moss = tmp_path / "moss.jsonl"
    rows = [
        {"id": "m0", "question_audio": str(utts[0][1]), "question": "Hello?", "answer": "Hi there."},
        {"id": "m1", "question_audio": str(utts[1][1]),
         "plain_text": "[Human]: Who are you? <eoh>\n[MOSS]: An AI. <eoa>"},
    ]
    moss.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["convert", "moss", str(moss), str(tmp_path / "moss")])
    got = list(sources.moss_audioqa(tmp_path / "moss"))
    assert [(s.question_text, s.answer_text) for s in got] == [("Hello?", "Hi there."), ("Who are you?", "An AI.")]
    assert got[1].question_audio.data == utts[1][1].read_bytes()


def test_stats(tmp_path, snac_dir, libri, capsys):
    root, utts = libri
    hours = sum(SECONDS) / 3600
    main(["stats", str(root)])
    out = capsys.readouterr().out
    assert "rows: 5" in out and f"audio: {hours:.4f} hours in 5 clips" in out
    assert f"text tokens (text): {sum(len(t.split()) for _, _, t in utts)}" in out
    assert "length histogram (s):" in out

    conv = tmp_path / "conv"
    main(["convert", "librispeech", str(root), str(conv), "--shard-size", "2"])
    codes = tmp_path / "codes"
    main(["snac-encode", str(root), str(codes), "--snac", str(snac_dir), "--device", "cpu"])
    capsys.readouterr()
    main(["stats", str(conv)])  # a folder of shards, audio as embedded bytes
    out = capsys.readouterr().out
    assert "rows: 5" in out and f"audio: {hours:.4f} hours in 5 clips" in out
    main(["stats", str(codes / "part-00000.parquet")])
    out = capsys.readouterr().out
    frames = sum(math.ceil(s * 24000 / 32) for s in SECONDS)
    assert "rows: 5" in out and f"SNAC frames (answer_snac): {frames} in 5 rows" in out
    assert "length histogram (tokens):" in out


def test_stats_reads_a_folder_given_by_a_relative_path(libri, capsys, monkeypatch, tmp_path):
    root, utts = libri
    monkeypatch.chdir(root.parent)
    main(["stats", root.name])  # was "0 clips (5 unreadable)": each path joined to the root twice
    assert "in 5 clips\n" in capsys.readouterr().out
    manifest = tmp_path / "m.jsonl"  # relative paths in a manifest are the manifest folder's
    clip = Path("..") / utts[0][1].relative_to(tmp_path.parent)
    rows = [{"audio": "nope.wav", "text": "gone"}, {"audio": str(clip), "text": "here"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path.parent)
    main(["stats", f"{tmp_path.name}/m.jsonl"])
    assert f"in 1 clips (1 unreadable, the first {tmp_path.name}/nope.wav)" in capsys.readouterr().out


def test_missing_paths_are_one_line_errors(tmp_path, snac_dir, libri):
    root, _ = libri
    cases = [
        (["stats", str(tmp_path / "nope")], "nope: no such file"),
        (["snac-encode", str(tmp_path / "nope"), str(tmp_path / "o"), "--snac", str(snac_dir)], "nope: no such file"),
        (["snac-encode", str(root), str(tmp_path / "o"), "--snac", str(tmp_path / "nosnac")], "nosnac: no such file"),
        (["snac-decode", str(tmp_path / "x.parquet"), str(tmp_path / "o"), "--snac", str(snac_dir)], "x.parquet"),
        (["convert", "open-orca", str(tmp_path / "orca.jsonl"), str(tmp_path / "o")], "orca.jsonl: no such file"),
        (["convert", "librispeech", str(tmp_path), str(tmp_path / "o")], "not a LibriSpeech-layout folder"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as err:
            main(argv)
        assert "\n" not in str(err.value)
