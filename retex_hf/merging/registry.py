"""Registry of model-merging methods and the per-tensor entry point.

Every method is a function ``fn(task_vectors, base, **hparams)`` returning the
merged *task vector* for one tensor. Working tensor by tensor lets callers
stream weights lazily from disk instead of holding every expert in memory, and
keeping the registry as the only lookup path means configs can name a method by
string and record the exact hyper-parameters used (see `resolve_hparams`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

MergeFn = Callable[..., Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merging method.

    ``defaults`` doubles as the schema of accepted hyper-parameters: a name that
    is not in it is rejected, so typos in configs fail loudly instead of being
    silently ignored.
    """

    name: str
    fn: MergeFn
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, MergeMethod] = {}


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def register_merge_method(name: str, **defaults: Any) -> Callable[[MergeFn], MergeFn]:
    """Register ``fn`` under ``name``; keyword arguments are its hyper-parameter defaults.

    Duplicate names are refused (rather than overwritten) so two modules cannot
    silently shadow each other; re-registering the very same function (e.g. on
    ``importlib.reload``) is allowed.
    """

    def decorator(fn: MergeFn) -> MergeFn:
        existing = _REGISTRY.get(name)
        if existing is not None and (
            existing.fn.__module__ != fn.__module__ or existing.fn.__qualname__ != fn.__qualname__
        ):
            raise ValueError(f"merge method {name!r} is already registered")
        _REGISTRY[name] = MergeMethod(
            name=name,
            fn=fn,
            defaults=dict(defaults),
            description=_first_paragraph(fn.__doc__),
        )
        return fn

    return decorator


def available_merge_methods() -> list[str]:
    """Sorted names, so error messages and CLI help are stable."""
    return sorted(_REGISTRY)


def get_merge_method(name: str) -> MergeMethod:
    """Look up a method, listing the valid names on failure to make typos obvious."""
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(available_merge_methods())
        raise ValueError(f"unknown merge method {name!r}; valid: {valid}") from None


def resolve_hparams(method: str, **hparams: Any) -> dict[str, Any]:
    """Fill in defaults and reject unknown names.

    Returned so a caller can store exactly what was used in its run config,
    independent of later changes to the defaults.
    """
    spec = get_merge_method(method)
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        valid = ", ".join(sorted(spec.defaults)) or "(none)"
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(map(repr, unknown))} for merge method {method!r}; valid: {valid}"
        )
    return {**spec.defaults, **hparams}


def validate_inputs(base: Tensor, task_vectors: Tensor, name: str | None = None) -> None:
    """Reject malformed inputs before any method sees them.

    Shape mismatches and NaN/inf would otherwise propagate silently into the
    merged checkpoint, where they are much harder to trace back to a tensor.
    """
    where = f" for tensor {name!r}" if name is not None else ""
    if task_vectors.ndim != base.ndim + 1 or tuple(task_vectors.shape[1:]) != tuple(base.shape):
        raise ValueError(
            f"task_vectors must have shape [T, *base.shape]{where}; got task_vectors "
            f"{tuple(task_vectors.shape)} and base {tuple(base.shape)}"
        )
    if task_vectors.shape[0] < 1:
        raise ValueError(f"need at least one task vector{where}; got task_vectors {tuple(task_vectors.shape)}")
    if not torch.isfinite(base).all():
        raise ValueError(f"base contains non-finite values{where}")
    if not torch.isfinite(task_vectors).all():
        raise ValueError(f"task_vectors contain non-finite values{where}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Low-precision weights are merged in float32 (sign votes, SVDs and sums of
    # many small deltas are lossy in fp16/bf16); float64 inputs keep float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def merge_tensor(method: str, base: Tensor, task_vectors: Tensor, **hparams: Any) -> Tensor:
    """Return the merged weight ``θ0 + merged task vector`` for one tensor.

    Computes in float32 (or float64) and casts back to ``base.dtype`` so the
    merged checkpoint is a drop-in replacement for the backbone.
    """
    spec = get_merge_method(method)
    resolved = resolve_hparams(method, **hparams)
    if not base.is_floating_point():
        raise ValueError(
            f"cannot merge non-floating tensor of dtype {base.dtype}; "
            "copy it from the base instead (merge_state_dict does this)"
        )
    validate_inputs(base, task_vectors)
    dtype = _compute_dtype(base.dtype)
    base_c = base.to(dtype)
    delta = spec.fn(task_vectors.to(dtype), base_c, **resolved)
    if tuple(delta.shape) != tuple(base.shape):
        raise ValueError(f"merge method {method!r} returned shape {tuple(delta.shape)}, expected {tuple(base.shape)}")
    return (base_c + delta).to(base.dtype)
