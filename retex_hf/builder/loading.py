"""Loading the base and the experts, and checking they really are one backbone fine-tuned T times."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import transformers
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .. import backbones

ModelSpec = PreTrainedModel | str | os.PathLike


def load_model(spec: ModelSpec, role: str) -> PreTrainedModel:
    """A PreTrainedModel as given, or loaded from a local directory or Hub id by its saved architecture."""
    if isinstance(spec, PreTrainedModel):
        return spec.eval()
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"{role}: expected a PreTrainedModel, a directory or a Hub id, got {type(spec).__name__}")
    config = AutoConfig.from_pretrained(spec)
    model_cls = AutoModel
    for name in config.architectures or []:
        if hasattr(transformers, name):
            model_cls = getattr(transformers, name)
            break
    return model_cls.from_pretrained(spec).eval()


def body_parameter_names(model: PreTrainedModel, head: str | None) -> list[str]:
    """Canonical names of the parameters that are merged (everything but the per-task head)."""
    return [n for n, _ in model.named_parameters() if not (head and (n == head or n.startswith(head + ".")))]


def align_base(base: PreTrainedModel, expert: PreTrainedModel, names: list[str]) -> dict[str, torch.Tensor]:
    """The base's tensors under the expert's names (a bare `BertModel` base vs `bert.`-prefixed experts)."""
    base_state = base.state_dict()
    prefix = getattr(expert, "base_model_prefix", "")
    aligned = {}
    for name in names:
        candidates = [name]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
        elif prefix:
            candidates.append(f"{prefix}.{name}")
        found = next((c for c in candidates if c in base_state), None)
        if found is None:
            raise ValueError(f"base model has no tensor for expert tensor {name!r}")
        aligned[name] = base_state[found]
    return aligned


def check_experts(base_tensors: Mapping[str, torch.Tensor], experts: Mapping[str, PreTrainedModel]) -> None:
    """Same architecture, same tensor names and shapes, everywhere."""
    classes = {type(m).__name__ for m in experts.values()}
    if len(classes) > 1:
        raise ValueError(f"experts have different architectures: {sorted(classes)}")
    for task, expert in experts.items():
        params = dict(expert.named_parameters())
        for name, base_value in base_tensors.items():
            if name not in params:
                raise ValueError(f"expert {task!r} has no tensor {name!r}")
            if tuple(params[name].shape) != tuple(base_value.shape):
                raise ValueError(
                    f"expert {task!r} tensor {name!r} has shape {tuple(params[name].shape)}, "
                    f"base has {tuple(base_value.shape)}"
                )


def head_of(expert: PreTrainedModel) -> str | None:
    return backbones.head_attribute(expert)
