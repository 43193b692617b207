"""glibc keeps a CPU run's freed buffers for the next step, unless the environment configures the allocator."""

import json
import os
import platform
import subprocess
import sys

import pytest

from omni_train import allocator

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

# Training steps in miniature: a 256 MB activation made and freed, step after step. The last step's
# page faults say whether its memory came back from the process's heap or fresh from the kernel. (The
# first few steps grow the heap: glibc's aligned allocations need a little more than the freed block
# until freed blocks coalesce; BENCHMARKS.md section 1 has what that costs at a real shape.)
STEP = """
import json, logging, resource, sys
import torch
from omni_train.allocator import keep_freed_memory
logging.basicConfig(level=logging.INFO, format="%(message)s")
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(2**22).sum()  # the intra-op threads started before the steps, as in a run
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64 * 2**20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
print(json.dumps({"applied": applied, "faults": faults}))
"""
PAGES = 256 * 2**20 // 4096


def configures_allocator(name: str) -> bool:
    return name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", "LD_PRELOAD")


@pytest.fixture
def unconfigured(monkeypatch):
    for name in filter(configures_allocator, list(os.environ)):
        monkeypatch.delenv(name)
    return monkeypatch


def step(mode: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if not configures_allocator(k)}
    run = subprocess.run([sys.executable, "-c", STEP, mode], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    return json.loads(run.stdout), run.stderr


def test_a_freed_buffer_is_reused_without_faulting_its_pages_in_again():
    kept, said = step("keep")
    default, _ = step("default")
    assert kept["applied"] is True and "allocator: freed memory kept for reuse" in said
    assert default["faults"] > 0.9 * PAGES  # glibc's default: unmapped on free, every page faulted in again
    assert kept["faults"] < 0.01 * PAGES


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_what_the_environment_sets_wins_and_is_said(env):
    result, said = step("keep", **env)
    name, value = next(iter(env.items()))
    assert result["applied"] is False and f"allocator: as the environment configures it ({name}={value})" in said
    assert result["faults"] > 0.9 * PAGES  # glibc as configured there: its default


def test_another_allocator_preloaded_or_any_malloc_variable_is_left_alone(unconfigured):
    unconfigured.setenv("MALLOC_ARENA_MAX", "2")
    assert allocator.user_choice() == "MALLOC_ARENA_MAX=2"
    unconfigured.delenv("MALLOC_ARENA_MAX")
    unconfigured.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.user_choice() == "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    unconfigured.setenv("LD_PRELOAD", "/usr/lib/libfaketime.so")
    assert allocator.user_choice() is None


def test_trimming_is_turned_off_not_bounded(unconfigured):
    """A threshold is an int: 2**31 - 1, the largest, still trims a heap with 2 GiB free at its top, as a
    full-depth 0.5B step leaves it (21.8 M page faults in that benchmark, BENCHMARKS.md section 1); -1 never trims."""
    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    unconfigured.setattr(allocator.ctypes, "CDLL", lambda name: Libc())
    assert allocator.keep_freed_memory() is True
    assert calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, -1)]
