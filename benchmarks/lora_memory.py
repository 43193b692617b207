"""LoRA memory: peak training memory and step time of a stage-3 step, LoRA vs full fine-tuning.

Measured: Qwen2.5-1.5B's width (1536, 12 heads, 2 query groups, MLP 8960) at reduced depths, on
CPU; its 151,936-token base vocabulary by default, or a smaller one (``--base-vocab``) where
full fine-tuning of its tables does not fit the machine's memory. Both variants run the real stage-3 module
(`MultimodalFinetuning`: its freeze rule, its fused AdamW, `model_step` with `omni_loss`) on the
same VoiceAssistant-shaped A1A2 batch through the real collator; Whisper's output is random
frames of whisper-small's width (the frozen encoder is the same in both). LoRA is ``model.lora``
as the qwen2.5_7b_lora experiment sets it (rank 16 on every projection, not the head).

Variants (``--variants``): ``full`` and ``lora``, each also with ``model.activation_checkpointing``
(``+ckpt``: each block recomputed in backward), and ``lora-dropout0+ckpt`` (LoRA without dropout,
whose layers then keep no dropped copy of their input).

How memory is measured: each variant runs in a fresh process, which notes its resident set once
torch is imported (the zero), builds the model, resets its high-water mark (Linux:
``echo 5 > /proc/self/clear_refs``) and trains; the figure is the high-water mark after the steps
minus the zero: weights, gradients, AdamW state, activations and transients, all of it. Time is
the median CPU time of a step (`time.process_time`, torch on one thread). The processes alternate
(full, LoRA, full, LoRA ...) so that a change in the machine's load hits both.

Counted, not measured (meta device, no weights): parameters, trainable parameters and the bytes of
weights + gradients + AdamW state at the full depth of Qwen2.5-1.5B, Qwen2.5-7B and Llama-3.1-8B,
under bf16-mixed (fp32 master weights: 4 bytes a weight, 4 a gradient, 8 of AdamW state).

Projected: the measured peak minus the counted bytes is what the step adds (activations and
transients); measured at two depths, it splits into a part a layer and the rest, which give the
peak at Qwen2.5-1.5B's full depth and vocabulary for the same batch (fp32 activations, as on CPU).

    python benchmarks/lora_memory.py [--layers 1,2] [--base-vocab 8192] [--max-tokens 1024] [--steps 2] [--rounds 2]
                                     [--variants full,lora,full+ckpt,lora+ckpt] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import TINY, voice_assistant_sample
from torch import nn

from omni_train.config import LoraConfig

LORA = LoraConfig(r=16, alpha=32.0, dropout=0.05)  # experiment=qwen2.5_7b_lora's model.lora
# variant -> (its model.lora, or None for full fine-tuning; model.activation_checkpointing)
VARIANTS = {
    "full": (None, False),
    "lora": (LORA, False),
    "full+ckpt": (None, True),
    "lora+ckpt": (LORA, True),
    "lora-dropout0+ckpt": (dataclasses.replace(LORA, dropout=0.0), True),
}
# ratios printed: (numerator, denominator), where both were measured
PAIRS = [("lora", "full"), ("lora+ckpt", "full+ckpt"), ("lora+ckpt", "full"), ("lora-dropout0+ckpt", "full+ckpt"),
         ("lora-dropout0+ckpt", "full"), ("full+ckpt", "full"), ("lora+ckpt", "lora")]  # fmt: skip
WHISPER_SMALL_WIDTH = 768
FULL_SHAPES = ("Qwen2.5-1.5B", "Qwen2.5-7B", "Llama-3.1-8B")
GIB = 2**30


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def omni_config(name: str, layers: int | None, tiny: bool, whisper_width: int, base_vocab: int | None = None):
    from litgpt.config import Config

    from omni_train.model import OmniConfig

    shape = {**(TINY if tiny else {}), **({"n_layer": layers} if layers else {})}
    if base_vocab:
        shape.update(vocab_size=base_vocab, padded_vocab_size=base_vocab)
    return OmniConfig.from_base(Config.from_name(name, **shape), whisper_adapter_dim=whisper_width)


def stage3(model):
    """The stage-3 module around `model` (its freeze rule runs in the constructor)."""
    from omni_train.checkpoints import ModelBundle
    from omni_train.config import StageConfig
    from omni_train.stages import MultimodalFinetuning

    return MultimodalFinetuning(ModelBundle(model), StageConfig(tasks={}, max_steps=1000, max_lr=1e-5, warmup_steps=1))


# ---- counted: parameters and static bytes from the configs ----------------------------------------
def counted(config, lora: LoraConfig | None) -> dict[str, float]:
    """Parameters, trainable ones in stage 3, and bytes of weights, gradients and AdamW state (fp32)."""
    from omni_train.model import OmniGPT

    with torch.device("meta"):
        model = OmniGPT(config)
        if lora is not None:
            model.add_lora(lora)
        stage3(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "params": total,
        "trainable": trainable,
        "optimizer_bytes": 8 * trainable,  # AdamW's two fp32 moments
        "static_bytes": 4 * total + 4 * trainable + 8 * trainable,  # weights, gradients, AdamW state
    }


# ---- measured: one variant in this process -------------------------------------------------------
class RandomFrames(nn.Module):
    """Stands in for the frozen Whisper encoder: fixed random frames of whisper-small's width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def encode_audio(self, audio: torch.Tensor, samples: torch.Tensor, cache=None) -> torch.Tensor:  # cache: no log-mels here
        from omni_train.audio import whisper_frames

        g = torch.Generator().manual_seed(0)
        frames = max(whisper_frames(n) for n in samples.tolist())
        return torch.randn(audio.size(0), frames, self.width, generator=g)  # (Ba, F, width)


def child(args) -> None:
    from omni_train.data.collator import OmniCollator, sequence_length
    from omni_train.data.sampler import bucket_batches
    from omni_train.model import OmniGPT

    torch.set_num_threads(1)
    zero = rss_kb("VmRSS")
    torch.manual_seed(0)
    config = omni_config(args.model, args.layers, args.tiny, args.whisper_width, args.base_vocab)
    model = OmniGPT(config)
    lora, model.activation_checkpointing = VARIANTS[args.child]
    if lora is not None:
        model.add_lora(lora, seed=0)
    module = stage3(model)
    module.encoder = RandomFrames(args.whisper_width)
    optimizer = module.configure_optimizers()["optimizer"]
    rng = random.Random(0)
    samples = [voice_assistant_sample(rng, config.vocab.base_vocab_size) for _ in range(64)]
    samples = [s for s in samples if sequence_length(s) <= args.max_tokens]
    batch = OmniCollator(config.vocab, pad_to_multiple_of=8)(
        max(bucket_batches(samples, sequence_length, args.max_tokens, seed=0), key=len)
    )
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times, losses = [], []
    for _ in range(1 + args.steps):  # the first step allocates AdamW's state: in the peak, not in the time
        t0 = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = module.model_step(batch).loss
        loss.backward()
        optimizer.step()
        times.append(time.process_time() - t0)
        losses.append(loss.item())
    B, _, L = batch.input_ids.shape
    out = {"peak_bytes": (rss_kb("VmHWM") - zero) * 1024, "step_s": statistics.median(times[1:]),
           "loss": losses[0], "rows": B, "length": L}  # fmt: skip
    print(json.dumps(out))


# ---- the driver ----------------------------------------------------------------------------------
def measure(args, layers: int) -> dict[str, dict]:
    """Each variant `rounds` times in fresh processes, alternating; the median of each figure."""
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    flags = ["--model", args.model, "--layers", str(layers), "--max-tokens", str(args.max_tokens),
             "--steps", str(args.steps), "--whisper-width", str(args.whisper_width)]  # fmt: skip
    flags += (["--tiny"] if args.tiny else []) + (["--base-vocab", str(args.base_vocab)] if args.base_vocab else [])
    for _ in range(args.rounds):
        for variant in runs:
            cmd = [sys.executable, __file__, "--child", variant, *flags]
            run = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"lora_memory.py: the {variant} process failed ({run.returncode}):\n{run.stderr[-3000:]}")
            runs[variant].append(json.loads(run.stdout.strip().splitlines()[-1]))
    return {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-1.5B", help="litgpt config name of the measured width")
    parser.add_argument("--layers", default="1,2", help="measured depths, comma-separated (two give the projection)")
    parser.add_argument(
        "--base-vocab", type=int, default=None, help="base vocabulary of the measured model (default: the model's)"
    )
    parser.add_argument("--max-tokens", type=int, default=1024, help="positions a batch (rows x padded length)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps a process, after one untimed step")
    parser.add_argument("--rounds", type=int, default=2, help="processes a variant (alternating)")
    parser.add_argument("--variants", default="full,lora,full+ckpt,lora+ckpt",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--whisper-width", type=int, default=WHISPER_SMALL_WIDTH)
    parser.add_argument("--tiny", action="store_true", help="a 64-wide model with a 512-token base vocab (smoke test)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.max_tokens, args.steps, args.rounds, args.whisper_width = 256, 1, 1, 32
    if args.child:
        args.layers = int(args.layers)
        return child(args)
    args.variants = args.variants.split(",")
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"--variants: no variant {', '.join(unknown)} (there are {', '.join(VARIANTS)})")
    pairs = [(a, b) for a, b in PAIRS if a in args.variants and b in args.variants]

    print(f"LoRA: r={LORA.r} alpha={LORA.alpha:g} on query, key, value, projection, mlp (not the head)")
    print("counted at full depth (bf16-mixed: fp32 weights, gradients, AdamW state; activations not included):")
    print(f"{'model':14s} {'variant':7s} {'params':>9s} {'trained':>9s} {'AdamW state':>12s} {'static':>9s}")
    counts = {}
    for name in FULL_SHAPES if not args.tiny else (args.model,):
        config = omni_config(name, None, args.tiny, WHISPER_SMALL_WIDTH if not args.tiny else args.whisper_width)
        counts[name] = c = {v: counted(config, LORA if v == "lora" else None) for v in ("full", "lora")}
        for v, r in c.items():
            print(f"{name:14s} {v:7s} {r['params'] / 1e9:8.2f}B {r['trainable'] / 1e9:8.3f}B "
                  f"{r['optimizer_bytes'] / GIB:10.1f} GiB {r['static_bytes'] / GIB:6.1f} GiB")  # fmt: skip
        print(f"{name:14s} ratio lora/full static bytes {c['lora']['static_bytes'] / c['full']['static_bytes']:.3f}")

    def kind(variant: str) -> str:  # whose counted bytes a variant has (activation checkpointing adds none)
        return "full" if VARIANTS[variant][0] is None else "lora"

    depths = [int(d) for d in args.layers.split(",")]
    added: dict[str, dict[int, float]] = {v: {} for v in args.variants}  # bytes the step adds to the counted ones
    peaks: dict[str, dict[int, float]] = {v: {} for v in args.variants}
    for layers in depths:
        config = omni_config(args.model, layers, args.tiny, args.whisper_width, args.base_vocab)
        predicted = {v: counted(config, LORA if v == "lora" else None) for v in ("full", "lora")}
        got = measure(args, layers)
        first = got[args.variants[0]]
        print(f"measured: {args.model} width {config.n_embd}, {layers} layers, vocabulary {config.padded_vocab_size} "
              f"(base {config.vocab.base_vocab_size}), {first['rows']:.0f} rows x {first['length']:.0f} "
              "positions, one thread")  # fmt: skip
        for v, r in got.items():
            count = predicted[kind(v)]
            static = count["static_bytes"]
            added[v][layers], peaks[v][layers] = r["peak_bytes"] - static, r["peak_bytes"]
            print(f"  {v:18s} params {count['params'] / 1e6:7.1f} M, trained {count['trainable'] / 1e6:7.1f} M; "
                  f"peak {r['peak_bytes'] / GIB:6.2f} GiB = counted {static / GIB:5.2f} GiB + step {added[v][layers] / GIB:5.2f} GiB; "
                  f"step {r['step_s']:.2f} s; first loss {r['loss']:.4f}")  # fmt: skip
        for a, b in pairs:
            print(f"  {layers} layers: ratio {a}/{b} step time {got[a]['step_s'] / got[b]['step_s']:.3f}")
    if len(depths) >= 2:
        a, b = depths[0], depths[-1]
        full_depth = omni_config(args.model, None, args.tiny, args.whisper_width).n_layer
        projected = {}
        for v in args.variants:
            per_layer = (added[v][b] - added[v][a]) / (b - a)
            rest = added[v][a] - a * per_layer
            static = counts[args.model][kind(v)]["static_bytes"]
            projected[v] = static + rest + full_depth * per_layer
            print(f"projected: {args.model} at {full_depth} layers, same batch: {v:18s} counted "
                  f"{static / GIB:5.1f} GiB + {full_depth} x {per_layer / 2**20:5.0f} MiB a layer "
                  f"+ {rest / 2**20:5.0f} MiB = {projected[v] / GIB:5.1f} GiB")  # fmt: skip
        for x, y in pairs:
            print(f"projected ratio {x}/{y} peak memory at {full_depth} layers: {projected[x] / projected[y]:.3f}")
    last = depths[-1]
    for x, y in pairs:
        print(f"ratio {x}/{y} peak memory at {last} layers (measured): {peaks[x][last] / peaks[y][last]:.3f}")


if __name__ == "__main__":
    main()
