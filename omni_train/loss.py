"""Per-layer next-token loss without materialising the 181k-wide logits.

Only trained positions (answers; never prompts or batch padding) reach a head, and they do so in
chunks whose logits are recomputed in the backward pass instead of stored: peak memory is one
chunk of logits, not ``B x T x vocab`` floats for each of the 8 layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from omni_train.data.collator import IGNORE_INDEX, TASKS
from omni_train.model import OmniGPT
from omni_train.vocab import N_AUDIO_LAYERS, TEXT_LAYER


def _chunk_ce(h, weight, bias, targets, softcap):
    logits = F.linear(h, weight, bias).float()  # (chunk, V)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    losses = F.cross_entropy(logits, targets, reduction="none")
    correct = logits.argmax(-1) == targets
    return losses, correct


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
    losses, correct = [], []
    for start in range(0, h.size(0), chunk_size):
        part = slice(start, start + chunk_size)
        args = (h[part], weight, bias, targets[part], softcap)
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            loss, ok = checkpoint(_chunk_ce, *args, use_reentrant=False)
        else:
            loss, ok = _chunk_ce(*args)
        losses.append(loss)
        correct.append(ok)
    return torch.cat(losses), torch.cat(correct)


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
    cfg = model.config
    softcap = cfg.final_logit_softcapping
    metrics: dict[str, torch.Tensor] = {}
    row_of_position = torch.arange(targets.size(0), device=targets.device)[:, None].expand(-1, targets.size(-1))

    def layer(index: int, h: torch.Tensor, head, offset: int, name: str):
        mask = targets[:, index] != IGNORE_INDEX  # (B, T)
        losses, correct = linear_cross_entropy(
            h[mask], *head, targets[:, index][mask] - offset, chunk_size=chunk_size, softcap=softcap
        )
        tasks = task_ids[row_of_position[mask]]
        if losses.numel():
            metrics[f"loss/{name}"] = losses.detach().mean()
            metrics[f"acc/{name}"] = correct.float().mean()
        return losses, tasks

    text_losses, text_tasks = layer(TEXT_LAYER, h_text, model.text_head(), 0, "text")
    total = text_weight * (text_losses.mean() if text_losses.numel() else h_text.sum() * 0)
    per_task = [(text_losses, text_tasks, "text")]

    if h_audio is not None and (targets[:, :N_AUDIO_LAYERS] != IGNORE_INDEX).any():
        audio_means, audio_all, audio_tasks = [], [], []
        for i in range(N_AUDIO_LAYERS):
            losses, tasks = layer(i, h_audio, model.audio_head(i), cfg.vocab.audio_offset(i), f"audio_l{i}")
            if losses.numel():
                audio_means.append(losses.mean())
                audio_all.append(losses)
                audio_tasks.append(tasks)
        total = total + audio_weight * torch.stack(audio_means).mean()
        per_task.append((torch.cat(audio_all), torch.cat(audio_tasks), "audio"))
        metrics["loss/audio"] = torch.stack(audio_means).detach().mean()

    with torch.no_grad():
        for losses, tasks, name in per_task:
            for t in tasks.unique().tolist():
                metrics[f"loss_{TASKS[t].value}/{name}"] = losses[tasks == t].mean()
    metrics["loss"] = total.detach()
    return LossOutput(total, metrics)
