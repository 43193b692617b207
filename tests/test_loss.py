import weakref

import pytest
import torch
import torch.nn.functional as F
from tiny import speech, tiny_omni

import omni_train.loss as loss_module
from omni_train.data.collator import OmniCollator
from omni_train.data.samples import Encoded
from omni_train.loss import Segment, head_cross_entropy, omni_loss
from omni_train.model import OmniGPT
from omni_train.tasks import Task
from omni_train.vocab import IGNORE_INDEX


def linear_cross_entropy(h, weight, bias, targets, chunk_size=2048, softcap=None):
    """The chunked loss of one whole head over every row of `h`: (mean, per-position losses, argmax right)."""
    segment = Segment(h, torch.arange(h.size(0)), targets, 0, weight.size(0))
    total, [(_, losses, correct)] = head_cross_entropy(weight, bias, [segment], chunk_size, softcap)
    return total, losses, correct


def test_chunked_matches_full_logits_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    mean, losses, correct = linear_cross_entropy(h, w, b, t, chunk_size=8)
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction="none")
    torch.testing.assert_close(losses, ref.detach())
    torch.testing.assert_close(mean, ref.mean())
    assert torch.equal(correct, F.linear(h, w, b).argmax(-1) == t)
    grads = torch.autograd.grad(mean, (h, w, b))
    ref_grads = torch.autograd.grad(ref.mean(), (h, w, b))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def batch_for(vocab):
    frames = torch.randint(0, 4096, (3, 7))
    samples = [
        Encoded(Task.A1A2, answer_ids=[5, 6], audio=speech(2), audio_frames=2, answer_frames=frames),
        Encoded(Task.T1T2, question_ids=[1, 2, 3], answer_ids=[7, 8, 9, 10]),
        Encoded(Task.A1T1, answer_ids=[3], audio=speech(3), audio_frames=3),
    ]
    return OmniCollator(vocab)(samples)


@pytest.mark.parametrize("post_adapter", [False, True])
def test_omni_loss_equals_naive_loss_over_full_logits(post_adapter):
    torch.manual_seed(0)
    model = OmniGPT(tiny_omni(post_adapter=post_adapter))
    cfg = model.config
    batch = batch_for(cfg.vocab)
    feats = torch.randn(2, 3, cfg.whisper_adapter_dim)
    args = (batch.input_ids, feats, batch.audio_lengths, batch.audio_mask)
    out = omni_loss(model, *model.hidden_states(*args), batch.targets, batch.task_ids, audio_weight=0.5, chunk_size=4)

    text, audio = model(*args)
    t = batch.targets
    naive_text = F.cross_entropy(text.transpose(1, 2), t[:, 7], ignore_index=IGNORE_INDEX)
    naive_audio = []
    for i in range(7):
        local = torch.where(t[:, i] == IGNORE_INDEX, IGNORE_INDEX, t[:, i] - cfg.vocab.audio_offset(i))
        naive_audio.append(F.cross_entropy(audio[:, i].transpose(1, 2), local, ignore_index=IGNORE_INDEX))
    naive = naive_text + 0.5 * torch.stack(naive_audio).mean()
    torch.testing.assert_close(out.loss, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.metrics["loss/text"], naive_text.detach(), rtol=1e-5, atol=1e-6)
    assert set(out.metrics) >= {"loss_A1A2/text", "loss_T1T2/text", "loss_A1T1/text", "loss_A1A2/audio"}
    assert "loss_T1T2/audio" not in out.metrics  # text-only answers train no audio
    out.loss.backward()
    assert model.whisper_adapter.proj.weight.grad.abs().sum() > 0


def test_text_only_batch_has_no_audio_term():
    model = OmniGPT(tiny_omni())
    samples = [Encoded(Task.T1T2, question_ids=[1], answer_ids=[2, 3])]
    batch = OmniCollator(model.config.vocab)(samples)
    h_text, h_audio = model.hidden_states(batch.input_ids)
    out = omni_loss(model, h_text, h_audio, batch.targets, batch.task_ids)
    torch.testing.assert_close(out.loss, out.metrics["loss/text"])
    assert not any(k.startswith("loss/audio") for k in out.metrics)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_row_ranges_of_one_head_match_sliced_logits_and_gradients(softcap):
    """Several layers reading one head (lm_head's text and audio slices) share one weight gradient."""
    torch.manual_seed(0)
    w = torch.randn(60, 16, requires_grad=True)
    b = torch.randn(60, requires_grad=True)
    hs = [torch.randn(k, 16, requires_grad=True) for k in (9, 0, 5)]
    ranges = [(0, 40), (40, 50), (50, 60)]
    ts = [torch.randint(0, stop - start, (h.size(0),)) for h, (start, stop) in zip(hs, ranges)]
    segments = [Segment(h, torch.arange(h.size(0)), t, *r, weight) for h, t, r, weight in zip(hs, ts, ranges, (1, 3, 0.25))]
    total, out = head_cross_entropy(w, b, segments, chunk_size=4, softcap=softcap)
    assert len(out) == 2  # the empty segment is left out
    refs = []
    for h, t, (start, stop) in zip(hs, ts, ranges):
        if h.size(0):
            z = F.linear(h, w[start:stop], b[start:stop])
            refs.append(F.cross_entropy(torch.tanh(z / softcap) * softcap if softcap else z, t))
    for (mean, _, _), ref in zip(out, refs):
        torch.testing.assert_close(mean, ref.detach())
    # weighted as omni_loss weighs layers; gradients must follow each segment's own weight
    torch.testing.assert_close(total, refs[0] + 0.25 * refs[1])
    grads = torch.autograd.grad(total, (w, b, hs[0], hs[2]))
    for g, r in zip(grads, torch.autograd.grad(refs[0] + 0.25 * refs[1], (w, b, hs[0], hs[2]))):
        torch.testing.assert_close(g, r)


def test_overlapping_row_ranges_are_refused():
    w, h, t = torch.randn(10, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="overlap"):
        head_cross_entropy(w, None, [Segment(h, torch.arange(3), t, 0, 6), Segment(h, torch.arange(3), t, 5, 10)])


def test_loss_under_bf16_autocast_runs_its_matmuls_in_bf16():
    torch.manual_seed(0)
    w = torch.randn(50, 16, requires_grad=True)
    h = torch.randn(12, 16, requires_grad=True)
    t = torch.randint(0, 50, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, losses, _ = linear_cross_entropy(h, w, None, t, chunk_size=5)
    ref = F.cross_entropy(F.linear(h.bfloat16(), w.bfloat16()).float(), t, reduction="none")
    torch.testing.assert_close(losses, ref)
    mean.backward()
    assert w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    ref_grad = torch.autograd.grad(F.cross_entropy(h @ w.T, t), w)[0]
    torch.testing.assert_close(w.grad, ref_grad, rtol=0.05, atol=0.01)


@pytest.mark.parametrize("post_adapter", [False, True])
def test_omni_loss_gradients_equal_the_naive_loss_gradients(post_adapter):
    torch.manual_seed(0)
    model = OmniGPT(tiny_omni(post_adapter=post_adapter))
    cfg = model.config
    batch = batch_for(cfg.vocab)
    args = (batch.input_ids, torch.randn(2, 3, cfg.whisper_adapter_dim), batch.audio_lengths, batch.audio_mask)
    t = batch.targets
    out = omni_loss(model, *model.hidden_states(*args), t, batch.task_ids, text_weight=2.0, audio_weight=0.5, chunk_size=3)
    text, audio = model(*args)
    naive = 2.0 * F.cross_entropy(text.transpose(1, 2), t[:, 7], ignore_index=IGNORE_INDEX)
    local = [torch.where(t[:, i] == IGNORE_INDEX, IGNORE_INDEX, t[:, i] - cfg.vocab.audio_offset(i)) for i in range(7)]
    audio_ce = [F.cross_entropy(audio[:, i].transpose(1, 2), local[i], ignore_index=IGNORE_INDEX) for i in range(7)]
    naive = naive + 0.5 * torch.stack(audio_ce).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    for g, r in zip(torch.autograd.grad(out.loss, params, allow_unused=True), torch.autograd.grad(naive, params)):
        torch.testing.assert_close(torch.zeros_like(r) if g is None else g, r, rtol=1e-4, atol=1e-6)


def test_no_gradient_work_without_grad_mode(monkeypatch):
    """Validation runs under no_grad; the loss must not build its gradients there."""
    w, h, t = torch.randn(10, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True), torch.zeros(3).long()
    calls = []
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        mean, _, _ = linear_cross_entropy(h, w, None, t)
    assert not calls and not mean.requires_grad
    linear_cross_entropy(h, w, None, t)
    assert calls  # with grad mode on, the weight gradient is made in the forward


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunks_cut_by_logits_hold_one_chunk_at_a_time(monkeypatch, softcap):
    """A chunk holds at most MAX_CHUNK_LOGITS logits (half the rows beside a soft cap's tanh), and
    the last chunk's logits are gone before the next chunk's are made."""
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    z = F.linear(h, w)
    ref = F.cross_entropy(torch.tanh(z / softcap) * softcap if softcap else z, t)
    ref_grads = torch.autograd.grad(ref, (h, w))

    monkeypatch.setattr(loss_module, "MAX_CHUNK_LOGITS", 7 * 50)  # 7 positions a chunk, 3 beside a tanh
    made, alive_at_each = [], []
    linear = F.linear

    def recording_linear(*args):
        alive_at_each.append(sum(out() is not None for out in made))
        out = linear(*args)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(F, "linear", recording_linear)
    mean, _, _ = linear_cross_entropy(h, w, None, t, chunk_size=2048, softcap=softcap)
    monkeypatch.undo()
    rows = 3 if softcap else 7
    assert len(made) == -(-37 // rows)  # ceil: the last chunk is the remainder
    assert not any(alive_at_each)
    torch.testing.assert_close(mean, ref)
    for g, r in zip(torch.autograd.grad(mean, (h, w)), ref_grads):
        torch.testing.assert_close(g, r)


def test_layers_reading_one_hidden_tensor_share_its_gradient():
    """Segments index the rows they score in one (B, T, C) tensor, overlapping as layers do."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 16, requires_grad=True)
    w = torch.randn(30, 16, requires_grad=True)
    rows = [torch.tensor([0, 3, 4, 7, 9]), torch.tensor([1, 3, 8])]
    ranges = [(0, 20), (20, 30)]
    ts = [torch.randint(0, stop - start, (r.numel(),)) for r, (start, stop) in zip(rows, ranges)]
    segments = [Segment(h, r, t, *rng, weight) for r, t, rng, weight in zip(rows, ts, ranges, (2.0, 0.5))]
    total, _ = head_cross_entropy(w, None, segments, chunk_size=2)
    flat = h.flatten(0, 1)
    ref = sum(wt * F.cross_entropy(F.linear(flat[r], w[a:b]), t) for r, t, (a, b), wt in zip(rows, ts, ranges, (2.0, 0.5)))
    torch.testing.assert_close(total, ref)
    grads = torch.autograd.grad(total, (h, w))
    for g, r in zip(grads, torch.autograd.grad(ref, (h, w))):
        torch.testing.assert_close(g, r)
    assert grads[0][1, 0].abs().sum() == 0  # row 5 is in no segment
