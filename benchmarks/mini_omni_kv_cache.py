"""Mini-Omni's inference memory on our export: KV cache and mask sized by the exported block_size.

Mini-Omni's model code (its vendored litgpt 0.4) allocates, at ``set_kv_cache``, a K and a V
cache of ``block_size`` positions for every head of every block and a ``block_size``-square causal
mask. This script exports one random model at Qwen2-0.5B's shape twice with ``omni-export``'s
code: once with the base LLM's block_size (what exports wrote before: 32768) and once with the
default (the trained context, at least Mini-Omni's 2048). Each export is loaded in a fresh process
by Mini-Omni's own ``Config.from_file`` + ``GPT`` + ``load_state_dict(strict=True)``, as its
``inference.py`` does, then ``set_kv_cache(batch_size=B)``; the process reports the bytes of the
cache and mask tensors, its RSS growth from ``set_kv_cache`` and through a few decode steps
(resident-set high-water mark, reset after loading), and CPU seconds a decode step (text-only input,
one thread).

    python benchmarks/mini_omni_kv_cache.py --mini-omni PATH [--batch 1] [--layers 24] [--tiny]

PATH is a checkout of gpt-omni/mini-omni (not vendored). The figure needs about 10 GB of memory at
the full shape with batch 1 (the 32768 export); --layers shrinks the trunk (cache memory scales
with it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DECODE_STEPS = 4
PROMPT = 16


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args) -> None:
    """In Mini-Omni's process: its loader, its cache, its decode step."""
    sys.path.insert(0, args.mini_omni)
    import torch
    from litgpt.config import Config  # Mini-Omni's litgpt 0.4: the checkout comes first on sys.path
    from litgpt.model import GPT

    torch.set_num_threads(1)
    config = Config.from_file(Path(args.child) / "model_config.yaml")
    config.post_adapter = False  # as Mini-Omni's load_model does
    model = GPT(config)
    state = torch.load(Path(args.child) / "lit_model.pth", mmap=True, weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    del state
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_kb("VmRSS")
    model.set_kv_cache(batch_size=args.batch)
    cache = sum(t.numel() * t.element_size() for b in model.transformer.h for t in (b.attn.kv_cache.k, b.attn.kv_cache.v))
    mask = model.mask_cache.numel() * model.mask_cache.element_size()
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        ids = [torch.randint(0, 1000, (args.batch, PROMPT), generator=g) for _ in range(8)]
        model(None, ids, input_pos=torch.arange(PROMPT))
        t0 = time.process_time()
        for step in range(DECODE_STEPS):
            ids = [torch.randint(0, 1000, (args.batch, 1), generator=g) for _ in range(8)]
            model(None, ids, input_pos=torch.tensor([PROMPT + step]))
        per_token = (time.process_time() - t0) / DECODE_STEPS
    print(json.dumps({"block_size": config.block_size, "cache_bytes": cache, "mask_bytes": mask,
                      "rss_growth_kb": rss_kb("VmHWM") - before, "cpu_s_per_token": per_token}))  # fmt: skip


def export(out: Path, args) -> dict[str, Path]:
    """The same random model exported with the base's block_size and with the default."""
    import torch
    from common import TINY
    from litgpt.config import Config

    from omni_train.checkpoints import export_mini_omni, mini_omni_block_size
    from omni_train.model import OmniConfig, OmniGPT

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from tiny import train_tokenizer

    tokenizer = out / "tokenizer"
    tokenizer.mkdir(parents=True)
    train_tokenizer(tokenizer)
    torch.manual_seed(0)
    overrides = TINY if args.tiny else {}
    base = Config.from_name("Qwen2.5-0.5B", n_layer=args.layers, **overrides)
    model = OmniGPT(OmniConfig.from_base(base, whisper_adapter_dim=768)).to(torch.bfloat16)  # bf16: half the file
    return {
        "base block_size": export_mini_omni(model, out / "before", tokenizer, model.config.block_size),
        "trained context": export_mini_omni(model, out / "after", tokenizer, mini_omni_block_size(model.config, None)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini-omni", required=True, help="a checkout of gpt-omni/mini-omni")
    parser.add_argument("--batch", type=int, default=1, help="Mini-Omni's A1A2 uses 1, its batch-parallel A1A2 2")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tiny", action="store_true", help="a 64-wide trunk (smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not (Path(args.mini_omni) / "litgpt" / "model.py").is_file():
        sys.exit(f"--mini-omni {args.mini_omni}: not a gpt-omni/mini-omni checkout (no litgpt/model.py)")

    with tempfile.TemporaryDirectory() as tmp:
        exports = export(Path(tmp), args)
        rows = {}
        for name, path in exports.items():  # one process each: RSS is per process
            cmd = [sys.executable, __file__, "--mini-omni", args.mini_omni, "--batch", str(args.batch), "--child", path]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode:
                sys.exit(f"Mini-Omni's code failed on the {name} export:\n{run.stderr[-3000:]}")
            rows[name] = json.loads(run.stdout.strip().splitlines()[-1])

    shape = "tiny" if args.tiny else f"Qwen2-0.5B shape, {args.layers} layers"
    print(f"Mini-Omni's GPT on our export ({shape}, batch {args.batch}, fp32 as its loader makes it):")
    print(f"{'export':<18}{'block_size':>11}{'KV cache MB':>13}{'mask MB':>9}{'RSS growth MB':>15}{'CPU s/token':>13}")
    for name, r in rows.items():
        print(f"{name:<18}{r['block_size']:>11}{r['cache_bytes'] / 1e6:>13.1f}{r['mask_bytes'] / 1e6:>9.1f}"
              f"{r['rss_growth_kb'] / 1e3:>15.1f}{r['cpu_s_per_token']:>13.3f}")  # fmt: skip
    before, after = rows.values()
    ratio = (after["cache_bytes"] + after["mask_bytes"]) / (before["cache_bytes"] + before["mask_bytes"])
    print(f"decode step, trained context / base block_size: {after['cpu_s_per_token'] / before['cpu_s_per_token']:.2f}x")
    print(f"ratio cache + mask, trained context / base block_size: {ratio:.3f}")


if __name__ == "__main__":
    main()
