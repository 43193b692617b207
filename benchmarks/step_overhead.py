"""Step overhead: a stage-3 training step of OmniGPT vs the plain litgpt GPT of the same backbone.

Two plain models train as litgpt's full fine-tuning does (full logits, `chunked_cross_entropy`):
*plain* has a vocabulary as large as OmniGPT's whole table (181,120 for Qwen2: the same head work),
*own vocab* the base model's own (151,936: what a user would otherwise run; its embedding and head
are OmniGPT's first rows, the ids of the text layer folded into them). OmniGPT trains as stage 3
does (8 embedded layers averaged, Whisper frames through the adapter, `omni_loss`). All read the
same positions, share the very same blocks and one AdamW, and alternate repetitions.

Each ratio is the median of the repetitions' paired ratios (omni_i / plain_i), with their range
and spread: the relative standard error of their mean. ``--spread 0.03`` adds repetitions, one
round at a time, until every spread is under 3% (or ``--max-reps``).

Two batches: VoiceAssistant-shaped A1A2 rows through the real collator (only answers are
trained), and a dense batch where every position of every layer is trained (OmniGPT's worst
case). The frozen Whisper encoder is not part of the step (see whisper_encoder.py); its output is
random frames of whisper-small's width.

Both steps run with the allocator setting omni-train applies to CPU runs (`omni_train.allocator`:
freed memory kept for the next step); ``--allocator default`` leaves glibc as it comes.

    python benchmarks/step_overhead.py [--layers 2] [--max-tokens 1024] [--reps 3] [--spread 0.03] [--tiny]
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import fields

import torch
from common import TINY, interleaved_times, paired_ratio, voice_assistant_sample
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.utils import chunked_cross_entropy

from omni_train.allocator import keep_freed_memory
from omni_train.data.collator import IGNORE_INDEX, TASKS, OmniCollator, sequence_length
from omni_train.data.sampler import bucket_batches
from omni_train.loss import omni_loss
from omni_train.model import OmniConfig, OmniGPT
from omni_train.tasks import Task
from omni_train.vocab import N_AUDIO_LAYERS, TEXT_LAYER


def build(args, post_adapter: bool) -> tuple[OmniGPT, GPT, GPT]:
    torch.manual_seed(0)
    base = Config.from_name(args.model, n_layer=args.layers, **(TINY if args.tiny else {}))
    cfg = OmniConfig.from_base(
        base, whisper_adapter_dim=args.whisper_dim, post_adapter=post_adapter, post_adapter_layers=args.post_layers
    )
    omni = OmniGPT(cfg)
    plain_cfg = Config(
        **{**{f.name: getattr(base, f.name) for f in fields(Config)}, "padded_vocab_size": cfg.padded_vocab_size}
    )
    with torch.device("meta"):
        plain = GPT(plain_cfg)
    # the same Parameter objects: the two steps differ only in what they compute
    plain.transformer = omni.transformer
    plain.lm_head = omni.lm_head
    omni.max_seq_length = args.max_tokens + 64
    plain._max_seq_length, plain.cos, plain.sin = omni.max_seq_length, omni.cos, omni.sin  # not meta
    # the base model at its own vocabulary: the same blocks; embedding and head are views of
    # OmniGPT's first rows (no copy of the weights; gradients and AdamW state of their own)
    V = base.padded_vocab_size
    with torch.device("meta"):
        own = GPT(base)
    wte = torch.nn.Embedding(V, base.n_embd, _weight=omni.transformer.wte.weight.detach()[:V])
    own.transformer = torch.nn.ModuleDict({"wte": wte, "h": omni.transformer.h, "ln_f": omni.transformer.ln_f})
    own.lm_head = torch.nn.Linear(base.n_embd, V, bias=base.lm_head_bias, device="meta")
    own.lm_head.weight = torch.nn.Parameter(omni.lm_head.weight.detach()[:V])
    if base.lm_head_bias:
        own.lm_head.bias = torch.nn.Parameter(omni.lm_head.bias.detach()[:V])
    own._max_seq_length, own.cos, own.sin = omni.max_seq_length, omni.cos, omni.sin
    return omni, plain, own


def voice_assistant_batch(cfg: OmniConfig, max_tokens: int, seed: int):
    rng = random.Random(seed)
    samples = [voice_assistant_sample(rng, cfg.vocab.base_vocab_size) for _ in range(64)]
    samples = [s for s in samples if sequence_length(s) <= max_tokens]
    batch = max(bucket_batches(samples, sequence_length, max_tokens, seed=seed), key=len)
    return OmniCollator(cfg.vocab, pad_to_multiple_of=8)(batch)


def dense_batch(cfg: OmniConfig, like) -> dict:
    """Every position of every layer trained; a text question (no Whisper frames)."""
    B, _, L = like.input_ids.shape
    g = torch.Generator().manual_seed(0)
    vocab = cfg.vocab
    ids = torch.stack(
        [torch.randint(0, 4096, (B, L), generator=g) + vocab.audio_offset(i) for i in range(N_AUDIO_LAYERS)]
        + [torch.randint(0, vocab.base_vocab_size, (B, L), generator=g)],
        dim=1,
    )  # (B, 8, L)
    targets = ids.roll(-1, dims=-1)
    task_ids = torch.full((B,), TASKS.index(Task.T1A2))
    return {"input_ids": ids, "targets": targets, "task_ids": task_ids, "features": None, "lengths": None, "mask": None}


def omni_inputs(batch, whisper_dim: int) -> dict:
    features = torch.randn(batch.audio_lengths.numel(), int(batch.audio_lengths.max()), whisper_dim)
    return {
        "input_ids": batch.input_ids, "targets": batch.targets, "task_ids": batch.task_ids,
        "features": features, "lengths": batch.audio_lengths, "mask": batch.audio_mask,
    }  # fmt: skip


def steps(omni: OmniGPT, plain: GPT, own: GPT, data: dict):
    # one AdamW: a step that leaves a parameter's grad None (plain: the adapter) does not touch it
    own_params = [own.transformer.wte.weight, *own.lm_head.parameters()]
    optimizer = torch.optim.AdamW([*omni.parameters(), *own_params], lr=1e-6)
    ids, targets = data["input_ids"], data["targets"]
    plain_ids, plain_targets = ids[:, TEXT_LAYER], targets[:, TEXT_LAYER]  # (B, L)
    V = own.config.padded_vocab_size  # the text specials beyond it fold into it: the same work
    own_ids = plain_ids % V
    own_targets = torch.where(plain_targets == IGNORE_INDEX, IGNORE_INDEX, plain_targets % V)
    with_audio = bool((targets[:, :N_AUDIO_LAYERS] != IGNORE_INDEX).any())

    def omni_step():
        optimizer.zero_grad(set_to_none=True)
        h_text, h_audio = omni.hidden_states(
            ids, data["features"], data["lengths"], data["mask"], with_audio=with_audio
        )
        out = omni_loss(omni, h_text, h_audio, targets, data["task_ids"])
        out.loss.backward()
        optimizer.step()

    def plain_step(model, ids, targets):  # litgpt finetune/full.py's step
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids)  # (B, L, padded vocab)
        loss = chunked_cross_entropy(logits, targets)
        loss.backward()
        optimizer.step()

    return {
        "omni": omni_step,
        "plain": lambda: plain_step(plain, plain_ids, plain_targets),
        "own vocab": lambda: plain_step(own, own_ids, own_targets),
    }


def pairs(t: dict[str, list[float]]) -> dict[str, tuple[float, float, float, float]]:
    return {k: paired_ratio(t["omni"], t[k]) for k in ("plain", "own vocab")}


def settled(t: dict[str, list[float]], spread: float) -> bool:
    return all(r[3] <= spread for r in pairs(t).values())  # False while a spread is nan (1 repetition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-0.5B", help="litgpt config name (Qwen2-0.5B's shape)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--post-layers", type=int, default=6, help="post-adapter blocks (Mini-Omni: 6)")
    parser.add_argument("--whisper-dim", type=int, default=768)
    parser.add_argument("--max-tokens", type=int, default=1024, help="positions a batch (rows x padded length)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--spread", type=float, default=0.0, help="add repetitions until every spread is under this")
    parser.add_argument("--max-reps", type=int, default=20)
    parser.add_argument("--variants", default="lm_head,post_adapter")
    parser.add_argument("--batches", default="voice_assistant,dense")
    parser.add_argument("--allocator", choices=("keep", "default"), default="keep",
                        help="keep: freed memory kept for reuse, as omni-train's CPU runs; default: glibc's own")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="a 64-wide model with a 512-token base vocab (smoke test)")
    args = parser.parse_args()
    kept = keep_freed_memory() if args.allocator == "keep" else False
    if args.tiny:
        args.max_tokens, args.reps, args.whisper_dim = min(args.max_tokens, 256), 1, 32

    print(f"threads={torch.get_num_threads()} model={args.model} layers={args.layers} max_tokens={args.max_tokens} "
          f"allocator={'freed memory kept' if kept else 'glibc as configured'}")  # fmt: skip
    ratios = {}
    for variant in args.variants.split(","):
        omni, plain, own = build(args, post_adapter=variant == "post_adapter")
        va = voice_assistant_batch(omni.config, args.max_tokens, seed=0)
        data = {"voice_assistant": omni_inputs(va, args.whisper_dim), "dense": dense_batch(omni.config, va)}
        for name in args.batches.split(","):
            fns = steps(omni, plain, own, data[name])
            t = interleaved_times(fns, reps=args.reps)
            while args.spread and len(t["omni"]) < args.max_reps and not settled(t, args.spread):
                for k, more in interleaved_times(fns, reps=1, warmup=0).items():
                    t[k] += more
            B, _, L = data[name]["input_ids"].shape
            trained = (data[name]["targets"] != IGNORE_INDEX).float().mean(dim=(0, 2))  # (8,)
            print(
                f"{variant:12s} {name:15s} B={B} L={L} vocab={omni.config.padded_vocab_size} "
                f"trained text={trained[TEXT_LAYER]:.2f} audio={trained[:N_AUDIO_LAYERS].mean():.2f}  "
                + "  ".join(f"{k} {statistics.median(v):.3f} s" for k, v in t.items())
            )
            for k, (ratio, lo, hi, spread) in pairs(t).items():
                ratios[variant, name, k] = ratio
                vocab = omni.config.padded_vocab_size if k == "plain" else own.config.padded_vocab_size
                print(f"    omni / {k} ({vocab} vocab): {ratio:.3f}  range {lo:.3f}-{hi:.3f}  "
                      f"spread {spread:.1%}  ({len(t['omni'])} repetitions)")  # fmt: skip
        del omni, plain, own
    print("ratio omni/plain step: " + ", ".join(f"{v} {b} /{k} {r:.3f}" for (v, b, k), r in ratios.items()))


if __name__ == "__main__":
    main()
