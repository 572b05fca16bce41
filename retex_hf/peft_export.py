"""Exporting one task's offsets as a PEFT LoRA adapter over the plain merged model.

Low-rank offsets map one-to-one onto LoRA factors (per-module ranks via ``rank_pattern``, alpha =
rank so the scaling is 1). What LoRA cannot express, full offsets of norms and of CLIP's class
token, travels as ``modules_to_save`` with the task's values baked in; bias offsets of LoRA layers
travel through ``bias="lora_only"``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .offsets.targets import modules_using

if TYPE_CHECKING:
    from .modeling_retex import RetexPreTrainedModel

_LORA_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def _plan(model: RetexPreTrainedModel, task: str, plain: nn.Module):
    """Module names for LoRA (with ranks) and for modules_to_save."""
    config = model.config
    ranks = config.offset_ranks.get(task, {})
    lora, saved = {}, set()
    for name, kind in config.offset_vector_targets.items():
        for module_name, module, _ in modules_using(plain, name):
            if kind == "class_embedding" or not isinstance(module, _LORA_TYPES):
                saved.add(module_name)
            else:
                lora.setdefault(module_name, 1)
    for name in config.offset_matrix_targets:
        for module_name, module, _ in modules_using(plain, name):
            if isinstance(module, _LORA_TYPES) and ranks.get(name, 0):
                lora[module_name] = ranks[name]
    lora = {n: r for n, r in lora.items() if not any(n.startswith(s + ".") for s in saved)}
    if config.head_type == "module":
        saved.add(config.head_module)
    return lora, sorted(saved)


@torch.no_grad()
def export_peft(model: RetexPreTrainedModel, task: str, directory: str | Path) -> Path:
    """Write ``task``'s recovered expert as a LoRA adapter; load it over
    ``model.materialize_merged(head_of=task)`` with ``PeftModel.from_pretrained``."""
    from peft import LoraConfig, get_peft_model

    model.task_index(task)
    plain = model.materialize_merged(head_of=task)
    recovered = dict(model.materialize(task).named_parameters())
    lora, saved = _plan(model, task, plain)
    config = LoraConfig(
        r=1,
        lora_alpha=1,
        target_modules=list(lora) or None,
        rank_pattern={n: r for n, r in lora.items()},
        alpha_pattern={n: r for n, r in lora.items()},
        modules_to_save=saved or None,
        bias="lora_only",
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    peft_model = get_peft_model(copy.deepcopy(plain), config)
    modules = dict(peft_model.base_model.model.named_modules())
    canonical = {id(p): n for n, p in plain.named_parameters()}
    plain_modules = dict(plain.named_modules())
    for module_name in lora:
        layer = modules[module_name]
        weight_name = canonical[id(plain_modules[module_name].weight)]
        _write_lora(layer, model.offsets.matrix(weight_name), task)
        if getattr(layer.base_layer, "bias", None) is not None:
            layer.base_layer.bias.copy_(recovered[canonical[id(plain_modules[module_name].bias)]])
    for module_name in saved:
        wrapper = modules[module_name]
        copy_module = wrapper.modules_to_save["default"]
        for attr, param in copy_module.named_parameters():
            full = f"{module_name}.{attr}"
            param.copy_(recovered.get(canonical.get(id(plain.get_parameter(full)), full), param))
    directory = Path(directory)
    peft_model.save_pretrained(directory)
    return directory


def _write_lora(layer: nn.Module, offset, task: str) -> None:
    """Copy B A into the peft layer's factors (zeros where this task has no rank here)."""
    has = offset is not None and task in offset.A
    if hasattr(layer, "lora_embedding_A") and "default" in layer.lora_embedding_A:
        a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
        if has:  # (B A)ᵀ convention: embedding A is [r, V], B is [H, r]
            a.copy_(offset.B[task].T)
            b.copy_(offset.A[task].T)
        else:
            a.zero_()
            b.zero_()
        return
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    if has:
        a.copy_(offset.A[task].reshape(a.shape))
        b.copy_(offset.B[task].reshape(b.shape))
    else:
        a.zero_()
        b.zero_()
