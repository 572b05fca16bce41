"""Per-task classification heads: each expert keeps its own, never merged.

A mixed batch produces logits of different widths per task; they are padded with −inf up to
the widest label set, so argmax and softmax stay correct for every row.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .routing.context import current_routing


def pad_logits(parts: list[tuple[torch.Tensor | None, torch.Tensor]], batch: int, width: int, like: torch.Tensor):
    """Scatter per-task logits (rows, values) into one [batch, ..., width] tensor padded with −inf."""
    out = None
    for rows, logits in parts:
        if logits.shape[-1] < width:
            logits = F.pad(logits, (0, width - logits.shape[-1]), value=float("-inf"))
        if rows is None:
            return logits
        if out is None:
            out = torch.full((batch, *logits.shape[1:]), float("-inf"), dtype=logits.dtype, device=like.device)
        out = out.index_copy(0, rows, logits)
    return out


def _task_groups(task_ids: torch.Tensor, num_tasks: int) -> list[tuple[int, torch.Tensor | None]]:
    groups = []
    for t in range(num_tasks):
        rows = (task_ids == t).nonzero().flatten()
        if rows.numel() == task_ids.numel():
            return [(t, None)]
        if rows.numel():
            groups.append((t, rows))
    return groups


def resize_head(template: nn.Module, old_labels: int, new_labels: int) -> nn.Module:
    """A copy of a head module whose output layer emits ``new_labels`` logits."""
    head = copy.deepcopy(template)
    for name, module in list(head.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == old_labels and name:
            parent = head.get_submodule(name.rsplit(".", 1)[0]) if "." in name else head
            setattr(
                parent, name.rsplit(".", 1)[-1], nn.Linear(module.in_features, new_labels, bias=module.bias is not None)
            )
    if isinstance(head, nn.Linear) and head.out_features == old_labels:
        head = nn.Linear(head.in_features, new_labels, bias=head.bias is not None)
    return head


class PerTaskHead(nn.Module):
    """Stands in for the backbone's head module and sends each row to its task's head."""

    def __init__(self, heads: dict[str, nn.Module], task_names: list[str], num_labels: dict[str, int]):
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        self.task_names = list(task_names)
        self.width = max(num_labels.values())

    def add(self, task: str, head: nn.Module, num_labels: int) -> None:
        self.heads[task] = head
        self.task_names.append(task)
        self.width = max(self.width, num_labels)

    def remove(self, task: str, num_labels: dict[str, int]) -> None:
        del self.heads[task]
        self.task_names.remove(task)
        self.width = max(num_labels[t] for t in self.task_names)

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        state = current_routing()
        if state is None:
            if len(self.task_names) != 1:
                raise RuntimeError("a per-task head was called outside a routed forward pass")
            return self.heads[self.task_names[0]](hidden, *args, **kwargs)
        state = state.rows_for(hidden.shape[0])
        parts = []
        for t, rows in _task_groups(state.task_ids.to(hidden.device), len(self.task_names)):
            x = hidden if rows is None else hidden.index_select(0, rows)
            parts.append((rows, self.heads[self.task_names[t]](x, *args, **kwargs)))
        return pad_logits(parts, hidden.shape[0], self.width, hidden)


def tensor_head_logits(pooled: torch.Tensor, weight: torch.Tensor, normalize: bool, scale: float) -> torch.Tensor:
    """scale · f(pooled) @ f(W)ᵀ, f = L2 normalisation when ``normalize`` (CLIP), identity otherwise."""
    if normalize:
        pooled = F.normalize(pooled, dim=-1)
        weight = F.normalize(weight, dim=-1)
    return scale * pooled.to(weight.dtype) @ weight.T


class TensorHeads(nn.Module):
    """Zero-shot style heads: logits = scale · f(pooled) @ Wᵀ with f = L2 normalisation for CLIP."""

    def __init__(self, shapes: dict[str, tuple[int, int]], normalize_features: bool, logit_scale: float):
        super().__init__()
        self.weights = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(s), requires_grad=False) for t, s in shapes.items()}
        )
        self.task_names = list(shapes)
        self.normalize_features = normalize_features
        self.logit_scale = logit_scale
        self.width = max(s[0] for s in shapes.values())

    def add(self, task: str, weight: torch.Tensor) -> None:
        self.weights[task] = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.task_names.append(task)
        self.width = max(self.width, weight.shape[0])

    def remove(self, task: str) -> None:
        del self.weights[task]
        self.task_names.remove(task)
        self.width = max(self.weights[t].shape[0] for t in self.task_names)

    def logits_for(self, task: str, pooled: torch.Tensor) -> torch.Tensor:
        return tensor_head_logits(pooled, self.weights[task], self.normalize_features, self.logit_scale)

    def forward(self, pooled: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        parts = []
        pooled = pooled.to(self.weights[self.task_names[0]].device)  # the backbone may end on another device
        for t, rows in _task_groups(task_ids.to(pooled.device), len(self.task_names)):
            x = pooled if rows is None else pooled.index_select(0, rows)
            parts.append((rows, self.logits_for(self.task_names[t], x)))
        return pad_logits(parts, pooled.shape[0], self.width, pooled)
