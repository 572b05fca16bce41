"""Task Singular Vectors: TSV-Merge and TSV-Compress (Gargiulo et al., 2025).

Per layer, each task's update lives in a few top singular directions. TSV-M
keeps those directions for every task and removes their mutual interference by
orthogonalising the concatenated bases before summing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import register_merge_method


def _rank_per_task(shape: tuple[int, int], num_tasks: int) -> int:
    # At least one direction per task, so tiny matrices (min(m, n) < T) are
    # still merged rather than zeroed out.
    return max(1, min(shape) // num_tasks)


def polar_orthogonalize(matrix: Tensor) -> Tensor:
    """Polar factor P·Qᵀ of ``matrix`` = P·Σ·Qᵀ.

    This is the (semi-)orthogonal matrix nearest to ``matrix`` in Frobenius
    norm, so it decorrelates the task subspaces while moving each basis vector
    as little as possible.
    """
    left, _, right_h = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right_h


def tsv_compress(task_vector_2d: Tensor, num_tasks: int) -> tuple[Tensor, Tensor, Tensor]:
    """TSV-C: keep the top k = floor(min(m, n)/T) singular triplets (at least 1).

    Returns (U_k [m, k], S_k [k], V_k [n, k]) so that U_k·diag(S_k)·V_kᵀ is the
    best rank-k approximation of the task vector; with T tasks the total
    storage matches one dense matrix.
    """
    if task_vector_2d.ndim != 2:
        raise ValueError(f"tsv_compress expects a 2-D tensor; got shape {tuple(task_vector_2d.shape)}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1; got {num_tasks}")
    work = task_vector_2d
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()
    k = _rank_per_task(tuple(work.shape), num_tasks)
    u, s, v_h = torch.linalg.svd(work, full_matrices=False)
    return u[:, :k], s[:k], v_h[:k, :].mT


def _tsv_merge_2d(task_vectors: Tensor) -> Tensor:
    """TSV-M for stacked 2-D task vectors [T, m, n]."""
    num_tasks = task_vectors.shape[0]
    k = _rank_per_task(tuple(task_vectors.shape[1:]), num_tasks)
    u, s, v_h = torch.linalg.svd(task_vectors, full_matrices=False)  # batched over T
    # [T, m, k] -> [m, T·k] with task t's columns contiguous, same for V.
    u_cat = u[:, :, :k].permute(1, 0, 2).reshape(u.shape[1], num_tasks * k)
    v_cat = v_h[:, :k, :].permute(2, 0, 1).reshape(v_h.shape[2], num_tasks * k)
    s_cat = s[:, :k].reshape(num_tasks * k)
    u_orth = polar_orthogonalize(u_cat)
    v_orth = polar_orthogonalize(v_cat)
    return (u_orth * s_cat) @ v_orth.mT


@register_merge_method("tsv", scaling=1.0)
def tsv(task_vectors: Tensor, base: Tensor, *, scaling: float) -> Tensor:
    """TSV-M: α·U⊥·diag(S)·V⊥ᵀ over the per-task top-k singular triplets.

    Matrices with ndim > 2 (conv kernels) are flattened to [out, rest] and
    back; vectors and scalars have no singular structure and are averaged.
    α scales every tensor, as the reference applies it to the whole merged
    task vector.
    """
    if task_vectors.ndim - 1 < 2:
        return scaling * task_vectors.mean(dim=0)
    shape = task_vectors.shape[1:]
    flat = task_vectors.reshape(task_vectors.shape[0], shape[0], -1)
    return scaling * _tsv_merge_2d(flat).reshape(shape)
