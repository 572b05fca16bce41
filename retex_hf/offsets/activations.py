"""Input statistics of the layers that carry offsets, gathered on a task's calibration inputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .svd import Whitening
from .targets import modules_using


@torch.no_grad()
def collect_input_statistics(
    model: nn.Module,
    matrix_kinds: Mapping[str, str],
    batches: Iterable[Mapping[str, torch.Tensor]],
) -> dict[str, Whitening]:
    """Run ``model`` (the task's expert) over ``batches`` and record each target layer's inputs.

    Linear and conv layers get the Gram matrix XᵀX/n of their inputs (conv: of unfolded patches);
    embeddings get how often each row is looked up. A parameter used by modules of different
    kinds (an embedding tied to an output projection) gets none: plain SVD is used for it.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def add(name: str, value: torch.Tensor, rows: int) -> None:
        sums[name] = sums[name] + value if name in sums else value
        counts[name] = counts.get(name, 0) + rows

    for name, kind in matrix_kinds.items():
        uses = modules_using(model, name)
        if len({type(m) for _, m, _ in uses}) != 1:
            continue
        for _, module, _ in uses:
            if kind == "linear":

                def hook(mod, args, _out, name=name):
                    x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                    add(name, x.T @ x, x.shape[0])

            elif kind == "conv" and isinstance(module, nn.Conv2d):

                def hook(mod, args, _out, name=name):
                    patches = F.unfold(args[0].detach().float(), mod.kernel_size, mod.dilation, mod.padding, mod.stride)
                    x = patches.transpose(1, 2).reshape(-1, patches.shape[1])
                    add(name, x.T @ x, x.shape[0])

            elif kind == "embedding":

                def hook(mod, args, _out, name=name):
                    ids = args[0].detach().flatten()
                    add(name, torch.bincount(ids, minlength=mod.num_embeddings).double(), 1)

            else:
                continue
            handles.append(module.register_forward_hook(hook))
    try:
        for batch in batches:
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name, total in sums.items():
        if matrix_kinds[name] == "embedding":
            stats[name] = Whitening("left", total)
        else:
            stats[name] = Whitening("right", total / max(counts[name], 1))
    return stats
