"""Whole-checkpoint driver on top of `merge_tensor`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor

from .registry import merge_tensor, resolve_hparams

TaskVectorSource = Callable[[str], Tensor] | Mapping[str, Tensor]


def merge_state_dict(
    method: str,
    base: Mapping[str, Tensor],
    task_vectors: TaskVectorSource,
    names: Iterable[str] | None = None,
    **hparams: Any,
) -> dict[str, Tensor]:
    """Merge every named tensor of ``base`` and return the merged state dict.

    ``task_vectors`` may be a callable ``name -> Tensor[T, *shape]`` so the
    caller can load (and free) the stacked expert deltas one tensor at a time;
    a plain mapping works for small models and tests. Hyper-parameters are
    resolved once up front so a bad config fails before any tensor is loaded.

    Non-floating tensors (integer buffers such as ``position_ids``) carry no
    learnable delta, so they are copied from ``base`` without asking
    ``task_vectors`` for them.
    """
    resolved = resolve_hparams(method, **hparams)
    load = task_vectors.__getitem__ if isinstance(task_vectors, Mapping) else task_vectors
    merged: dict[str, Tensor] = {}
    for name in base.keys() if names is None else names:
        if name not in base:
            raise ValueError(f"tensor {name!r} is not in the base state dict")
        weight = base[name]
        if not weight.is_floating_point():
            merged[name] = weight.clone()
            continue
        try:
            merged[name] = merge_tensor(method, weight, load(name), **resolved)
        except ValueError as err:
            raise ValueError(f"tensor {name!r}: {err}") from err
    return merged
