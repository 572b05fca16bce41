"""Turning a ReTeX model back into plain transformers artefacts, and measuring what it stores."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from .heads import PerTaskHead

if TYPE_CHECKING:
    from .modeling_retex import RetexPreTrainedModel


def canonical_param_names(model: torch.nn.Module) -> dict[str, str]:
    """state-dict key -> canonical parameter name (tied parameters share one canonical name)."""
    canonical = {id(p): name for name, p in model.named_parameters()}
    keys = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module.named_parameters(recurse=False):
            key = f"{module_name}.{attr}" if module_name else attr
            keys[key] = canonical[id(param)]
    return keys


@torch.no_grad()
def task_parameters(model: RetexPreTrainedModel, task: str | None) -> dict[str, torch.Tensor]:
    """θ_m ⊕ o_task for every backbone parameter that has an offset (θ_m alone when task is None)."""
    backbone = model.backbone
    values = {}
    if task is None:
        return values
    model.task_index(task)
    for name in model.config.offset_matrix_targets:
        offset = model.offsets.matrix(name)
        delta = offset.delta_matrix(task)
        if delta is not None:
            weight = backbone.get_parameter(name)
            values[name] = weight + delta.reshape(weight.shape).to(weight.dtype)
    for name in model.config.offset_vector_targets:
        param = backbone.get_parameter(name)
        values[name] = param + model.offsets.vector(name).delta[task].to(param.dtype)
    return values


@torch.no_grad()
def materialize_backbone(
    model: RetexPreTrainedModel, task: str | None, head_task: str | None = None
) -> PreTrainedModel:
    """A detached plain model (the backbone class) holding one task's recovered expert.

    With ``task=None`` the weights are the plain merge; the head is ``head_task``'s (default: the
    first task's).
    """
    head_task = task or head_task or model.config.task_names[0]
    model.task_index(head_task)
    config = model.config
    backbone = model.backbone
    plain_config = copy.deepcopy(config.backbone_config)
    head_name = config.head_module if config.head_type == "module" else None
    if head_name:
        labels = config.task_id2label[head_task]
        plain_config.num_labels = len(labels)
        plain_config.id2label = dict(labels)
        plain_config.label2id = {v: k for k, v in labels.items()}
    plain = type(backbone)(plain_config)
    overrides = task_parameters(model, task)
    keys = canonical_param_names(backbone)
    source = backbone.state_dict()
    state = {}
    for key in plain.state_dict():
        if head_name and key.startswith(head_name + "."):
            continue
        canonical = keys.get(key, key)
        state[key] = (overrides.get(canonical, source[key])).detach().clone()
    if head_name:
        dispatcher: PerTaskHead = getattr(backbone, head_name)
        for key, value in dispatcher.heads[head_task].state_dict().items():
            state[f"{head_name}.{key}"] = value.detach().clone()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"materialize: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    return plain.eval()


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def storage_report(model: RetexPreTrainedModel) -> dict[str, float]:
    """Bytes of each part; ``total_vs_one_model`` compares with one plain expert's weights."""
    config = model.config
    head_prefix = f"{config.head_module}." if config.head_type == "module" else None
    merged, heads = [], []
    for name, param in model.backbone.named_parameters():
        (heads if head_prefix and name.startswith(head_prefix) else merged).append(param)
    if config.head_type == "tensor":
        heads.extend(model.heads.parameters())
    report = {
        "merged_weights": _bytes(merged),
        "offsets": _bytes(model.offsets.parameters()),
        "signatures": _bytes(model.router.buffers()),
        "heads": _bytes(heads),
    }
    report["total"] = sum(report.values())
    one_head = report["heads"] // max(1, len(config.task_names))
    report["one_model"] = report["merged_weights"] + one_head
    report["total_vs_one_model"] = report["total"] / max(1, report["one_model"])
    return report
