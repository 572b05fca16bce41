"""Per-call routing state.

The wrapped layers must know, for every sample of the batch, which task's offsets to add. Storing
that on the layers would make two threads serving different tasks overwrite each other, so the
state lives in a ``ContextVar``: each thread (and each asyncio task) sees its own value, and a
forward pass that sets it leaves nothing behind when it returns.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoutingState:
    """What the offset hooks and per-task heads read during one forward pass.

    ``codes`` is the task code c ∈ R^T of every sample (one-hot for a confident route, soft for
    an unknown-task input); ``task_ids`` is the argmax task, used to pick a classification head.
    """

    codes: torch.Tensor  # [batch, num_tasks], float
    task_ids: torch.Tensor  # [batch], long

    def __post_init__(self) -> None:
        # The tasks with any weight in this batch, found once per call (one host sync) so that
        # the layers never inspect the codes themselves.
        present = (self.codes != 0).any(dim=0).nonzero().flatten().tolist()
        object.__setattr__(self, "active", tuple(present))

    @property
    def batch_size(self) -> int:
        return self.codes.shape[0]

    def rows_for(self, batch_size: int) -> RoutingState:
        """Match a layer's batch, which generation may have expanded (beams, sampling)."""
        current = self.codes.shape[0]
        if batch_size == current:
            return self
        if current == 0 or batch_size % current:
            raise RuntimeError(f"routing state holds {current} samples but a layer received a batch of {batch_size}")
        factor = batch_size // current
        return RoutingState(self.codes.repeat_interleave(factor, dim=0), self.task_ids.repeat_interleave(factor, dim=0))


_CURRENT: contextvars.ContextVar[RoutingState | None] = contextvars.ContextVar("retex_routing_state", default=None)


def current_routing() -> RoutingState | None:
    return _CURRENT.get()


@contextlib.contextmanager
def routing(state: RoutingState | None) -> Iterator[None]:
    """Activate ``state`` for the forward passes run inside the block (None: plain merged model)."""
    token = _CURRENT.set(state)
    try:
        yield
    finally:
        _CURRENT.reset(token)
