"""Fitting one task's offsets o_t = θ_t − θ_m under a parameter budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .svd import Whitening, allocate_ranks, factorise


@dataclass
class TaskOffsets:
    ranks: dict[str, int]
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (B [m, r], A [r, n])
    vectors: dict[str, torch.Tensor]  # name -> full offset
    num_parameters: int


def vector_cost(vector_shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in vector_shapes.values())


def fit_task_offsets(
    matrix_offsets: Mapping[str, torch.Tensor],
    vector_offsets: Mapping[str, torch.Tensor],
    budget_parameters: int,
    whitening: Mapping[str, Whitening] | None = None,
) -> TaskOffsets:
    """Factorise every 2-D offset, allocate ranks from what the budget leaves after the vectors."""
    whitening = whitening or {}
    remaining = budget_parameters - vector_cost({n: tuple(v.shape) for n, v in vector_offsets.items()})
    if remaining < 0:
        raise ValueError(
            f"the offset budget ({budget_parameters} parameters per task) is smaller than the full offsets "
            f"of the small tensors ({budget_parameters - remaining}); raise `budget`"
        )
    factorisations, costs, spectra = {}, {}, {}
    for name, offset in matrix_offsets.items():
        matrix = offset.reshape(offset.shape[0], -1)
        factorisations[name] = factorise(matrix, whitening.get(name))
        costs[name] = sum(matrix.shape)
        spectra[name] = factorisations[name].energy()
    ranks = allocate_ranks(spectra, costs, remaining)
    factors = {}
    for name, rank in ranks.items():
        if rank > 0:
            B, A = factorisations[name].factors(rank)
            factors[name] = (B.float(), A.float())
    used = sum(ranks[n] * costs[n] for n in ranks) + (budget_parameters - remaining)
    return TaskOffsets(ranks, factors, {n: v.float() for n, v in vector_offsets.items()}, used)
