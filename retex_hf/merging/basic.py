"""Linear merges: weight averaging and task arithmetic."""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import register_merge_method


def weighted_sum(task_vectors: Tensor, scaling: float) -> Tensor:
    """λ·Σ_t τ_t via peft, shared by every method whose merge is plain task arithmetic."""
    # peft is imported lazily throughout this package: importing it pulls in
    # transformers (seconds), which pure tensor merging should not pay for.
    from peft.utils.merge_utils import task_arithmetic as _peft_task_arithmetic

    weights = torch.full(
        (task_vectors.shape[0],),
        float(scaling),
        dtype=task_vectors.dtype,
        device=task_vectors.device,
    )
    return _peft_task_arithmetic(list(task_vectors.unbind(0)), weights)


@register_merge_method("averaging")
def averaging(task_vectors: Tensor, base: Tensor) -> Tensor:
    """Mean of the task vectors, i.e. plain weight averaging of the experts.

    Expressed on task vectors because mean_t(θ0 + τ_t) = θ0 + mean_t τ_t, which
    lets averaging share the streaming machinery of every other method.
    """
    return task_vectors.mean(dim=0)


@register_merge_method("task_arithmetic", scaling=0.3)
def task_arithmetic(task_vectors: Tensor, base: Tensor, *, scaling: float) -> Tensor:
    """Task arithmetic: λ·Σ_t τ_t (Ilharco et al., 2023).

    The default λ=0.3 is the value commonly reported to work across vision and
    language experts; it should be tuned on held-out data when possible.
    """
    return weighted_sum(task_vectors, scaling)
