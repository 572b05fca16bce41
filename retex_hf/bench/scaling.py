"""Scaling study: normalised accuracy and checkpoint bytes as tasks and the offset budget grow.

Every point is a real build (in a child process, like the main one) evaluated with the task
unknown on a fixed random subsample of each task's test split, next to the static merges (task
arithmetic and TIES at the λ the main run chose on the validation split) on the same inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..evaluation import retex_logits
from . import baselines, measure
from .suite import LabelledSplit, SuiteData

TASK_COUNTS = (2, 4, 6, 8)
SUBSAMPLE = 300


def _subsample(split: LabelledSplit, n: int, seed: int) -> tuple[LabelledSplit, torch.Tensor]:
    index = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return LabelledSplit(measure.select(split.inputs, index), split.labels[index]), index


def _normalized(predictions: dict, labels: dict, expert: dict) -> float:
    ratios = [
        (predictions[t] == labels[t]).float().mean().item() / max((expert[t] == labels[t]).float().mean().item(), 1e-12)
        for t in predictions
    ]
    return sum(ratios) / len(ratios)


def _retex_predictions(model, tasks: list[str], tests: dict[str, LabelledSplit]) -> dict:
    out = {}
    for task in tasks:
        logits, ids, _ = retex_logits(model, tests[task].inputs)
        right = ids == model.task_index(task)
        out[task] = torch.where(right, logits.argmax(-1), torch.full_like(ids, -1))  # misrouted: wrong
    return out


def _static_predictions(pool: baselines.ExpertPool, tests: dict[str, LabelledSplit], chosen: dict) -> dict:
    result = {}
    for method, key in (("task_arithmetic", "task_arithmetic_lambda"), ("ties", "ties_lambda")):
        body = pool.merged(method, scaling=chosen[key])
        result[method] = {t: pool.logits(t, body, tests[t]).argmax(-1) for t in pool.tasks}
    return result


def _evaluate(model, build: dict, tasks: list[str], tests, labels, expert, budget: float) -> dict:
    return {
        "tasks": len(tasks),
        "budget": budget,
        "retex_normalized_accuracy": _normalized(_retex_predictions(model, tasks, tests), labels, expert),
        "bytes_vs_one_model": build["storage"]["total_vs_one_model"],
        "build_seconds": build["build_seconds"],
    }


def _point(data: SuiteData, tasks: list[str], tests, labels, expert, settings, budget: float) -> dict:
    from .runner import build_in_child, load_retex

    with tempfile.TemporaryDirectory(prefix="retex-bench-scaling-") as scratch:
        build = build_in_child(data, tasks, Path(scratch) / "ckpt", settings, budget=budget)
        return _evaluate(load_retex(Path(scratch) / "ckpt"), build, tasks, tests, labels, expert, budget)


def scaling_study(data: SuiteData, tasks: list[str], pool: baselines.ExpertPool, settings, chosen: dict,
                  expert_predictions: dict, main: tuple | None = None) -> dict:  # fmt: skip
    """Points over task counts (at the main budget) and over budgets (with every task).

    ``main`` = (model, build record) of the run's own build with every task at the main budget:
    that point is evaluated on it rather than built a second time (the same build, same seed)."""
    tests, labels, expert = {}, {}, {}
    for j, task in enumerate(tasks):
        tests[task], index = _subsample(data.test[task], SUBSAMPLE, settings.seed + 100 + j)
        labels[task], expert[task] = tests[task].labels, expert_predictions[task][index]
    counts = [k for k in TASK_COUNTS if k < len(tasks)] + [len(tasks)]
    by_tasks, by_budget, skipped = [], [], []
    for k in counts:
        subset = tasks[:k]
        if main is not None and k == len(tasks):
            point = _evaluate(*main, subset, tests, labels, expert, settings.budget)
        else:
            point = _point(data, subset, tests, labels, expert, settings, settings.budget)
        sub_pool = baselines.ExpertPool(data.base_dir, {t: pool.experts[t] for t in subset}, pool.heads)
        for method, predictions in _static_predictions(sub_pool, {t: tests[t] for t in subset}, chosen).items():
            point[f"{method}_normalized_accuracy"] = _normalized(predictions, labels, expert)
        del sub_pool
        by_tasks.append(point)
        settings.say(f"scaling: {k} tasks -> {point}")
    for factor in settings.budget_factors:
        if factor == 1.0:
            by_budget.append({**by_tasks[-1]})
            continue
        budget = settings.budget * factor
        try:
            point = _point(data, tasks, tests, labels, expert, settings, budget)
        except RuntimeError as err:  # e.g. a budget below what the small tensors' full offsets need
            skipped.append({"budget": budget, "reason": str(err)})
            settings.say(f"scaling: budget {budget:g} skipped: {err}")
            continue
        by_budget.append(point)
        settings.say(f"scaling: budget {budget:g} -> {point}")
    by_budget.sort(key=lambda p: p["budget"])
    return {"subsample_per_task": SUBSAMPLE, "by_tasks": by_tasks, "by_budget": by_budget, "skipped": skipped}
