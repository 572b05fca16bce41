"""Test-session settings shared by every test module."""

from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))  # tests import their helpers (tiny_models) by name


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run many times faster on one thread than on two (thread hand-off dominates)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
