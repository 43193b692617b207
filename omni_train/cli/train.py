"""omni-train: staged Mini-Omni training from the Hydra configs in ``omni_train/configs/``.

    omni-train experiment=demo                          # the CPU demo, all three stages
    omni-train model=qwen2.5-1.5b stage=alignment       # one stage of the real recipe
    omni-train stage=adaption init_from=RUN/alignment/model
    omni-train experiment=demo hydra.run.dir=RUN resume=auto   # finish an interrupted run
    omni-train experiment=mini_omni --cfg job           # print the resolved config

Add your own config folders with Hydra's ``--config-dir``; see ``omni_train/configs/train.yaml``.

A mistake in the command ends with one line (``omni-train: error: ...``, status 1). Ctrl-C, SIGTERM
and SIGUSR1 save ``last.ckpt`` after the step in progress and stop with status 128 + the signal,
printing the command that continues the run (outside a stage's steps they stop at once, saying what is
kept). ``<run>/train.log`` holds the run's log.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import signal
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from omni_train import stopping
from omni_train.atomic import DiskFull, write_text
from omni_train.config import register
from omni_train.redact import Secrets, protect

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")  # package data: there in a regular install too
SECRETS = Secrets()  # grows with the command line's and the config's; masked in all the run writes and prints
log = logging.getLogger("omni_train")


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from omni_train.distributed import rank
    from omni_train.resume import RunLock, RunLocked

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]  # Hydra's <run>/train.log
    for name in ("lightning.pytorch", "lightning.fabric"):
        # Lightning prints its own lines; through Hydra's root console handler they would print twice
        logging.getLogger(name).propagate = False
        for handler in files:
            logging.getLogger(name).addHandler(handler)
    SECRETS.add_config(cfg)
    protect(SECRETS)
    run_dir = Path(cfg.run_dir)
    try:  # before anything is written: a refused second run must not replace the first one's .hydra/ record
        lock = RunLock(run_dir) if rank() == 0 else nullcontext()  # train() takes it again, as its own
    except RunLocked as err:
        print(f"omni-train: error: {err}", file=sys.stderr)
        sys.exit(1)
    with lock:
        _run(cfg, run_dir, files)


def _run(cfg: DictConfig, run_dir: Path, files: list[logging.FileHandler]) -> None:
    from omni_train.audio import AudioModelError, DownloadFailed
    from omni_train.config import ConfigError
    from omni_train.data.skips import TooManySkips
    from omni_train.resume import Preempted, RunLocked
    from omni_train.stages import TooManyBadSteps
    from omni_train.train import train

    save_hydra_files(cfg)

    def to_log_file(message: str, level: int) -> None:  # the terminal gets it once, by print
        record = {"name": log.name, "levelno": level, "levelname": logging.getLevelName(level), "msg": message}
        for handler in files:
            handler.emit(logging.makeLogRecord(record))

    def stop(message: str, code: int) -> None:
        to_log_file(message, logging.ERROR)
        _remove_if_unused(run_dir)
        print(message, file=sys.stderr)
        sys.exit(code)

    try:
        summary = train(cfg, requested_model_keys())
    except (ConfigError, AudioModelError, TooManySkips, TooManyBadSteps, RunLocked, DiskFull, FileNotFoundError,
            NotADirectoryError) as err:
        stop(f"omni-train: error: {err.advice(f'model.{err.key}=') if isinstance(err, DownloadFailed) else err}", 1)
    except Preempted as err:  # status 128 + signal says "stopped, resumable"
        stop(f"omni-train: {err}; continue with: {resume_command(err.run_dir)}", err.exit_code)
    except (KeyboardInterrupt, stopping.Stopped) as err:  # model building, a WER pass, between stages
        signum = err.signum if isinstance(err, stopping.Stopped) else signal.SIGINT
        done = sorted(p.parent.name for p in run_dir.glob("*/summary.json"))
        kept = f"the finished stages ({', '.join(done)}) are kept" if done else "nothing of this run was saved"
        stop(f"omni-train: {stopping.name(signum)}: stopped outside a stage's training steps; {kept}; continue with: "
             f"{resume_command(run_dir)}", 128 + signum)  # fmt: skip
    if summary.get("final_model"):  # rank 0 only
        from omni_train.report import summary_table

        table = summary_table(summary)
        to_log_file("run summary\n" + table, logging.INFO)
        print(table, flush=True)


def _stop_outside_training(signum: int, frame) -> None:
    if signum == signal.SIGUSR1:  # SLURM's warning: the job goes back in the queue, as from a stage
        from omni_train.resume import requeue_if_warned

        requeue_if_warned(signum)
    stopping.stop(signum)


def resume_command(run_dir: Path) -> str:
    """This command again, continuing the run in `run_dir`."""
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "resume=", "run_dir="))]
    return " ".join(["omni-train", *map(shlex.quote, args), f"hydra.run.dir={shlex.quote(str(run_dir))}", "resume=auto"])


def _remove_if_unused(run_dir: Path) -> None:
    """A command that failed before its run started leaves no folder behind (Hydra makes it first)."""
    ours = {".hydra", ".lock", "train.log"}
    if run_dir.is_dir() and not (run_dir / "config.yaml").exists() and {p.name for p in run_dir.iterdir()} <= ours:
        shutil.rmtree(run_dir, ignore_errors=True)


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


def save_hydra_files(cfg: DictConfig) -> None:
    """Hydra's record of the job in ``<run>/.hydra/`` (the config as composed, Hydra's own settings, the
    command-line overrides), with secrets masked: ``train.yaml`` stops Hydra writing them as typed."""
    from hydra.core.hydra_config import HydraConfig

    from omni_train.distributed import rank

    hydra_cfg = HydraConfig.get()
    if rank() != 0:  # the same test as the run's own records (train.py)
        return
    out = Path(hydra_cfg.runtime.output_dir) / (hydra_cfg.output_subdir or ".hydra")
    files = {"config.yaml": cfg, "hydra.yaml": {"hydra": hydra_cfg}, "overrides.yaml": hydra_cfg.overrides.task}
    for name, node in files.items():
        plain = OmegaConf.to_container(OmegaConf.create(node), resolve=False)
        write_text(out / name, OmegaConf.to_yaml(SECRETS.redact(plain)))


def main() -> None:
    register()
    for signum in stopping.SIGNALS:  # else SIGTERM/SIGUSR1 kill the process silently outside training
        signal.signal(signum, _stop_outside_training)
    SECRETS.add_overrides(sys.argv[1:])
    protect(SECRETS)  # Hydra's own errors echo the overrides
    if {"--help", "-h"} & set(sys.argv[1:]):  # Hydra's help lists the config groups; first, what a command looks like
        print(help_intro())
    elif not {"--cfg", "-c", "--info"} & set(sys.argv[1:]) and (problem := run_dir_problem(sys.argv[1:])):  # else Hydra's mkdir fails with two tracebacks
        print(f"omni-train: error: {problem}", file=sys.stderr)
        sys.exit(1)
    _main()


def run_dir_problem(args: list[str]) -> str | None:
    """Why the run folder (``hydra.run.dir=``, else one under the current folder) cannot be made, if it
    cannot: tried with a folder made and removed beside it, so that a failed command leaves none."""
    import os
    import tempfile

    given = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    where = Path(given).absolute() if given else Path.cwd()
    existing = next(p for p in [where, *where.parents] if os.path.lexists(p))
    what = f"hydra.run.dir={given}" if given else f"the current folder {where} (the run folder goes under it)"
    if not existing.is_dir():
        return f"{what}: {existing} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".omni-train-", dir=existing))
    except OSError as err:
        return f"{what}: cannot make a folder in {existing} ({err.strerror})"
    return None


def help_intro() -> str:
    """The module's examples and the task codes that ``stages.STAGE.tasks`` and a source's ``tasks`` take."""
    from omni_train.tasks import describe_tasks

    tasks = textwrap.fill(describe_tasks(), width=100, initial_indent="    ", subsequent_indent="    ")
    return f"{__doc__.strip()}\n\nTasks (stages.STAGE.tasks, data.sources.NAME.tasks):\n{tasks}\n"


if __name__ == "__main__":
    main()
