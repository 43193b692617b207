"""Whisper in the Hugging Face layout as the frozen encoder (and as the judge), large-v3's 128 mels end to end.

The test writes the HF folder itself, from an openai-whisper model, with the module names and
config keys transformers uses for `WhisperForConditionalGeneration` (its convert_openai_to_hf.py
maps them), so nothing is downloaded and transformers is not needed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import whisper
from runs import SHORT, config
from safetensors.torch import save_file
from tiny import WHISPER_DIMS, whisper_model
from whisper.model import ModelDimensions

from omni_train.audio import AudioModelError, WhisperEncoder, load_whisper, log_mel, whisper_frames
from omni_train.checkpoints import audio_sources
from omni_train.train import train

# openai-whisper name -> transformers' name, as convert_openai_to_hf.py renames them
OPENAI_TO_HF = [
    ("encoder.ln_post.", "encoder.layer_norm."),
    ("decoder.ln.", "decoder.layer_norm."),
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "decoder.embed_positions.weight"),
    ("token_embedding", "embed_tokens"),
    ("blocks", "layers"),
    (".cross_attn.query", ".encoder_attn.q_proj"),
    (".cross_attn.key", ".encoder_attn.k_proj"),
    (".cross_attn.value", ".encoder_attn.v_proj"),
    (".cross_attn.out", ".encoder_attn.out_proj"),
    (".cross_attn_ln", ".encoder_attn_layer_norm"),
    (".attn.query", ".self_attn.q_proj"),
    (".attn.key", ".self_attn.k_proj"),
    (".attn.value", ".self_attn.v_proj"),
    (".attn.out", ".self_attn.out_proj"),
    (".attn_ln", ".self_attn_layer_norm"),
    ("mlp.0", "fc1"),
    ("mlp.2", "fc2"),
    ("mlp_ln", "final_layer_norm"),
]
# large-v3's shape (128 mels, 51866 tokens: multilingual, 100 languages), shrunk in width and depth
LARGE_V3_TINY = ModelDimensions(**{**WHISPER_DIMS, "n_mels": 128, "n_vocab": 51866, "n_text_ctx": 16})


def hf_state(model: whisper.model.Whisper, dtype=torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        for old, new in OPENAI_TO_HF:
            key = key.replace(old, new)
        out["model." + key] = value.to(dtype).contiguous()
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"].clone()  # tied to the embedding
    return out


def hf_config(dims: ModelDimensions) -> dict:
    return {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "num_mel_bins": dims.n_mels, "max_source_positions": dims.n_audio_ctx, "d_model": dims.n_audio_state,
        "encoder_attention_heads": dims.n_audio_head, "encoder_layers": dims.n_audio_layer,
        "vocab_size": dims.n_vocab, "max_target_positions": dims.n_text_ctx,
        "decoder_attention_heads": dims.n_text_head, "decoder_layers": dims.n_text_layer,
        "encoder_ffn_dim": 4 * dims.n_audio_state, "decoder_ffn_dim": 4 * dims.n_text_state,
        "torch_dtype": "float32",
    }  # fmt: skip


def write_hf(folder: Path, model: whisper.model.Whisper, form: str = "safetensors", dtype=torch.float32) -> Path:
    """`model` as `WhisperForConditionalGeneration.save_pretrained` would write it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(hf_config(model.dims)))
    (folder / "generation_config.json").write_text("{}")  # beside the weights in real folders; not read
    state = hf_state(model, dtype)
    if form == "safetensors":
        save_file(state, folder / "model.safetensors")
    elif form == "sharded":  # large checkpoints: shards named by an index
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for shard, keys in shards.items():
            save_file({k: state[k] for k in keys}, folder / shard)
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def openai_file(path: Path, model: whisper.model.Whisper) -> Path:
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def large_v3_tiny():
    torch.manual_seed(3)
    return whisper_model(LARGE_V3_TINY)


@pytest.mark.parametrize("form", ["safetensors", "sharded", "bin"])
def test_hf_folder_gives_the_same_features_as_the_openai_file(tmp_path, large_v3_tiny, form):
    hf = WhisperEncoder.from_pretrained(write_hf(tmp_path / "hf", large_v3_tiny, form))
    ours = WhisperEncoder.from_pretrained(openai_file(tmp_path / "w.pt", large_v3_tiny))
    assert hf.n_mels == 128 and hf.width == WHISPER_DIMS["n_audio_state"]
    assert not any(p.requires_grad for p in hf.parameters()) and not hf.training
    torch.manual_seed(0)
    audio = [torch.randn(n) * 0.1 for n in (8000, 12345)]
    mels = torch.zeros(2, 128, 2 * whisper_frames(12345))
    frames = torch.tensor([whisper_frames(a.numel()) for a in audio])
    for i, a in enumerate(audio):
        mel = log_mel(a, 128)
        mels[i, :, : mel.size(1)] = mel
    assert torch.equal(hf(mels, frames), ours(mels, frames))


def test_hf_folder_as_a_whole_whisper_that_transcribes(tmp_path, large_v3_tiny):
    model = load_whisper(write_hf(tmp_path / "hf", large_v3_tiny), transcribes=True)
    assert model.is_multilingual and model.num_languages == 100  # large-v3's token table
    for key, value in large_v3_tiny.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # half-precision weights (as many hub folders hold) load into float32
    half = load_whisper(write_hf(tmp_path / "half", large_v3_tiny, dtype=torch.float16))
    weight = half.encoder.conv1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, large_v3_tiny.encoder.conv1.weight.half().float())


def test_bad_hf_folders_are_one_line_naming_the_file(tmp_path, large_v3_tiny):
    good = write_hf(tmp_path / "good", large_v3_tiny)

    def broken(name: str, change) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        change(folder)
        return folder

    cases = [
        (broken("noconfig", lambda f: (f / "config.json").unlink()), "no config.json"),
        (broken("bert", lambda f: (f / "config.json").write_text('{"model_type": "bert"}')), "not 'whisper'"),
        (broken("nodims", lambda f: (f / "config.json").write_text('{"model_type": "whisper"}')), "no num_mel_bins"),
        (broken("noweights", lambda f: (f / "model.safetensors").unlink()), "no weights"),
        (broken("cut", lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 20)), "cannot read"),
        (broken("wrongdims", lambda f: (f / "config.json").write_text(
            json.dumps({**hf_config(large_v3_tiny.dims), "num_mel_bins": 80}))), "do not fit its config.json"),
    ]  # fmt: skip
    for folder, says in cases:
        with pytest.raises(AudioModelError, match=says) as err:
            WhisperEncoder.from_pretrained(folder)
        assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_large_v3_shaped_hf_whisper_trains_end_to_end(tmp_path, large_v3_tiny):
    """128 mels from the data to the adapter, the held-out WER, and a saved model that reloads its Whisper."""
    hf = write_hf(tmp_path / "whisper-large-v3-tiny", large_v3_tiny)
    run = tmp_path / "run"
    summary = train(config(*SHORT, "stage=alignment", f"run_dir={run}", f"model.whisper={hf}", "eval.speak=null"))
    assert summary["stages"]["alignment"]["steps"] == 2
    assert 0 <= summary["wer_before"] and 0 <= summary["wer_after"]
    saved = audio_sources(run / "alignment" / "model")
    assert Path(saved["whisper"]) == run / "alignment" / "model" / "whisper"  # copied: the model folder stands alone
    assert sorted(p.name for p in Path(saved["whisper"]).iterdir()) == ["config.json", "model.safetensors"]
    encoder = WhisperEncoder.from_pretrained(saved["whisper"])
    assert encoder.n_mels == 128
    for key, value in large_v3_tiny.encoder.state_dict().items():
        assert torch.equal(encoder.encoder.state_dict()[key], value), key
