"""data_prep/train_demo_snac.py's pieces (its quantizer is SNAC's own, sealed rows are never chosen, its mel
loss), a --tiny run of it end to end, and eval_demo_snac.py's round-trip CER table."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from tiny import SNAC_TINY

from omni_train.audio import SnacCodec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
import eval_demo_snac
import train_demo_snac

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)"
)


@pytest.fixture
def codec():
    torch.manual_seed(0)
    return SnacCodec.from_config(SNAC_TINY)


def test_quantize_over_all_rows_is_snacs_own_forward(codec):
    z = codec.model.encoder(torch.randn(2, 1, 256))  # (B, latent_dim, T)
    z_q, commit, codebook_loss, codes, latents = train_demo_snac.quantize(codec.model, z, n_codes=4096)
    want_z_q, want_codes = codec.model.quantizer(z)
    torch.testing.assert_close(z_q, want_z_q)
    assert all(torch.equal(a, b) for a, b in zip(codes, want_codes))
    assert commit.item() > 0 and codebook_loss.item() == pytest.approx(commit.item())  # the same distance, two ways
    assert [lat.shape for lat in latents] == [(2 * c.size(1), 4) for c in codes]


def test_sealed_codebooks_only_give_the_first_rows(codec):
    torch.manual_seed(1)
    with torch.no_grad():
        for q in codec.model.quantizer.quantizers:  # spread the rows, or a random codebook hides the effect
            q.codebook.weight.normal_()
    audio = torch.randn(4000)
    before = codec.encode(audio)  # (N, 7)
    assert int(before.max()) >= 16
    train_demo_snac.seal_codebooks(codec.model, 16)
    after = codec.encode(audio)
    assert int(after.max()) < 16
    z = codec.model.encoder(codec.model.preprocess(audio.reshape(1, 1, -1)))
    assert torch.equal(train_demo_snac.quantize(codec.model, z, 16)[3][0][0], after[:, 0])  # coarse codes agree


def test_mel_loss_ignores_what_is_quieter_than_its_floor():
    loss = train_demo_snac.MultiScaleMelLoss(24000, floor_db=-60.0)
    silence = torch.zeros(1, 4800)
    hiss = 10 ** (-80 / 20) * torch.randn(1, 4800)
    speech_level = 0.1 * torch.randn(1, 4800)
    assert loss(silence, silence).item() == 0.0
    assert loss(hiss, silence).item() < 0.01  # under the floor: silence
    assert loss(speech_level, silence).item() > 1.0


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    """``train_demo_snac.py --tiny``: espeak-ng speech, 3 steps of training, the codec written and read back."""
    out = tmp_path_factory.mktemp("snac")
    train_demo_snac.main(["--tiny", "--out", str(out), "--workers", "1"])
    return out


@needs_espeak
def test_tiny_run_writes_a_codec_in_the_demo_frame_layout(tiny_trained):
    codec = SnacCodec.from_pretrained(tiny_trained)
    assert codec.model.hop_length == 512 and codec.model.vq_strides == [4, 2, 1]
    assert codec.config == {**train_demo_snac.TINY_SNAC, "encoder_dim": 2, "decoder_dim": 16}
    codes = codec.encode(torch.randn(24000) * 0.1)  # (N, 7): one coarse frame per 2048 samples
    assert codes.shape == (12, 7)
    assert int(codes.max()) < 16  # --tiny keeps 16 rows a codebook; the rest are sealed
    assert codec.decode(codes).shape == (12 * 2048,)


@needs_espeak
def test_init_continues_training_the_given_codec(tiny_trained, tmp_path):
    """--init starts from the codec's weights (its codebooks too), not from a fresh random codec."""
    train_demo_snac.main(["--tiny", "--init", str(tiny_trained), "--out", str(tmp_path / "more"), "--workers", "1"])
    train_demo_snac.main(["--tiny", "--seed", "1", "--out", str(tmp_path / "fresh"), "--workers", "1"])
    start, more, fresh = (SnacCodec.from_pretrained(d).model.state_dict()
                          for d in (tiny_trained, tmp_path / "more", tmp_path / "fresh"))
    assert SnacCodec.from_pretrained(tmp_path / "more").config == SnacCodec.from_pretrained(tiny_trained).config

    def distance(a, b):
        return sum((a[k].float() - b[k].float()).norm() for k in a) / sum(a[k].float().norm() for k in a)

    assert 0 < distance(more, start) < 0.5 * distance(fresh, start)


@needs_espeak
def test_decoder_only_keeps_every_code_the_codec_made(tiny_trained, tmp_path):
    """--decoder-only moves the decoder alone: the encoder and codebooks stay bit for bit, so codes made
    with the codec before (the demo data's) are still the new codec's codes for that speech."""
    out = tmp_path / "decoder"
    train_demo_snac.main(["--tiny", "--init", str(tiny_trained), "--decoder-only", "--out", str(out), "--workers", "1"])
    before, after = SnacCodec.from_pretrained(tiny_trained), SnacCodec.from_pretrained(out)
    old, new = before.model.state_dict(), after.model.state_dict()
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith("decoder.") for k in moved), sorted(moved)[:5]
    speech = torch.randn(24000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.equal(before.encode(speech), after.encode(speech))
    with pytest.raises(SystemExit):  # nothing to keep without a trained codec
        train_demo_snac.main(["--tiny", "--decoder-only", "--out", str(tmp_path / "x")])


@needs_espeak
def test_round_trip_cer_table(tiny_trained, capsys):
    """The demo recogniser reads the held-out originals, and not a 3-step codec's round trips."""
    table = eval_demo_snac.main(["--snac", str(tiny_trained), "--limit", "2"])
    assert set(table) == {"asr/heldout (8 voices)", "assistant voice"}
    for original, round_trip in table.values():
        assert original < 20
        assert round_trip > 50
    assert "round trip:" in capsys.readouterr().out


def test_spectral_peaks_are_a_pitchs_harmonics():
    t = torch.arange(16000) / 16000
    buzz = sum(torch.sin(2 * torch.pi * 110 * k * t) / k for k in range(1, 30))  # 110 Hz, harmonics fading
    peaks = eval_demo_snac.spectral_peaks([buzz], 16000, n=5)
    assert len(peaks) == 5
    assert all(abs(p - want) < 4 for p, want in zip(peaks, [110, 220, 330, 440, 550]))  # 3.9 Hz bins


def buzz(f0: float, n: int = 8, length: int = 4096) -> torch.Tensor:
    """``(n, 1, length)`` 24 kHz voiced buzz: harmonics of ``f0`` at random phases."""
    t = torch.arange(length) / 24000
    phase = torch.rand(n, 1, 1) * 2 * torch.pi
    x = sum(torch.sin(2 * torch.pi * f0 * k * t + k * phase) / k for k in range(1, 20))
    return 0.3 * x / x.abs().amax(-1, keepdim=True)


def test_period_discriminator_tells_a_buzz_at_the_frame_rate_from_the_voices_pitch():
    """What it is there for: the decoder's harmonics of 24000 / 512 Hz in place of the voice's ~109 Hz."""
    torch.manual_seed(0)
    disc = train_demo_snac.PeriodDiscriminator()
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(60):
        loss = train_demo_snac.discriminator_loss(disc, buzz(109), buzz(46.875))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        real = sum(f[-1].mean() for f in disc(buzz(109))) / len(disc.periods)
        fake = sum(f[-1].mean() for f in disc(buzz(46.875))) / len(disc.periods)
    assert real > 0.6 and fake < 0.35  # least squares: real towards 1, fake towards 0 (both 0.5 untrained)


def test_generator_losses_feature_matching_is_zero_for_the_real_audio_and_flows_into_the_output():
    torch.manual_seed(0)
    disc = train_demo_snac.PeriodDiscriminator()
    x = torch.randn(2, 1, 2048)
    adv, fm = train_demo_snac.generator_losses(disc, x, x.clone())
    assert fm.item() == 0.0
    y = torch.randn(2, 1, 2048, requires_grad=True)
    adv, fm = train_demo_snac.generator_losses(disc, x, y)
    (adv + fm).backward()
    assert fm.item() > 0 and y.grad.abs().sum() > 0
    d_loss = train_demo_snac.discriminator_loss(disc, x, y)
    y.grad = None
    d_loss.backward()
    assert y.grad is None  # the discriminator's step does not train the codec
