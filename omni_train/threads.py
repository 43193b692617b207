"""How many threads torch's intra-op pool gets: chosen once at the start of a run, and said.

torch sizes its pool by the machine's cores. Beside another busy process that is one thread too
many: OpenMP threads meet at a barrier after every operation and spin there while the slowest one
waits for a core, so a run burns CPU time without working (the demo took 7x its idle time beside
one CPU-bound job). The threads change speed only, not results (1 and 2 threads give bit-identical
weights on the demo). The pool is therefore sized by the cores this process may use
(`os.sched_getaffinity`, which honours taskset, cgroups' cpusets and SLURM's binding) less those
other processes keep busy (the 1-minute load average, or a quarter-second sample of the cores'
idle time where that is lower), shared among this run's processes on the
node. Loader workers run one thread each (torch sets that in every worker), and evaluation runs in
the same process and pool, so neither multiplies it.

What the user set wins: the ``threads`` config key, else ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``
in the environment (torch read it at import), else ``torch.set_num_threads`` called before the run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

log = logging.getLogger("omni_train")

ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def busy_cores(window: float = 0.25) -> float:
    """Cores other processes keep busy now: the lesser of the 1-minute load average and a short sample.

    The load average alone lags: a job that ended a minute ago still counts as about one busy core,
    and the demo run right after the test suite then got 1 thread on 2 idle cores (291 s against
    194 s with 2). A `window`-second sample of the usable cores' idle time (Linux's /proc/stat) sees
    the present; the load average keeps a short burst in that window from looking like a busy machine.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    first = _cpu_times()
    if first is None:
        return load
    time.sleep(window)
    second = _cpu_times()
    busy = sum((1 - (second[c][1] - first[c][1]) / max(1, second[c][0] - first[c][0])) for c in first if c in second)
    return min(load, busy)


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """cpu number -> (all jiffies, idle + iowait jiffies) for the cores this process may use; None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    mine, out = set(os.sched_getaffinity(0)), {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in mine:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])
    return out or None


def free_threads(cores: int, load: float, processes: int = 1) -> int:
    """Threads for one of `processes` processes of a run: the cores `load` leaves free, shared; at least 1.

    A fraction of a core left free counts when it is at least half a core.
    """
    free = min(cores, math.floor(cores - load + 0.5))
    return max(1, free // max(1, processes))


def set_threads(requested: int | None, processes: int = 1) -> int:
    """Size torch's intra-op pool for this run and log the choice in one line; returns the count.

    Args:
        requested: the config's ``threads`` (None: choose), at least 1.
        processes: this run's processes on this node (e.g. DDP ranks), which share its cores.
    """
    global _SET_HERE
    current = torch.get_num_threads()
    env = {k: os.environ[k] for k in ENV if os.environ.get(k)}
    if requested is not None:
        also = f"; it overrides {', '.join(f'{k}={v}' for k, v in env.items())}" if env else ""
        reason = f"threads={requested}{also}"
    elif env:
        requested = current  # torch read it at import
        reason = f"from {', '.join(f'{k}={v}' for k, v in env.items())}; threads=N to choose here"
    elif current != (_SET_HERE or _AT_IMPORT):
        requested = current
        reason = "set with torch.set_num_threads before the run"
    else:
        cores, load = usable_cores(), busy_cores()
        requested = free_threads(cores, load, processes)
        share = f", shared by {processes} processes" if processes > 1 else ""
        reason = f"{cores} usable cores, {load:.1f} of them busy{share}; threads=N or OMP_NUM_THREADS=N to choose"
    torch.set_num_threads(requested)
    _SET_HERE = requested
    log.info("torch threads: %d (%s)", requested, reason)
    return requested


# torch's pool as omni_train found it (its default, or what the environment set), and the count the
# last run set here: a different count at a run's start was set by the user (torch.set_num_threads
# after importing omni_train), and is kept.
_AT_IMPORT = torch.get_num_threads()
_SET_HERE: int | None = None
