"""data_prep/train_demo_snac.py's pieces: its quantizer is SNAC's own, sealed rows are never chosen, its mel loss."""

import sys
from pathlib import Path

import pytest
import torch

from omni_train.audio import SnacCodec
from tests.tiny import SNAC_TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
import train_demo_snac  # noqa: E402


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
