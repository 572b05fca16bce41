"""Measuring a ReTeX model against its experts: accuracy, fidelity, router accuracy.

Fidelity (the share of inputs where the model predicts what the expert predicts) is reported
next to normalised accuracy because, unlike it, fidelity cannot exceed 100 % by luck.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from . import backbones
from .distributed import on_rows
from .modeling_retex import RetexPreTrainedModel


@dataclass
class HeadSpec:
    """A zero-shot tensor head for plain towers (experts and the static merge)."""

    weight: torch.Tensor
    logit_scale: float = 1.0
    normalize: bool = False


def trim(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the columns that are padding in every row of a token batch (no-op for images): a
    batch sliced from a split sorted by length then costs what its tokens cost."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return dict(batch)
    length = max(1, int(mask.sum(dim=1).max()))
    return {k: (v[:, :length] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v) for k, v in batch.items()}


def slices(inputs: Mapping[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive batches of ``batch_size`` rows, each trimmed of all-padding columns."""
    n = next(iter(inputs.values())).shape[0]
    for start in range(0, n, batch_size):
        yield trim({k: v[start : start + batch_size] for k, v in inputs.items()})


@torch.no_grad()
def plain_logits(
    model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], head: HeadSpec | None = None, batch_size: int = 64
) -> torch.Tensor:
    """Logits of a plain transformers classifier, or of a tower followed by a tensor head."""
    parts = []
    for batch in slices(inputs, batch_size):
        out = model(**batch, return_dict=True)
        if head is None:
            parts.append(out.logits.float())
            continue
        pooled, weight = backbones.tower_pooled_output(out).float(), head.weight.float()
        if head.normalize:
            pooled, weight = F.normalize(pooled, dim=-1), F.normalize(weight, dim=-1)
        parts.append(head.logit_scale * pooled @ weight.T)
    return torch.cat(parts)


@torch.no_grad()
def retex_logits(
    model: RetexPreTrainedModel, inputs: Mapping[str, torch.Tensor], task=None, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, routed task ids, unknown flags), routing each sample unless ``task`` is given."""
    logits, ids, unknown = [], [], []
    for batch in slices(inputs, batch_size):
        out = model(**batch, task=task)
        logits.append(out.logits.float())
        ids.append(out.task_ids)
        unknown.append(out.unknown)
    return torch.cat(logits), torch.cat(ids), torch.cat(unknown)


@dataclass
class TaskReport:
    task: str
    n: int
    expert_accuracy: float | None
    merged_accuracy: float | None
    retex_accuracy: float  # task unknown: routed
    retex_task_given_accuracy: float
    router_accuracy: float
    fidelity: float | None  # share of inputs where routed ReTeX predicts what the expert predicts
    normalized_accuracy: float | None  # retex_accuracy / expert_accuracy
    unknown_rate: float

    def as_dict(self) -> dict:
        return asdict(self)


@functools.cache
def _metric(name: str):
    from .metrics import load_metric

    return load_metric(name)


def _accuracy(predictions: torch.Tensor, labels: torch.Tensor, metric: str = "accuracy") -> float:
    """Through the `evaluate` metric modules the package ships (the Hub's are out of reach offline)."""
    result = _metric(metric).compute(predictions=predictions.tolist(), references=labels.tolist())
    return float(result[metric])


def evaluate_classification(
    model: RetexPreTrainedModel,
    test: Mapping[str, Mapping[str, torch.Tensor]],
    labels: Mapping[str, torch.Tensor],
    experts: Mapping[str, PreTrainedModel] | None = None,
    heads: Mapping[str, HeadSpec] | None = None,
    batch_size: int = 64,
) -> list[TaskReport]:
    """Per-task report; experts (and, for towers, their tensor heads) enable the comparisons."""
    reports = []
    shared_merged: PreTrainedModel | None = None  # towers share one merged model; module heads differ per task
    for task, inputs in test.items():
        index = model.task_index(task)
        head = heads.get(task) if heads else None
        # Under `accelerate launch` the rows are shared out and gathered back (`distributed.on_rows`).
        routed, task_ids, unknown = on_rows(partial(retex_logits, model, batch_size=batch_size), inputs)
        given, _, _ = on_rows(partial(retex_logits, model, task=task, batch_size=batch_size), inputs)
        routed_pred, truth = routed.argmax(-1), labels[task]
        expert_acc = merged_acc = fidelity = normalized = None
        if experts is not None:
            expert_pred = on_rows(
                partial(plain_logits, experts[task], head=head, batch_size=batch_size), inputs
            ).argmax(-1)
            expert_acc = _accuracy(expert_pred, truth)
            fidelity = _accuracy(routed_pred, expert_pred, metric="fidelity")
            normalized = _accuracy(routed_pred, truth) / max(expert_acc, 1e-12)
            if model.config.head_type == "module":
                merged = model.materialize_merged(head_of=task)
            else:
                shared_merged = shared_merged or model.materialize_merged()
                merged = shared_merged
            merged_pred = on_rows(partial(plain_logits, merged, head=head, batch_size=batch_size), inputs).argmax(-1)
            merged_acc = _accuracy(merged_pred, truth)
        reports.append(
            TaskReport(
                task=task,
                n=len(truth),
                expert_accuracy=expert_acc,
                merged_accuracy=merged_acc,
                retex_accuracy=_accuracy(routed_pred, truth),
                retex_task_given_accuracy=_accuracy(given.argmax(-1), truth),
                router_accuracy=(task_ids == index).float().mean().item(),
                fidelity=fidelity,
                normalized_accuracy=normalized,
                unknown_rate=unknown.float().mean().item(),
            )
        )
    return reports


def format_reports(reports: list[TaskReport]) -> str:
    """A fixed-width table with a mean row, for terminals and logs."""

    def pct(value: float | None) -> str:
        return "   -  " if value is None else f"{100 * value:6.1f}"

    columns = ["expert", "merged", "retex", "given", "router", "fidel.", "norm."]
    lines = [f"{'task':<16}" + "".join(f"{c:>8}" for c in columns)]
    rows = [
        (r.task, r.expert_accuracy, r.merged_accuracy, r.retex_accuracy, r.retex_task_given_accuracy,
         r.router_accuracy, r.fidelity, r.normalized_accuracy)
        for r in reports
    ]  # fmt: skip
    for name, *values in rows:
        lines.append(f"{name:<16}" + "".join(f"{pct(v):>8}" for v in values))
    means = []
    for column in range(1, 8):
        values = [row[column] for row in rows if row[column] is not None]
        means.append(sum(values) / len(values) if values else None)
    lines.append(f"{'mean':<16}" + "".join(f"{pct(v):>8}" for v in means))
    return "\n".join(lines)
