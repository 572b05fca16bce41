"""Calibration inputs in whatever form users have them, turned into padded model batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "decoder_input_ids")
_TOKEN_KEYS = ("input_ids", "decoder_input_ids")


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def to_examples(calibration: Any) -> list[dict[str, torch.Tensor]]:
    """One dict of unbatched tensors per example, from a Dataset, a list of dicts or batched tensors."""
    if isinstance(calibration, Mapping):
        keys = [k for k in calibration if k in MODEL_INPUT_KEYS]
        if not keys:
            raise ValueError(f"calibration inputs hold none of the model input keys {MODEL_INPUT_KEYS}")
        n = len(calibration[keys[0]])
        return [{k: _as_tensor(calibration[k][i]) for k in keys} for i in range(n)]
    if hasattr(calibration, "column_names") and hasattr(calibration, "__getitem__"):  # datasets.Dataset
        keys = [k for k in calibration.column_names if k in MODEL_INPUT_KEYS]
        if not keys:
            raise ValueError(
                f"calibration dataset has columns {calibration.column_names}; none is a model input {MODEL_INPUT_KEYS}"
            )
        return [{k: _as_tensor(row[k]) for k in keys} for row in calibration]
    if isinstance(calibration, Sequence):
        examples = []
        for row in calibration:
            if not isinstance(row, Mapping):
                raise ValueError(f"calibration rows must be dicts of model inputs, got {type(row).__name__}")
            examples.append({k: _as_tensor(v) for k, v in row.items() if k in MODEL_INPUT_KEYS})
        return examples
    raise ValueError(f"unsupported calibration type {type(calibration).__name__}")


def collate(examples: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack examples, right-padding along the first axis where lengths differ.

    Token ids are padded with ``pad_token_id``, everything else (masks, token types, per-position
    targets) with 0. Token inputs without an attention mask get one, so padding is never attended.
    """
    if "input_ids" in examples[0] and "attention_mask" not in examples[0]:
        examples = [{**e, "attention_mask": torch.ones_like(_as_tensor(e["input_ids"]))} for e in examples]
    batch = {}
    for key in examples[0]:
        values = [_as_tensor(e[key]) for e in examples]
        if values[0].dim() >= 1 and len({v.shape[0] for v in values}) > 1:
            length = max(v.shape[0] for v in values)
            fill = pad_token_id if key in _TOKEN_KEYS else 0
            values = [F.pad(v, [0, 0] * (v.dim() - 1) + [0, length - v.shape[0]], value=fill) for v in values]
        batch[key] = torch.stack(values)
    return batch


def batches(examples: Sequence[Mapping[str, torch.Tensor]], batch_size: int, pad_token_id: int = 0):
    return [collate(examples[i : i + batch_size], pad_token_id) for i in range(0, len(examples), batch_size)]
