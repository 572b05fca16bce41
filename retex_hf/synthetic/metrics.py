"""Small evaluation helpers for synthetic suites: classifier accuracy, generation exact-match,
and how well a model's features identify the task of an input (the premise of routing).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..data import collate

HEAD_PREFIXES = ("classifier.", "score.")  # per-task heads of *ForSequenceClassification, never merged


@torch.no_grad()
def predict(
    model: PreTrainedModel,
    inputs: Mapping[str, torch.Tensor],
    head: torch.Tensor | None = None,
    logit_scale: float | None = None,
) -> torch.Tensor:
    """Logits of a classifier, or of a bare tower with a CLIP-style tensor head.

    With ``head`` [num_labels, dim]: ``normalize(pooler_output) @ normalize(head).T * logit_scale``.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(**inputs)
    finally:
        model.train(was_training)
    if head is None:
        return out.logits
    features = F.normalize(out.pooler_output.float(), dim=-1)
    return features @ F.normalize(head.float(), dim=-1).T * (1.0 if logit_scale is None else logit_scale)


def accuracy(
    model: PreTrainedModel,
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    head: torch.Tensor | None = None,
    logit_scale: float | None = None,
) -> float:
    """Top-1 accuracy of a classifier (or tower + tensor head) on batched inputs."""
    logits = predict(model, inputs, head, logit_scale)
    return (logits.argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def generate_targets(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], length: int) -> torch.Tensor:
    """Greedy generation, without the decoder start token, padded/cut to ``length`` (pad = -1, never a label)."""
    model.eval()
    out = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs.get("attention_mask"),
        max_new_tokens=length,
        do_sample=False,
        num_beams=1,
    )[:, 1:]
    out = out[:, :length]
    return F.pad(out, (0, length - out.shape[1]), value=-1)


def generation_exact_match(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> float:
    """Fraction of inputs whose greedy generation reproduces the whole target (ending with eos)."""
    generated = generate_targets(model, inputs, labels.shape[1])
    valid = labels != -100
    return ((generated == labels) | ~valid).all(dim=1).float().mean().item()


def generation_token_accuracy(
    model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor
) -> float:
    """Fraction of target tokens that greedy generation gets right, position by position."""
    generated = generate_targets(model, inputs, labels.shape[1])
    valid = labels != -100
    return ((generated == labels) & valid).sum().item() / valid.sum().item()


@torch.no_grad()
def pooled_features(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Routing-style features: CLIP's pooler_output, else the (encoder's) mask-averaged hidden states."""
    model.eval()
    if "pixel_values" in inputs:
        return model(pixel_values=inputs["pixel_values"]).pooler_output.float()
    body = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model.base_model
    hidden = body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def task_identification_accuracy(
    model: PreTrainedModel,
    calibration: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    test: Mapping[str, Mapping[str, torch.Tensor]],
    pad_token_id: int = 0,
) -> dict[str, float]:
    """Per task, how often a nearest-class-mean classifier on normalised features of ``model``,
    fitted on the unlabeled calibration sets, names the right task for a test input."""
    tasks = list(calibration)
    means = torch.stack(
        [F.normalize(pooled_features(model, collate(calibration[t], pad_token_id)), dim=-1).mean(0) for t in tasks]
    )
    result = {}
    for i, task in enumerate(tasks):
        feats = F.normalize(pooled_features(model, test[task]), dim=-1)
        result[task] = (torch.cdist(feats, means).argmin(-1) == i).float().mean().item()
    return result


@torch.no_grad()
def averaged_experts(experts: Mapping[str, PreTrainedModel]) -> dict[str, PreTrainedModel]:
    """Per task, a copy of its expert whose shared weights are the plain mean over all experts.

    Per-task classification heads are kept; this is the naive merge whose accuracy loss ReTeX recovers.
    """
    states = {t: m.state_dict() for t, m in experts.items()}
    first = next(iter(states.values()))
    shared = [k for k in first if not k.startswith(HEAD_PREFIXES)]
    mean = {k: torch.stack([s[k].float() for s in states.values()]).mean(0).to(first[k].dtype) for k in shared}
    merged = {}
    for task, expert in experts.items():
        model = copy.deepcopy(expert)
        model.load_state_dict(mean, strict=False)
        merged[task] = model.eval()
    return merged


@torch.no_grad()
def with_base_body(base: PreTrainedModel, expert: PreTrainedModel) -> PreTrainedModel:
    """The expert's head on the base's body: what the task gets with no fine-tuning of the body.

    For CLIP and T5 (no head module: the base is the same class as the experts) this is a copy of the base.
    """
    if type(base) is type(expert):
        return copy.deepcopy(base).eval()
    model = copy.deepcopy(expert)
    body_state = model.base_model.state_dict()
    base_state = base.state_dict()
    missing = [k for k in body_state if k not in base_state]
    if missing:
        raise ValueError(f"base has no tensors for {missing[:5]}")
    model.base_model.load_state_dict({k: base_state[k] for k in body_state})
    return model.eval()
