"""The one training loop every synthetic expert goes through, and deterministic seeding.

Experts must be real fine-tunes (so merging them loses something real), cheap (seconds on two
CPU cores) and bit-for-bit reproducible from a seed (so tests can compare weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def generator(seed: int, stream: int, task: int = 0) -> torch.Generator:
    """An independent, reproducible random stream per (seed, purpose, task).

    Calibration, test and training data use different streams, so they never share draws.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 1_009 + task) % (2**63 - 1))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global RNG (used by transformers' weight init) without leaking into the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train(model: nn.Module, loss_at: Callable[[int], torch.Tensor], steps: int, lr: float) -> None:
    """AdamW on all trainable parameters with warmup + linear decay, then leave the model in eval mode.

    A decaying schedule lets a few hundred steps land on a high-accuracy point instead of oscillating.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=True)
    warmup = max(1, steps // 10)
    model.train()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    model.eval()
