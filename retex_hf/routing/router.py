"""The router a checkpoint carries: every task's signature, the rule that picks a task, and the
threshold test that flags inputs belonging to none."""

from __future__ import annotations

import torch
from torch import nn

from .discriminant import discriminant_scores
from .signatures import Signature, subspace_residuals


class TaskRouter(nn.Module):
    """Signatures of all tasks (a few KB each) plus, for the discriminant rule, one precision matrix.

    The rule only picks the task. Whether an input is *unknown* is always decided by the subspace
    residuals against each task's held-out threshold, and the soft codes for unknown inputs come
    from those residuals too, so the two rules differ only where tasks compete."""

    def __init__(self, num_tasks: int, feature_dim: int, num_components: int, discriminant: bool = False):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_tasks, feature_dim))
        self.register_buffer("bases", torch.zeros(num_tasks, feature_dim, num_components))
        self.register_buffer("thresholds", torch.ones(num_tasks))
        if discriminant:
            self.register_buffer("precision", torch.zeros(feature_dim, feature_dim))

    @property
    def rule(self) -> str:
        return "discriminant" if hasattr(self, "precision") else "subspace"

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

    def load_precision(self, precision: torch.Tensor) -> None:
        if not hasattr(self, "precision"):
            raise ValueError("this router uses the subspace rule; it holds no precision matrix")
        if precision.shape != self.precision.shape:
            held = tuple(self.precision.shape)
            raise ValueError(f"precision of shape {tuple(precision.shape)}; the router holds {held}")
        with torch.no_grad():
            self.precision.copy_(precision)

    def signatures(self) -> list[Signature]:
        """The stored signatures, one per task (bases keep their zero padding columns)."""
        return [
            Signature(self.means[t].clone(), self.bases[t].clone(), float(self.thresholds[t]))
            for t in range(self.means.shape[0])
        ]

    def residuals(self, features: torch.Tensor) -> torch.Tensor:
        return subspace_residuals(features, self.means, self.bases)

    def route(
        self, features: torch.Tensor, temperature: float, residuals: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task ids [B], soft codes [B, T], unknown flags [B]) for L2-normalised features;
        ``residuals`` are `residuals(features)` when the caller already has them."""
        residuals = self.residuals(features) if residuals is None else residuals
        if hasattr(self, "precision"):
            task_ids = discriminant_scores(features, self.means, self.precision).argmax(dim=-1)
        else:
            task_ids = residuals.argmin(dim=-1)
        ratio = residuals / self.thresholds.double()[None]
        unknown = ratio.min(dim=-1).values > 1.0
        soft = torch.softmax(-ratio / max(temperature, 1e-6), dim=-1).float()
        return task_ids, soft, unknown
