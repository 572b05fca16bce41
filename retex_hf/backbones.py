"""What differs between backbone architectures, and nothing else.

ReTeX itself is generic over any transformers model built from Linear / Conv / Embedding / norm
layers. Three things are architecture facts that cannot be inferred: which module is the
task-specific classification head, how an input is pooled into one feature vector for routing,
and which embeddings are looked up without a batch dimension (so cannot take per-sample offsets).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

# Attribute names under which transformers' *For{Sequence,Image}Classification classes keep
# their task head. The head is stored per task and never merged.
HEAD_ATTRIBUTES = ("classifier", "score")

# Embeddings indexed by relative positions rather than by the samples of the batch.
NON_BATCHED_EMBEDDINGS = ("relative_attention_bias",)

_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds")


def head_attribute(model: nn.Module) -> str | None:
    """The name of the model's per-task classification head module, if it has one."""
    for name in HEAD_ATTRIBUTES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def is_vision(model: PreTrainedModel) -> bool:
    return getattr(model, "main_input_name", "") == "pixel_values"


def is_encoder_decoder(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def feature_body(model: PreTrainedModel) -> nn.Module:
    """The part of the backbone whose output is pooled into routing features.

    It excludes heads and decoders, so routing costs one encoder pass of the merged weights.
    """
    if is_encoder_decoder(model):
        return model.get_encoder()
    if is_vision(model):
        return getattr(model, "vision_model", model)
    return model.base_model


def body_inputs(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the inputs that the feature body accepts (drop labels, decoder inputs, ...)."""
    if is_vision(model):
        return {"pixel_values": inputs["pixel_values"]}
    return {k: v for k, v in inputs.items() if k in _TEXT_KEYS and v is not None}


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer layers inside the feature body (BERT/RoBERTa ``encoder.layer``,
    CLIP ``encoder.layers``, T5 ``block``): the list whose length is the config's layer count."""
    body = feature_body(model)
    config = model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    for _, module in body.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} encoder layers of {type(model).__name__}")


class _StopAfterLayer(Exception):
    """Raised by a forward hook to end the feature pass once the routing layer has run."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _hidden_after(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Hidden states after the first ``layer`` encoder layers; the layers above never run."""

    def stop(module: nn.Module, args: tuple, output) -> None:
        raise _StopAfterLayer(output[0] if isinstance(output, (tuple, list)) else output)

    handle = encoder_layers(model)[layer - 1].register_forward_hook(stop)
    try:
        body = feature_body(model)
        body(**body_inputs(model, inputs), return_dict=True)
    except _StopAfterLayer as stopped:
        return stopped.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"encoder layer {layer} of {type(model).__name__} never ran")


def pool_features(
    model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], normalize: bool = True, layer: int = 0
) -> torch.Tensor:
    """Routing features: CLIP's pooled output, mean-pooled encoder states for text backbones.

    ``layer`` > 0 pools the hidden states after that many encoder layers instead (token mean, for
    CLIP too) and stops the pass there: routing then costs layer / num_layers of an encoder pass,
    which is most of what ReTeX adds to a plain forward."""
    if layer:
        mask = None if is_vision(model) else inputs.get("attention_mask")
        pooled = masked_mean(_hidden_after(model, inputs, layer), mask)
    else:
        body = feature_body(model)
        out = body(**body_inputs(model, inputs), return_dict=True)
        if is_vision(model):
            pooled = out.pooler_output
        else:
            pooled = masked_mean(out.last_hidden_state, inputs.get("attention_mask"))
    pooled = pooled.float()
    return F.normalize(pooled, dim=-1) if normalize else pooled


def tower_pooled_output(outputs) -> torch.Tensor:
    """The vector a tensor (zero-shot) head multiplies: projected embeds when the tower has them."""
    embeds = getattr(outputs, "image_embeds", None)
    return embeds if embeds is not None else outputs.pooler_output
