"""PEFT LoRA experts: an adapter directory over the base, merged into a full expert first.

The merged expert is written to a scratch directory as safetensors, so that from then on it is
read lazily like any other expert and never holds memory while others are merged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from .. import backbones
from .sources import ADAPTER_CONFIG, WeightSource

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_peft_adapter(spec) -> bool:
    return isinstance(spec, (str, Path)) and (Path(spec) / ADAPTER_CONFIG).is_file()


def _adapter_num_labels(adapter_dir: Path) -> int | None:
    """The label count of the classification head an adapter saved (modules_to_save)."""
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.exists():
        return None
    with safe_open(path, framework="pt") as handle:
        heads = [
            k for k in handle.keys() if k.endswith(".weight") and any(f".{h}." in k for h in backbones.HEAD_ATTRIBUTES)
        ]
        if not heads:
            return None
        last = next((k for k in heads if "out_proj" in k), heads[-1])
        return handle.get_slice(last).get_shape()[0]


def _model_for_adapter(base: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    task_type = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("task_type")
    if task_type != "SEQ_CLS" or backbones.head_attribute(base) is not None:
        return base
    num_labels = _adapter_num_labels(adapter_dir)
    config = copy.deepcopy(base.config)
    if num_labels:
        config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(config)
    body = base.base_model if base.base_model is not base else base
    model.base_model.load_state_dict(body.state_dict(), strict=False)
    return model


@torch.no_grad()
def merge_peft_expert(adapter_dir: str | Path, base: WeightSource, scratch: Path, role: str) -> WeightSource:
    """Load the base, apply the LoRA adapter, merge it in, save, and read it back lazily."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    model = base.load()
    if base.directory is None:
        model = copy.deepcopy(model)  # never modify the caller's base in place
    model = _model_for_adapter(model, adapter_dir)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    target = scratch / role.replace(" ", "_").replace("'", "")
    merged.save_pretrained(target)
    return WeightSource(target, role)
