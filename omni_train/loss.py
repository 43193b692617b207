"""Per-layer next-token loss without materialising the 181k-wide logits.

Only trained positions (answers; never prompts or batch padding) reach a head, and they do so in
chunks of at most `MAX_CHUNK_LOGITS` logits whose gradients are made while the chunk exists and
never stored. What is live at the peak is the head's weight gradient (the floor), one chunk of
logits, and one gradient the size of each hidden-state tensor; not ``B x T x vocab`` floats for
each of the 8 layers, nor a copy of the hidden states per layer (benchmarks/loss_memory.py: 0.14x).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from omni_train.config import StageConfig
from omni_train.model import OmniGPT
from omni_train.tasks import TASKS
from omni_train.vocab import IGNORE_INDEX, N_AUDIO_LAYERS, TEXT_LAYER

# Logits one chunk may hold: 2^25 is 128 MB in fp32, 220 positions of Qwen2's 152k text rows.
# Smaller chunks re-read the head and its gradient more often: at 2^24 the loss took 7% more CPU
# time than at 2^25 on one core, for 20-65 MB less (BENCHMARKS.md section 2).
MAX_CHUNK_LOGITS = 2**25


class Segment(NamedTuple):
    """The trained positions of one layer, scored against rows ``[start, stop)`` of a head."""

    h: torch.Tensor  # (..., C) hidden states; the layers that read one tensor share its gradient
    rows: torch.Tensor  # (K,) the trained positions: indices into h's leading dims, flattened
    targets: torch.Tensor  # (K,) in [0, stop - start)
    start: int
    stop: int
    weight: float = 1.0  # what this segment's mean loss counts for in the total


def _rows_per_chunk(chunk_size: int, logits_per_row: int) -> int:
    return max(1, min(chunk_size, MAX_CHUNK_LOGITS // max(1, logits_per_row)))


def _logits(h, pieces, softcap):
    """fp32 logits of one chunk, ``(chunk, V)``, and tanh of the soft cap (for its derivative).

    `pieces` are ``(weight, bias)`` row blocks of the range, in order; several only where a range
    crosses from one tensor of a head into the next (a LoRA model's base rows, then its new rows).
    """
    z = torch.cat([F.linear(h, w, b) for w, b, _, _ in pieces], dim=1) if len(pieces) > 1 else F.linear(h, *pieces[0][:2])
    z = z.float()
    if softcap is None:
        return z, None
    t = torch.tanh(z.div_(softcap))
    return torch.mul(t, softcap, out=z), t


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
    """Weighted sum of mean cross-entropies over row ranges of one head, gradients made in the forward.

    One call serves every layer that reads the same head (the text and 7 audio slices of
    `lm_head`), so their weight gradients land in one buffer instead of autograd adding a
    full-size gradient per slice, and every layer that reads the same hidden states adds into one
    gradient of their size. The output is one weighted sum of means, so its gradient is a scalar
    times what the forward can compute already, chunk by chunk, while the chunk's logits exist:
    the backward only scales, and logits are computed once (a checkpointed loss computes them
    twice). The per-segment means come out detached, for metrics.

    The head's rows may be split over several tensors (row blocks, in order): a LoRA model keeps
    the base vocabulary's frozen rows and the trained new rows apart, and only the blocks that train
    get a gradient buffer, of their own size.
    """

    @staticmethod
    def forward(ctx, n_blocks, n_hidden, plan, chunk_size, softcap, grad_enabled, *tensors):
        # plan: (hidden state index, start, stop, weight) per segment
        n = len(plan)
        weights, biases = tensors[:n_blocks], tensors[n_blocks : 2 * n_blocks]
        hiddens = tensors[2 * n_blocks : 2 * n_blocks + n_hidden]
        rows, targets = tensors[2 * n_blocks + n_hidden : -n], tensors[-n:]
        device = hiddens[0].device.type
        # the matmul dtype: autocast's (bf16-mixed) or the head's own
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weights[0].dtype
        # needs_input_grad is True under no_grad too: validation must not pay for gradients
        need = [grad_enabled and x for x in ctx.needs_input_grad[6:]]
        need_w = need[:n_blocks]
        need_b = [b is not None and x for b, x in zip(biases, need[n_blocks : 2 * n_blocks])]
        need_h = need[2 * n_blocks : 2 * n_blocks + n_hidden]
        # accumulated in the matmul dtype, in place (bf16 under bf16-mixed, like autograd's own sum
        # over chunks), and cast to the weight's dtype once at the end
        grad_ws = [torch.zeros_like(w, dtype=dtype) if nw else None for w, nw in zip(weights, need_w)]
        grad_bs = [torch.zeros_like(b) if nb else None for b, nb in zip(biases, need_b)]
        flat = [h.reshape(-1, h.size(-1)) for h in hiddens]  # (N, C)
        grad_hs = [torch.zeros_like(f) if nh else None for f, nh in zip(flat, need_h)]
        sizes = [w.size(0) for w in weights]
        total = torch.zeros((), dtype=torch.float32, device=hiddens[0].device)
        means, losses, correct = [], [], []
        for (k, start, stop, seg_weight), r, t in zip(plan, rows, targets):
            # (block, rows in it, columns of the range's logits) for each block the range covers
            pieces, col = [], 0
            for i, lo, hi in _blocks_of(start, stop, sizes):
                w = _cast(weights[i][lo:hi], dtype)
                b = None if biases[i] is None else _cast(biases[i][lo:hi], dtype)
                pieces.append((w, b, i, (lo, hi, col)))
                col += hi - lo
            K = r.size(0)
            grad_h = grad_hs[k]
            loss = torch.empty(K, dtype=torch.float32, device=r.device)
            ok = torch.empty(K, dtype=torch.bool, device=r.device)
            # a range over two blocks joins its pieces' logits, and a soft cap keeps its tanh beside
            # them: two chunk-sized buffers, so half the positions keep the peak
            buffers = 2 if len(pieces) > 1 or softcap is not None else 1
            step = _rows_per_chunk(chunk_size, (stop - start) * buffers)
            any_w = any(need_w[i] or need_b[i] for _, _, i, _ in pieces)
            for c in range(0, K, step):
                idx, tp = r[c : c + step], t[c : c + step]
                hp = flat[k][idx].to(dtype)  # (chunk, C)
                z, tanh = _logits(hp, pieces, softcap)  # (chunk, V) fp32
                # logsumexp in the logits' own buffer (torch.logsumexp makes a chunk-sized copy)
                zt = z.gather(1, tp[:, None])
                top, arg = z.max(-1, keepdim=True)
                ok[c : c + step] = arg.squeeze(1) == tp
                sums = z.sub_(top).exp_().sum(-1, keepdim=True)  # z is now exp(z - max)
                loss[c : c + step] = (top + sums.log() - zt).squeeze(1)
                if grad_h is not None or any_w:
                    # d (weight * mean) / d z = weight * (softmax(z) - onehot(t)) / K, in the same buffer
                    z.mul_(seg_weight / K / sums)
                    z[torch.arange(z.size(0), device=z.device), tp] -= seg_weight / K
                    if tanh is not None:
                        z.mul_(tanh.square_().neg_().add_(1))  # through the soft cap: 1 - tanh^2
                    for _, _, i, (lo, hi, col) in pieces:
                        if need_b[i]:
                            grad_bs[i][lo:hi] += z[:, col : col + hi - lo].sum(0).to(grad_bs[i].dtype)
                    z = z.to(dtype)
                    if grad_h is not None:
                        w0, _, _, (lo0, hi0, _) = pieces[0]
                        gp = z[:, : hi0 - lo0] @ w0 if len(pieces) > 1 else z @ w0  # (chunk, C)
                        for w, _, _, (lo, hi, col) in pieces[1:]:
                            gp.addmm_(z[:, col : col + hi - lo], w)
                        grad_h.index_add_(0, idx, gp.to(grad_h.dtype))
                    for _, _, i, (lo, hi, col) in pieces:
                        if need_w[i]:  # in place: no (V, C) temporary
                            grad_ws[i][lo:hi].addmm_(z[:, col : col + hi - lo].T if len(pieces) > 1 else z.T, hp)
                del z, tanh  # this chunk's logits go before the next chunk's are made
            means.append(loss.mean())
            total += seg_weight * means[-1]
            losses.append(loss)
            correct.append(ok)
        grad_ws = [g if g is None or g.dtype == w.dtype else g.to(w.dtype) for g, w in zip(grad_ws, weights)]
        ctx.grads = [*grad_ws, *grad_bs, *(g if g is None else g.view(h.shape) for g, h in zip(grad_hs, hiddens))]
        ctx.n_segments, ctx.used = n, False
        ctx.mark_non_differentiable(*means, *losses, *correct)
        return (total, *means, *losses, *correct)

    @staticmethod
    def backward(ctx, g, *_):
        if ctx.used:
            raise RuntimeError("the chunked loss scales its stored gradients in place: backward through it once")
        ctx.used = True
        grads = [None if x is None else x.mul_(g) for x in ctx.grads]
        ctx.grads = None
        return (None,) * 6 + (*grads,) + (None,) * (2 * ctx.n_segments)


def head_cross_entropy(
    weight: torch.Tensor | tuple[torch.Tensor, ...],
    bias: torch.Tensor | tuple[torch.Tensor | None, ...] | None,
    segments: list[Segment],
    chunk_size: int = StageConfig.loss_chunk_size,
    softcap: float | None = None,
) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Weighted sum of the mean cross-entropies of several row ranges of one head.

    Args:
        weight: ``(V, C)`` the whole head, or its rows as blocks ``(V_i, C)``, in order (what
            `OmniGPT.head_weight` gives for a LoRA model's ``lm_head``); bias ``(V,)``, blocks
            ``(V_i,)`` like the weight's, or None.
        segments: see `Segment`; the row ranges of one call must not overlap, their positions may
            (the layers of one row read the same hidden states).
        chunk_size: positions a chunk at most; a chunk also holds at most `MAX_CHUNK_LOGITS` logits.

    Returns:
        ``sum(weight * mean loss)`` over the non-empty segments (differentiable; backward through
        it once; None if all are empty), and per non-empty segment its mean loss, per-position
        losses ``(K,)`` and whether the argmax was right ``(K,)`` (all detached).
    """
    segments = [s for s in segments if s.rows.numel()]
    if not segments:
        return None, []
    weights = (weight,) if isinstance(weight, torch.Tensor) else tuple(weight)
    if bias is None or isinstance(bias, torch.Tensor):
        biases = (bias,) if len(weights) == 1 else (None,) * len(weights)
        if bias is not None and len(weights) > 1:
            raise ValueError("a head given as row blocks needs its bias as blocks too")
    else:
        biases = tuple(bias)
    ordered = sorted((s.start, s.stop) for s in segments)
    if any(a[1] > b[0] for a, b in itertools.pairwise(ordered)):
        raise ValueError(f"row ranges of one head must not overlap, got {[(s.start, s.stop) for s in segments]}")
    hiddens: list[torch.Tensor] = []  # each distinct tensor once: one gradient buffer each
    for s in segments:
        if not any(s.h is h for h in hiddens):
            hiddens.append(s.h)
    plan = tuple((next(k for k, h in enumerate(hiddens) if s.h is h), s.start, s.stop, s.weight) for s in segments)
    out = _HeadCrossEntropy.apply(
        len(weights), len(hiddens), plan, chunk_size, softcap, torch.is_grad_enabled(),
        *weights, *biases, *hiddens, *(s.rows for s in segments), *(s.targets for s in segments),
    )  # fmt: skip
    n = len(segments)
    return out[0], list(zip(out[1 : n + 1], out[n + 1 : 2 * n + 1], out[2 * n + 1 :]))


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
    text_weight: float = StageConfig.text_weight,
    audio_weight: float = StageConfig.audio_weight,
    chunk_size: int = StageConfig.loss_chunk_size,
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
    T = targets.size(-1)
    with_audio = h_audio is not None and bool((targets[:, :N_AUDIO_LAYERS] != IGNORE_INDEX).any())
    layers = [TEXT_LAYER, *(range(N_AUDIO_LAYERS) if with_audio else ())]
    # the trained positions of each layer, as indices into (B * T)
    rows = {index: (targets[:, index] != IGNORE_INDEX).flatten().nonzero().squeeze(1) for index in layers}
    n_audio = sum(1 for index in layers if index != TEXT_LAYER and rows[index].numel())

    # one call a head, over the layers that read it, each weighted as it counts in the total
    heads: dict[int, tuple[torch.nn.Module, list[int], list[Segment]]] = {}
    for index in layers:
        head, start, stop = model.head_rows(index)
        h = h_text if index == TEXT_LAYER else h_audio
        offset = 0 if index == TEXT_LAYER else model.config.vocab.audio_offset(index)
        weight = text_weight if index == TEXT_LAYER else audio_weight / max(1, n_audio)
        segment = Segment(h, rows[index], targets[:, index].flatten()[rows[index]] - offset, start, stop, weight)
        _, indices, segments = heads.setdefault(id(head), (head, [], []))
        indices.append(index)
        segments.append(segment)
    # text_weight * text CE + audio_weight * mean of the audio CEs; with no text position, h_text
    # still joins the graph (every parameter gets a gradient, as DDP expects)
    total = None if rows[TEXT_LAYER].numel() else h_text.sum() * 0
    losses: dict[int, torch.Tensor] = {}  # per position, detached (metrics)
    for head, indices, segments in heads.values():
        weight, bias = model.head_weight(head)
        part, results = head_cross_entropy(weight, bias, segments, chunk_size, softcap)
        if part is not None:
            total = part if total is None else total + part
        present = [index for index, s in zip(indices, segments) if s.rows.numel()]
        for index, (mean, loss, correct) in zip(present, results):
            name = "text" if index == TEXT_LAYER else f"audio_l{index}"
            losses[index] = loss
            metrics[f"loss/{name}"] = mean
            metrics[f"acc/{name}"] = correct.float().mean()

    with torch.no_grad():
        tasks = {index: task_ids[r // T] for index, r in rows.items()}
        per_task = [(losses.get(TEXT_LAYER, h_text.new_zeros(0, dtype=torch.float32)), tasks[TEXT_LAYER], "text")]
        audio = [i for i in range(N_AUDIO_LAYERS) if i in losses]
        if with_audio:
            per_task.append((torch.cat([losses[i] for i in audio]), torch.cat([tasks[i] for i in audio]), "audio"))
            metrics["loss/audio"] = torch.stack([metrics[f"loss/audio_l{i}"] for i in audio]).mean()
        for layer_losses, layer_tasks, name in per_task:
            for t in layer_tasks.unique().tolist():
                metrics[f"loss_{TASKS[t].value}/{name}"] = layer_losses[layer_tasks == t].mean()
    metrics["loss"] = total.detach()
    return LossOutput(total, metrics)
