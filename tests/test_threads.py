"""The thread policy: torch's pool sized by the free cores, and what the user set kept and said."""

import logging

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
    assert "torch threads: 3 (4 usable cores, load average 1.2" in caplog.text
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads.set_threads(None) == 4  # the next run in this process chooses afresh


def test_what_the_user_set_wins_and_is_said(monkeypatch, caplog):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    caplog.set_level(logging.INFO, logger="omni_train")
    torch.set_num_threads(2)  # by the user, after importing omni_train
    assert threads.set_threads(None) == 2 and "torch.set_num_threads" in caplog.text
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
