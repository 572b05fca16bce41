"""SiM task signatures: one low-dimensional affine subspace of feature space per task.

An input belongs to the task whose subspace leaves the smallest projection residual. The
signatures need only a few unlabeled inputs per task and no router training; a per-task residual
threshold, set on held-out calibration inputs, flags inputs that fit no known task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


def select_components(
    features: list[torch.Tensor], default: int, folds: int = 4, max_components: int | None = None
) -> int:
    """Pick the subspace size k by held-out routing accuracy on the calibration inputs themselves.

    The paper's k = round(0.1·D) is a good rule for D = 512–1024 but misroutes on narrow
    features; cross-validating k costs a few small SVDs and needs no extra data. Ties go to the
    candidate closest to ``default``.
    """
    smallest = min(f.shape[0] for f in features)
    limit = max(1, smallest - smallest // folds - 1)
    if max_components is not None:
        limit = min(limit, max_components)
    candidates = sorted({k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, default) if 1 <= k <= limit})
    scores = []
    for k in candidates:
        correct = total = 0
        for fold in range(folds):
            means, bases, held_out = [], [], []
            for feats in features:
                index = torch.arange(feats.shape[0])
                train, test = feats[index % folds != fold], feats[index % folds == fold]
                mean, basis = fit_subspace(train, k)
                means.append(mean)
                bases.append(F.pad(basis, (0, k - basis.shape[1])))
                held_out.append(test)
            means_t, bases_t = torch.stack(means), torch.stack(bases)
            for t, test in enumerate(held_out):
                if len(test):
                    correct += (subspace_residuals(test, means_t, bases_t).argmin(-1) == t).sum().item()
                    total += len(test)
        scores.append((correct / max(total, 1), -abs(k - default), k))
    return max(scores)[2]


class SubspaceRouter(nn.Module):
    """The stored signatures of all tasks (a few KB each) and the routing rule."""

    def __init__(self, num_tasks: int, feature_dim: int, num_components: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_tasks, feature_dim))
        self.register_buffer("bases", torch.zeros(num_tasks, feature_dim, num_components))
        self.register_buffer("thresholds", torch.ones(num_tasks))

    def load_signatures(self, signatures: list[Signature]) -> None:
        with torch.no_grad():
            self.bases.zero_()
            for t, sig in enumerate(signatures):
                self.means[t].copy_(sig.mean)
                k = min(sig.basis.shape[1], self.bases.shape[2])
                if sig.basis[:, k:].abs().sum() > 0:
                    raise ValueError(f"signature {t} has {sig.basis.shape[1]} components; the router holds {k}")
                self.bases[t, :, :k].copy_(sig.basis[:, :k])  # zero columns project nothing
                self.thresholds[t] = sig.threshold

    def signatures(self) -> list[Signature]:
        """The stored signatures, one per task (bases keep their zero padding columns)."""
        return [
            Signature(self.means[t].clone(), self.bases[t].clone(), float(self.thresholds[t]))
            for t in range(self.means.shape[0])
        ]

    def residuals(self, features: torch.Tensor) -> torch.Tensor:
        return subspace_residuals(features, self.means, self.bases)

    def route(self, features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task ids [B], soft codes [B, T], unknown flags [B]) for L2-normalised features."""
        residuals = self.residuals(features)
        task_ids = residuals.argmin(dim=-1)
        ratio = residuals / self.thresholds.double()[None]
        unknown = ratio.min(dim=-1).values > 1.0
        soft = torch.softmax(-ratio / max(temperature, 1e-6), dim=-1).float()
        return task_ids, soft, unknown
