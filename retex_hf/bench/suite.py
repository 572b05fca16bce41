"""What a benchmark suite hands the bench runner: a base, experts on disk, and labelled splits.

A suite (``text``, ``vision``) only prepares data and experts; everything measured afterwards
(merges, baselines, ReTeX build, report) is shared by all suites and lives in the runner. Suites
register themselves by name so ``retex-hf bench NAME`` finds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

Inputs = dict[str, torch.Tensor]  # batched model inputs: input_ids + attention_mask, or pixel_values


@dataclass
class LabelledSplit:
    inputs: Inputs
    labels: torch.Tensor  # LongTensor [n]


@dataclass
class SuiteData:
    """Everything a run needs. Experts are saved transformers checkpoints sharing the base's backbone."""

    name: str
    base_dir: Path  # the pretrained backbone the experts were fine-tuned from
    expert_dirs: dict[str, Path]
    calibration: dict[str, Inputs]  # unlabelled, from each task's training split
    validation: dict[str, LabelledSplit]  # for choosing baseline hyper-parameters (e.g. the TA lambda)
    test: dict[str, LabelledSplit]
    domains: dict[str, str]  # task -> input domain; tasks sharing a domain are reported as such
    id2label: dict[str, dict[int, str]]
    expert_info: dict[str, dict] = field(default_factory=dict)  # accuracy, distance from base, training time
    heads: dict[str, torch.Tensor] | None = None  # tensor heads for tower experts (CLIPVisionModel)
    head_logit_scale: float = 1.0
    normalize_features: bool = False
    preprocessor_dir: Path | None = None  # tokenizer / image processor to ship with the checkpoint


SuitePreparer = Callable[..., SuiteData]  # (quick: bool, cache_dir: Path, seed: int, tasks: list[str] | None)
SUITES: dict[str, SuitePreparer] = {}


def register_suite(name: str) -> Callable[[SuitePreparer], SuitePreparer]:
    def decorate(prepare: SuitePreparer) -> SuitePreparer:
        SUITES[name] = prepare
        return prepare

    return decorate
