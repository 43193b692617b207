"""Per-layer next-token loss without materialising the 181k-wide logits.

Only trained positions (answers; never prompts or batch padding) reach a head, and they do so in
chunks whose logits are recomputed in the backward pass instead of stored: peak memory is one
chunk of logits, not ``B x T x vocab`` floats for each of the 8 layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omni_train.data.collator import IGNORE_INDEX, TASKS
from omni_train.model import OmniGPT
from omni_train.vocab import N_AUDIO_LAYERS, TEXT_LAYER

MAX_CHUNK_LOGITS = 2**26  # logits one chunk may hold (256 MB in fp32): 441 positions of Qwen2's 152k text rows


def _rows_per_chunk(chunk_size: int, vocab: int) -> int:
    return max(1, min(chunk_size, MAX_CHUNK_LOGITS // max(1, vocab)))


def _logits(h, weight, bias, softcap):
    """fp32 logits of one chunk, ``(chunk, V)``, and tanh of the soft cap (for its derivative)."""
    z = F.linear(h, weight, bias).float()
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _cast(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to(dtype)


class _HeadCrossEntropy(torch.autograd.Function):
    """Cross-entropy of row ranges of one head, chunk by chunk, logits recomputed in backward.

    One call serves every layer that reads the same head (the text and 7 audio slices of
    `lm_head`), so the backward accumulates one weight gradient in place instead of autograd
    adding a full-size gradient per slice. Nothing vocabulary-wide is kept between forward and
    backward, and the backward reuses each chunk's logits buffer for their gradient.
    """

    @staticmethod
    def forward(ctx, weight, bias, ranges, chunk_size, softcap, *tensors):
        n = len(ranges)
        hs, targets = tensors[:n], tensors[n:]
        device = hs[0].device.type
        # the matmul dtype: autocast's (bf16-mixed) or the head's own; the backward uses the same
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        ctx.ranges, ctx.chunk_size, ctx.softcap, ctx.dtype = ranges, chunk_size, softcap, dtype
        ctx.set_materialize_grads(False)
        losses, correct = [], []
        for h, t, (start, stop) in zip(hs, targets, ranges):
            w, b = _cast(weight[start:stop], dtype), _cast(None if bias is None else bias[start:stop], dtype)
            loss = torch.empty(h.size(0), dtype=torch.float32, device=h.device)
            ok = torch.empty(h.size(0), dtype=torch.bool, device=h.device)
            step = _rows_per_chunk(chunk_size, stop - start)
            for i in range(0, h.size(0), step):
                z, _ = _logits(h[i : i + step].to(dtype), w, b, softcap)  # (chunk, V)
                tz = t[i : i + step, None]
                loss[i : i + step] = torch.logsumexp(z, -1) - z.gather(1, tz).squeeze(1)
                ok[i : i + step] = z.argmax(-1) == tz.squeeze(1)
            losses.append(loss)
            correct.append(ok)
        ctx.save_for_backward(weight, bias, *hs, *targets)
        ctx.mark_non_differentiable(*correct)
        return (*losses, *correct)

    @staticmethod
    def backward(ctx, *grads):
        weight, bias, *tensors = ctx.saved_tensors
        n, dtype = len(ctx.ranges), ctx.dtype
        hs, targets, grads = tensors[:n], tensors[n:], grads[:n]
        need_w, need_b = ctx.needs_input_grad[0], bias is not None and ctx.needs_input_grad[1]
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        grad_hs = []
        for k, (h, t, g, (start, stop)) in enumerate(zip(hs, targets, grads, ctx.ranges)):
            need_h = ctx.needs_input_grad[5 + k]
            grad_h = torch.zeros_like(h) if need_h else None
            grad_hs.append(grad_h)
            if g is None or not (need_h or need_w or need_b):
                continue
            w, b = _cast(weight[start:stop], dtype), _cast(None if bias is None else bias[start:stop], dtype)
            step = _rows_per_chunk(ctx.chunk_size, stop - start)
            for i in range(0, h.size(0), step):
                part = slice(i, i + step)
                hp = h[part].to(dtype)
                z, tanh = _logits(hp, w, b, ctx.softcap)
                # d loss / d z = softmax(z) - onehot(t), computed in the logits' own buffer
                z = z.sub_(torch.logsumexp(z, -1, keepdim=True)).exp_()
                z[torch.arange(z.size(0), device=z.device), t[part]] -= 1
                z.mul_(g[part, None])
                if tanh is not None:
                    z.mul_(1 - tanh * tanh)  # through the soft cap
                if need_b:
                    grad_b[start:stop] += z.sum(0).to(grad_b.dtype)
                z = z.to(dtype)
                if need_h:
                    grad_h[part] = (z @ w).to(h.dtype)
                if need_w and grad_w.dtype == dtype:
                    grad_w[start:stop].addmm_(z.T, hp)  # in place: no (V, C) temporary
                elif need_w:
                    grad_w[start:stop] += z.T @ hp  # mixed precision: fp32 master weights
        return (grad_w, grad_b, None, None, None, *grad_hs, *[None] * n)


def head_cross_entropy(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    segments: list[tuple[torch.Tensor, torch.Tensor, int, int]],
    chunk_size: int = 2048,
    softcap: float | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cross-entropy of several row ranges of one head, each against its own hidden states.

    Args:
        weight: ``(V, C)`` the whole head; bias ``(V,)`` or None.
        segments: ``(h, targets, start, stop)``: ``(K, C)`` hidden states of trained positions,
            ``(K,)`` targets in ``[0, stop - start)``, scored against rows ``[start, stop)``.
        chunk_size: positions a chunk at most; a chunk also holds at most `MAX_CHUNK_LOGITS` logits.

    Returns:
        per segment: per-position losses ``(K,)`` (differentiable) and whether the argmax was right.
    """
    segments = [s for s in segments if s[0].size(0)] if segments else []
    if not segments:
        return []
    ranges = tuple((start, stop) for _, _, start, stop in segments)
    out = _HeadCrossEntropy.apply(
        weight, bias, ranges, chunk_size, softcap, *(s[0] for s in segments), *(s[1] for s in segments)
    )
    return list(zip(out[: len(segments)], out[len(segments) :]))


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_size: int = 2048,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``F.linear(h, weight, bias)`` against `targets`, chunk by chunk.

    Args:
        h: ``(K, C)`` hidden states of the trained positions.
        weight: ``(V, C)`` head rows; bias ``(V,)`` or None.
        targets: ``(K,)`` in ``[0, V)``.

    Returns:
        per-position losses ``(K,)`` (differentiable) and whether the argmax was right ``(K,)``.
    """
    if h.size(0) == 0:
        return h.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=h.device)
    return head_cross_entropy(weight, bias, [(h, targets, 0, weight.size(0))], chunk_size, softcap)[0]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what the optimizer sees
    metrics: dict[str, torch.Tensor]  # detached scalars: loss/acc per layer and per task


def omni_loss(
    model: OmniGPT,
    h_text: torch.Tensor,
    h_audio: torch.Tensor | None,
    targets: torch.Tensor,
    task_ids: torch.Tensor,
    text_weight: float = 1.0,
    audio_weight: float = 1.0,
    chunk_size: int = 2048,
) -> LossOutput:
    """``text_weight * text CE + audio_weight * mean over audio layers of their CE``.

    Each CE is a mean over that layer's trained positions; a layer with none contributes 0.

    Args:
        h_text, h_audio: ``(B, T, C)`` from `OmniGPT.hidden_states`.
        targets: ``(B, 8, T)`` with `IGNORE_INDEX` where no loss is taken.
        task_ids: ``(B,)`` index into `TASKS`, for per-task metrics.
    """
    softcap = model.config.final_logit_softcapping
    metrics: dict[str, torch.Tensor] = {}
    row_of_position = torch.arange(targets.size(0), device=targets.device)[:, None].expand(-1, targets.size(-1))
    with_audio = h_audio is not None and bool((targets[:, :N_AUDIO_LAYERS] != IGNORE_INDEX).any())
    layers = [TEXT_LAYER, *(range(N_AUDIO_LAYERS) if with_audio else ())]

    # the trained positions of each layer, grouped by the head they read (one call a head)
    heads: dict[int, tuple[torch.nn.Linear, list]] = {}
    tasks: dict[int, torch.Tensor] = {}
    for index in layers:
        mask = targets[:, index] != IGNORE_INDEX  # (B, T)
        head, start, stop = model.head_rows(index)
        h = h_text if index == TEXT_LAYER else h_audio
        offset = 0 if index == TEXT_LAYER else model.config.vocab.audio_offset(index)
        heads.setdefault(id(head), (head, []))[1].append((index, (h[mask], targets[:, index][mask] - offset, start, stop)))
        tasks[index] = task_ids[row_of_position[mask]]
    losses: dict[int, torch.Tensor] = {}
    for head, members in heads.values():
        results = head_cross_entropy(head.weight, head.bias, [seg for _, seg in members], chunk_size, softcap)
        present = [index for index, seg in members if seg[0].size(0)]
        for index, (loss, correct) in zip(present, results):
            name = "text" if index == TEXT_LAYER else f"audio_l{index}"
            losses[index] = loss
            metrics[f"loss/{name}"] = loss.detach().mean()
            metrics[f"acc/{name}"] = correct.float().mean()

    text_losses = losses.get(TEXT_LAYER, h_text.new_zeros(0, dtype=torch.float32))
    total = text_weight * (text_losses.mean() if text_losses.numel() else h_text.sum() * 0)
    per_task = [(text_losses, tasks[TEXT_LAYER], "text")]
    audio = [i for i in range(N_AUDIO_LAYERS) if i in losses]
    if with_audio:
        audio_means = torch.stack([losses[i].mean() for i in audio])
        total = total + audio_weight * audio_means.mean()
        per_task.append((torch.cat([losses[i] for i in audio]), torch.cat([tasks[i] for i in audio]), "audio"))
        metrics["loss/audio"] = audio_means.detach().mean()

    with torch.no_grad():
        for layer_losses, layer_tasks, name in per_task:
            for t in layer_tasks.unique().tolist():
                metrics[f"loss_{TASKS[t].value}/{name}"] = layer_losses[layer_tasks == t].mean()
    metrics["loss"] = total.detach()
    return LossOutput(total, metrics)
