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
from omegaconf import DictConfig, OmegaConf

from omni_train.config import register
from omni_train.redact import Secrets, protect

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")  # package data: there in a regular install too
SECRETS = Secrets()  # grows with the command line's and the config's; masked in all the run writes and prints
log = logging.getLogger("omni_train")


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from omni_train.data.skips import TooManySkips
    from omni_train.resume import Preempted
    from omni_train.stages import TooManyBadSteps
    from omni_train.train import ConfigError, train

    for name in ("lightning.pytorch", "lightning.fabric"):  # they print themselves; Hydra's root handler would repeat it
        logging.getLogger(name).propagate = False
    SECRETS.add_config(cfg)
    protect(SECRETS)
    save_hydra_files(cfg)

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


def save_hydra_files(cfg: DictConfig) -> None:
    """Hydra's record of the job in ``<run>/.hydra/`` (the config as composed, Hydra's own settings, the
    command-line overrides), with secrets masked: ``train.yaml`` stops Hydra writing them as typed."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.utilities import rank_zero_only

    hydra_cfg = HydraConfig.get()
    if rank_zero_only.rank != 0:
        return
    out = Path(hydra_cfg.runtime.output_dir) / (hydra_cfg.output_subdir or ".hydra")
    out.mkdir(parents=True, exist_ok=True)
    files = {"config.yaml": cfg, "hydra.yaml": {"hydra": hydra_cfg}, "overrides.yaml": hydra_cfg.overrides.task}
    for name, node in files.items():
        plain = OmegaConf.to_container(OmegaConf.create(node), resolve=False)
        (out / name).write_text(OmegaConf.to_yaml(SECRETS.redact(plain)))


def main() -> None:
    register()
    SECRETS.add_overrides(sys.argv[1:])
    protect(SECRETS)  # Hydra's own errors echo the overrides
    _main()


if __name__ == "__main__":
    main()
