"""Per-layer next-token loss without materialising the 181k-wide logits.

Only trained positions (answers; never prompts or batch padding) reach a head, and they do so in
chunks of at most `MAX_CHUNK_LOGITS` logits whose gradients are made while the chunk exists and
never stored: peak memory is the head's weight gradient plus one chunk of logits, not
``B x T x vocab`` floats for each of the 8 layers (benchmarks/loss_memory.py: 0.21x).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omni_train.model import OmniGPT
from omni_train.tasks import TASKS
from omni_train.vocab import IGNORE_INDEX, N_AUDIO_LAYERS, TEXT_LAYER

MAX_CHUNK_LOGITS = 2**26  # logits one chunk may hold (256 MB in fp32): 441 positions of Qwen2's 152k text rows


def _rows_per_chunk(chunk_size: int, vocab: int) -> int:
    return max(1, min(chunk_size, MAX_CHUNK_LOGITS // max(1, vocab)))


def _logits(h, pieces, softcap):
    """fp32 logits of one chunk, ``(chunk, V)``, and tanh of the soft cap (for its derivative).

    `pieces` are ``(weight, bias)`` row blocks of the range, in order; several only where a range
    crosses from one tensor of a head into the next (a LoRA model's base rows, then its new rows).
    """
    z = torch.cat([F.linear(h, w, b) for w, b, _, _ in pieces], dim=1) if len(pieces) > 1 else F.linear(h, *pieces[0][:2])
    z = z.float()
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _cast(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to(dtype)


def _blocks_of(start: int, stop: int, sizes: list[int]) -> list[tuple[int, int, int]]:
    """The row blocks that rows ``[start, stop)`` of a head fall in: ``(block, first row, last row + 1)`` in it."""
    out, offset = [], 0
    for i, size in enumerate(sizes):
        lo, hi = max(start, offset), min(stop, offset + size)
        if lo < hi:
            out.append((i, lo - offset, hi - offset))
        offset += size
    return out


class _HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of row ranges of one head, chunk by chunk, gradients made in the forward.

    One call serves every layer that reads the same head (the text and 7 audio slices of
    `lm_head`), so their weight gradients land in one buffer instead of autograd adding a
    full-size gradient per slice. Each output is a mean, so its gradient is a scalar times what
    the forward can compute already, chunk by chunk, while the chunk's logits exist: the backward
    only scales, and logits are computed once (a checkpointed loss computes them twice).

    The head's rows may be split over several tensors (row blocks, in order): a LoRA model keeps
    the base vocabulary's frozen rows and the trained new rows apart, and only the blocks that train
    get a gradient buffer, of their own size.
    """

    @staticmethod
    def forward(ctx, n_blocks, ranges, chunk_size, softcap, grad_enabled, *tensors):
        n = len(ranges)
        weights, biases = tensors[:n_blocks], tensors[n_blocks : 2 * n_blocks]
        hs, targets = tensors[2 * n_blocks : 2 * n_blocks + n], tensors[2 * n_blocks + n :]
        device = hs[0].device.type
        # the matmul dtype: autocast's (bf16-mixed) or the head's own
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weights[0].dtype
        # needs_input_grad is True under no_grad too: validation must not pay for gradients
        need = [grad_enabled and x for x in ctx.needs_input_grad[5:]]
        need_w = need[:n_blocks]
        need_b = [b is not None and x for b, x in zip(biases, need[n_blocks : 2 * n_blocks])]
        # accumulated in the matmul dtype, in place (bf16 under bf16-mixed, like autograd's own sum
        # over chunks), and cast to the weight's dtype once at the end
        grad_ws = [torch.zeros_like(w, dtype=dtype) if nw else None for w, nw in zip(weights, need_w)]
        grad_bs = [torch.zeros_like(b) if nb else None for b, nb in zip(biases, need_b)]
        sizes = [w.size(0) for w in weights]
        means, losses, correct, grad_hs = [], [], [], []
        for k, (h, t, (start, stop)) in enumerate(zip(hs, targets, ranges)):
            # (block, rows in it, columns of the range's logits) for each block the range covers
            pieces, col = [], 0
            for i, lo, hi in _blocks_of(start, stop, sizes):
                w = _cast(weights[i][lo:hi], dtype)
                b = None if biases[i] is None else _cast(biases[i][lo:hi], dtype)
                pieces.append((w, b, i, (lo, hi, col)))
                col += hi - lo
            K = h.size(0)
            need_h = need[2 * n_blocks + k]
            grad_h = torch.empty_like(h) if need_h else None
            loss = torch.empty(K, dtype=torch.float32, device=h.device)
            ok = torch.empty(K, dtype=torch.bool, device=h.device)
            # a range over two blocks joins its pieces' logits: half the positions keep the peak
            step = _rows_per_chunk(chunk_size, (stop - start) * (2 if len(pieces) > 1 else 1))
            any_w = any(need_w[i] for _, _, i, _ in pieces) or any(need_b[i] for _, _, i, _ in pieces)
            for c in range(0, K, step):
                part = slice(c, c + step)
                hp, tp = h[part].to(dtype), t[part]
                z, tanh = _logits(hp, pieces, softcap)  # (chunk, V) fp32
                lse = torch.logsumexp(z, -1, keepdim=True)
                loss[part] = (lse - z.gather(1, tp[:, None])).squeeze(1)
                ok[part] = z.argmax(-1) == tp
                if not (need_h or any_w):
                    continue
                # d mean / d z = (softmax(z) - onehot(t)) / K, made in the logits' own buffer
                z = z.sub_(lse).exp_()
                z[torch.arange(z.size(0), device=z.device), tp] -= 1
                z.div_(K)
                if tanh is not None:
                    z.mul_(1 - tanh * tanh)  # through the soft cap
                for _, _, i, (lo, hi, col) in pieces:
                    if need_b[i]:
                        grad_bs[i][lo:hi] += z[:, col : col + hi - lo].sum(0).to(grad_bs[i].dtype)
                z = z.to(dtype)
                if need_h:
                    w0, _, _, (lo0, hi0, _) = pieces[0]
                    grad_h[part] = z[:, : hi0 - lo0] @ w0 if len(pieces) > 1 else z @ w0
                    for w, _, _, (lo, hi, col) in pieces[1:]:
                        grad_h[part] += z[:, col : col + hi - lo] @ w
                for _, _, i, (lo, hi, col) in pieces:
                    if need_w[i]:  # in place: no (V, C) temporary
                        grad_ws[i][lo:hi].addmm_(z[:, col : col + hi - lo].T if len(pieces) > 1 else z.T, hp)
            means.append(loss.mean())
            losses.append(loss)
            correct.append(ok)
            grad_hs.append(grad_h)
        grad_ws = [g if g is None or g.dtype == w.dtype else g.to(w.dtype) for g, w in zip(grad_ws, weights)]
        ctx.spans = [_blocks_of(start, stop, sizes) for start, stop in ranges]
        ctx.n_blocks, ctx.grad_hs, ctx.used = n_blocks, grad_hs, False
        ctx.save_for_backward(*grad_ws, *grad_bs)
        ctx.mark_non_differentiable(*losses, *correct)
        return (*means, *losses, *correct)

    @staticmethod
    def backward(ctx, *grads):
        if ctx.used:
            raise RuntimeError("the chunked loss scales its stored gradients in place: backward through it once")
        ctx.used = True
        n_blocks = ctx.n_blocks
        saved = ctx.saved_tensors
        grad_ws, grad_bs = saved[:n_blocks], saved[n_blocks:]
        grad_hs = []
        for spans, g, grad_h in zip(ctx.spans, grads[: len(ctx.spans)], ctx.grad_hs):
            g = 0.0 if g is None else g
            for i, lo, hi in spans:
                for buf in (grad_ws[i], grad_bs[i]):
                    if buf is not None:
                        buf[lo:hi] *= g
            grad_hs.append(None if grad_h is None else grad_h.mul_(g))
        ctx.grad_hs = None
        return (None, None, None, None, None, *grad_ws, *grad_bs, *grad_hs, *[None] * len(ctx.spans))


def head_cross_entropy(
    weight: torch.Tensor | tuple[torch.Tensor, ...],
    bias: torch.Tensor | tuple[torch.Tensor | None, ...] | None,
    segments: list[tuple[torch.Tensor, torch.Tensor, int, int]],
    chunk_size: int = 2048,
    softcap: float | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Mean cross-entropy of several row ranges of one head, each against its own hidden states.

    Args:
        weight: ``(V, C)`` the whole head, or its rows as blocks ``(V_i, C)``, in order (what
            `OmniGPT.head_weight` gives for a LoRA model's ``lm_head``); bias ``(V,)``, blocks
            ``(V_i,)`` like the weight's, or None.
        segments: ``(h, targets, start, stop)``: ``(K, C)`` hidden states of trained positions,
            ``(K,)`` targets in ``[0, stop - start)``, scored against rows ``[start, stop)``; the
            row ranges of one call must not overlap.
        chunk_size: positions a chunk at most; a chunk also holds at most `MAX_CHUNK_LOGITS` logits.

    Returns:
        per non-empty segment: the mean loss (differentiable; backward through it once), and
        per-position losses ``(K,)`` and whether the argmax was right ``(K,)`` (both detached).
    """
    segments = [s for s in segments if s[0].size(0)]
    if not segments:
        return []
    weights = (weight,) if isinstance(weight, torch.Tensor) else tuple(weight)
    if bias is None or isinstance(bias, torch.Tensor):
        biases = (bias,) if len(weights) == 1 else (None,) * len(weights)
        if bias is not None and len(weights) > 1:
            raise ValueError("a head given as row blocks needs its bias as blocks too")
    else:
        biases = tuple(bias)
    ranges = tuple((start, stop) for _, _, start, stop in segments)
    ordered = sorted(ranges)
    if any(a[1] > b[0] for a, b in itertools.pairwise(ordered)):
        raise ValueError(f"row ranges of one head must not overlap, got {ranges}")
    hs, targets = (s[0] for s in segments), (s[1] for s in segments)
    out = _HeadCrossEntropy.apply(
        len(weights), ranges, chunk_size, softcap, torch.is_grad_enabled(), *weights, *biases, *hs, *targets
    )
    n = len(segments)
    return list(zip(out[:n], out[n : 2 * n], out[2 * n :]))


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
    means: dict[int, torch.Tensor] = {}  # differentiable, one a layer
    losses: dict[int, torch.Tensor] = {}  # per position, detached (metrics)
    for head, members in heads.values():
        weight, bias = model.head_weight(head)
        results = head_cross_entropy(weight, bias, [seg for _, seg in members], chunk_size, softcap)
        present = [index for index, seg in members if seg[0].size(0)]
        for index, (mean, loss, correct) in zip(present, results):
            name = "text" if index == TEXT_LAYER else f"audio_l{index}"
            means[index], losses[index] = mean, loss
            metrics[f"loss/{name}"] = mean.detach()
            metrics[f"acc/{name}"] = correct.float().mean()

    text_losses = losses.get(TEXT_LAYER, h_text.new_zeros(0, dtype=torch.float32))
    total = text_weight * means[TEXT_LAYER] if TEXT_LAYER in means else h_text.sum() * 0
    per_task = [(text_losses, tasks[TEXT_LAYER], "text")]
    audio = [i for i in range(N_AUDIO_LAYERS) if i in losses]
    if with_audio:
        audio_means = torch.stack([means[i] for i in audio])
        total = total + audio_weight * audio_means.mean()
        per_task.append((torch.cat([losses[i] for i in audio]), torch.cat([tasks[i] for i in audio]), "audio"))
        metrics["loss/audio"] = audio_means.detach().mean()

    with torch.no_grad():
        for layer_losses, layer_tasks, name in per_task:
            for t in layer_tasks.unique().tolist():
                metrics[f"loss_{TASKS[t].value}/{name}"] = layer_losses[layer_tasks == t].mean()
    metrics["loss"] = total.detach()
    return LossOutput(total, metrics)
