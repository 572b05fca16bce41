"""Forward hooks that add each sample's offset to a layer's output.

Hooks leave the backbone's modules and state-dict keys exactly as transformers made them (ties,
`from_pretrained`, `device_map` and `materialize` keep working), and they read the routing of the
current call from a context variable, so concurrent calls never see each other's routing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..routing.context import RoutingState, current_routing
from .bank import LowRankOffset, OffsetBank, VectorOffset
from .targets import modules_using, norm_flavour


def _add_low_rank(
    output: torch.Tensor, x: torch.Tensor, state: RoutingState, task_names: list[str], offset: LowRankOffset, apply
) -> torch.Tensor:
    present = [j for j in state.active if task_names[j] in offset.A]
    if not present:
        return output
    # Under a device_map the layer input, the routing codes and the offset may sit on different
    # devices: compute where the offset lives, add where the layer's output lives.
    home = offset.A[task_names[present[0]]].device
    weights = state.codes[:, present].to(home)
    delta = apply(x.to(home), [task_names[j] for j in present], weights)
    return output + delta.to(output.device, output.dtype)


def _broadcast(sample_values: torch.Tensor, like: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """[batch, C] -> shape broadcastable against ``like`` with C at ``channel_dim``."""
    shape = [1] * like.dim()
    shape[0] = sample_values.shape[0]
    shape[channel_dim] = sample_values.shape[1]
    return sample_values.view(shape).to(like.device, like.dtype)


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def _make_hook(
    module: nn.Module,
    task_names: list[str],
    weight_offset: LowRankOffset | None,
    weight_kind: str | None,
    vectors: dict[str, VectorOffset],
) -> Callable:
    flavour = norm_flavour(module)

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = current_routing()
        if state is None or not args:
            return None
        x = args[0]
        if weight_kind == "embedding" and x.shape[0] == 1 and state.batch_size > 1:
            # Position ids are looked up once for the whole batch; give each sample its own row.
            x = x.expand(state.batch_size, *x.shape[1:])
            output = output.expand(state.batch_size, *output.shape[1:])
        state = state.rows_for(output.shape[0])
        if weight_offset is not None:
            if weight_kind == "linear":
                apply = weight_offset.apply_linear
            elif weight_kind == "embedding":
                apply = weight_offset.apply_lookup
            else:
                apply = lambda rows, tasks, w: weight_offset.apply_conv(rows, tasks, w, mod)  # noqa: E731
            output = _add_low_rank(output, x, state, task_names, weight_offset, apply)
        if "bias" in vectors:
            channel_dim = 1 if weight_kind == "conv" else -1
            output = output + _broadcast(vectors["bias"].per_sample(state.codes, task_names), output, channel_dim)
        if "norm_weight" in vectors or "norm_bias" in vectors:
            if "norm_weight" in vectors:
                x_out = x.to(output.device)
                if flavour == "layer":
                    normed = F.layer_norm(x_out, mod.normalized_shape, eps=mod.eps)
                else:
                    normed = _rms_normalise(x_out, getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-6)))
                scale = vectors["norm_weight"].per_sample(state.codes, task_names)
                output = output + normed.to(output.dtype) * _broadcast(scale, output, -1)
            if "norm_bias" in vectors:
                shift = vectors["norm_bias"].per_sample(state.codes, task_names)
                output = output + _broadcast(shift, output, -1)
        if "class_embedding" in vectors:
            cls = vectors["class_embedding"].per_sample(state.codes, task_names).to(output.device, output.dtype)
            output = torch.cat([output[:, :1] + cls[:, None], output[:, 1:]], dim=1)
        return output

    return hook


def install_offset_hooks(
    backbone: nn.Module,
    bank: OffsetBank,
    matrix_kinds: dict[str, str],
    vector_kinds: dict[str, str],
) -> list[RemovableHandle]:
    """Register one hook per module that reads a parameter with an offset."""
    per_module: dict[int, dict] = {}

    def entry(module: nn.Module) -> dict:
        return per_module.setdefault(id(module), {"module": module, "weight": None, "kind": None, "vectors": {}})

    for name, kind in matrix_kinds.items():
        for _, module, _attr in modules_using(backbone, name):
            use_kind = "linear" if isinstance(module, nn.Linear) else kind
            slot = entry(module)
            slot["weight"], slot["kind"] = bank.matrix(name), use_kind
    for name, kind in vector_kinds.items():
        for _, module, attr in modules_using(backbone, name):
            entry(module)["vectors"][kind] = bank.vector(name)
            if attr == "bias" and isinstance(module, (nn.Conv1d, nn.Conv2d)):
                entry(module)["kind"] = entry(module)["kind"] or "conv"
    handles = []
    for slot in per_module.values():
        hook = _make_hook(slot["module"], bank.task_names, slot["weight"], slot["kind"], slot["vectors"])
        handles.append(slot["module"].register_forward_hook(hook))
    return handles
