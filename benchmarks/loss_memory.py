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

How time is measured: the CPU time of that same forward + backward. With ``--before REV`` (REV's
``omni_train``, via ``git archive``) and ``--chunk-logits``, the chunked variants' processes
alternate ``--reps`` times (A B A B ...) and each reports the median of its repetitions.

    python benchmarks/loss_memory.py [--seq 2048] [--before REV] [--chunk-logits 24,25] [--reps 3] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import TINY, package_at
from litgpt.config import Config

import omni_train.loss
from omni_train.data.collator import TASKS
from omni_train.loss import omni_loss
from omni_train.model import OmniConfig, OmniGPT
from omni_train.tasks import Task
from omni_train.vocab import N_AUDIO_LAYERS, TEXT_LAYER

ROOT = Path(__file__).resolve().parents[1]
SAMPLED_GRADIENTS = 20_000  # gradient entries each process reports, the same ones in every process


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
    if args.chunk_logits:
        omni_train.loss.MAX_CHUNK_LOGITS = 2**args.chunk_logits
    step = {"chunked": chunked, "naive": naive}[args.child]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before, t0 = rss_kb("VmRSS"), time.process_time()
    loss = step(model, h, targets)
    loss.backward()
    cpu_s = time.process_time() - t0
    peak = rss_kb("VmHWM") - before
    grad = torch.cat([h.grad.flatten(), model.lm_head.weight.grad.flatten()])
    sample = torch.randint(0, grad.numel(), (SAMPLED_GRADIENTS,), generator=torch.Generator().manual_seed(2))
    out = {"peak_mb": peak / 1024, "cpu_s": cpu_s, "loss": loss.item(), "grad_norm": grad.norm().item()}
    print(json.dumps({**out, "grads": grad[sample].tolist()}))


def run(tree: Path, variant: str, chunk_logits: int | None, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--seq", str(args.seq)]
    cmd += (["--tiny"] if args.tiny else []) + (["--chunk-logits", str(chunk_logits)] if chunk_logits else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{variant} with {tree}/omni_train failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shown = {k: v for k, v in result.items() if k != "grads"}
    print(f"{variant} {tree} 2^{chunk_logits}: {shown}", file=sys.stderr, flush=True)  # progress of a long run
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-0.5B", help="litgpt config name (Qwen2-0.5B's shape)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--before", help="a git revision whose omni_train runs beside this tree's (chunked)")
    parser.add_argument("--chunk-logits", default="", help="also run this tree at MAX_CHUNK_LOGITS = 2^N, e.g. 24,26")
    parser.add_argument("--reps", type=int, default=1, help="processes a chunked variant, alternating")
    parser.add_argument("--tiny", action="store_true", help="a 64-wide model with a 512-token base vocab (smoke test)")
    parser.add_argument("--child", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.seq = min(args.seq, 64)
    if args.child:
        args.chunk_logits = int(args.chunk_logits) if args.chunk_logits else None
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        variants = {"chunked": (ROOT, None)}  # name: (tree, chunk exponent)
        for n in filter(None, args.chunk_logits.split(",")):
            variants[f"chunked 2^{int(n)}"] = (ROOT, int(n))
        if args.before:
            old = package_at(args.before, Path(tmp) / "before")
            variants[f"before ({args.before})"] = (old, None)
        runs: dict[str, list[dict]] = {"naive": [run(ROOT, "naive", None, args)], **{name: [] for name in variants}}
        for _ in range(args.reps):
            for name, (tree, n) in variants.items():
                runs[name].append(run(tree, "chunked", n, args))

    model, _, _ = setup(args)
    weight_grad_mb = model.lm_head.weight.numel() * 4 / 2**20
    chunk = omni_train.loss.MAX_CHUNK_LOGITS
    print(f"model={args.model} seq={args.seq} vocab={model.config.padded_vocab_size} n_embd={model.config.n_embd}")
    print(
        f"head weight gradient alone: {weight_grad_mb:.0f} MB (the floor); chunked: MAX_CHUNK_LOGITS = 2^{chunk.bit_length() - 1}"
    )
    naive_run = runs["naive"][0]
    ref = torch.tensor(naive_run["grads"])
    print(f"{'variant':<22}{'peak MB':>9}{'/ naive':>8}{'CPU s':>8}  {'(min-max)':<13}{'loss':>11}  max grad diff")
    for name, rs in runs.items():
        cpu = [r["cpu_s"] for r in rs]
        diff = (torch.tensor(rs[0]["grads"]) - ref).abs().max().item() / ref.abs().max().item()
        print(f"{name:<22}{rs[0]['peak_mb']:>9.0f}{rs[0]['peak_mb'] / naive_run['peak_mb']:>8.3f}"
              f"{statistics.median(cpu):>8.2f}  ({min(cpu):.2f}-{max(cpu):.2f}){'':<1}{rs[0]['loss']:>11.6f}  {diff:.1e}")  # fmt: skip
    c = runs["chunked"][0]
    print(f"loss relative difference: {abs(c['loss'] - naive_run['loss']) / abs(naive_run['loss']):.2e}")
    print(
        f"grad norm relative difference: {abs(c['grad_norm'] - naive_run['grad_norm']) / abs(naive_run['grad_norm']):.2e}"
    )
    now_s = statistics.median(r["cpu_s"] for r in runs["chunked"])
    for name, rs in runs.items():
        if name not in ("chunked", "naive"):
            print(f"CPU time chunked / {name}: {now_s / statistics.median(r['cpu_s'] for r in rs):.3f}")
    print(f"ratio chunked/naive peak memory: {c['peak_mb'] / naive_run['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
