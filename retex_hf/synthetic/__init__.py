"""Small, real experts for tests and demos: a tiny base model fine-tuned on synthetic tasks whose
inputs come from different domains (so the task is identifiable) and whose label rules differ
(so naive weight averaging loses accuracy). Everything is built locally in seconds."""

from .metrics import (
    accuracy,
    averaged_experts,
    generation_exact_match,
    generation_token_accuracy,
    task_identification_accuracy,
    with_base_body,
)
from .suite import BACKBONES, SyntheticSuite, build_suite, make_suite

__all__ = [
    "BACKBONES",
    "SyntheticSuite",
    "accuracy",
    "averaged_experts",
    "build_suite",
    "generation_exact_match",
    "generation_token_accuracy",
    "make_suite",
    "task_identification_accuracy",
    "with_base_body",
]
