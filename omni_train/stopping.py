"""SIGTERM, SIGUSR1 and Ctrl-C while no stage is training: model building, a WER pass, between stages.

During a stage's steps `omni_train.resume.Preemption` answers them (save after the step, stop).
Outside them `omni-train` installs `stop` (its own wrapper adds SLURM's requeue), which raises where
the signal lands: `KeyboardInterrupt` for Ctrl-C, `Stopped` for the others; `omni-train` turns
either into one line saying what was kept and how to continue.

Why the signal is also kept: a signal can land inside a finalizer (a ``__del__`` run as a finished
stage's trainer is collected), where Python prints the exception and carries on, and one that
arrives after a stage's last step is recorded by its `Preemption` with no step left to act on it.
So `stop` and `Preemption` keep it, and the stage loop calls `raise_kept` at its safe points
(before each stage, before the final checks): a request to stop is never lost.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

_kept = 0  # a signal that asked to stop and has not stopped the run yet (0: none)


class Stopped(BaseException):
    """SIGTERM or SIGUSR1 while no stage is training (a BaseException, as KeyboardInterrupt is: no
    ``except Exception`` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def name(signum: int) -> str:
    """How messages name a stop signal: "Ctrl-C" for SIGINT, else its name (SIGTERM, SIGUSR1)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def keep(signum: int) -> None:
    """Remember that `signum` asked the run to stop (the stage loop raises it at its next safe point)."""
    global _kept
    _kept = signum


def stop(signum: int, frame=None) -> None:
    """The signal handler outside training: keep the signal, raise it here."""
    keep(signum)
    _raise(signum)


def raise_kept() -> None:
    """Raise a kept signal that has not stopped the run (it landed where it could not)."""
    global _kept
    signum, _kept = _kept, 0
    if signum:
        _raise(signum)


def _raise(signum: int) -> None:
    raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)
