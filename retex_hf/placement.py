"""Where each part of a ReTeX model lives under ``from_pretrained(..., device_map=...)``.

accelerate places a model module by module and, for offloaded modules ("disk", and "cpu" once a
GPU is in the map), keeps the weights on the meta device except *inside that module's forward*.
The offset bank, the router and the tensor heads break that assumption: the offset hooks of a
backbone layer read the bank's parameters, and routing reads the router's buffers, outside those
modules' own forward. So they must live on a device where their tensors are always real.

`resolve_device_map` turns any device map (a strategy name such as ``"auto"``, or a dict) into
a dict accelerate can dispatch, in which
- the backbone is placed as transformers would place it (the strategy is computed by transformers'
  own helpers, on a meta-device copy of the model, with the backbone's ``_no_split_modules``);
- every offset lives on the execution device of the layer it corrects, so a backbone split over
  several GPUs adds its offsets without moving weights between devices;
- the router, the tensor heads and the per-task head module live on the main execution device
  (the first non-offloaded device in model order), never on disk or on an offloaded CPU.
The small modules are counted first when a strategy fills the devices, so that it is the tail of
the backbone, not the offsets, that spills to CPU or disk. Single-device maps pass through as they
are. Device moves at run time (the hooks, routing, heads) are keyed on tensor devices, so they
stay correct whatever map a user writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .offsets.bank import module_key

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
OFFLOADED = ("disk",)
# Top-level modules of a ReTeX model that are read outside their own forward (or are tiny and
# per-task): placed on a resident device, first in line when a strategy fills the devices.
SMALL_MODULES = ("offsets", "router", "heads")
_HUB_KEYS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder")


def _is_map(device_map: Any) -> bool:
    return isinstance(device_map, Mapping) or device_map in STRATEGIES


def resolve_device_map(model_cls: type, source: str | os.PathLike, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for `PreTrainedModel.from_pretrained` with ``device_map`` resolved (see module doc).

    Anything but a strategy name or a dict (``"cpu"``, ``0``, a ``torch.device``) names one
    device for the whole model and is returned untouched.
    """
    device_map = kwargs.get("device_map")
    if device_map is None or not _is_map(device_map):
        return kwargs
    if isinstance(device_map, str) and device_map not in STRATEGIES:
        return kwargs
    config = kwargs.get("config")
    if not isinstance(config, model_cls.config_class):
        config = model_cls.config_class.from_pretrained(source, **{k: kwargs[k] for k in _HUB_KEYS if k in kwargs})
    with torch.device("meta"):
        skeleton = model_cls(config)
    dtype = _dtype(kwargs.get("dtype", kwargs.get("torch_dtype")), config)
    if dtype is not None:
        skeleton.to(dtype)
    if isinstance(device_map, str):
        device_map = _strategy_map(skeleton, device_map, kwargs.get("max_memory"))
    return {**kwargs, "device_map": place_small_modules(skeleton, device_map)}


def _dtype(value: Any, config) -> torch.dtype | None:
    if value == "auto":
        value = getattr(config, "dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def _strategy_map(skeleton: nn.Module, strategy: str, max_memory: Mapping | None) -> dict[str, Any]:
    """transformers' own placement for ``strategy``, with the small modules considered first."""
    from transformers.integrations.accelerate import get_balanced_memory, get_max_memory, infer_auto_device_map

    # Reordering the children of a throwaway meta copy changes only the order in which the
    # devices fill up: the resident modules get room before the backbone's last layers do.
    first = {name: skeleton._modules[name] for name in SMALL_MODULES if name in skeleton._modules}
    skeleton._modules = {**first, **{k: v for k, v in skeleton._modules.items() if k not in first}}
    no_split = set(skeleton._no_split_modules or ())
    if strategy == "sequential":
        memory = get_max_memory(dict(max_memory) if max_memory else None)
    else:
        memory = get_balanced_memory(
            skeleton, max_memory=max_memory, no_split_module_classes=no_split, low_zero=strategy == "balanced_low_0"
        )
    return infer_auto_device_map(skeleton, max_memory=memory, no_split_module_classes=no_split)


def _lookup(device_map: Mapping[str, Any], name: str, default: Any = ...) -> Any:
    """The device of tensor ``name``: the entry of the longest module prefix that covers it."""
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in device_map:
            return device_map[key]
    if default is not ...:
        return default
    raise ValueError(f"device_map places no module holding {name!r}; add an entry for it (or a '' entry)")


def _tensor_names(model: nn.Module) -> list[str]:
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    return names + [n for n, _ in model.named_buffers(remove_duplicate=False)]


def _normalise(device: Any) -> Any:
    """accelerate writes GPUs as ints; keep strings, ints and torch.device values comparable."""
    if isinstance(device, torch.device):
        return device.index if device.type == "cuda" and device.index is not None else str(device)
    return device


def _offloaded(device: Any, main: Any) -> bool:
    """accelerate offloads "disk" always, and "cpu" as well once an accelerator is in the map."""
    return device in OFFLOADED or (device == "cpu" and main != "cpu")


def place_small_modules(model: nn.Module, device_map: Mapping[str, Any]) -> dict[str, Any]:
    """A dispatchable map: the backbone as ``device_map`` says, offsets/router/heads resident."""
    if not isinstance(device_map, Mapping):
        raise TypeError(f"device_map must be a dict or one of {STRATEGIES}, got {type(device_map).__name__}")
    head = f"backbone.{model.config.head_module}" if model.config.head_module else None
    small = [p for p in (*SMALL_MODULES, head) if p and _has_module(model, p)]
    is_small = {name: any(name.startswith(p + ".") for p in small) for name in _tensor_names(model)}
    # A map may leave the small modules out (they are placed here): they default to the main device.
    per_tensor = {name: _normalise(_lookup(device_map, name, None if s else ...)) for name, s in is_small.items()}
    real = [d for d in per_tensor.values() if d not in ("cpu", "disk", None)]
    main = real[0] if real else "cpu"  # where accelerate runs offloaded modules

    def resident(device: Any) -> Any:
        return main if device is None or _offloaded(device, main) else device

    for name, device in per_tensor.items():
        if is_small[name]:
            per_tensor[name] = resident(device)
    bank = getattr(model, "offsets", None)
    targets = [*model.config.offset_matrix_targets, *model.config.offset_vector_targets] if bank is not None else []
    for param_name in targets:  # each offset beside the layer it corrects
        kind = "matrices" if bank.matrix(param_name) is not None else "vectors"
        _assign(per_tensor, f"offsets.{kind}.{module_key(param_name)}", resident(per_tensor[f"backbone.{param_name}"]))
    compact: dict[str, Any] = {}
    _compress(model, "", per_tensor, compact)
    return compact


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _assign(per_tensor: dict[str, Any], prefix: str, device: Any) -> None:
    for name in per_tensor:
        if name.startswith(prefix + "."):
            per_tensor[name] = device


def _compress(module: nn.Module, prefix: str, per_tensor: Mapping[str, Any], out: dict[str, Any]) -> None:
    """Group tensors into the coarsest module entries that hold one device each (as accelerate's
    dispatch expects: no entry nested inside another)."""
    mine = {n: d for n, d in per_tensor.items() if not prefix or n.startswith(prefix + ".")}
    devices = set(mine.values())
    if not devices:
        return
    if len(devices) == 1:
        out[prefix] = devices.pop()
        return
    for name, child in module.named_children():
        _compress(child, f"{prefix}.{name}" if prefix else name, per_tensor, out)
    for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        full = f"{prefix}.{name}" if prefix else name
        out[full] = per_tensor[full]
