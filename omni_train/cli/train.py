"""omni-train: staged Mini-Omni training from the Hydra configs in ``omni_train/configs/``.

    omni-train experiment=demo                          # the CPU demo, all three stages
    omni-train model=qwen2.5-1.5b stage=alignment       # one stage of the real recipe
    omni-train stage=adaption init_from=RUN/alignment/model
    omni-train experiment=demo hydra.run.dir=RUN resume=auto   # finish an interrupted run
    omni-train experiment=mini_omni --cfg job           # print the resolved config

Add your own config folders with Hydra's ``--config-dir``; see ``omni_train/configs/train.yaml``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from omni_train.config import register

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")  # package data: there in a regular install too
log = logging.getLogger("omni_train")


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from omni_train.data.skips import TooManySkips
    from omni_train.resume import Preempted
    from omni_train.stages import TooManyBadSteps
    from omni_train.train import ConfigError, train

    for name in ("lightning.pytorch", "lightning.fabric"):  # they print themselves; Hydra's root handler would repeat it
        logging.getLogger(name).propagate = False

    try:
        summary = train(cfg)
    except (ConfigError, TooManySkips, TooManyBadSteps, FileNotFoundError, NotADirectoryError) as err:
        log.error("omni-train: %s", err)
        sys.exit(f"omni-train: error: {err}")
    except Preempted as stop:  # a checkpoint was saved: status 128 + signal says "stopped, resumable"
        log.warning("omni-train: %s", stop)
        print(f"omni-train: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    if summary.get("final_model"):  # rank 0 only
        from omni_train.report import print_summary

        print_summary(summary)


def main() -> None:
    register()
    _main()


if __name__ == "__main__":
    main()
