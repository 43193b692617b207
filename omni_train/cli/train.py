"""omni-train: staged Mini-Omni training from the Hydra configs in ``configs/``.

    omni-train experiment=demo                          # the CPU demo, all three stages
    omni-train model=qwen2.5-1.5b stage=alignment       # one stage of the real recipe
    omni-train stage=adaption init_from=RUN/alignment/model
    omni-train experiment=demo hydra.run.dir=RUN resume=auto   # finish an interrupted run
    omni-train experiment=mini_omni --cfg job           # print the resolved config

Add your own config folders with Hydra's ``--config-dir``; see ``configs/train.yaml``.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import hydra
from omegaconf import DictConfig

from omni_train.config import register

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
log = logging.getLogger("omni_train")


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from omni_train.audio import AudioModelError, DownloadFailed
    from omni_train.config import ConfigError
    from omni_train.data.skips import TooManySkips
    from omni_train.resume import Preempted
    from omni_train.stages import TooManyBadSteps
    from omni_train.train import train

    for name in ("lightning.pytorch", "lightning.fabric"):  # they print themselves; Hydra's root handler would repeat it
        logging.getLogger(name).propagate = False

    try:
        summary = train(cfg, requested_model_keys())
    except (ConfigError, AudioModelError, TooManySkips, TooManyBadSteps, FileNotFoundError, NotADirectoryError) as err:
        message = err.advice(f"model.{err.key}=") if isinstance(err, DownloadFailed) else str(err)
        log.error("omni-train: %s", message)
        sys.exit(f"omni-train: error: {message}")
    except Preempted as stop:  # a checkpoint was saved: status 128 + signal says "stopped, resumable"
        log.warning("omni-train: %s", stop)
        print(f"omni-train: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    if summary.get("final_model"):  # rank 0 only
        from omni_train.report import print_summary

        print_summary(summary)


def requested_model_keys() -> set[str]:
    """The ``model.*`` keys this command chose: all of a model preset other than ``train.yaml``'s
    default (picked by ``model=`` or an experiment), and each ``model.KEY=`` override. A run that
    starts from a model folder takes the others from the folder (`omni_train.builders.build_model`).
    """
    from dataclasses import fields

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from omni_train.config import ModelConfig

    hc = HydraConfig.get()
    defaults = OmegaConf.to_container(OmegaConf.load(Path(CONFIGS) / "train.yaml").defaults)
    default = next(d["model"] for d in defaults if isinstance(d, dict) and "model" in d)
    keys = [override.split("=", 1)[0].lstrip("+~") for override in hc.overrides.task]
    chosen = set()
    if hc.runtime.choices.get("model") != default or "model" in keys:
        # a preset's checkpoint_dir names the base it was made from, which a trained model no longer needs
        chosen = {f.name for f in fields(ModelConfig)} - {"checkpoint_dir"}
    chosen |= {key.split(".")[1] for key in keys if key.startswith("model.")}
    return chosen


def main() -> None:
    register()
    if {"--help", "-h"} & set(sys.argv[1:]):  # Hydra's help lists the config groups; first, what a command looks like
        print(help_intro())
    _main()


def help_intro() -> str:
    """The module's examples and the task codes that ``stages.STAGE.tasks`` and a source's ``tasks`` take."""
    from omni_train.tasks import describe_tasks

    tasks = textwrap.fill(describe_tasks(), width=100, initial_indent="    ", subsequent_indent="    ")
    return f"{__doc__.strip()}\n\nTasks (stages.STAGE.tasks, data.sources.NAME.tasks):\n{tasks}\n"


if __name__ == "__main__":
    main()
