"""Checkpoint loading, saving and Mini-Omni conversion on tiny models (a few seconds on CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint
from litgpt.utils import save_config
from safetensors.torch import save_file
from tiny import train_tokenizer

from omni_train import checkpoints as ckpt
from omni_train.cli.export import main as export_main
from omni_train.model import OmniConfig, OmniGPT
from omni_train.vocab import N_AUDIO_LAYERS

# Mini-Omni's litgpt-0.4 Config fields, written out independently of `ckpt.MINI_OMNI_FIELDS`.
MINI_OMNI_CONFIG_FIELDS = set(
    "name hf_config scale_embeddings block_size vocab_size padding_multiple padded_vocab_size n_layer n_head "
    "head_size n_embd rotary_percentage parallel_residual bias lm_head_bias n_query_groups shared_attention_norm "
    "norm_class_name norm_eps mlp_class_name gelu_approximate intermediate_size rope_condense_ratio rope_base "
    "n_expert n_expert_per_token add_qkv_bias prompt_vocab_size attn_dropout pos_type force_align "
    "use_pretrain_phoneme_emb tie_word_embeddings text_vocab_size cat_audio_vocab_size audio_vocab_size "
    "whisper_adapter_dim post_adapter post_adapter_layers asr_adapter".split()
)

TINY = dict(
    n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=96, padded_vocab_size=512, vocab_size=500,
    block_size=128,
)  # fmt: skip


def tiny_base(**overrides) -> Config:
    return Config.from_name("Qwen2.5-0.5B", **{**TINY, **overrides})


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(d)
    return d


def make_lit_dir(path: Path, base: Config, tokenizer_dir: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A litgpt checkpoint dir whose embedding rows have distinct per-dimension mean and std."""
    torch.manual_seed(seed)
    model = GPT(base)
    C = base.n_embd
    with torch.no_grad():
        shift, scale = torch.linspace(-1, 1, C), torch.linspace(0.05, 0.5, C)
        model.transformer.wte.weight.copy_(torch.randn(base.padded_vocab_size, C) * scale + shift)
        model.lm_head.weight.copy_(torch.randn(base.padded_vocab_size, C) * scale.flip(0) - shift)
        for p in model.transformer.h.parameters():  # norms and biases away from their defaults
            p.add_(torch.randn_like(p) * 0.1)
    path.mkdir(parents=True)
    state = model.state_dict()
    torch.save(state, path / "lit_model.pth")
    save_config(base, path)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path)
    return state


@pytest.fixture(scope="module")
def lit_dir(tmp_path_factory, tokenizer_dir) -> tuple[Path, dict[str, torch.Tensor]]:
    d = tmp_path_factory.mktemp("base") / "lit"
    return d, make_lit_dir(d, tiny_base(), tokenizer_dir)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, lit_dir, tokenizer_dir) -> Path:
    lit, _ = lit_dir
    d = tmp_path_factory.mktemp("base") / "hf"
    convert_lit_checkpoint(lit, d)  # litgpt's own lit -> HF conversion (writes model.pth)
    hf_state = torch.load(d / "model.pth", weights_only=True)
    (d / "model.pth").unlink()
    save_file({k: v.contiguous() for k, v in hf_state.items()}, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, d)
    return d


def random_omni(seed: int = 0, **omni) -> OmniGPT:
    """A tiny OmniGPT with every parameter random (norms and biases included)."""
    config = OmniConfig.from_base(tiny_base(), whisper_adapter_dim=32, **omni)
    torch.manual_seed(seed)
    model = OmniGPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def sample_inputs(config: OmniConfig, B: int = 2, T: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(B, N_AUDIO_LAYERS + 1, T, dtype=torch.long)  # (B, 8, T)
    for i in range(N_AUDIO_LAYERS):
        ids[:, i] = config.vocab.audio_id(i, torch.randint(0, config.audio_vocab_size, (B, T), generator=g))
    ids[:, N_AUDIO_LAYERS] = torch.randint(0, config.text_vocab_size, (B, T), generator=g)
    lengths = torch.tensor([5, 3])
    feats = torch.randn(B, 6, config.whisper_adapter_dim, generator=g)  # (B, F, whisper_dim)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        mask[b, 1 : n + 1] = True  # Mini-Omni's placement: positions 1..n
    return ids, feats, lengths, mask


def assert_same_outputs(a: OmniGPT, b: OmniGPT) -> None:
    ids, feats, lengths, mask = sample_inputs(a.config)
    feats = feats.to(a.lm_head.weight.dtype)
    with torch.no_grad():
        for args in ((ids,), (ids, feats, lengths, mask)):
            ta, aa = a(*args)
            tb, ab = b(*args)
            assert torch.equal(ta, tb) and torch.equal(aa, ab)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---- base LLM -> OmniGPT ----------------------------------------------------------------------
@pytest.mark.parametrize("post_adapter", [False, True])
def test_load_base_litgpt_copies_base_exactly(lit_dir, post_adapter):
    path, base_state = lit_dir
    model, config = ckpt.load_base(path, post_adapter=post_adapter, whisper_adapter_dim=32)
    assert config.padded_vocab_size == 512 + 64 + N_AUDIO_LAYERS * 4160
    state = model.state_dict()
    for k, v in base_state.items():
        if k in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(state[k][:512], v), k
        else:
            assert torch.equal(state[k], v), k
    if post_adapter:  # the audio norm starts as the final norm
        assert torch.equal(state["transformer.post_adapter_audio_ln.weight"], base_state["transformer.ln_f.weight"])


def test_load_base_hf_equals_litgpt(lit_dir, hf_dir):
    lit, _ = lit_dir
    from_lit, _ = ckpt.load_base(lit, seed=3)
    from_hf, _ = ckpt.load_base(hf_dir, base_config=tiny_base(), seed=3)
    assert_same_state(from_lit.state_dict(), from_hf.state_dict())
    assert not any(hf_dir.glob("*.pth")) and not (hf_dir / "model_config.yaml").exists()  # source untouched


def test_load_base_hf_tied_embeddings(hf_dir, tmp_path, lit_dir):
    from safetensors.torch import load_file

    tied = tmp_path / "tied"
    shutil.copytree(hf_dir, tied)
    weights = load_file(tied / "model.safetensors")
    del weights["lm_head.weight"]  # a tied HF checkpoint has no lm_head
    save_file(weights, tied / "model.safetensors")
    model, config = ckpt.load_base(tied, base_config=tiny_base())
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    assert torch.equal(wte[:512], lit_dir[1]["transformer.wte.weight"])
    assert torch.equal(head, wte)  # base rows tied, and the new rows drawn once for both


def test_new_rows_follow_init_rule(lit_dir):
    path, base_state = lit_dir
    model, config = ckpt.load_base(path, seed=0, post_adapter=True)
    again, _ = ckpt.load_base(path, seed=0, post_adapter=True)
    other, _ = ckpt.load_base(path, seed=1, post_adapter=True)
    for name, rows in (
        ("transformer.wte.weight", model.transformer.wte.weight[512:]),
        ("lm_head.weight", model.lm_head.weight[512:]),
        ("lm_head.weight", model.transformer.post_adapter_audio_lm_head.weight),
    ):
        base = base_state[name][: config.vocab_size]  # real tokens only, not padding rows
        tol = 6 * base.std(0) / rows.size(0) ** 0.5
        assert torch.all((rows.mean(0) - base.mean(0)).abs() < tol), name
        assert torch.allclose(rows.std(0), base.std(0), rtol=0.05), name
    assert torch.equal(model.transformer.wte.weight, again.transformer.wte.weight)  # seeded
    assert not torch.equal(model.transformer.wte.weight[512:], other.transformer.wte.weight[512:])
    assert not torch.equal(model.transformer.wte.weight[512:], model.lm_head.weight[512:])  # untied base


def test_tokenizer_larger_than_vocab_is_rejected(tmp_path, tokenizer_dir):
    from tokenizers import Tokenizer

    n_tokens = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    assert n_tokens > 128
    small = tmp_path / "small"
    make_lit_dir(small, tiny_base(n_layer=1, padded_vocab_size=128, vocab_size=128), tokenizer_dir)
    with pytest.raises(ValueError) as err:
        ckpt.load_base(small)
    assert str(n_tokens) in str(err.value) and "128" in str(err.value) and str(small) in str(err.value)



def test_tokenizer_config_without_tokenizer_class_is_named(tmp_path, tokenizer_dir):
    import json
    import shutil

    bare = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, bare)
    (bare / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))  # valid for HF, not litgpt
    with pytest.raises(ValueError, match="tokenizer_config.json: no 'tokenizer_class' field"):
        ckpt.validate_tokenizer(bare, 1024)

# ---- our format -------------------------------------------------------------------------------
@pytest.mark.parametrize("post_adapter", [False, True])
def test_save_load_roundtrip(tmp_path, tokenizer_dir, post_adapter):
    model = random_omni(post_adapter=post_adapter, asr_adapter="mlp")
    out = ckpt.save_omni(model, tmp_path / "ckpt", tokenizer_dir)
    files = {p.name for p in out.iterdir()}
    assert files == {"lit_model.pth", "model_config.yaml", "tokenizer.json", "tokenizer_config.json"}
    loaded, config = ckpt.load_omni(out)
    assert config == model.config
    assert_same_state(model.state_dict(), loaded.state_dict())
    assert_same_outputs(model, loaded.eval())


def test_load_omni_keeps_saved_dtype(tmp_path, tokenizer_dir):
    model = random_omni().to(torch.bfloat16)
    loaded, _ = ckpt.load_omni(ckpt.save_omni(model, tmp_path / "bf16", tokenizer_dir))
    assert loaded.transformer.wte.weight.dtype == torch.bfloat16 and loaded.cos.dtype == torch.bfloat16
    assert_same_state(model.state_dict(), loaded.state_dict())
    assert_same_outputs(model, loaded.eval())


def test_atomic_save_keeps_existing_checkpoint(tmp_path, tokenizer_dir, monkeypatch):
    target = tmp_path / "ckpt"
    first = random_omni(seed=0)
    ckpt.save_omni(first, target, tokenizer_dir)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def fail_midway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_omni(random_omni(seed=1), target, tokenizer_dir)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind
    monkeypatch.undo()
    ckpt.save_omni(random_omni(seed=1), target, tokenizer_dir)  # replacing a complete one works
    assert not torch.equal(ckpt.load_omni(target)[0].lm_head.weight, first.lm_head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


# ---- Mini-Omni's format -----------------------------------------------------------------------
@pytest.mark.parametrize("asr_adapter", ["mlp", "llamamlp"])
@pytest.mark.parametrize("post_adapter", [False, True])
def test_mini_omni_export_import_roundtrip(tmp_path, tokenizer_dir, post_adapter, asr_adapter):
    model = random_omni(post_adapter=post_adapter, asr_adapter=asr_adapter)
    out = ckpt.export_mini_omni(model, tmp_path / "mini", tokenizer_dir)

    values = yaml.safe_load((out / "model_config.yaml").read_text())
    assert set(values) <= MINI_OMNI_CONFIG_FIELDS  # Mini-Omni's Config(**yaml) would crash otherwise
    assert values["add_qkv_bias"] is True and values["post_adapter"] is post_adapter
    state = torch.load(out / "lit_model.pth", weights_only=True)
    assert not any(".attn.qkv." in k for k in state)
    n_attn = 2 * (2 + (6 if post_adapter else 0))  # weight + bias per block, backbone + post-adapter
    assert sum(".attn.attn." in k for k in state) == n_attn

    loaded, config = ckpt.import_mini_omni(out)
    assert config == model.config
    assert_same_state(model.state_dict(), loaded.state_dict())
    assert_same_outputs(model, loaded.eval())
    assert ckpt.detect_format(out) == "mini-omni"


def test_qkv_is_interleaved_per_query_group():
    config = OmniConfig.from_base(tiny_base())  # n_head=4, n_query_groups=2, head_size=16
    hs = config.head_size
    heads = {name: torch.full((hs, 3), float(i)) for i, name in enumerate("q0 q1 q2 q3 k0 k1 v0 v1".split())}
    qkv = torch.cat([heads[n] for n in "q0 q1 q2 q3 k0 k1 v0 v1".split()])  # litgpt 0.5: all q, all k, all v
    bias = qkv[:, 0].clone()
    out = ckpt.to_mini_omni_state_dict(
        {"transformer.h.0.attn.qkv.weight": qkv, "transformer.h.0.attn.qkv.bias": bias, "lm_head.weight": bias},
        config,
    )
    # litgpt 0.4: group 0 = q0 q1 k0 v0, group 1 = q2 q3 k1 v1
    expected = torch.cat([heads[n] for n in "q0 q1 k0 v0 q2 q3 k1 v1".split()])
    assert set(out) == {"transformer.h.0.attn.attn.weight", "transformer.h.0.attn.attn.bias", "lm_head.weight"}
    assert torch.equal(out["transformer.h.0.attn.attn.weight"], expected)
    assert torch.equal(out["transformer.h.0.attn.attn.bias"], expected[:, 0])
    back = ckpt.from_mini_omni_state_dict(out, config)
    assert torch.equal(back["transformer.h.0.attn.qkv.weight"], qkv)


@pytest.mark.parametrize(
    "feature", [dict(norm_qk=True), dict(sliding_window_size=16), dict(post_attention_norm=True),
                dict(rope_adjustments=dict(factor=2.0)), dict(final_logit_softcapping=30.0)]
)  # fmt: skip
def test_export_refuses_what_litgpt_04_cannot_express(tmp_path, tokenizer_dir, feature):
    config = OmniConfig.from_base(tiny_base(**feature), whisper_adapter_dim=32)
    with pytest.raises(ValueError, match=next(iter(feature))):
        ckpt.export_mini_omni(OmniGPT(config), tmp_path / "mini", tokenizer_dir)
    assert not (tmp_path / "mini").exists()


def test_import_rejects_unknown_fields():
    values = ckpt.mini_omni_config(OmniConfig.from_base(tiny_base()))
    assert ckpt.config_from_mini_omni(values) == OmniConfig.from_base(tiny_base())
    with pytest.raises(ValueError, match="attn_bias"):
        ckpt.config_from_mini_omni({**values, "attn_bias": True})


# ---- omni-export ------------------------------------------------------------------------------
def test_cli_exports_and_resaves(tmp_path, tokenizer_dir):
    model = random_omni(post_adapter=True)
    src = ckpt.save_omni(model, tmp_path / "ours", tokenizer_dir)
    export_main(["--format", "mini-omni", str(src), str(tmp_path / "mini")])
    export_main(["--format", "omni", str(tmp_path / "mini"), str(tmp_path / "back")])  # imports Mini-Omni's
    assert ckpt.detect_format(tmp_path / "back") == "omni"
    assert_same_state(model.state_dict(), ckpt.load_omni(tmp_path / "back")[0].state_dict())


def test_mini_omni_export_is_sized_by_the_trained_context(tmp_path, tokenizer_dir):
    """Mini-Omni sizes its KV cache and mask by block_size: the export carries the context the model
    was trained at (at least Mini-Omni's 2048), not the base LLM's 32768."""
    model = random_omni()
    model.config.block_size = 32768  # what litgpt's Qwen2 presets say
    bundle = ckpt.ModelBundle(model, None, tokenizer_dir, "tiny.pt", "snac", trained_context=4096)
    ours = bundle.save(tmp_path / "ours")
    assert ckpt.audio_sources(ours)["trained_context"] == 4096

    def exported(*options, src=ours):
        export_main(["--format", "mini-omni", *options, str(src), str(tmp_path / "mini")])
        return yaml.safe_load((tmp_path / "mini" / "model_config.yaml").read_text())["block_size"]

    assert exported() == 4096
    assert exported("--block-size", "3000") == 3000
    bare = ckpt.save_omni(model, tmp_path / "bare", tokenizer_dir)  # nothing recorded: Mini-Omni's 2048
    assert exported(src=bare) == 2048
    assert ckpt.load_omni(ours)[1].block_size == 32768  # our format keeps the model's own
    with pytest.raises(SystemExit):
        export_main(["--format", "omni", "--block-size", "3000", str(ours), str(tmp_path / "x")])


def test_cli_missing_dir_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        export_main(["--format", "mini-omni", str(tmp_path / "nope"), str(tmp_path / "out")])
    message = str(exit_.value.code)
    assert "nope" in message and "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        export_main(["--format", "omni", str(tmp_path / "empty"), str(tmp_path / "out")])
    assert "model_config.yaml" in str(exit_.value.code)
    assert not (tmp_path / "out").exists()
