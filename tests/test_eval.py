"""omni-eval end to end on a tiny checkpoint: ASR table, speech-text consistency, text retention, loss plot."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from litgpt.utils import save_config
from tiny import JUDGE_DIMS, SNAC_TINY, tiny_base, train_tokenizer, whisper_model

from omni_train import evaluate
from omni_train.audio import SnacCodec, WhisperEncoder, load_audio
from omni_train.checkpoints import load_base, load_omni, save_omni
from omni_train.cli.eval import main
from omni_train.generate import answer, transcribe

HELDOUT = Path(evaluate.__file__).parent / "demo_data" / "asr" / "heldout"
# a full Whisper (its tokenizer needs the English vocabulary: 51864) with the tiny encoder's shape
TEXT = ["the model hears and talks", "what is two plus three", "question answer speech the model talks"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A litgpt base dir, a checkpoint made from it (whisper.pt and snac/ inside), and LibriSpeech splits."""
    root = tmp_path_factory.mktemp("eval")
    train_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    base_dir = root / "base"
    base_dir.mkdir()
    config = tiny_base()
    torch.save(GPT(config).state_dict(), base_dir / "lit_model.pth")
    save_config(config, base_dir)
    for f in (root / "tokenizer").iterdir():
        shutil.copy(f, base_dir)
    model, _ = load_base(base_dir, whisper_adapter_dim=JUDGE_DIMS.n_audio_state, post_adapter_layers=2)
    ckpt = save_omni(model, root / "ckpt", base_dir)
    judge = whisper_model(JUDGE_DIMS)  # also the checkpoint's encoder: one small file
    torch.save({"dims": asdict(JUDGE_DIMS), "model_state_dict": judge.state_dict()}, ckpt / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(ckpt / "snac")

    # two splits, one where the tarballs put it (LibriSpeech/NAME), one right under the root
    speakers = sorted(HELDOUT.glob("*/*/*.trans.txt"))
    for split, trans in (("LibriSpeech/test-clean", speakers[0]), ("dev-other", speakers[1])):
        folder = root / "ls" / split / trans.parent.relative_to(HELDOUT)
        folder.mkdir(parents=True)
        lines = trans.read_text().splitlines()[:3]
        (folder / trans.name).write_text("\n".join(lines) + "\n")
        for line in lines:
            shutil.copy(trans.parent / f"{line.split()[0]}.flac", folder)
    return {"root": root, "base": base_dir, "ckpt": ckpt, "ls": root / "ls"}


def fails(capsys, *argv) -> str:
    """Run omni-eval expecting a usage error: exit status 2, one line on stderr."""
    with pytest.raises(SystemExit) as e:
        main([*map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


# ---- asr ----------------------------------------------------------------------------------------
def test_asr_prints_the_papers_table_and_per_utterance_json(files, capsys, tmp_path):
    out = tmp_path / "asr.json"
    main(["asr", "--checkpoint", str(files["ckpt"]), "--librispeech", str(files["ls"]), "--out", str(out),
          "--batch-size", "2", "--max-new-tokens", "8", "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == "| model | test-clean | test-other | dev-clean | dev-other |"
    assert "| Mini-Omni (published) | 4.5 | 9.7 | 4.6 | 9.2 |" in lines
    assert "| wav2vec2-base (published) | 6.0 | 13.4 | - | - |" in lines
    assert "test-other, dev-clean" in captured.err  # the note names the splits it did not find

    result = json.loads(out.read_text())
    assert list(result["splits"]) == ["test-clean", "dev-other"]
    mine = lines[-1].strip("| ").split(" | ")
    assert mine[0] == str(files["ckpt"]) and mine[2] == mine[3] == "-"
    model, _ = load_omni(files["ckpt"])
    encoder = WhisperEncoder.from_pretrained(files["ckpt"] / "whisper.pt")
    tokenizer = Tokenizer(files["ckpt"])
    for split, column in (("test-clean", 1), ("dev-other", 4)):
        r = result["splits"][split]
        utts = r["utterances"]
        assert r["n"] == len(utts) == 3
        assert r["wer"] == round(evaluate.error_rate([u["ref"] for u in utts], [u["hyp"] for u in utts]), 2)
        assert mine[column] == f"{r['wer']:.2f}"
        # each hypothesis belongs to its own utterance: the same as transcribing it alone
        audios = [load_audio(next(Path(r["folder"]).rglob(u["id"] + ".flac")), 16000) for u in utts]
        assert [u["hyp"] for u in utts] == transcribe(model, encoder, tokenizer, audios, 1, max_new_tokens=8)


def test_asr_on_one_split_folder_and_missing_splits(files, capsys, tmp_path):
    out = tmp_path / "asr.json"
    main(["asr", "--checkpoint", str(files["ckpt"]), "--librispeech", str(files["ls"] / "dev-other"),
          "--out", str(out), "--max-utterances", "1", "--max-new-tokens", "4", "--device", "cpu"])  # fmt: skip
    assert list(json.loads(out.read_text())["splits"]) == ["dev-other"] and "dev-other" in capsys.readouterr().out

    err = fails(capsys, "asr", "--checkpoint", files["ckpt"], "--librispeech", files["ls"], "--splits", "test-other")
    assert "test-other" in err and str(files["ls"]) in err
    assert str(files["root"] / "nowhere") in fails(
        capsys, "asr", "--checkpoint", files["ckpt"], "--librispeech", files["root"] / "nowhere"
    )
    assert "is not a checkpoint" in fails(
        capsys, "asr", "--checkpoint", files["ls"], "--librispeech", files["ls"] / "dev-other"
    )


def test_a_checkpoint_without_its_audio_models_asks_for_them(files, capsys, tmp_path):
    """A model folder that names no Whisper (no omni_audio.json, no whisper.pt) needs --encoder; given, it runs."""
    bare = tmp_path / "bare"
    shutil.copytree(files["ckpt"], bare, ignore=shutil.ignore_patterns("whisper.pt", "snac"))
    argv = ["asr", "--checkpoint", bare, "--librispeech", files["ls"] / "dev-other", "--max-utterances", "1",
            "--max-new-tokens", "2", "--device", "cpu", "--out", tmp_path / "asr.json"]  # fmt: skip
    err = fails(capsys, *argv)
    assert err == f"omni-eval asr: error: {bare} does not say which whisper it was trained with: pass --encoder"
    main([*map(str, argv), "--encoder", str(files["ckpt"] / "whisper.pt")])
    assert json.loads((tmp_path / "asr.json").read_text())["splits"]["dev-other"]["n"] == 1
    capsys.readouterr()
    (tmp_path / "q.txt").write_text("what is two plus three\n")
    err = fails(capsys, "consistency", "--checkpoint", bare, "--questions", tmp_path / "q.txt",
                "--whisper", files["ckpt"] / "whisper.pt", "--device", "cpu")  # fmt: skip
    assert err == f"omni-eval consistency: error: {bare} does not say which snac it was trained with: pass --snac"


# ---- scoring by language -----------------------------------------------------------------------
def test_english_normaliser_for_english_basic_for_others():
    # English: spellings and numbers are made one form ("mister", "25"); the basic normaliser does not
    assert evaluate.error_rate(["Mr. Smith has twenty-five cats."], ["mister smith has 25 cats"]) == 0.0
    assert evaluate.error_rate(["Mr. Smith has twenty-five cats."], ["mister smith has 25 cats"], "de") > 0
    # German: case and punctuation only, words kept as written
    assert evaluate.error_rate(["Guten Morgen, Straße!"], ["guten morgen straße"], "de") == 0.0
    assert evaluate.error_rate(["Guten Morgen, Straße!"], ["guten morgen strasse"], "German") == pytest.approx(100 / 3)
    assert evaluate.scoring("German").language == evaluate.scoring("DE").language == "de"
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        evaluate.scoring("klingon")


@pytest.mark.parametrize("language", ["zh", "ja", "th", "Chinese"])
def test_languages_without_spaces_are_scored_by_characters(language):
    assert evaluate.scoring(language).metric == "cer"
    # spaces and punctuation do not count; one wrong character of six is 1/6
    assert evaluate.error_rate(["今天 天气很好。"], ["今天天气很好"], language) == 0.0
    assert evaluate.error_rate(["今天天气很好"], ["今天天气不好"], language) == pytest.approx(100 / 6)
    # scored by words, the same pair would be one whole word wrong
    assert evaluate.error_rate(["今天天气很好"], ["今天天气不好"], "fr") == 100.0


def test_asr_language_picks_the_metric(files, capsys, tmp_path):
    out = tmp_path / "asr.json"
    main(["asr", "--checkpoint", str(files["ckpt"]), "--librispeech", str(files["ls"] / "dev-other"),
          "--out", str(out), "--max-new-tokens", "4", "--device", "cpu", "--language", "ja"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| model (CER %) | dev-other |"  # no English rows from the paper beside Japanese
    assert not any("published" in line for line in lines)
    r = json.loads(out.read_text())["splits"]["dev-other"]
    assert r["metric"] == "cer" and r["language"] == "ja" and "wer" not in r
    utts = r["utterances"]
    assert r["cer"] == round(evaluate.error_rate([u["ref"] for u in utts], [u["hyp"] for u in utts], "ja"), 2)
    assert lines[-1] == f"| {files['ckpt']} | {r['cer']:.2f} |"
    err = fails(capsys, "asr", "--checkpoint", files["ckpt"], "--librispeech", files["ls"], "--language", "klingon")
    assert "unknown language 'klingon'" in err


# ---- consistency --------------------------------------------------------------------------------
def check_items(result: dict, language: str = "en") -> None:
    metric = evaluate.scoring(language).metric
    assert result["metric"] == metric and result["language"] == language
    items = result["items"]
    scored = [i for i in items if i[metric] is not None]
    assert scored and result["scored"] == len(scored)
    for i in scored:
        assert i[metric] == round(evaluate.error_rate([i["text"]], [i["transcript"]], language), 2)
    texts, transcripts = [i["text"] for i in scored], [i["transcript"] for i in scored]
    assert result[metric] == round(evaluate.error_rate(texts, transcripts, language), 2)


def test_consistency_written_questions(files, capsys, tmp_path):
    questions, out = tmp_path / "q.txt", tmp_path / "c.json"
    questions.write_text("what is two plus three\n\nthe model hears\n")
    main(["consistency", "--checkpoint", str(files["ckpt"]), "--whisper", str(files["ckpt"] / "whisper.pt"),
          "--questions", str(questions), "--out", str(out), "--max-new-tokens", "16", "--device", "cpu"])  # fmt: skip
    assert "speech-text WER" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["task"] == "T1A2" and result["n"] == 2
    check_items(result)
    # the batched answers are the answers one by one, spoken for as many frames as they hold
    model, _ = load_omni(files["ckpt"])
    for item in result["items"]:
        alone = answer(model, None, Tokenizer(files["ckpt"]), text=item["question"], task="T1A2", max_new_tokens=16)
        assert item["text"] == alone.text
        assert item["seconds"] == round(alone.frames.size(0) * 32 / 24000, 2)  # 32 samples a tiny SNAC frame


def test_consistency_spoken_librispeech_questions(files, tmp_path):
    out = tmp_path / "c.json"
    main(["consistency", "--checkpoint", str(files["ckpt"]), "--whisper", str(files["ckpt"] / "whisper.pt"),
          "--librispeech", str(files["ls"]), "--max-items", "2", "--batch-size", "2", "--out", str(out),
          "--max-new-tokens", "12", "--device", "cpu"])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["task"] == "A1A2" and result["n"] == 2 and result["items"][0]["question"].endswith(".flac")
    check_items(result)


def test_consistency_in_a_language_without_spaces(files, capsys, tmp_path):
    questions, out = tmp_path / "q.txt", tmp_path / "c.json"
    questions.write_text("what is two plus three\n")
    main(["consistency", "--checkpoint", str(files["ckpt"]), "--whisper", str(files["ckpt"] / "whisper.pt"),
          "--questions", str(questions), "--out", str(out), "--max-new-tokens", "16", "--device", "cpu",
          "--language", "zh"])  # fmt: skip
    assert "speech-text CER" in capsys.readouterr().out
    check_items(json.loads(out.read_text()), "zh")


# ---- retention ----------------------------------------------------------------------------------
def litgpt_perplexity(base_dir: Path, texts: list[str]) -> float:
    """The base model's perplexity computed here, with litgpt alone."""
    model = GPT(Config.from_file(base_dir / "model_config.yaml"))
    model.load_state_dict(torch.load(base_dir / "lit_model.pth", weights_only=True))
    tokenizer, nll, n = Tokenizer(base_dir), 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer.encode(text).long()
            nll += F.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="sum").item()
            n += ids.numel() - 1
    return math.exp(nll / n)


def retention(capsys, files, ckpt, text_file, out) -> dict:
    main(["retention", "--base", str(files["base"]), "--checkpoint", str(ckpt), "--text", str(text_file),
          "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert "ratio to base" in capsys.readouterr().out
    return json.loads(out.read_text())


def test_retention_untrained_model_keeps_the_base_perplexity(files, capsys, tmp_path):
    text = tmp_path / "heldout.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT))
    result = retention(capsys, files, files["ckpt"], text, tmp_path / "r.json")
    ppl = result["perplexity"]
    assert result["documents"] == 3
    assert ppl["base"] == pytest.approx(litgpt_perplexity(files["base"], TEXT), rel=1e-5)
    assert ppl["llm_path"] == pytest.approx(ppl["base"], rel=1e-5)  # nothing trained yet: the same LLM
    assert abs(ppl["t1t2_answer"] / ppl["base"] - 1) > 1e-3  # the pad_a embeddings enter the 8-layer average

    model, _ = load_omni(files["ckpt"])
    with torch.no_grad():
        model.transformer.h[0].attn.qkv.weight.add_(0.5 * torch.randn_like(model.transformer.h[0].attn.qkv.weight))
    perturbed = save_omni(model, tmp_path / "perturbed", files["ckpt"])
    plain = tmp_path / "heldout.txt"
    plain.write_text("\n\n".join(TEXT) + "\n")  # plain text: paragraphs at blank lines
    changed = retention(capsys, files, perturbed, plain, tmp_path / "p.json")["perplexity"]
    assert changed["base"] == pytest.approx(ppl["base"], rel=1e-6)
    assert abs(changed["llm_path"] / ppl["base"] - 1) > 1e-3


def test_retention_bad_text(files, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the model"}\n{"question": "no text"}\n')
    assert "row 2" in fails(capsys, "retention", "--base", files["base"], "--checkpoint", files["ckpt"], "--text", bad)
    missing = tmp_path / "missing.txt"
    assert str(missing) in fails(
        capsys, "retention", "--base", files["base"], "--checkpoint", files["ckpt"], "--text", missing
    )


# ---- plot ---------------------------------------------------------------------------------------
def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.mkdir(parents=True)
    (path / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")


def test_plot_two_stages(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "alignment").mkdir(parents=True)
    (run / "alignment" / "summary.json").write_text(json.dumps({"steps": 10}))  # more steps than were logged
    write_csv(run / "alignment/logs/alignment/version_0", "epoch,step,train/loss,train/loss_A1T1/text,"
              "train/loss_T1A2/audio,train/loss_T1A2/text,val/loss",
              [",0,,,,,", "0,0,9.0,7.0,8.5,7.1,", "0,4,8.0,6.0,8.0,6.5,", "0,8,7.0,5.0,,6.0,", "0,9,,,,,6.5"])  # fmt: skip
    header = "epoch,step,train/loss_A1T2/text,train/loss_A1T1/text"
    write_csv(run / "adaption/logs/adaption/version_0", header, ["0,0,6.0,5.0", "0,2,5.0,4.9"])
    write_csv(run / "adaption/logs/adaption/version_1", header, ["0,2,4.0,4.5", "0,3,3.5,4.0"])  # resumed
    main(["plot", str(run), "--out", str(tmp_path / "loss.png")])
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alignment (steps 0-9), adaption (steps 10-13)" in capsys.readouterr().out

    stages = evaluate.run_losses(run)  # alignment first: the run's order, not the alphabet's
    assert [(s["stage"], s["offset"], s["steps"]) for s in stages] == [("alignment", 0, 10), ("adaption", 10, 4)]
    assert stages[0]["losses"]["train/loss_T1A2/audio"] == ([0, 4], [8.5, 8.0])
    assert stages[1]["losses"]["train/loss_A1T2/text"] == ([0, 2, 3], [6.0, 4.0, 3.5])  # the later version wins


def test_plot_without_csv_logs(tmp_path, capsys):
    (tmp_path / "run" / "alignment" / "logs").mkdir(parents=True)
    err = fails(capsys, "plot", tmp_path / "run")
    assert "CSV logger" in err and str(tmp_path / "run") in err


def test_report_names_cer_columns(tmp_path):
    from omni_train.evals import report

    asr = {"checkpoint": "m", "splits": {"heldout": {"metric": "cer", "language": "zh", "cer": 12.5, "n": 2}}}
    consistency = {"checkpoint": "m", "task": "T1A2", "metric": "cer", "cer": 30.0, "n": 2, "scored": 2,
                   "whisper": "w", "items": []}  # fmt: skip
    (tmp_path / "asr.json").write_text(json.dumps(asr))
    (tmp_path / "c.json").write_text(json.dumps(consistency))
    built = report.build(tmp_path)
    assert built["asr"]["m"] == {"heldout (CER)": 12.5}
    assert built["consistency"]["m"]["T1A2 (CER)"]["wer"] == 30.0
    assert "| m | T1A2 (CER) | 2 | 2 | 30.00 |" in built["markdown"]


def test_asr_on_a_corpus_layout(files, capsys, tmp_path):
    """--layout: one split of another corpus layout (here a folder of audio/txt pairs); bad clips left out and said."""
    corpus = tmp_path / "pairs"
    corpus.mkdir()
    flacs = sorted(HELDOUT.rglob("*.flac"))[:3]
    texts = dict(line.split(" ", 1) for t in HELDOUT.rglob("*.trans.txt") for line in t.read_text().splitlines())
    for f in flacs:
        shutil.copy(f, corpus / f.name)
    for f in flacs[:2]:  # the third has no transcript
        (corpus / f.name).with_suffix(".txt").write_text(texts[f.stem])
    out = tmp_path / "asr.json"
    main(["asr", "--checkpoint", str(files["ckpt"]), "--librispeech", str(corpus), "--layout", "wav-txt",
          "--out", str(out), "--max-new-tokens", "4", "--device", "cpu", "--language", "de"])  # fmt: skip
    captured = capsys.readouterr()
    assert "pairs: 1 clips left out" in captured.err
    r = json.loads(out.read_text())["splits"]["pairs"]
    assert r["n"] == 2 and r["left_out"] == 1 and r["language"] == "de"
    assert [u["ref"] for u in r["utterances"]] == [texts[f.stem] for f in flacs[:2]]
    assert "--splits" in fails(capsys, "asr", "--checkpoint", files["ckpt"], "--librispeech", corpus, "--layout",
                               "wav-txt", "--splits", "x")  # fmt: skip
    assert "no metadata.csv" in fails(capsys, "asr", "--checkpoint", files["ckpt"], "--librispeech", corpus,
                                      "--layout", "ljspeech")  # fmt: skip


def test_the_run_table_names_the_held_out_metric():
    from omni_train.report import summary_table

    summary = {"wer_before": 90.0, "wer_before_stage": "alignment", "wer_after": 40.0, "wer_after_stage": "finetune"}
    assert "held-out ASR WER: 90.0% before alignment -> 40.0% after finetune" in summary_table(summary)
    assert "held-out ASR CER: 90.0% before" in summary_table({**summary, "asr_metric": "cer"})
