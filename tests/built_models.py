"""ReTeX models built once per test session from the synthetic suites, saved with their preprocessors.

Several ecosystem tests (pipelines, Trainer, accelerate, add/remove_task) need the same small
checkpoints; building each once keeps the suite fast. Treat the returned objects as read-only.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import retex_hf
from retex_hf.synthetic import make_suite

BUDGET = {"bert": 0.3, "roberta": 0.3, "clip": 0.4, "t5": 0.4}
_ROOT = tempfile.TemporaryDirectory(prefix="retex-test-models-")


def build_kwargs(suite) -> dict:
    if not suite.heads:
        return {}
    return {"heads": suite.heads, "normalize_features": True, "logit_scale": suite.head_logit_scale}


@functools.cache
def built(backbone: str, num_tasks: int = 3):
    """(suite, model, checkpoint directory with the preprocessor) for one synthetic backbone."""
    suite = make_suite(backbone, num_tasks=num_tasks, seed=0)
    model = retex_hf.build_retex(
        suite.base, suite.experts, suite.calibration, merge="ties", budget=BUDGET[backbone], recovery_steps=0,
        quiet=True, **build_kwargs(suite),
    )  # fmt: skip
    directory = Path(_ROOT.name) / f"{backbone}-{num_tasks}"
    model.save_pretrained(directory)
    suite.preprocessor().save_pretrained(directory)
    return suite, model, directory
