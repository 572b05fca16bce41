"""TALL masks: localise each task's information inside the multi-task vector (Wang et al., 2024).

The merged checkpoint is ordinary task arithmetic; the per-task masks let a
routing mode recover near-expert weights from one multi-task vector plus one
bit per weight per task.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .basic import weighted_sum
from .registry import register_merge_method


@register_merge_method("tall", scaling=0.3, tall_lambda=0.4)
def tall(task_vectors: Tensor, base: Tensor, *, scaling: float, tall_lambda: float) -> Tensor:
    """Multi-task vector τ_MTL = λ·Σ_t τ_t (the merge TALL masks are applied to).

    ``tall_lambda`` does not change the merged weights; it is accepted here so
    one resolved config records both knobs used by the TALL pipeline.
    """
    return weighted_sum(task_vectors, scaling)


def tall_masks(task_vectors: Tensor, tall_lambda: float, mtl: Tensor | None = None) -> Tensor:
    """Per-task masks m_t = [|τ_t| ≥ λ·|τ_MTL − τ_t|].

    A coordinate belongs to task t when τ_t dominates what the other tasks
    contribute there. ``mtl`` defaults to the unscaled sum Σ_t τ_t, so that
    τ_MTL − τ_t is exactly the other tasks' contribution.
    """
    if task_vectors.ndim < 1 or task_vectors.shape[0] < 1:
        raise ValueError(f"task_vectors must have shape [T, ...]; got {tuple(task_vectors.shape)}")
    if tall_lambda < 0:
        raise ValueError(f"tall_lambda must be >= 0; got {tall_lambda}")
    work = task_vectors if task_vectors.is_floating_point() else task_vectors.float()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    if mtl is None:
        mtl = work.sum(dim=0)
    elif tuple(mtl.shape) != tuple(work.shape[1:]):
        raise ValueError(f"mtl must have shape {tuple(work.shape[1:])}; got {tuple(mtl.shape)}")
    mtl = mtl.to(work.dtype)
    return work.abs() >= tall_lambda * (mtl.unsqueeze(0) - work).abs()


def tall_expert(base: Tensor, tau_mtl: Tensor, mask_t: Tensor) -> Tensor:
    """Rebuild expert t as θ0 + m_t·τ_MTL, in ``base``'s dtype."""
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    return (base.to(dtype) + mask_t.to(dtype) * tau_mtl.to(dtype)).to(base.dtype)
