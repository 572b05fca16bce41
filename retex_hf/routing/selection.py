"""Choices about the router made on the calibration inputs themselves, by held-out routing accuracy.

The subspace size k and the routing rule (SiM's residual or the shared-covariance discriminant)
are fitted on k−1 folds of each task's calibration features and scored on the fold left out: no
extra data, no labels, a few small SVDs and matrix inverses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .discriminant import discriminant_scores, fit_precision
from .signatures import fit_subspace, subspace_residuals

FitRule = Callable[[list[torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]]
SHRINKAGE_GRID = (0.01, 0.03, 0.1, 0.3)
ROUTER_RULES = ("auto", "subspace", "discriminant")


def cross_validated_accuracy(features: list[torch.Tensor], fit_rule: FitRule, folds: int = 4) -> float:
    """Routing accuracy of a rule on calibration inputs held out of its fit (k folds, inputs pooled).

    ``fit_rule(per_task_features)`` returns ``route(z) -> task ids``. Choices about the router
    (subspace size, routing rule) are made with this, on the calibration inputs themselves."""
    correct = total = 0
    for fold in range(folds):
        train, held_out = [], []
        for feats in features:
            index = torch.arange(feats.shape[0])
            train.append(feats[index % folds != fold])
            held_out.append(feats[index % folds == fold])
        route = fit_rule(train)
        for t, test in enumerate(held_out):
            if len(test):
                correct += (route(test) == t).sum().item()
                total += len(test)
    return correct / max(total, 1)


def subspace_rule(num_components: int) -> FitRule:
    """SiM's rule as a ``fit_rule`` for `cross_validated_accuracy`: argmin of the residuals."""

    def fit(features: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        fitted = [fit_subspace(f, num_components) for f in features]
        means = torch.stack([m for m, _ in fitted])
        bases = torch.stack([F.pad(b, (0, num_components - b.shape[1])) for _, b in fitted])
        return lambda z: subspace_residuals(z, means, bases).argmin(-1)

    return fit


def component_limit(features: list[torch.Tensor], folds: int = 4) -> int:
    """The largest k every task's fold-training inputs can support (N_train − 1)."""
    smallest = min(f.shape[0] for f in features)
    return max(1, smallest - smallest // folds - 1)


def select_components(
    features: list[torch.Tensor], default: int, folds: int = 4, max_components: int | None = None
) -> int:
    """Pick the subspace size k by held-out routing accuracy on the calibration inputs themselves.

    The paper's k = round(0.1·D) is a good rule for D = 512–1024 but misroutes on narrow
    features; cross-validating k costs a few small SVDs and needs no extra data. Ties go to the
    candidate closest to ``default``.
    """
    limit = component_limit(features, folds)
    if max_components is not None:
        limit = min(limit, max_components)
    candidates = sorted({k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, default) if 1 <= k <= limit})
    scores = [(cross_validated_accuracy(features, subspace_rule(k), folds), -abs(k - default), k) for k in candidates]
    return max(scores)[2]


def discriminant_rule(shrinkage: float) -> FitRule:
    """The discriminant as a ``fit_rule`` for `cross_validated_accuracy`: argmax of the scores."""

    def fit(features: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        means = torch.stack([f.double().mean(dim=0) for f in features])
        precision = fit_precision(features, shrinkage)
        return lambda z: discriminant_scores(z, means, precision).argmax(-1)

    return fit


def select_router_rule(
    features: list[torch.Tensor],
    num_components: int,
    rules: tuple[str, ...] = ("subspace", "discriminant"),
    folds: int = 4,
) -> tuple[str, float]:
    """(rule, shrinkage) among ``rules``, whichever routes more held-out calibration inputs right;
    the discriminant's shrinkage λ is chosen the same way (0.0 for the subspace rule).

    The discriminant must win by more than one held-out input per task: it gets the best of
    several λ on the same folds, which flatters it a little, and it costs a [D, D] matrix more.
    Short of that, the published rule stays."""
    unknown = [r for r in rules if r not in ROUTER_RULES[1:]]
    if unknown or not rules:
        raise ValueError(f"router rules {list(rules)}; valid: {', '.join(ROUTER_RULES[1:])}")
    if tuple(rules) == ("subspace",):
        return "subspace", 0.0
    best: tuple[float, str, float] = (-1.0, "subspace", 0.0)
    if "subspace" in rules:
        k = max(1, min(num_components, component_limit(features, folds)))
        margin = len(features) / sum(f.shape[0] for f in features)
        best = (cross_validated_accuracy(features, subspace_rule(k), folds) + margin, "subspace", 0.0)
    if "discriminant" in rules:
        for shrinkage in SHRINKAGE_GRID:
            accuracy = cross_validated_accuracy(features, discriminant_rule(shrinkage), folds)
            if accuracy > best[0]:
                best = (accuracy, "discriminant", shrinkage)
    return best[1], best[2]
