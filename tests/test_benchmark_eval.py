"""omni-eval's benchmark commands end to end on a tiny random checkpoint: spoken-qa, voicebench,
speech and the report that gathers them (with asr and consistency) beside the published rows."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from bench_fixtures import HELDOUT, llama_questions, trivia_qa, uro_jsonl
from bench_fixtures import voicebench as voicebench_snapshot
from fake_judge import FakeJudge, serving
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from litgpt.utils import save_config
from tiny import JUDGE_DIMS, SNAC_TINY, tiny_base, train_tokenizer, whisper_model

from omni_train.audio import SnacCodec, WhisperEncoder, load_audio
from omni_train.checkpoints import load_base, load_omni, save_omni
from omni_train.cli.eval import main
from omni_train.evals import ifeval, speech_quality, spoken_qa, voicebench
from omni_train.evals import report as eval_report
from omni_train.generate import answer
from omni_train.vocab import EOA, N_AUDIO_LAYERS

COMMON = ["--device", "cpu", "--max-new-tokens", "8", "--batch-size", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with a tiny checkpoint (whisper.pt and snac/ inside) at model/, and benchmark data."""
    root = tmp_path_factory.mktemp("bench")
    train_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    base = root / "base"
    base.mkdir()
    config = tiny_base(vocab_size=300, padded_vocab_size=300)  # every text id the tokenizer's: answers decode to text
    torch.save(GPT(config).state_dict(), base / "lit_model.pth")
    save_config(config, base)
    for f in (root / "tokenizer").iterdir():
        shutil.copy(f, base)
    model, _ = load_base(base, whisper_adapter_dim=JUDGE_DIMS.n_audio_state, post_adapter_layers=2)
    with torch.no_grad():  # a model that never says eot / eoa: every answer has text and speech (max_new_tokens long)
        model.text_head()[0][model.config.vocab.eot] = 0
        for layer in range(N_AUDIO_LAYERS):
            model.audio_head(layer)[0][EOA] = 0
    ckpt = save_omni(model, root / "run" / "finetune" / "model", base)
    judge = whisper_model(JUDGE_DIMS)  # also the checkpoint's encoder: one small file
    torch.save({"dims": asdict(JUDGE_DIMS), "model_state_dict": judge.state_dict()}, ckpt / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(ckpt / "snac")
    data = root / "data"
    return {"run": root / "run", "ckpt": ckpt, "whisper": str(ckpt / "whisper.pt"), "eval": root / "run" / "eval",
            "llama": llama_questions(data), "trivia": trivia_qa(data), "uro": uro_jsonl(data),
            "voicebench": voicebench_snapshot(data)}  # fmt: skip


def fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


# ---- spoken-qa ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sqa(run):
    out = run["eval"] / "spoken_qa.json"
    main(["spoken-qa", "--checkpoint", str(run["ckpt"]), "--whisper", run["whisper"], "--out", str(out),
          "--data", str(run["llama"]), str(run["trivia"]), str(run["uro"]), *COMMON])  # fmt: skip
    return json.loads(out.read_text())


def test_spoken_qa_scores_every_answer_by_the_rule(sqa):
    assert sqa["command"] == "spoken-qa" and sqa["tasks"] == ["A1T2", "A1A2"]
    assert {k: v["n"] for k, v in sqa["sets"].items()} == {
        "llama-questions": 3,
        "triviaqa": 2,
        "test": 2,
    }  # hub copies: set names
    for result in sqa["sets"].values():
        for item in result["items"]:
            assert item["A1T2"]["correct"] == spoken_qa.is_correct(item["A1T2"]["text"], item["answers"])
            assert item["A1A2"]["correct"] == spoken_qa.is_correct(item["A1A2"]["transcript"], item["answers"])
            assert item["A1A2"]["text_correct"] == spoken_qa.is_correct(item["A1A2"]["text"], item["answers"])
            assert item["A1A2"]["seconds"] >= 0
        assert result["accuracy"] == spoken_qa.accuracy(result["items"])
    assert "| Mini-Omni (published) | llama-questions | - | 2.70 | 2.70 |" in sqa["table"]


def test_spoken_qa_batched_answers_are_the_answers_alone(run, sqa):
    model, _ = load_omni(run["ckpt"])
    encoder = WhisperEncoder.from_pretrained(run["ckpt"] / "whisper.pt")
    tokenizer = Tokenizer(run["ckpt"])
    clips = sorted(HELDOUT.rglob("*.flac"))
    for item, clip in zip(sqa["sets"]["llama-questions"]["items"], clips):
        alone = answer(model, encoder, tokenizer, audio=load_audio(clip, 16000), task="A1T2", max_new_tokens=8)
        assert item["A1T2"]["text"] == alone.text


def test_spoken_qa_counts_a_right_answer(run, sqa, tmp_path):
    """The model's own A1A2 texts made acceptable answers: its text channel is right on every question,
    its (empty) transcripts on none."""
    said = [i["A1A2"]["text"] for i in sqa["sets"]["test"]["items"]]
    assert all(spoken_qa.normalize(t) for t in said)  # the tiny model says something for each
    rows = [json.loads(line) for line in Path(run["uro"]).read_text().splitlines()]
    manifest = tmp_path / "own.jsonl"
    folder = Path(run["uro"]).parent
    own = [
        {**r, "source_wav": str(folder / r["source_wav"]), "target_text": ["nothing like it", t]}
        for r, t in zip(rows, said)
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in own))
    out = tmp_path / "own.json"
    main(["spoken-qa", "--checkpoint", str(run["ckpt"]), "--tasks", "A1A2", "--whisper", run["whisper"],
          "--data", str(manifest), "--out", str(out), *COMMON])  # fmt: skip
    result = json.loads(out.read_text())["sets"]["own"]
    assert [i["A1A2"]["transcript"] for i in result["items"]] == ["", ""]
    assert result["accuracy"] == {"A1A2": 0.0, "A1A2_text": 100.0}


def test_spoken_qa_mistakes(run, capsys):
    assert "--whisper" in fails(capsys, "spoken-qa", "--checkpoint", run["ckpt"], "--data", run["llama"])
    assert "nowhere" in fails(capsys, "spoken-qa", "--checkpoint", run["ckpt"], "--tasks", "A1T2", "--data",
                              run["llama"], run["run"] / "nowhere")  # fmt: skip


# ---- voicebench ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vb(run):
    """The rule-scored subsets and two judged ones, against a fake judge on 127.0.0.1."""
    import os

    out = run["eval"] / "voicebench"
    os.environ["VB_TEST_JUDGE_KEY"] = FakeJudge.key
    try:
        with serving(fail_first=False) as url:
            main(["voicebench", "--checkpoint", str(run["ckpt"]), "--data", str(run["voicebench"]),
                  "--out-dir", str(out), "--subsets", "mmsu", "openbookqa", "ifeval", "advbench", "commoneval", "sd-qa",
                  "--judge-url", url, "--judge-key-env", "VB_TEST_JUDGE_KEY", *COMMON])  # fmt: skip
    finally:
        del os.environ["VB_TEST_JUDGE_KEY"]
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_voicebench_answer_files_and_rule_scores(vb):
    summary = json.loads((vb / "voicebench.json").read_text())
    assert sorted(p.name for p in vb.glob("model-*.jsonl")) == [
        "model-advbench-test-audio.jsonl", "model-commoneval-test-audio.jsonl", "model-ifeval-test-audio.jsonl",
        "model-mmsu-history-audio.jsonl", "model-mmsu-law-audio.jsonl", "model-openbookqa-test-audio.jsonl",
        "model-sd-qa-usa-audio.jsonl",
    ]  # fmt: skip
    law = read_jsonl(vb / "model-mmsu-law-audio.jsonl")
    assert [r["reference"] for r in law] == ["A", "C"] and all("audio" not in r and "response" in r for r in law)
    # the scores are the scorers' on the written answers, as VoiceBench's evaluate.py would read them
    mmsu = read_jsonl(vb / "model-mmsu-history-audio.jsonl") + law
    assert summary["subsets"]["mmsu"]["n"] == 3
    assert summary["subsets"]["mmsu"]["scores"] == voicebench.score_mcq(mmsu)
    assert summary["subsets"]["advbench"]["scores"] == voicebench.score_harm(
        read_jsonl(vb / "model-advbench-test-audio.jsonl")
    )
    rows = read_jsonl(vb / "model-ifeval-test-audio.jsonl")
    assert rows[1]["key"] == 1002 and summary["subsets"]["ifeval"]["scores"] == ifeval.score(rows)
    assert (
        "| Mini-Omni (published) | 1.95 | 2.02 | 1.61 | 13.92 | 24.69 | 26.59 | 46.3 | 13.58 | 37.12 | 30.42 |"
        in summary["table"]
    )


def test_voicebench_judge_and_key_hygiene(vb, capsys):
    summary = json.loads((vb / "voicebench.json").read_text())
    assert summary["subsets"]["commoneval"]["scores"] == {"gpt": 4.0, "unparsed": 0}
    assert summary["subsets"]["sd-qa"]["scores"] == {"gpt": 100.0, "unparsed": 0}
    judged = read_jsonl(vb / "result-model-commoneval-test-audio.jsonl")
    assert [r["score"] for r in judged] == [["4"] * 3] * 2  # api_judge.py's output form
    assert "score" not in read_jsonl(vb / "model-commoneval-test-audio.jsonl")[0]  # main.py's form, unjudged
    for f in vb.rglob("*"):
        assert FakeJudge.key not in f.read_text(), f"the judge key leaked into {f}"
    assert all(r["auth"] == f"Bearer {FakeJudge.key}" for r in FakeJudge.requests) and len(FakeJudge.requests) == 3


def test_voicebench_unjudged_and_mistakes(run, capsys, tmp_path):
    out = tmp_path / "vb"
    main(["voicebench", "--checkpoint", str(run["ckpt"]), "--data", str(run["voicebench"]), "--out-dir", str(out),
          "--subsets", "commoneval", "--max-items", "1", *COMMON])  # fmt: skip
    result = json.loads((out / "voicebench.json").read_text())["subsets"]["commoneval"]
    assert result["scores"] == {} and "api_judge.py" in result["note"] and result["n"] == 1
    assert "| " + str(run["ckpt"]) + " | - |" in capsys.readouterr().out
    assert "environment variable NO_SUCH_KEY" in fails(
        capsys, "voicebench", "--checkpoint", run["ckpt"], "--data", run["voicebench"], "--subsets", "commoneval",
        "--judge-url", "http://127.0.0.1:9/v1", "--judge-key-env", "NO_SUCH_KEY")  # fmt: skip
    assert "no wildvoice/<split>" in fails(
        capsys, "voicebench", "--checkpoint", run["ckpt"], "--data", run["voicebench"], "--subsets", "wildvoice"
    )


# ---- speech ---------------------------------------------------------------------------------------
class TinyMos(torch.nn.Module):
    """A stand-in MOS predictor: 1 + 4 * sigmoid(10 * mean |wave|), in [1, 5]."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return 1 + 4 * torch.sigmoid(10 * wave.abs().mean(dim=-1))


@pytest.fixture(scope="module")
def speech(run):
    mos = run["run"].parent / "tiny_mos.pt"
    torch.jit.script(TinyMos()).save(str(mos))
    out = run["eval"] / "speech.json"
    main(["speech", "--checkpoint", str(run["ckpt"]), "--data", str(run["llama"]), "--mos", str(mos),
          "--max-items", "2", "--save-audio", str(run["eval"] / "speech_wavs"), "--out", str(out), "--device", "cpu",
          "--max-new-tokens", "16"])  # fmt: skip
    return json.loads(out.read_text()), mos


def test_speech_latency_and_mos_in_one_run(run, speech):
    result, mos = speech
    assert result["task"] == "A1A2" and result["n"] == 2
    predictor = speech_quality.MosPredictor(mos)
    for item in result["items"]:
        if item["ttfa_ms"] is None:
            continue
        assert 0 < item["ttfa_ms"] / 1000 <= item["wall_s"]
        assert item["rtf"] == pytest.approx(item["wall_s"] / item["seconds"], rel=1e-2)
        wave = load_audio(item["wav"], 24000)  # the streamed answer as written (16-bit)
        assert item["mos"] == pytest.approx(predictor(wave, 24000), abs=1e-3)
    assert any(i["ttfa_ms"] is not None for i in result["items"])
    assert result["summary"] == speech_quality.summarize(result["items"])
    assert "| Mini-Omni | UTMOS | 4.42 | URO-Bench, arXiv 2502.17810" in result["table"]


def test_mos_predictor_contract(tmp_path):
    path = tmp_path / "mos.pt"
    torch.jit.script(TinyMos()).save(str(path))
    wave = torch.full((16000,), 0.1)
    assert speech_quality.MosPredictor(path)(wave, 16000) == pytest.approx(
        1 + 4 * torch.sigmoid(torch.tensor(1.0)).item()
    )

    class Two(torch.nn.Module):
        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            return torch.stack([wave.mean(), wave.std()])

    torch.jit.script(Two()).save(str(tmp_path / "two.pt"))
    with pytest.raises(ValueError, match="expected one finite score"):
        speech_quality.MosPredictor(tmp_path / "two.pt")(wave, 16000)
    from omni_train.evaluate import Question

    with pytest.raises(ValueError, match=r"A1A2 needs spoken questions; \['q1'\]"):
        speech_quality.measure(None, None, None, None, [Question("q1", text="written only")], task="A1A2")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        speech_quality.MosPredictor(tmp_path / "junk.pt")


# ---- report -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(run, sqa, vb, speech):
    main(["asr", "--checkpoint", str(run["ckpt"]), "--librispeech", str(HELDOUT), "--max-utterances", "2",
          "--out", str(run["eval"] / "asr.json"), *COMMON])  # fmt: skip
    questions = run["eval"] / "q.txt"
    questions.write_text("what is two plus three\n")
    main(["consistency", "--checkpoint", str(run["ckpt"]), "--whisper", run["whisper"], "--questions", str(questions),
          "--out", str(run["eval"] / "consistency.json"), *COMMON])  # fmt: skip
    (run["ckpt"] / "results-lookalike.json").write_text(json.dumps({"checkpoint": "x", "splits": {}}))  # inside model/
    main(["report", str(run["run"])])
    return json.loads((run["run"] / "eval_report.json").read_text())


def test_report_gathers_every_result(run, report, sqa):
    commands = sorted(f["command"] for f in report["files"])
    assert commands == ["asr", "consistency", "speech", "spoken-qa", "voicebench"]  # model/ is not searched
    assert {f["checkpoint"] for f in report["files"]} == {"finetune/model"}
    asr = json.loads((run["eval"] / "asr.json").read_text())
    assert report["asr"]["finetune/model"] == {s: r["wer"] for s, r in asr["splits"].items()}
    assert (
        report["spoken_qa"]["finetune/model"]["llama-questions"]["accuracy"]
        == sqa["sets"]["llama-questions"]["accuracy"]
    )
    assert report["voicebench"]["finetune/model"]["mmsu"]["scores"]["acc"] is not None
    md = (run["run"] / "eval_report.md").read_text()
    for heading in ("LibriSpeech ASR", "Speech-text consistency", "Spoken question answering", "VoiceBench",
                    "Spoken answers: latency and quality"):  # fmt: skip
        assert f"## {heading}" in md
    assert "| Mini-Omni (published) | 4.5 | 9.7 | 4.6 | 9.2 |" in md
    assert "| Mini-Omni (published) | - | - | - | 6.05 | URO-Bench, arXiv 2502.17810" in md
    assert (run["run"] / "eval_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert eval_report.classify(report) is None  # the report itself is no result: a second report ignores it


def test_report_of_nothing(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert "no omni-eval results" in fails(capsys, "report", tmp_path)
