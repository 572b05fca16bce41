"""Factorising offsets: plain or activation-aware truncated SVD.

Plain SVD keeps the directions of largest weight change. What matters is the change in the
layer's *output* on the task's inputs, ‖(o − BA) X‖: whitening by the input second moment
(right side for x @ Wᵀ layers, token frequencies on the left for embedding lookups) makes the
SVD keep the directions the task actually exercises, and makes spectra comparable across layers
for rank allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Whitening:
    """Input statistics of one layer on one task's calibration inputs."""

    side: str  # "right": Gram matrix of the inputs [n, n]; "left": row frequencies [m]
    stat: torch.Tensor


@dataclass
class Factorisation:
    """A full SVD of the (whitened) offset, from which any rank can be cut cheaply."""

    U: torch.Tensor  # [m, k]
    S: torch.Tensor  # [k]
    Vh: torch.Tensor  # [k, n]
    whitening: Whitening | None
    _right_factor: torch.Tensor | None = None  # Cholesky factor L, G = L Lᵀ
    _row_scale: torch.Tensor | None = None

    def energy(self) -> torch.Tensor:
        """Output-error energy removed by each successive rank."""
        return self.S.double() ** 2

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """B [m, rank], A [rank, n] with B A the best rank-``rank`` approximation."""
        B = self.U[:, :rank] * self.S[:rank]
        A = self.Vh[:rank]
        if self._right_factor is not None:
            # Undo M' = o L: A = Vh_r L⁻¹, i.e. solve A L = Vh_r.
            A = torch.linalg.solve_triangular(self._right_factor, A, upper=False, left=False)
        if self._row_scale is not None:
            B = B / self._row_scale[:, None]
        return B.contiguous(), A.contiguous()


def _regularise(gram: torch.Tensor, eps: float) -> torch.Tensor:
    scale = gram.diagonal().mean().clamp_min(1e-12)
    return gram + eps * scale * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


def factorise(offset: torch.Tensor, whitening: Whitening | None = None, eps: float = 1e-2) -> Factorisation:
    """SVD of ``offset`` [m, n], whitened by the layer's input statistics when given."""
    o = offset.double()
    right, rows = None, None
    if whitening is not None and whitening.side == "right":
        gram = _regularise(whitening.stat.double(), eps)
        right = torch.linalg.cholesky(gram)
        o = o @ right
    elif whitening is not None and whitening.side == "left":
        freq = whitening.stat.double()
        freq = freq / freq.sum().clamp_min(1e-12)
        rows = (freq + eps / freq.numel()).sqrt()
        o = o * rows[:, None]
    U, S, Vh = torch.linalg.svd(o, full_matrices=False)
    return Factorisation(U, S, Vh, whitening, right, rows)


def allocate_ranks(spectra: dict[str, torch.Tensor], costs: dict[str, int], budget: int) -> dict[str, int]:
    """Spend ``budget`` parameters on ranks where they remove the most energy per parameter.

    Each extra rank of layer l costs m_l + n_l parameters and removes σ²_{l,k}; since σ² falls
    with k inside a layer, taking candidates greedily by σ²/cost gives every layer a prefix.
    """
    names, gains, unit_costs = [], [], []
    for name, energy in spectra.items():
        for value in energy.tolist():
            if value <= 0:
                break
            names.append(name)
            gains.append(value / costs[name])
            unit_costs.append(costs[name])
    ranks = {name: 0 for name in spectra}
    if not names:
        return ranks
    order = torch.argsort(torch.tensor(gains, dtype=torch.float64), descending=True, stable=True)
    spent = 0
    for index in order.tolist():
        cost = unit_costs[index]
        if spent + cost > budget:
            continue
        spent += cost
        ranks[names[index]] += 1
    return ranks
