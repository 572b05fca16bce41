"""What the ReTeX models return: the backbone's outputs plus where each sample was routed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


class UnknownTaskError(ValueError):
    """Raised under ``unknown_task_policy="raise"`` when an input fits no task's signature."""


@dataclass
class RetexOutput(ModelOutput):
    """Backbone outputs plus where each sample was routed."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    task_ids: torch.Tensor | None = None
    unknown: torch.Tensor | None = None
    residuals: torch.Tensor | None = None


@dataclass
class RetexSeq2SeqOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: object | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    task_ids: torch.Tensor | None = None
    unknown: torch.Tensor | None = None
    residuals: torch.Tensor | None = None


@dataclass
class RetexGenerateOutput(ModelOutput):
    sequences: torch.Tensor | None = None
    task_ids: torch.Tensor | None = None
    unknown: torch.Tensor | None = None
