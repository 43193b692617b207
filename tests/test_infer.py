"""omni-infer end to end on a tiny checkpoint, with a tiny Whisper and SNAC saved the way the real ones are."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import soundfile as sf
import torch
from litgpt.tokenizer import Tokenizer
from tiny import SNAC_TINY, WHISPER, tiny_omni, train_tokenizer, whisper_model

from omni_train.audio import SnacCodec, WhisperEncoder, load_audio
from omni_train.checkpoints import export_mini_omni, load_omni, save_omni
from omni_train.cli.infer import main
from omni_train.generate import answer
from omni_train.model import OmniGPT
from omni_train.vocab import N_AUDIO_LAYERS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint with whisper.pt and snac/ inside, the same one bare, and a spoken question."""
    root = tmp_path_factory.mktemp("infer")
    tokenizer_dir = root / "tokenizer"
    train_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    bare = save_omni(OmniGPT(tiny_omni()), root / "bare", tokenizer_dir)
    full = save_omni(load_omni(bare)[0], root / "full", tokenizer_dir)
    torch.save({"dims": asdict(WHISPER), "model_state_dict": whisper_model(WHISPER).state_dict()}, full / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(full / "snac")
    question = root / "question.wav"
    sf.write(question, 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32), 16000)
    return dict(full=full, bare=bare, question=question, root=root)


def run(capsys, *argv) -> dict:
    main([*map(str, argv), "--max-new-tokens", "16", "--device", "cpu", "--json"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_spoken_question_spoken_answer(files, capsys, tmp_path):
    out = run(capsys, "--checkpoint", files["full"], "--audio", files["question"], "--out", tmp_path / "a.wav")
    assert set(out) == {"text", "text_tokens", "audio_tokens"} and len(out["audio_tokens"]) == N_AUDIO_LAYERS
    # the same as the library, with the Whisper and SNAC found inside the checkpoint
    model = load_omni(files["full"])[0]
    encoder = WhisperEncoder.from_pretrained(files["full"] / "whisper.pt")
    expected = answer(model, encoder, Tokenizer(files["full"]), audio=files["question"], max_new_tokens=16)
    assert (out["text"], out["text_tokens"], out["audio_tokens"]) == (
        expected.text, expected.text_tokens, expected.audio_tokens
    )
    wave, rate = sf.read(tmp_path / "a.wav")
    assert rate == 24000 and len(wave) == expected.frames.size(0) * 32  # 32 samples a tiny SNAC frame
    assert expected.frames.size(0) == 16 - N_AUDIO_LAYERS


def test_text_question_text_answer_needs_neither_whisper_nor_snac(files, capsys, tmp_path):
    out = run(capsys, "--checkpoint", files["bare"], "--text", "what is two plus three", "--task", "T1T2")
    assert out["audio_tokens"] is None and out["text_tokens"]
    # Mini-Omni's format gives the same answer
    mini = export_mini_omni(load_omni(files["bare"])[0], tmp_path / "mini", files["bare"])
    assert run(capsys, "--checkpoint", mini, "--text", "what is two plus three", "--task", "T1T2") == out


def test_flags_name_whisper_and_snac_and_stream(files, capsys, tmp_path):
    wav = tmp_path / "b.wav"
    argv = ["--checkpoint", files["bare"], "--audio", files["question"], "--task", "A1A2", "--batch-parallel"]
    argv += ["--whisper", files["full"] / "whisper.pt", "--snac", files["full"] / "snac", "--out", wav, "--stream"]
    main([*map(str, argv), "--max-new-tokens", "20", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "first audio after" in captured.err and "real-time factor" in captured.err
    assert load_audio(wav, 24000).numel() == (20 - N_AUDIO_LAYERS) * 32


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--audio", "q.wav"], "--audio needs --whisper"),
        (["--text", "hi", "--out", "a.wav"], "--out needs --snac"),
        (["--text", "hi", "--task", "T1T2", "--out", "a.wav"], "no spoken answer"),
        (["--text", "hi", "--task", "A1T1"], "takes --audio"),
        (["--text", "hi", "--stream"], "--stream needs --out"),
    ],
)
def test_usage_errors(files, capsys, argv, message):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(files["bare"]), *argv])
    assert message in capsys.readouterr().err


def test_json_audio_stops_before_layer_6_says_eoa_as_mini_omni_does():
    from omni_train.cli.infer import as_mini_omni_returns
    from omni_train.vocab import EOA, apply_delay

    frames = torch.arange(14).view(2, 7)
    finished = apply_delay(frames).tolist()  # pads, 2 frames, eoa per layer: layer 6 ends with eoa
    assert finished[6][-1] == EOA
    trimmed = as_mini_omni_returns(finished)
    assert all(len(t) == len(f) - 1 for t, f in zip(trimmed, finished)) and trimmed[6][-1] != EOA
    unfinished = [layer[:-2] for layer in finished]  # cut off before the end: nothing to trim
    assert as_mini_omni_returns(unfinished) == unfinished and as_mini_omni_returns(None) is None
