"""The command line's edges: each mistake a user makes is one line naming what to fix, never a traceback.

Downloads are made to fail here (a patched urlopen or hub client, an unreachable proxy): no test
downloads anything.
"""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from runs import SHORT, config, omni_train
from tiny import SNAC_TINY, WHISPER, tiny_omni, train_tokenizer, whisper_model

from omni_train.audio import AudioModelError, DownloadFailed, SnacCodec, WhisperEncoder, load_whisper
from omni_train.checkpoints import CheckpointError, ModelBundle, load_checkpoint, load_omni, save_omni
from omni_train.cli import eval as eval_cli
from omni_train.cli import export as export_cli
from omni_train.cli import infer as infer_cli
from omni_train.config import ConfigError
from omni_train.evaluate import read_documents
from omni_train.model import OmniGPT
from omni_train.train import train

REPO = Path(__file__).parents[1]
DEMO_WHISPER = REPO / "omni_train" / "demo_data" / "whisper.pt"
# this checkout's omni_train in the subprocesses, whatever else is installed
HERE = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint with whisper.pt and snac/ inside, the same with lit_model.pth cut short, a question."""
    root = tmp_path_factory.mktemp("cli_errors")
    train_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    ckpt = save_omni(OmniGPT(tiny_omni()), root / "ckpt", root / "tokenizer")
    torch.save({"dims": asdict(WHISPER), "model_state_dict": whisper_model(WHISPER).state_dict()}, ckpt / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(ckpt / "snac")
    truncated = save_omni(load_omni(ckpt)[0], root / "truncated", ckpt)
    weights = (ckpt / "lit_model.pth").read_bytes()
    (truncated / "lit_model.pth").write_bytes(weights[: len(weights) // 2])  # a copy cut off mid-write
    question = root / "question.wav"
    sf.write(question, 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32), 16000)
    return {"root": root, "ckpt": ckpt, "truncated": truncated, "question": question}


def one_line_error(capsys, main, argv, prog: str) -> str:
    """Run a command expecting a user error: exit status 2 and one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as e:
        main([*map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    return err


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: urlopen (Whisper's downloader) and the hub client (SNAC's) fail, and the caches are empty."""
    calls = []

    def unreachable(url, *args, **kwargs):
        calls.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def hub_unreachable(repo_id, filename, **kwargs):
        calls.append(f"{repo_id}/{filename}")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # whisper's cache: nothing downloaded before
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub_unreachable)
    return calls


# ---- omni-infer: bad questions -------------------------------------------------------------------
def test_infer_bad_audio_is_one_line_naming_the_file(files, capsys, tmp_path):
    empty, corrupt, silent = tmp_path / "empty.wav", tmp_path / "corrupt.wav", tmp_path / "silent.wav"
    empty.write_bytes(b"")
    corrupt.write_bytes(b"RIFF\x00\x00 not audio at all")
    sf.write(silent, np.zeros(0, np.float32), 16000)  # a valid header and no samples
    cases = [
        (tmp_path / "missing.wav", "no such audio file"),
        (empty, "empty (0 bytes)"),
        (corrupt, "cannot decode audio"),
        (silent, "empty audio"),
    ]
    for audio, says in cases:
        err = one_line_error(capsys, infer_cli.main, ["--checkpoint", files["ckpt"], "--audio", audio], "omni-infer")
        assert says in err and str(audio) in err


@pytest.mark.parametrize("text", ["", "   "])
def test_infer_empty_text_is_an_error_not_an_empty_answer(files, capsys, text):
    err = one_line_error(capsys, infer_cli.main, ["--checkpoint", files["ckpt"], "--text", text], "omni-infer")
    assert "--text is empty" in err


def test_infer_question_longer_than_the_context_says_the_limit(files, capsys):
    limit = load_omni(files["ckpt"])[1].block_size  # 256
    argv = ["--checkpoint", files["ckpt"], "--text", "what is two plus three " * limit, "--task", "T1T2"]
    err = one_line_error(capsys, infer_cli.main, argv, "omni-infer")
    assert f"max_seq_length={limit}" in err and "leaves no room" in err


def test_infer_max_new_tokens_below_one_is_a_usage_error(files, capsys):
    with pytest.raises(SystemExit) as e:
        infer_cli.main(["--checkpoint", str(files["ckpt"]), "--text", "hi", "--max-new-tokens", "0"])
    assert e.value.code == 2 and "--max-new-tokens must be at least 1" in capsys.readouterr().err


# ---- a truncated lit_model.pth ---------------------------------------------------------------------
def test_truncated_weights_are_one_line_naming_the_file(files, capsys, tmp_path):
    weights = files["truncated"] / "lit_model.pth"
    with pytest.raises(CheckpointError, match=f"cannot read {weights}: truncated"):
        load_checkpoint(files["truncated"])
    for size in (0, 100):  # empty, and cut inside the zip header
        cut = save_omni(load_omni(files["ckpt"])[0], tmp_path / f"cut{size}", files["ckpt"])
        (cut / "lit_model.pth").write_bytes((files["ckpt"] / "lit_model.pth").read_bytes()[:size])
        with pytest.raises(CheckpointError, match=f"cannot read {cut / 'lit_model.pth'}"):
            load_checkpoint(cut)

    err = one_line_error(capsys, infer_cli.main, ["--checkpoint", files["truncated"], "--text", "hi"], "omni-infer")
    assert str(weights) in err
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--format", "omni", str(files["truncated"]), str(tmp_path / "out")])
    assert str(weights) in str(e.value.code) and "\n" not in str(e.value.code)
    assert not (tmp_path / "out").exists()


def test_init_from_truncated_weights_is_a_config_error_naming_the_file(files, tmp_path):
    cfg = config(*SHORT, "stage=adaption", f"init_from={files['truncated']}", f"run_dir={tmp_path}", "eval.asr=null")
    with pytest.raises(ConfigError, match=f"init_from={files['truncated']}: cannot read .*lit_model.pth") as err:
        train(cfg)
    assert "\n" not in str(err.value)


# ---- Whisper and SNAC that cannot be had -------------------------------------------------------------
def test_a_failed_whisper_download_says_how_to_give_a_local_file(offline, files, capsys):
    with pytest.raises(DownloadFailed) as err:
        WhisperEncoder.from_pretrained("small")
    assert offline and "small.pt" in offline[0]  # it tried, and the download failed
    assert err.value.key == "whisper" and "cannot download Whisper 'small'" in str(err.value)
    assert "name resolution" in str(err.value) and "/path/to/small.pt" in str(err.value)

    argv = ["--checkpoint", files["ckpt"], "--audio", files["question"], "--whisper", "small"]
    assert "--whisper /path/to/small.pt" in one_line_error(capsys, infer_cli.main, argv, "omni-infer")


def test_a_failed_snac_download_says_how_to_give_a_local_folder(offline, files, capsys, tmp_path):
    with pytest.raises(DownloadFailed, match="cannot download SNAC 'hubertsiuzdak/snac_24khz'") as err:
        SnacCodec.from_pretrained("hubertsiuzdak/snac_24khz")
    assert offline and err.value.key == "snac" and "/path/to/snac_24khz" in str(err.value)
    argv = ["--checkpoint", files["ckpt"], "--text", "hi", "--out", tmp_path / "a.wav", "--snac", "hubertsiuzdak/snac_24khz"]
    assert "--snac /path/to/snac_24khz" in one_line_error(capsys, infer_cli.main, argv, "omni-infer")
    # a path that is not there is not sent to the hub
    tries = len(offline)
    with pytest.raises(FileNotFoundError, match="SNAC folder not found: /no/such/snac"):
        SnacCodec.from_pretrained("/no/such/snac")
    with pytest.raises(NotADirectoryError, match="SNAC is a folder"):
        SnacCodec.from_pretrained(files["question"])
    assert len(offline) == tries


def test_omni_train_names_the_failed_whisper_download(tmp_path):
    """The whole command, in a process of its own whose downloads go to a proxy that is not there."""
    env = {**HERE, "XDG_CACHE_HOME": str(tmp_path / "cache"), "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    run = omni_train("experiment=demo", "model.whisper=small", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert last.startswith("omni-train: error: cannot download Whisper 'small'")
    assert "model.whisper=/path/to/small.pt" in last


def test_whisper_files_that_are_not_whole_models(files, tmp_path):
    good = files["ckpt"] / "whisper.pt"
    checkpoint = torch.load(good, weights_only=True)
    encoder_only = tmp_path / "encoder.pt"
    state = {k: v for k, v in checkpoint["model_state_dict"].items() if k.startswith("encoder.")}
    torch.save({"dims": checkpoint["dims"], "model_state_dict": state}, encoder_only)
    with pytest.raises(AudioModelError, match=f"{encoder_only} holds only Whisper's encoder"):
        WhisperEncoder.from_pretrained(encoder_only)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(AudioModelError, match=f"cannot read Whisper checkpoint {truncated}: truncated"):
        WhisperEncoder.from_pretrained(truncated)
    not_whisper = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, not_whisper)
    with pytest.raises(AudioModelError, match="not an openai-whisper checkpoint"):
        WhisperEncoder.from_pretrained(not_whisper)
    with pytest.raises(FileNotFoundError, match="nor is it a Whisper name: .*small"):
        WhisperEncoder.from_pretrained(tmp_path / "small.pt")


def test_the_demo_whisper_encodes_but_cannot_judge(files, capsys, tmp_path):
    """The demo's whisper.pt is an encoder trained for the demo: fine to hear with, no speech recogniser."""
    assert load_whisper(DEMO_WHISPER).dims.n_vocab == 16
    with pytest.raises(AudioModelError, match="cannot transcribe: its text decoder has 16 tokens"):
        load_whisper(DEMO_WHISPER, transcribes=True)
    questions = tmp_path / "q.txt"
    questions.write_text("what is two plus three\n")
    argv = ["consistency", "--checkpoint", files["ckpt"], "--questions", questions, "--device", "cpu"]
    err = one_line_error(capsys, eval_cli.main, [*argv, "--whisper", DEMO_WHISPER], "omni-eval consistency")
    assert str(DEMO_WHISPER) in err and "give a whole Whisper" in err


def test_eval_consistency_offline_says_how_to_give_a_local_whisper(offline, files, capsys, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("what is two plus three\n")
    argv = ["consistency", "--checkpoint", files["ckpt"], "--questions", questions, "--whisper", "small"]
    err = one_line_error(capsys, eval_cli.main, argv, "omni-eval consistency")
    assert "cannot download Whisper 'small'" in err and "--whisper /path/to/small.pt" in err


# ---- omni-eval retention: plain text ---------------------------------------------------------------
def test_plain_text_is_one_document_a_line(tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text("the model hears\nand talks\n\n  what is two plus three  \n\n\n")
    assert read_documents(text) == ["the model hears", "and talks", "what is two plus three"]
    assert read_documents(text, limit=2) == ["the model hears", "and talks"]
    with pytest.raises(SystemExit):
        eval_cli.main(["retention", "--help"])
    assert "one document a line" in " ".join(capsys.readouterr().out.split())


# ---- help -------------------------------------------------------------------------------------------
def test_help_texts_give_examples_and_explain_the_task_codes(capsys):
    for main, argv in ((infer_cli.main, ["--help"]), (eval_cli.main, ["--help"]), (eval_cli.main, ["consistency", "-h"])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width
        if argv == ["--help"]:
            assert "examples:" in out and "--checkpoint CKPT" in out
        if argv != ["--help"] or main is infer_cli.main:
            assert "A1T1: ASR: speech in, its transcript out" in out and "T1T2: text question, text answer" in out
    run = omni_train("--help", cwd=REPO, env=HERE)
    out = " ".join(run.stdout.split())
    assert run.returncode == 0 and "omni-train experiment=demo" in out and "stages.STAGE.tasks" in out
    assert "A1A2: spoken question, spoken and text answer" in out and "== Configuration groups ==" in out


# ---- folders get the user's umask -----------------------------------------------------------------------
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o750
    os.umask(old)


def test_exported_and_saved_model_folders_get_the_umask(files, tmp_path, umask_027):
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    for fmt in ("omni", "mini-omni"):
        export_cli.main(["--format", fmt, str(files["ckpt"]), str(tmp_path / fmt)])
        assert mode(tmp_path / fmt) == umask_027, fmt
    model, _ = load_checkpoint(files["ckpt"])
    saved = ModelBundle(model, None, files["ckpt"], str(files["ckpt"] / "whisper.pt"), str(files["ckpt"] / "snac"))
    saved.save(tmp_path / "model")
    assert mode(tmp_path / "model") == umask_027
    assert mode(tmp_path / "model" / "lit_model.pth") == 0o640
