"""Evaluation metrics shipped inside retex-hf and loaded by local path.

``evaluate.load("accuracy")`` downloads the metric script from the Hub, which is unreachable in offline builds and
CI. Each metric here lives in ``<name>/<name>.py`` (the layout ``evaluate.load`` expects for a directory) and is
loaded from the installed package, so evaluation works with ``HF_HUB_OFFLINE=1`` and no network at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate

__all__ = ["METRICS_DIR", "available_metrics", "load_metric", "metric_path"]

METRICS_DIR: Path = Path(__file__).resolve().parent


def available_metrics() -> list[str]:
    """Names of the shipped metrics: every sub-directory ``<name>`` that holds a ``<name>.py`` script."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file())


def metric_path(name: str) -> Path:
    """Directory of a shipped metric; raises ValueError naming the valid choices so typos are easy to fix."""
    names = available_metrics()
    if name not in names:
        raise ValueError(f"Unknown metric {name!r}; available metrics: {', '.join(names)}")
    return METRICS_DIR / name


def load_metric(name: str, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load a shipped metric with ``evaluate.load`` from its local directory (never from the Hub).

    ``load_kwargs`` are passed to ``evaluate.load`` (e.g. ``experiment_id`` or ``keep_in_memory``).
    """
    return evaluate.load(str(metric_path(name)), **load_kwargs)
