"""GPU MFU: tokens/s, MFU and peak memory of a stage-3 step at Qwen2-0.5B's full shape vs plain litgpt.

Needs a CUDA device (it stops with a clear message otherwise). Both models are the ones of
step_overhead.py (the same backbone weights; the plain GPT's vocabulary is OmniGPT's whole
181,120-row table), trained in bf16-mixed (autocast, fp32 master weights, fused AdamW) on rows of
--seq positions with every position of every layer trained (the plain LLM's regime; OmniGPT's
worst case; text questions, so the 12M-parameter Whisper adapter, which litgpt's count includes,
does no work: OmniGPT's MFU is overstated by about 2% of itself). For each variant the batch doubles until a step runs out of memory; the largest that
fits is timed, and both are also timed side by side at the batch both fit.

MFU = FLOPs a step, counted as litgpt's `estimate_flops` counts them, over the card's bf16 dense
peak (Lightning's `get_available_flops` table). Record the card with every figure.

    python benchmarks/gpu_mfu.py [--seq 2048] [--variant lm_head] [--max-batch 64]
    python benchmarks/gpu_mfu.py --device cpu --tiny     # smoke run, no MFU
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from litgpt.utils import chunked_cross_entropy, estimate_flops
from step_overhead import build

from omni_train.data.collator import TASKS
from omni_train.loss import omni_loss
from omni_train.tasks import Task
from omni_train.vocab import N_AUDIO_LAYERS, TEXT_LAYER


def dense_rows(cfg, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 8, T)`` ids and targets with every position of every layer trained."""
    vocab = cfg.vocab
    ids = torch.stack(
        [torch.randint(0, 4096, (B, T), device=device) + vocab.audio_offset(i) for i in range(N_AUDIO_LAYERS)]
        + [torch.randint(0, vocab.base_vocab_size, (B, T), device=device)],
        dim=1,
    )
    return ids, ids.roll(-1, dims=-1)


def make_step(name, omni, plain, optimizer, ids, targets, amp):
    task_ids = torch.full((ids.size(0),), TASKS.index(Task.T1A2), device=ids.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with amp():
            if name == "omni":
                h_text, h_audio = omni.hidden_states(ids)
                loss = omni_loss(omni, h_text, h_audio, targets, task_ids).loss
            else:  # litgpt finetune/full.py's step
                loss = chunked_cross_entropy(plain(ids[:, TEXT_LAYER]), targets[:, TEXT_LAYER])
        loss.backward()
        optimizer.step()

    return step


def measure(step, device, n: int) -> float:
    """Mean seconds of `n` steps after two warm-up steps."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def fits(step, device) -> bool:
    try:
        step()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-0.5B")
    parser.add_argument("--layers", type=int, default=24, help="Qwen2-0.5B has 24")
    parser.add_argument("--variant", choices=["lm_head", "post_adapter"], default="lm_head")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak, if Lightning does not know it")
    parser.add_argument("--tiny", action="store_true", help="a 64-wide 2-layer model, seq 64 (smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_mfu.py needs a CUDA GPU and found none; `--device cpu --tiny` runs a smoke test")
    if args.tiny:
        args.layers, args.seq, args.max_batch, args.steps = 2, 64, 2, 1

    shape = SimpleNamespace(model=args.model, layers=args.layers, tiny=args.tiny, whisper_dim=768,
                            post_layers=6, max_tokens=args.seq)  # fmt: skip
    omni, plain, _ = build(shape, post_adapter=args.variant == "post_adapter")  # not the own-vocabulary step
    omni.max_seq_length = args.seq  # litgpt counts FLOPs at max_seq_length
    plain._max_seq_length, plain.cos, plain.sin = args.seq, omni.cos, omni.sin
    omni.to(device)
    plain.to(device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(omni.parameters(), lr=1e-6, fused=fused)
    dtype = torch.bfloat16

    def amp():
        return torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")

    peak = None
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    elif device.type == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        peak = get_available_flops(device, dtype)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"

    flops_per_row = {"omni": estimate_flops(omni, training=True), "plain": estimate_flops(plain, training=True)}

    def run(name: str, B: int, timed: bool):
        ids, targets = dense_rows(omni.config, B, args.seq, device)
        step = make_step(name, omni, plain, optimizer, ids, targets, amp)
        if not timed:
            return fits(step, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = measure(step, device, args.steps)
        tokens = B * args.seq / seconds
        mfu = flops_per_row[name] * B / seconds / peak if peak else None
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"
        print(
            f"{card}: {name:5s} B={B:3d} seq={args.seq} {tokens:10.0f} tokens/s  "
            f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}  peak memory {memory}"
        )
        return tokens if mfu is None else mfu

    largest = {}
    for name in ("omni", "plain"):
        B = 1
        while B * 2 <= args.max_batch and run(name, B * 2, timed=False):
            B *= 2
        if not run(name, B, timed=False):
            raise SystemExit(f"{name}: even one row of {args.seq} positions does not fit on {card}")
        largest[name] = B
        run(name, B, timed=True)
    common = min(largest.values())
    side = {name: run(name, common, timed=True) for name in ("omni", "plain")}
    what = "MFU" if peak else "tokens/s"
    print(
        f"{card}, variant {args.variant}, batch {common}: ratio omni/plain {what}: {side['omni'] / side['plain']:.3f}"
    )


if __name__ == "__main__":
    main()
