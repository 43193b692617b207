"""omni-export: write a checkpoint in Mini-Omni's format, or re-save it in ours.

    omni-export --format mini-omni CHECKPOINT OUT_DIR   # loadable by Mini-Omni's inference code
    omni-export --format omni CHECKPOINT OUT_DIR        # our format

CHECKPOINT may be in either format (told apart by its model_config.yaml), so
``--format omni`` on the released Mini-Omni checkpoint imports it for fine-tuning.

A Mini-Omni export's block_size is the context the model was trained at (recorded by omni-train
in omni_audio.json), at least Mini-Omni's 2048: its code sizes the KV cache by it. ``--block-size``
sets another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni_train.checkpoints import ModelBundle, export_mini_omni, mini_omni_block_size, save_omni


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="omni-export", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=("mini-omni", "omni"), help="format to write")
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (our format or Mini-Omni's)")
    parser.add_argument("out_dir", type=Path, help="output directory; replaced atomically if it exists")
    parser.add_argument("--block-size", type=int, help="mini-omni: the context its KV cache is sized for "
                        "(default: the trained context, at least 2048)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.block_size is not None and args.format != "mini-omni":
        parser.error("--block-size is for --format mini-omni (our format keeps the model's own)")

    try:
        bundle = ModelBundle.load(args.checkpoint)
        if args.format == "mini-omni":
            block_size = args.block_size or mini_omni_block_size(bundle.model.config, bundle.trained_context)
            out = export_mini_omni(bundle.model, args.out_dir, args.checkpoint, block_size)
        else:
            out = save_omni(bundle.model, args.out_dir, args.checkpoint)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        sys.exit(f"omni-export: error: {e}")
    print(f"wrote {args.format} checkpoint to {out}")


if __name__ == "__main__":
    main()
