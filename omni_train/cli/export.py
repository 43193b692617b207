"""omni-export: write a checkpoint in Mini-Omni's format, or re-save it in ours.

    omni-export --format mini-omni CHECKPOINT OUT_DIR   # loadable by Mini-Omni's inference code
    omni-export --format omni CHECKPOINT OUT_DIR        # our format

CHECKPOINT may be in either format (told apart by its model_config.yaml), so
``--format omni`` on the released Mini-Omni checkpoint imports it for fine-tuning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni_train.checkpoints import export_mini_omni, load_checkpoint, save_omni


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="omni-export", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=("mini-omni", "omni"), help="format to write")
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (our format or Mini-Omni's)")
    parser.add_argument("out_dir", type=Path, help="output directory; replaced atomically if it exists")
    args = parser.parse_args(argv)

    try:
        model, _ = load_checkpoint(args.checkpoint)
        write = export_mini_omni if args.format == "mini-omni" else save_omni
        out = write(model, args.out_dir, args.checkpoint)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        sys.exit(f"omni-export: error: {e}")
    print(f"wrote {args.format} checkpoint to {out}")


if __name__ == "__main__":
    main()
