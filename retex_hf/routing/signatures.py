"""SiM task signatures: one low-dimensional affine subspace of feature space per task.

An input belongs to the task whose subspace leaves the smallest projection residual. The
signatures need only a few unlabeled inputs per task and no router training; a per-task residual
threshold, set on held-out calibration inputs, flags inputs that fit no known task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Signature:
    mean: torch.Tensor  # [D]
    basis: torch.Tensor  # [D, k], orthonormal columns
    threshold: float


def default_components(feature_dim: int, num_inputs: int, fraction: float = 0.1) -> int:
    """k = min(round(0.1·D), N−1): enough directions to describe a task, never all of them."""
    return max(1, min(round(fraction * feature_dim), num_inputs - 1))


def fit_subspace(features: torch.Tensor, num_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and top right singular vectors of the centred features [N, D]."""
    features = features.double()
    mean = features.mean(dim=0)
    _, _, Vh = torch.linalg.svd(features - mean, full_matrices=False)
    return mean, Vh[:num_components].T.contiguous()


def subspace_residuals(z: torch.Tensor, means: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """‖(z−μ_t) − V_t V_tᵀ(z−μ_t)‖ for every sample and task: [B, D] -> [B, T]."""
    centred = z.double()[:, None, :] - means.double()[None]  # [B, T, D]
    coords = torch.einsum("btd,tdk->btk", centred, bases.double())
    residual = centred - torch.einsum("btk,tdk->btd", coords, bases.double())
    return residual.norm(dim=-1)


def fit_signature(features: torch.Tensor, num_components: int, quantile: float = 0.99, folds: int = 4) -> Signature:
    """Fit on all inputs; set the threshold from residuals of inputs held out of the fit.

    In-sample residuals are near zero when k approaches N−1, so they say nothing about how far
    a new in-task input lands; k-fold held-out residuals do.
    """
    n = features.shape[0]
    folds = max(2, min(folds, n))
    held_out = []
    for fold in range(folds):
        test = torch.arange(fold, n, folds)
        train = torch.tensor([i for i in range(n) if i % folds != fold])
        k = max(1, min(num_components, len(train) - 1))
        mean, basis = fit_subspace(features[train], k)
        held_out.append(subspace_residuals(features[test], mean[None], basis[None])[:, 0])
    mean, basis = fit_subspace(features, num_components)
    threshold = torch.quantile(torch.cat(held_out), quantile).item()
    return Signature(mean, basis, max(threshold, 1e-8))
