"""EMR-Merging: one unified task vector plus per-task masks and rescalers (Huang et al., 2024).

The merged checkpoint alone uses only τ_uni; the masks and rescalers let a
later routing mode rebuild each expert cheaply from one shared vector (1 bit
per weight per task plus one scalar per task).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .registry import register_merge_method


def _elected_sign(task_vectors: Tensor) -> Tensor:
    # γ = sign(Σ_t τ_t); a zero sum elects +1 so γ is always ±1 and every
    # coordinate has a defined direction. (The reference code thresholds the
    # mean with `> 0` and so elects −1 there; we follow our spec's +1.)
    total = task_vectors.sum(dim=0)
    return torch.where(total >= 0, 1.0, -1.0).to(task_vectors.dtype)


def _unify(task_vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Return (τ_uni, masks[T, ...]) for one stacked tensor."""
    gamma = _elected_sign(task_vectors)
    masks = task_vectors * gamma > 0
    magnitude = (task_vectors * masks).abs().amax(dim=0)
    return gamma * magnitude, masks


@register_merge_method("emr")
def emr(task_vectors: Tensor, base: Tensor) -> Tensor:
    """EMR unified task vector τ_uni = γ·max_t |m_t·τ_t|, with m_t = [τ_t·γ > 0].

    Taking the largest agreeing magnitude (rather than a mean) keeps τ_uni close
    to every expert on the coordinates where it agrees; the per-task masks and
    rescalers then correct the rest (see `emr_masks_and_rescalers`).
    """
    return _unify(task_vectors)[0]


def emr_masks_and_rescalers(
    task_vectors_by_name: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Compute τ_uni, per-task boolean masks and per-task rescalers for a whole model.

    The rescaler r_t = Σ_tensors mean|τ_t| / Σ_tensors mean|m_t·τ_uni| is global
    over tensors (as in the reference implementation) so that the rebuilt
    expert matches the original's average update magnitude model-wide, not per
    layer. A task whose masked vector is entirely zero gets r_t = 1 (its mask
    is empty, so the value is irrelevant but must be finite).
    """
    if not task_vectors_by_name:
        raise ValueError("emr_masks_and_rescalers needs at least one tensor")
    tau_uni: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    num_tasks: int | None = None
    original = rebuilt = None
    for name, stacked in task_vectors_by_name.items():
        if stacked.ndim < 1 or stacked.shape[0] < 1:
            raise ValueError(f"tensor {name!r}: expected shape [T, ...]; got {tuple(stacked.shape)}")
        if num_tasks is None:
            num_tasks = stacked.shape[0]
            original = torch.zeros(num_tasks, dtype=torch.float64)
            rebuilt = torch.zeros(num_tasks, dtype=torch.float64)
        elif stacked.shape[0] != num_tasks:
            raise ValueError(f"tensor {name!r} has {stacked.shape[0]} task vectors; expected {num_tasks}")
        if not torch.isfinite(stacked).all():
            raise ValueError(f"tensor {name!r}: task vectors contain non-finite values")
        work = stacked if stacked.is_floating_point() else stacked.float()
        uni, mask = _unify(work)
        tau_uni[name], masks[name] = uni, mask
        flat = work.reshape(num_tasks, -1).double()
        original += flat.abs().mean(dim=1).cpu()
        rebuilt += (mask.reshape(num_tasks, -1) * uni.reshape(1, -1).double()).abs().mean(dim=1).cpu()
    rescalers = torch.where(rebuilt > 0, original / rebuilt.clamp_min(1e-300), 1.0)
    return tau_uni, masks, rescalers.float()


def emr_expert(base: Tensor, tau_uni: Tensor, mask_t: Tensor, r_t: float | Tensor) -> Tensor:
    """Rebuild expert t as θ0 + r_t·m_t·τ_uni, in ``base``'s dtype."""
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    r = torch.as_tensor(r_t, dtype=dtype)
    delta = r * (mask_t.to(dtype) * tau_uni.to(dtype))
    return (base.to(dtype) + delta).to(base.dtype)
