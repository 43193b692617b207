"""Loss memory: peak memory of the loss (text + 7 audio heads), chunked vs all logits in fp32.

Mini-Omni's shapes: one row of 2048 positions, every position trained in all 8 layers (the worst
case), Qwen2's 896-wide `lm_head` over the whole 181,120-row table. The chunked path is
`omni_train.loss.omni_loss`; the naive path computes the full logits once in fp32 and slices each
layer's range out of them (Mini-Omni's own inference does this), then the same cross-entropies.

How memory is measured: each variant runs forward + backward in a fresh process. After building
the model and inputs, the process resets its resident-set high-water mark (Linux:
``echo 5 > /proc/self/clear_refs``) and reads its current RSS; the figure is the high-water mark
after the backward minus that. It counts everything the loss allocates, the head's weight
gradient included. Tensors above glibc's mmap threshold go back to the OS when freed, so the
high-water mark follows live tensors.

    python benchmarks/loss_memory.py [--seq 2048] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import TINY
from litgpt.config import Config

from omni_train.data.collator import TASKS
from omni_train.loss import omni_loss
from omni_train.model import OmniConfig, OmniGPT
from omni_train.tasks import Task
from omni_train.vocab import N_AUDIO_LAYERS, TEXT_LAYER


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def setup(args):
    torch.manual_seed(0)
    base = Config.from_name(args.model, n_layer=1, **(TINY if args.tiny else {}))
    model = OmniGPT(OmniConfig.from_base(base, whisper_adapter_dim=32))
    cfg, vocab = model.config, model.config.vocab
    h = torch.randn(1, args.seq, cfg.n_embd, requires_grad=True)  # the trunk's last state, (B, T, C)
    g = torch.Generator().manual_seed(1)
    targets = torch.stack(
        [torch.randint(0, vocab.audio_vocab_size, (1, args.seq), generator=g) + vocab.audio_offset(i) for i in range(7)]
        + [torch.randint(0, vocab.text_vocab_size, (1, args.seq), generator=g)],
        dim=1,
    )  # (B, 8, T): every position trained in every layer
    return model, h, targets


def chunked(model, h, targets):
    return omni_loss(model, h, h, targets, torch.tensor([TASKS.index(Task.A1A2)])).loss


def naive(model, h, targets):
    cfg = model.config
    logits = F.linear(h, model.lm_head.weight).float()  # (B, T, 181120): all 8 layers' logits at once
    text = F.cross_entropy(logits[0, :, : cfg.text_vocab_size], targets[0, TEXT_LAYER])
    audio = []
    for i in range(N_AUDIO_LAYERS):
        _, start, stop = model.head_rows(i)
        audio.append(F.cross_entropy(logits[0, :, start:stop], targets[0, i] - start))
    return text + torch.stack(audio).mean()


def child(args) -> None:
    model, h, targets = setup(args)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_kb("VmRSS")
    loss = {"chunked": chunked, "naive": naive}[args.child](model, h, targets)
    loss.backward()
    peak = rss_kb("VmHWM") - before
    grad = torch.cat([h.grad.flatten(), model.lm_head.weight.grad.flatten()])
    print(json.dumps({"peak_mb": peak / 1024, "loss": loss.item(), "grad_norm": grad.norm().item()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-0.5B", help="litgpt config name (Qwen2-0.5B's shape)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true", help="a 64-wide model with a 512-token base vocab (smoke test)")
    parser.add_argument("--child", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.seq = min(args.seq, 64)
    if args.child:
        return child(args)

    out = {}
    for variant in ("chunked", "naive"):
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--seq", str(args.seq)]
        run = subprocess.run(cmd + (["--tiny"] if args.tiny else []), capture_output=True, text=True, check=True)
        out[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    c, n = out["chunked"], out["naive"]
    model, _, _ = setup(args)
    weight_grad_mb = model.lm_head.weight.numel() * 4 / 2**20
    print(f"model={args.model} seq={args.seq} vocab={model.config.padded_vocab_size} n_embd={model.config.n_embd}")
    print(f"head weight gradient alone: {weight_grad_mb:.0f} MB (the floor)")
    for name, r in out.items():
        print(f"{name:8s} peak {r['peak_mb']:8.0f} MB  loss {r['loss']:.6f}  grad norm {r['grad_norm']:.6f}")
    print(f"loss relative difference: {abs(c['loss'] - n['loss']) / abs(n['loss']):.2e}")
    print(f"grad norm relative difference: {abs(c['grad_norm'] - n['grad_norm']) / abs(n['grad_norm']):.2e}")
    print(f"ratio chunked/naive peak memory: {c['peak_mb'] / n['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
