"""Which tensors of a backbone get an offset, and how each one enters the computation.

Offsets are keyed by *parameter* name, not module name: a tied parameter (T5's shared embedding,
used by both encoder and decoder) has one offset, applied wherever the parameter is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..backbones import NON_BATCHED_EMBEDDINGS

# How a 2-D view of a weight is consumed: `x @ Wᵀ` (linear, conv over unfolded patches) or a row
# lookup (embedding).
MATRIX_KINDS = ("linear", "conv", "embedding")
# How a full small offset enters: added to the output (bias), scaling the normalised input (norm
# weight), or added to the first token (CLIP's class embedding).
VECTOR_KINDS = ("bias", "norm_weight", "norm_bias", "class_embedding")


@dataclass
class OffsetTargets:
    matrices: dict[str, str] = field(default_factory=dict)  # param name -> matrix kind
    vectors: dict[str, str] = field(default_factory=dict)  # param name -> vector kind
    unsupported: list[str] = field(default_factory=list)  # floating params left merged-only


def norm_flavour(module: nn.Module) -> str | None:
    """'layer' for mean-centred norms, 'rms' for scale-only ones, None for anything else."""
    if isinstance(module, nn.LayerNorm):
        return "layer"
    name = type(module).__name__
    if "RMSNorm" in name or name == "T5LayerNorm":
        return "rms"
    return None


def param_owner_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its canonical (first, deduplicated) name."""
    return {id(p): name for name, p in model.named_parameters()}


def discover_targets(model: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> OffsetTargets:
    """Classify every floating parameter of ``model`` outside the excluded (head) prefixes."""
    canonical = param_owner_names(model)
    targets = OffsetTargets()
    for module_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            name = canonical[id(param)]
            if name != (f"{module_name}.{attr}" if module_name else attr):
                continue  # an alias of a parameter classified under its canonical owner
            if any(name == p or name.startswith(p + ".") for p in exclude_prefixes):
                continue
            if not param.is_floating_point():
                continue
            kind = _classify(module_name, module, attr)
            if kind in MATRIX_KINDS:
                targets.matrices[name] = kind
            elif kind in VECTOR_KINDS:
                targets.vectors[name] = kind
            else:
                targets.unsupported.append(name)
    return targets


def _classify(module_name: str, module: nn.Module, attr: str) -> str | None:
    leaf = module_name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Linear):
        return "linear" if attr == "weight" else "bias"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros":
            return None
        return "conv" if attr == "weight" else "bias"
    if isinstance(module, nn.Embedding):
        if leaf in NON_BATCHED_EMBEDDINGS:
            return None
        return "embedding"
    if norm_flavour(module) is not None:
        return "norm_weight" if attr == "weight" else "norm_bias"
    if attr == "class_embedding" and module.get_parameter(attr).dim() == 1:
        return "class_embedding"
    return None


def modules_using(model: nn.Module, param_name: str) -> list[tuple[str, nn.Module, str]]:
    """Every (module name, module, attribute) through which ``param_name`` is read, aliases included."""
    target = model.get_parameter(param_name)
    uses = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module.named_parameters(recurse=False):
            if param is target:
                uses.append((module_name, module, attr))
    return uses
