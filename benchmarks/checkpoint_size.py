"""What a run needs on disk, computed from parameter counts (no weights are made or written).

Per stage, omni-train writes a model folder and Lightning checkpoints (``last.ckpt`` plus the
``keep_checkpoints`` newest ``step-N.ckpt``). Each Lightning checkpoint holds the model's fp32
weights (the frozen Whisper encoder is left out) and AdamW's two fp32 moments for the parameters
that stage trains (whole tensors: stage 1's masked embedding tables carry full moments). A model
folder holds the fp32 weights, Whisper's checkpoint (openai-whisper stores fp16) and SNAC's (fp32).
Pickle headers and tokenizer files add well under 1%.

    python benchmarks/checkpoint_size.py [--model Qwen2.5-0.5B] [--whisper small] [--keep 1] [--tiny]
"""

from __future__ import annotations

import argparse

import torch
import whisper
from common import TINY
from litgpt.config import Config

from omni_train.model import OmniConfig, OmniGPT
from omni_train.stages import STAGES

GiB = 2**30  # GiB, as df -h and du -h count
SNAC_24KHZ_PARAMS = 19_800_000  # hubertsiuzdak/snac_24khz, about 19.8 M parameters (79 MB in fp32)
WHISPER_DIMS = {  # openai-whisper's published dims (whisper.load_model reads them from the checkpoint)
    "tiny": (384, 6, 4), "base": (512, 8, 6), "small": (768, 12, 12), "medium": (1024, 16, 24),
}  # fmt: skip


def whisper_params(name: str) -> int:
    width, heads, layers = WHISPER_DIMS[name]
    with torch.device("meta"):  # the two halves (Whisper's own __init__ makes a sparse buffer meta cannot)
        halves = whisper.model.AudioEncoder(80, 1500, width, heads, layers), whisper.model.TextDecoder(
            51865, 448, width, heads, layers
        )
    return sum(p.numel() for half in halves for p in half.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-0.5B", help="litgpt config name (Qwen2-0.5B's shape)")
    parser.add_argument("--whisper", default="small", choices=sorted(WHISPER_DIMS))
    parser.add_argument("--keep", type=int, default=1, help="stages.<stage>.keep_checkpoints")
    parser.add_argument("--tiny", action="store_true", help="a 64-wide model (smoke test)")
    args = parser.parse_args()

    base = Config.from_name(args.model, **(TINY if args.tiny else {}))
    width = WHISPER_DIMS[args.whisper][0]
    with torch.device("meta"):
        model = OmniGPT(OmniConfig.from_base(base, whisper_adapter_dim=width))
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    folder = 4 * total + 2 * whisper_params(args.whisper) + 4 * SNAC_24KHZ_PARAMS
    print(f"{args.model} as OmniGPT: {total / 1e6:.0f} M parameters; model folder {folder / GiB:.2f} GiB "
          f"(fp32 weights, Whisper {args.whisper}, SNAC)")  # fmt: skip
    run = 0.0
    for name, trained in zip(STAGES, _trained(model, params)):
        ckpt = 4 * total + 8 * trained
        stage = (1 + args.keep) * ckpt + folder
        run += stage
        print(f"{name:<10} trains {trained / 1e6:>5.0f} M: a checkpoint {ckpt / GiB:.2f} GiB; "
              f"last.ckpt + {args.keep} step checkpoint(s) + model folder = {stage / GiB:.1f} GiB")  # fmt: skip
    floor = run - args.keep * sum(4 * total + 8 * t for t in _trained(model, params))
    print(f"a three-stage run with keep_checkpoints={args.keep}: {run / GiB:.1f} GiB; with 0: {floor / GiB:.1f} GiB")
    print(f"ratio keep_checkpoints={args.keep} / 0: {run / floor:.2f}")


def _trained(model: OmniGPT, params: dict) -> list[int]:
    return [sum(p.numel() for n, p in params.items() if cls.trainable(_Rule(model), n)) for cls in STAGES.values()]


class _Rule:
    """What a stage's `trainable` reads (its model), without building the module."""

    def __init__(self, model: OmniGPT) -> None:
        self.model = model


if __name__ == "__main__":
    main()
