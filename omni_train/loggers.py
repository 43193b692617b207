"""Lightning's loggers as the ``logger/`` configs use them, where they need more than Lightning's own."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import loggers

from omni_train.redact import Secrets, masked_argv


class WandbLogger(loggers.WandbLogger):
    """Lightning's `WandbLogger` that takes the W&B key and keeps secrets out of the run's files.

    Args:
        api_key: the W&B API key for this run; None: ``WANDB_API_KEY`` or ``wandb login``, as
            wandb does. Given to wandb as a setting, so it is never written down.
        **kwargs: Lightning's `WandbLogger` arguments; those it does not know go to ``wandb.init``.
    """

    def __init__(self, *args: Any, api_key: str | None = None, **kwargs: Any) -> None:
        # what wandb keeps of the run (name, notes, tags, config ...) gets the secrets masked, as config.yaml
        # does: ${oc.env:WANDB_API_KEY} in notes would be stored in the run file as typed
        secrets = Secrets([api_key] if api_key else [])  # and the secret-looking environment variables' values
        kwargs = {k: v if k == "settings" else secrets.redact(v) for k, v in kwargs.items()}
        if api_key:
            kwargs["settings"] = {**dict(kwargs.get("settings") or {}), "api_key": api_key}
        super().__init__(*args, **kwargs)

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        # wandb keeps the command line with the run (its metadata's "args"), and overrides can hold secrets.
        # Only the run's record is masked: Lightning's DDP launcher starts the other ranks from sys.argv.
        argv, sys.argv = sys.argv, masked_argv()
        try:
            return super().experiment
        finally:
            sys.argv = argv
