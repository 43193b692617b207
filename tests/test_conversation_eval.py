"""omni-eval dialogue on a tiny checkpoint: the last turns of held-out conversations, asked with (or
without) their history and scored against the references, in text and through a Whisper judge."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
import pytest
import soundfile as sf
import torch
from litgpt.tokenizer import Tokenizer
from tiny import JUDGE_DIMS, SNAC_TINY, tiny_omni, train_tokenizer, whisper_model

from omni_train import evaluate
from omni_train.audio import SnacCodec, WhisperEncoder, load_whisper
from omni_train.checkpoints import load_omni, save_omni
from omni_train.cli.eval import main
from omni_train.data.samples import Turn
from omni_train.generate import answer
from omni_train.model import OmniGPT


def flac(seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.random.default_rng(seed).standard_normal(6000).astype(np.float32), 16000, format="FLAC")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint (its whisper.pt a full Whisper, so it can judge too) and three conversations."""
    root = tmp_path_factory.mktemp("dialogue")
    train_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    ckpt = save_omni(OmniGPT(tiny_omni(whisper_dim=JUDGE_DIMS.n_audio_state)), root / "ckpt", root / "tokenizer")
    judge = whisper_model(JUDGE_DIMS)
    torch.save({"dims": asdict(JUDGE_DIMS), "model_state_dict": judge.state_dict()}, ckpt / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(ckpt / "snac")
    rows = []
    for k, (q1, a1, q2, a2) in enumerate([
        ("what is two plus three", "two plus three is five", "and what is that plus one", "five plus one is six"),
        ("the model hears", "the model talks", "what does it do", "it talks"),
        ("question answer", "speech", "and then", "what is two"),
    ]):  # fmt: skip
        last = {"role": "user", "content": q2}
        if k < 2:  # two last questions are spoken too
            (root / f"q{k}.flac").write_bytes(flac(k))
            last["audio"] = f"q{k}.flac"
        rows.append({"messages": [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, last,
                                  {"role": "assistant", "content": a2}]})  # fmt: skip
    (root / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "ckpt": ckpt, "held": root / "held.jsonl", "rows": rows}


def run(capsys, files, tmp_path, *argv) -> tuple[dict, str, str]:
    out = tmp_path / "d.json"
    main(["dialogue", "--checkpoint", str(files["ckpt"]), "--conversations", str(files["held"]), "--out", str(out),
          "--max-new-tokens", "10", "--device", "cpu", *map(str, argv)])  # fmt: skip
    captured = capsys.readouterr()
    return json.loads(out.read_text()), captured.out, captured.err


def check_scores(result: dict) -> None:
    items = result["items"]
    for i in items:
        assert i["right"] == evaluate.same_answer(i["reference"], i["text"])
        assert i["wer"] == round(evaluate.error_rate([i["reference"]], [i["text"]]), 2)
    assert result["right"] == sum(i["right"] for i in items)
    assert result["accuracy"] == round(100 * result["right"] / len(items), 2)
    assert result["wer"] == round(evaluate.error_rate([i["reference"] for i in items], [i["text"] for i in items]), 2)


def test_written_last_turns_with_and_without_history(files, capsys, tmp_path):
    result, out, _ = run(capsys, files, tmp_path, "--task", "T1T2", "--batch-size", "2")
    assert result["task"] == "T1T2" and result["history"] and result["n"] == 3
    assert "| model | task | history | conversations | right | text WER | spoken WER |" in out
    check_scores(result)
    model, tok = load_omni(files["ckpt"])[0].eval(), Tokenizer(files["ckpt"])
    for item, row in zip(result["items"], files["rows"]):
        m = row["messages"]
        history = [Turn(m[0]["content"], m[1]["content"])]
        assert item["history"] == [list(history[0])] and item["reference"] == m[3]["content"]
        alone = answer(model, None, tok, text=m[2]["content"], task="T1T2", history=history, max_new_tokens=10)
        assert item["text"] == alone.text  # batched with others, the same answer as alone

    single, out, _ = run(capsys, files, tmp_path, "--task", "T1T2", "--no-history")
    assert not single["history"] and all(i["history"] == [] for i in single["items"])
    assert "| no | 3 |" in out
    check_scores(single)
    first = files["rows"][0]["messages"][2]["content"]
    assert single["items"][0]["text"] == answer(model, None, tok, text=first, task="T1T2", max_new_tokens=10).text


def test_spoken_last_turns_are_judged_by_whisper(files, capsys, tmp_path):
    judge = files["ckpt"] / "whisper.pt"
    result, _, err = run(capsys, files, tmp_path, "--whisper", judge)  # default: A1A2, the spoken last questions
    assert result["task"] == "A1A2" and result["n"] == 2
    assert "1 conversations end with no spoken question" in err
    check_scores(result)
    spoken = [i for i in result["items"] if "transcript" in i]
    assert len(spoken) == 2 and spoken[0]["question"] == f"{files['root'] / 'q0.flac'} (and what is that plus one)"
    for i in spoken:
        assert i["spoken_wer"] == round(evaluate.error_rate([i["reference"]], [i["transcript"]]), 2)
    # the transcript is the judge's hearing of the answer's own speech (decoded from its SNAC codes),
    # not its text: each answer again alone, decoded and transcribed here
    model, tok = load_omni(files["ckpt"])[0].eval(), Tokenizer(files["ckpt"])
    encoder, codec = WhisperEncoder.from_pretrained(judge), SnacCodec.from_pretrained(files["ckpt"] / "snac")
    whisper = load_whisper(judge, transcribes=True)
    for i, k in zip(spoken, (0, 1)):
        m = files["rows"][k]["messages"]
        alone = answer(model, encoder, tok, audio=files["root"] / f"q{k}.flac", task="A1A2", max_new_tokens=10,
                       history=[Turn(m[0]["content"], m[1]["content"])])  # fmt: skip
        assert i["text"] == alone.text and alone.frames.size(0) > 0
        heard = evaluate.transcribe_speech(whisper, codec.decode(alone.frames), codec.sample_rate)
        assert i["transcript"] == heard
    references, transcripts = [i["reference"] for i in spoken], [i["transcript"] for i in spoken]
    assert result["spoken_wer"] == round(evaluate.error_rate(references, transcripts), 2)

    result, _, err = run(capsys, files, tmp_path, "--task", "A1T2")
    assert result["spoken_wer"] is None and result["n"] == 2


def test_dialogue_scores_in_the_language_asked(files, capsys, tmp_path):
    # Whisper's English normaliser strips diacritics, German's keeps them: "funf" is not "fünf" there
    assert evaluate.same_answer("fünf", "funf") and not evaluate.same_answer("fünf", "funf", "de")
    assert evaluate.same_answer("Fünf plus eins.", "fünf plus eins", "de")
    result, out, _ = run(capsys, files, tmp_path, "--task", "T1T2", "--language", "ja")  # scored by CER
    assert result["language"] == "ja" and result["metric"] == "cer" and "wer" not in result
    assert "| text CER | spoken CER |" in out
    refs, texts = [i["reference"] for i in result["items"]], [i["text"] for i in result["items"]]
    assert result["cer"] == round(evaluate.error_rate(refs, texts, "ja"), 2) and result["spoken_cer"] is None
    for i in result["items"]:
        assert i["cer"] == round(evaluate.error_rate([i["reference"]], [i["text"]], "ja"), 2)
        assert i["right"] == evaluate.same_answer(i["reference"], i["text"], "ja")


def test_same_answer_and_usage_errors(files, capsys, tmp_path):
    assert evaluate.same_answer("five plus one is six", "Five plus one is six.")
    assert not evaluate.same_answer("five plus one is six", "five plus one is seven")
    (tmp_path / "written.jsonl").write_text(json.dumps({"messages": files["rows"][2]["messages"]}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["dialogue", "--checkpoint", str(files["ckpt"]), "--conversations", str(tmp_path / "written.jsonl"),
              "--task", "A1T2", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == f"omni-eval dialogue: error: {tmp_path / 'written.jsonl'}: " + (
        "no conversation's last turn has a spoken question for A1T2"
    )
