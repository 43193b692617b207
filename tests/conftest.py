"""The suite runs on one pytest-xdist worker a core (`-n` in pyproject.toml): most of its time is
single-threaded (Python start-up, imports, checkpoint writes, subprocess runs), so two workers on two
cores nearly halve it. A worker's own torch work gets one thread, so that two workers do not spin
four threads on two cores; the runs it starts choose theirs by the load, as a user's would."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
