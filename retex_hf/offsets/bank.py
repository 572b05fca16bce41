"""The per-task offsets o_t, stored compactly, and how they are added to a batch.

A 2-D weight's offset is a rank-r factor pair (o_t ≈ B_t A_t, rank chosen per task and tensor);
a small tensor's offset is kept whole. Offsets are linear in the task code c: a sample with code
c gets Σ_t c_t · o_t, so a one-hot code recovers expert t and a soft code interpolates experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def module_key(param_name: str) -> str:
    """ModuleDict keys cannot contain dots."""
    return param_name.replace(".", "__")


class LowRankOffset(nn.Module):
    """o_t ≈ B_t A_t for one 2-D view [m, n] of a weight; A_t is [r_t, n], B_t is [m, r_t]."""

    def __init__(self, shape2d: tuple[int, int], ranks: dict[str, int]):
        super().__init__()
        m, n = shape2d
        self.shape2d = (m, n)
        self.A = nn.ParameterDict({t: nn.Parameter(torch.zeros(r, n)) for t, r in ranks.items() if r > 0})
        self.B = nn.ParameterDict({t: nn.Parameter(torch.zeros(m, r)) for t, r in ranks.items() if r > 0})

    def delta_matrix(self, task: str) -> torch.Tensor | None:
        if task not in self.A:
            return None
        return self.B[task] @ self.A[task]

    def stacked(self, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """A_cat [Σr, n], B_cat [m, Σr] and the ranks, for the tasks present in a batch.

        Concatenating lets one pair of thin matmuls serve every task of a mixed batch; each
        sample then keeps only its own tasks' rank columns through a per-sample scale.
        """
        A = torch.cat([self.A[t] for t in tasks]) if len(tasks) > 1 else self.A[tasks[0]]
        B = torch.cat([self.B[t] for t in tasks], dim=1) if len(tasks) > 1 else self.B[tasks[0]]
        return A, B, [self.A[t].shape[0] for t in tasks]

    @staticmethod
    def rank_scale(weights: torch.Tensor, ranks: list[int]) -> torch.Tensor:
        """[batch, T_present] task weights -> [batch, Σr] per-rank-column weights."""
        return weights.repeat_interleave(torch.tensor(ranks, device=weights.device), dim=1)

    def apply_linear(self, x: torch.Tensor, tasks: list[str], weights: torch.Tensor) -> torch.Tensor:
        """Σ_t w_t · x (B_t A_t)ᵀ for every sample, without forming any B A."""
        A, B, ranks = self.stacked(tasks)
        hidden = F.linear(x.to(A.dtype), A)
        scale = self.rank_scale(weights, ranks).to(hidden.dtype)
        hidden = hidden * scale.view(scale.shape[0], *([1] * (hidden.dim() - 2)), scale.shape[1])
        return F.linear(hidden, B)

    def apply_lookup(self, ids: torch.Tensor, tasks: list[str], weights: torch.Tensor) -> torch.Tensor:
        """Σ_t w_t · (B_t A_t)[ids]: gather rows of B, scale, one thin matmul."""
        A, B, ranks = self.stacked(tasks)
        hidden = F.embedding(ids, B)
        scale = self.rank_scale(weights, ranks).to(hidden.dtype)
        hidden = hidden * scale.view(scale.shape[0], *([1] * (hidden.dim() - 2)), scale.shape[1])
        return hidden @ A

    def apply_conv(self, x: torch.Tensor, tasks: list[str], weights: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        """The conv with kernel Σ_t w_t (B_t A_t): a rank-Σr conv, a per-sample scale, a 1×1 mix."""
        A, B, ranks = self.stacked(tasks)
        kernel = A.reshape(A.shape[0], *conv.weight.shape[1:])
        conv_fn = F.conv2d if conv.weight.dim() == 4 else F.conv1d
        hidden = conv_fn(x.to(A.dtype), kernel, None, conv.stride, conv.padding, conv.dilation)
        scale = self.rank_scale(weights, ranks).to(hidden.dtype)
        hidden = hidden * scale.view(*scale.shape, *([1] * (hidden.dim() - 2)))
        return torch.einsum("or,br...->bo...", B, hidden)

    def num_parameters(self, task: str) -> int:
        if task not in self.A:
            return 0
        return self.A[task].numel() + self.B[task].numel()


class VectorOffset(nn.Module):
    """A small tensor's full per-task offset (biases, norm weights, class token)."""

    def __init__(self, shape: tuple[int, ...], tasks: list[str]):
        super().__init__()
        self.delta = nn.ParameterDict({t: nn.Parameter(torch.zeros(shape)) for t in tasks})

    def per_sample(self, codes: torch.Tensor, task_names: list[str]) -> torch.Tensor:
        """[batch, *shape]: each sample's code-weighted offset."""
        stacked = torch.stack([self.delta[t] for t in task_names])  # [T, *shape]
        return torch.einsum("bt,t...->b...", codes.to(stacked.device, stacked.dtype), stacked)

    def num_parameters(self, task: str) -> int:
        return self.delta[task].numel() if task in self.delta else 0


class OffsetBank(nn.Module):
    """All offsets of one model, keyed by the parameter they correct."""

    def __init__(
        self,
        task_names: list[str],
        matrix_shapes: dict[str, tuple[int, int]],
        ranks: dict[str, dict[str, int]],
        vector_shapes: dict[str, tuple[int, ...]],
    ):
        super().__init__()
        self.task_names = list(task_names)
        self.matrices = nn.ModuleDict(
            {
                module_key(name): LowRankOffset(shape, {t: ranks.get(t, {}).get(name, 0) for t in task_names})
                for name, shape in matrix_shapes.items()
            }
        )
        self.vectors = nn.ModuleDict(
            {module_key(name): VectorOffset(shape, task_names) for name, shape in vector_shapes.items()}
        )

    def matrix(self, param_name: str) -> LowRankOffset | None:
        return self.matrices[module_key(param_name)] if module_key(param_name) in self.matrices else None

    def vector(self, param_name: str) -> VectorOffset | None:
        return self.vectors[module_key(param_name)] if module_key(param_name) in self.vectors else None

    def parameters_per_task(self) -> dict[str, int]:
        modules = list(self.matrices.values()) + list(self.vectors.values())
        return {t: sum(m.num_parameters(t) for m in modules) for t in self.task_names}
