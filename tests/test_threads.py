"""The thread policy: torch's pool sized by the free cores, and what the user set kept and said."""

import logging
import os

import pytest
import torch

from omni_train import threads


@pytest.fixture(autouse=True)
def restore_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    for var in threads.ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_AT_IMPORT", before)
    monkeypatch.setattr(threads, "_SET_HERE", None)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, load, processes, expected",
    [(2, 0.1, 1, 2), (2, 1.0, 1, 1), (2, 8.0, 1, 1), (2, 0.6, 1, 1), (16, 3.4, 1, 13), (8, 0.0, 2, 4), (8, 7.9, 4, 1)],
)
def test_free_threads_leave_the_busy_cores_to_their_processes(cores, load, processes, expected):
    assert threads.free_threads(cores, load, processes) == expected


def test_chosen_from_the_affinity_mask_and_load_and_said(monkeypatch, caplog):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.2)
    with caplog.at_level(logging.INFO, logger="omni_train"):
        assert threads.set_threads(None) == 3
    assert torch.get_num_threads() == 3
    assert "torch threads: 3 (4 usable cores, 1.2 of them busy" in caplog.text
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads.set_threads(None) == 4  # the next run in this process chooses afresh


def test_busy_cores_believe_the_present_over_a_lagging_load_average(monkeypatch):
    """Just after a job ends the load average still says ~1 busy core; the sample of idle time says 0."""
    ticks = iter([{0: (1000, 500), 1: (1000, 500)}, {0: (1100, 600), 1: (1100, 600)}])  # both cores idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.1, 1.5, 2.0))
    assert threads.busy_cores(window=0) == 0.0
    ticks = iter([{0: (1000, 500), 1: (1000, 500)}, {0: (1100, 500), 1: (1100, 600)}])  # core 0 fully busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(ticks))
    assert threads.busy_cores(window=0) == 1.0
    ticks = iter([{0: (1000, 500), 1: (1000, 500)}, {0: (1100, 500), 1: (1100, 500)}])  # a burst in the window
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert threads.busy_cores(window=0) == 0.3
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)  # not Linux: the load average alone
    assert threads.busy_cores(window=0) == 0.3


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat: not Linux")
def test_cpu_times_are_read_for_the_usable_cores():
    times = threads._cpu_times()
    assert set(times) == set(os.sched_getaffinity(0))
    assert all(total > idle >= 0 for total, idle in times.values())
    assert 0.0 <= threads.busy_cores(window=0.05) <= threads.usable_cores()


def test_what_the_user_set_wins_and_is_said(monkeypatch, caplog):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    caplog.set_level(logging.INFO, logger="omni_train")
    mine = torch.get_num_threads() + 1  # unlike what torch had: a count the user chose
    torch.set_num_threads(mine)  # by the user, after importing omni_train
    assert threads.set_threads(None) == mine and "torch.set_num_threads" in caplog.text
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # what torch made of it at import
    assert threads.set_threads(None) == 1 and "from OMP_NUM_THREADS=1" in caplog.text
    assert threads.set_threads(3) == 3 and torch.get_num_threads() == 3
    assert "threads=3; it overrides OMP_NUM_THREADS=1" in caplog.text


def test_a_run_refuses_threads_0(tmp_path):
    from test_train import config

    from omni_train.config import ConfigError
    from omni_train.train import train

    with pytest.raises(ConfigError, match="threads=0"):
        train(config("experiment=demo", f"run_dir={tmp_path}", "threads=0"))
