"""Measurements shared by every suite: batched outputs, bootstrap intervals, KL, throughput, memory.

Test splits are stored sorted by length (suites do this) and every batch is trimmed to its longest
real input, so a 1,000-example split costs what its tokens cost, not 1,000 × the longest input.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import slices

Inputs = Mapping[str, torch.Tensor]


def size(inputs: Inputs) -> int:
    return next(iter(inputs.values())).shape[0]


def select(inputs: Inputs, index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in inputs.items()}


@torch.no_grad()
def logits_of(forward: Callable[[dict], torch.Tensor], inputs: Inputs, batch_size: int = 64) -> torch.Tensor:
    """Concatenated float logits of ``forward(batch)`` over trimmed batches."""
    return torch.cat([forward(batch).float() for batch in slices(inputs, batch_size)])


def classifier_forward(model: torch.nn.Module) -> Callable[[dict], torch.Tensor]:
    return lambda batch: model(**batch, return_dict=True).logits


@dataclass
class Outcome:
    """One method on one task's test split.

    ``predictions`` index the task's own labels; -1 marks an input sent to another task (its
    answer is in another label set, so it is counted wrong and unlike the expert).
    ``probs`` are the method's class probabilities over the task's labels (None where routed away).
    """

    predictions: torch.Tensor
    probs: torch.Tensor | None = None
    routed: torch.Tensor | None = None  # bool: routed to the right task (routed methods only)


def outcome_from_logits(logits: torch.Tensor, num_labels: int, routed_right: torch.Tensor | None = None) -> Outcome:
    own = logits[:, :num_labels]
    predictions = own.argmax(-1)
    if routed_right is not None:
        predictions = torch.where(routed_right, predictions, torch.full_like(predictions, -1))
    return Outcome(predictions, torch.softmax(own, -1), routed_right)


def mean_kl(expert_probs: torch.Tensor, outcome: Outcome) -> float | None:
    """Mean KL(expert ‖ method) over the inputs the method answered within the task's label set."""
    if outcome.probs is None:
        return None
    keep = outcome.routed if outcome.routed is not None else torch.ones(len(expert_probs), dtype=torch.bool)
    if not keep.any():
        return None
    p, q = expert_probs[keep].double().clamp_min(1e-12), outcome.probs[keep].double().clamp_min(1e-12)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def bootstrap_indices(n: int, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def interval(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_task(
    correct: np.ndarray, expert_correct: np.ndarray, agree: np.ndarray, index: np.ndarray
) -> dict[str, np.ndarray]:
    """Per bootstrap round: accuracy, normalised accuracy (paired with the expert) and fidelity."""
    acc = correct[index].mean(1)
    expert_acc = expert_correct[index].mean(1)
    return {"accuracy": acc, "normalized": acc / np.maximum(expert_acc, 1e-12), "fidelity": agree[index].mean(1)}


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """(best wall-clock seconds of ``repeats`` calls, last result): the best is the least disturbed."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mixed_batches(test: Mapping[str, Mapping], batch_size: int, limit: int, seed: int) -> list[dict]:
    """Batches that mix every task's test inputs at random (what a multi-task server sees).

    Inputs are re-padded to a common width first, then each batch is trimmed.
    """
    parts = [split.inputs for split in test.values()]
    width = max(p["input_ids"].shape[1] for p in parts) if "input_ids" in parts[0] else None
    merged: dict[str, list] = {k: [] for k in parts[0]}
    for p in parts:
        for key, value in p.items():
            if width is not None and value.dim() == 2:
                value = F.pad(value, (0, width - value.shape[1]), value=0)
            merged[key].append(value)
    stacked = {k: torch.cat(v) for k, v in merged.items()}
    order = torch.randperm(size(stacked), generator=torch.Generator().manual_seed(seed))[: batch_size * limit]
    return list(slices(select(stacked, order), batch_size))
