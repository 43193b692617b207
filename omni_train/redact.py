"""Keeping secrets out of everything a run writes and prints.

A secret is the value of a secret-looking key (``api_key``, ``hf_token``, ``password``, ...) in
the config or on the command line (``+hf_token=...``, ``logger.wandb.api_key=...``), or the value
of a secret-looking environment variable (``WANDB_API_KEY``, ``HF_TOKEN``), which
``${oc.env:...}`` brings into the config. Saved configs get them masked by key and by value;
console output and log records by value, once `protect` has been called.

Values shorter than `MIN_LENGTH` are masked under their own key only: as a substring they would
match ordinary text everywhere (``use_auth_token=true`` must not mask every "true").
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

SECRET_KEY = re.compile(r"(api_?key|^token$|_token$|secret|password|passwd|credential)", re.IGNORECASE)
MASK = "<redacted>"
MIN_LENGTH = 8


def is_secret_key(key: Any) -> bool:
    """Whether a config key (or the last part of a dotted one) names a secret."""
    return bool(SECRET_KEY.search(str(key).rsplit(".", 1)[-1]))


class Secrets:
    """The secret values known so far, and the masking of them.

    Args:
        values: secrets to start from; the secret-looking environment variables are always included.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values: set[str] = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= MIN_LENGTH}
        self.add(values)

    def add(self, values: Iterable[Any]) -> None:
        self.values |= {str(v) for v in values if v is not None and len(str(v)) >= MIN_LENGTH}

    def add_overrides(self, overrides: Iterable[str]) -> None:
        """The values of secret keys among Hydra overrides (``+hf_token=abc``, ``key='abc'``)."""
        for override in overrides:
            key, eq, value = override.partition("=")
            if eq and is_secret_key(key.lstrip("+~")):
                self.add([value, value.strip("'\"")])

    def add_config(self, cfg: DictConfig) -> None:
        """The values under secret keys of a config, resolved (``${oc.env:...}`` included)."""
        self.add(_keyed_values(OmegaConf.to_container(cfg, resolve=True)))

    def scrub(self, text: str) -> str:
        """`text` with every known secret replaced by the mask."""
        for value in sorted(self.values, key=len, reverse=True):  # a secret inside a longer one: the longer first
            text = text.replace(value, MASK)
        return text

    def redact(self, node: Any) -> Any:
        """A plain config tree (dicts, lists, scalars) with secrets masked by key and by value.

        Override strings (``+hf_token=abc``, in Hydra's overrides lists) are masked by their key.
        """
        if isinstance(node, dict):
            return {k: MASK if is_secret_key(k) and v is not None else self.redact(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.redact(v) for v in node]
        if isinstance(node, str):
            return self.scrub(mask_override(node))
        return node


def mask_override(text: str) -> str:
    """``+hf_token=abc`` -> ``+hf_token=<redacted>``; anything else unchanged."""
    key, eq, value = text.partition("=")
    if eq and value and re.fullmatch(r"[+~]{0,2}[\w.\-/@]+", key) and is_secret_key(key.lstrip("+~")):
        return f"{key}={MASK}"
    return text


def _keyed_values(node: Any) -> list:
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in ([v] if is_secret_key(k) else _keyed_values(v))]
    if isinstance(node, list):
        return [x for v in node for x in _keyed_values(v)]
    return []


def redacted(cfg: DictConfig) -> dict:
    """The resolved config as a plain dict, safe to save with a run."""
    secrets = Secrets()
    secrets.add_config(cfg)
    return secrets.redact(OmegaConf.to_container(cfg, resolve=True))


def masked_argv(secrets: Secrets | None = None) -> list[str]:
    """``sys.argv`` with the secrets on it masked: what a library that records the command line may keep."""
    if secrets is None:
        secrets = Secrets()
        secrets.add_overrides(sys.argv[1:])
    return [sys.argv[0], *(secrets.scrub(mask_override(arg)) for arg in sys.argv[1:])]


# ---- the console and the log ---------------------------------------------------------------------
class ScrubbedStream:
    """A text stream that masks secrets in what is written to it; everything else is the stream's own."""

    def __init__(self, stream: Any, secrets: Secrets) -> None:
        self._stream, self._secrets = stream, secrets

    def write(self, text: str) -> int:
        self._stream.write(self._secrets.scrub(text))
        return len(text)  # callers count what they gave, not what the mask made of it

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ScrubbedRecords(logging.Filter):
    """Masks secrets in log records (message and traceback) before any handler formats them."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.secrets.scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.secrets.scrub(logging.Formatter().formatException(record.exc_info))
        return True


def protect(secrets: Secrets, loggers: Iterable[str] = ("", "lightning.pytorch", "lightning.fabric")) -> None:
    """From now on, mask `secrets` (as it grows) in this process's stdout, stderr and `loggers`' handlers.

    Error messages echo what the user typed (Hydra's "Could not override 'x'. To append to your
    config use +x=VALUE", "Error executing job with overrides: [...]"), and a job's console often
    ends up in a file (SLURM's ``slurm-*.out``, wandb's ``output.log``).
    """
    if not secrets.values:
        return
    if not isinstance(sys.stdout, ScrubbedStream):
        try:  # wandb taps stdout/stderr on import: tapping beneath us, it records the masked text
            import wandb  # noqa: F401
        except ImportError:
            pass
        sys.stdout, sys.stderr = ScrubbedStream(sys.stdout, secrets), ScrubbedStream(sys.stderr, secrets)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, ScrubbedRecords) for f in handler.filters):
                handler.addFilter(ScrubbedRecords(secrets))
