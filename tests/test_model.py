from dataclasses import asdict

import pytest
import torch
from litgpt.model import GPT
from tiny import FAMILIES, tiny_omni

from omni_train.model import OmniConfig, OmniGPT


def make_inputs(cfg: OmniConfig, B: int = 2, T: int = 12, frames=(3, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.padded_vocab_size, (B, 8, T), generator=g)
    feats = torch.randn(B, max(frames), cfg.whisper_adapter_dim, generator=g)
    lengths = torch.tensor(frames)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(frames):
        mask[b, 1 : 1 + n] = True  # prompt layout: input_a, then the frames
    return ids, feats, lengths, mask


def build(family="qwen2", seed=0, **omni) -> OmniGPT:
    torch.manual_seed(seed)
    model = OmniGPT(tiny_omni(family, **omni))
    model.apply(model._init_weights)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("post_adapter", [False, True])
def test_forward_backward_every_family(family, post_adapter):
    model = build(family, post_adapter=post_adapter, asr_adapter="mlp" if family == "phi" else "llamamlp")
    cfg = model.config
    ids, feats, lengths, mask = make_inputs(cfg)
    text, audio = model(ids, feats, lengths, mask)
    assert text.shape == (2, 12, cfg.text_vocab_size)
    assert audio.shape == (2, 7, 12, cfg.audio_vocab_size)
    (text.logsumexp(-1).mean() + audio.logsumexp(-1).mean()).backward()
    for name, p in model.named_parameters():
        if post_adapter and name == "lm_head.weight":
            continue  # its audio rows are unused with the post-adapter; the text rows get gradients below
        assert p.grad is not None, name
    assert model.whisper_adapter is not None and any(p.grad.abs().sum() > 0 for p in model.whisper_adapter.parameters())


def test_state_dict_uses_mini_omni_names():
    names = set(build(post_adapter=True).state_dict())
    assert {"whisper_adapter.fc_1.weight", "whisper_adapter.fc_2.weight", "whisper_adapter.proj.weight"} <= names
    assert {"transformer.post_adapter_audio_ln.weight", "transformer.post_adapter_audio_lm_head.weight"} <= names
    assert "transformer.post_adapter.1.attn.qkv.weight" in names
    assert "whisper_adapter.weight" in set(build(asr_adapter="mlp").state_dict())


@pytest.mark.parametrize("post_adapter", [False, True])
def test_heads_are_the_right_slices(post_adapter):
    model = build(post_adapter=post_adapter)
    cfg = model.config
    ids, feats, lengths, mask = make_inputs(cfg)
    text, audio = model(ids, feats, lengths, mask)
    h_text, h_audio = model.hidden_states(ids, feats, lengths, mask)
    full = model.lm_head(h_text)  # what Mini-Omni computes before slicing
    torch.testing.assert_close(text, full[..., : cfg.text_vocab_size])
    if post_adapter:
        full_audio = model.transformer.post_adapter_audio_lm_head(h_audio)
        starts = [i * cfg.audio_vocab_size for i in range(7)]
    else:
        full_audio = full
        starts = [cfg.text_vocab_size + i * cfg.audio_vocab_size for i in range(7)]
    for i, s in enumerate(starts):
        torch.testing.assert_close(audio[:, i], full_audio[..., s : s + cfg.audio_vocab_size])


@pytest.mark.parametrize("family", ["qwen2", "phi"])
def test_text_path_is_litgpts_gpt(family):
    """With the same token in all 8 layers the input is that token's embedding: OmniGPT is then litgpt's GPT."""
    model = build(family).eval()
    gpt = GPT(model.config).eval()
    gpt.load_state_dict(model.state_dict(), strict=False)
    tokens = torch.randint(0, model.config.text_vocab_size, (2, 10))
    text, _ = model(tokens[:, None, :].expand(2, 8, 10), with_audio=False)
    torch.testing.assert_close(text, gpt(tokens)[..., : model.config.text_vocab_size], atol=1e-5, rtol=1e-5)


def test_whisper_frames_land_only_at_masked_positions_of_audio_layers():
    model = build().eval()
    cfg = model.config
    ids, feats, lengths, mask = make_inputs(cfg)
    base = model.embed(ids, feats, lengths, mask)
    # frames beyond a row's length are batch padding: changing them changes nothing
    feats2 = feats.clone()
    feats2[0, 3:] = 100.0
    torch.testing.assert_close(model.embed(ids, feats2, lengths, mask), base)
    # the audio layers' ids at audio positions are replaced; the text layer's are not
    ids2 = ids.clone()
    ids2[:, :7][mask[:, None, :].expand(-1, 7, -1)] = 0
    torch.testing.assert_close(model.embed(ids2, feats, lengths, mask), base)
    ids3 = ids.clone()
    ids3[:, 7][mask] = 0
    assert not torch.allclose(model.embed(ids3, feats, lengths, mask), base)
    # and the value is (7 * adapted frame + text embedding) / 8
    adapted = model.whisper_adapter(feats[1, 2])
    expected = (7 * adapted + model.transformer.wte(ids[1, 7, 3])) / 8
    torch.testing.assert_close(base[1, 3], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("post_adapter", [False, True])
def test_cached_decode_matches_uncached_forward(family, post_adapter):
    model = build(family, post_adapter=post_adapter).eval()
    cfg = model.config
    ids, feats, lengths, mask = make_inputs(cfg, B=2, T=12, frames=(3, 3))
    prompt = 6  # positions 0..5 hold the prompt (incl. frames at 1..3); 6..11 are decoded one at a time
    with torch.no_grad():
        text_full, audio_full = model(ids, feats, lengths, mask)
        model.max_seq_length = 16
        model.set_kv_cache(batch_size=2)
        pos = torch.arange(prompt)
        text, audio = model(ids[..., :prompt], feats, lengths, mask[:, :prompt], input_pos=pos)
        outs_t, outs_a = [text], [audio]
        for t in range(prompt, 12):
            text, audio = model(ids[..., t : t + 1], input_pos=torch.tensor([t]))
            outs_t.append(text)
            outs_a.append(audio)
    torch.testing.assert_close(torch.cat(outs_t, 1), text_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(outs_a, 2), audio_full, atol=1e-4, rtol=1e-4)
    model.clear_kv_cache()
    assert all(b.attn.kv_cache is None for b in model._all_blocks())


def test_config_rejects_inconsistent_vocab():
    cfg = tiny_omni()
    with pytest.raises(ValueError, match="inconsistent vocabulary"):
        OmniConfig(**{**asdict(cfg), "padded_vocab_size": cfg.padded_vocab_size + 1})
