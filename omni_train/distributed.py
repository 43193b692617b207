"""Which process this is among a job's ranks, what the others hold, and each one's random state.

Used before Lightning has started the process group (rank from the launcher's variables), inside a
fit (collectives over the group), and in checkpoints (RNG states as plain values, so they load
with ``weights_only``).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def _group() -> bool:
    return dist.is_available() and dist.is_initialized()


def group() -> tuple[int, int]:
    """(rank, world size) in the process group; (0, 1) outside one (what data sharding needs)."""
    return (dist.get_rank(), dist.get_world_size()) if _group() else (0, 1)


def rank() -> int:
    """This process's global rank, also before Lightning has started the process group."""
    if _group():
        return dist.get_rank()
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):  # set by torchrun, srun, Lightning's launcher
        if var in os.environ:
            return int(os.environ[var])
    return 0


def gather_objects(obj: Any) -> list:
    """`obj` of every rank, in rank order. A collective: under DDP every rank must call it (Lightning
    builds a checkpoint's contents on every rank, and only rank 0 writes the file)."""
    if _group() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


# ---- random number generators --------------------------------------------------------------------
def rng_state(rng: random.Random) -> list:
    """`random.Random`'s state as plain lists (checkpoints load with ``weights_only``)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def rng_states() -> dict:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as checkpoint-safe values."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": [kind, key.tolist(), pos, has_gauss, gauss],
        "python": rng_state(random),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    set_rng_state(random, states["python"])
