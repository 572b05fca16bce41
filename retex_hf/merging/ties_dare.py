"""Sparsify-then-merge methods: TIES-Merging and DARE."""

from __future__ import annotations

import hashlib
import warnings

import torch
from torch import Tensor

from .basic import weighted_sum
from .registry import register_merge_method

_SIGN_METHODS = ("total", "frequency")


def _check_sign_method(method: str) -> None:
    if method not in _SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be one of {', '.join(_SIGN_METHODS)}; got {method!r}")


@register_merge_method("ties", density=0.2, scaling=1.0, majority_sign_method="total")
def ties(
    task_vectors: Tensor,
    base: Tensor,
    *,
    density: float,
    scaling: float,
    majority_sign_method: str,
) -> Tensor:
    """TIES-Merging: trim to top-density magnitudes, elect sign, disjoint mean (Yadav et al., 2023).

    peft's `ties` with unit weights is exactly this: it keeps the top
    ``int(density·numel)`` entries of each τ_t by |value|, elects
    γ = sign(Σ_t τ̂_t) (a zero sum elects +1), and divides the sum of the kept
    entries agreeing with γ by their count (pruned zeros never agree, since
    sign(0) = 0). So we delegate to it and only apply λ afterwards.
    """
    # Lazy import: see basic.weighted_sum.
    from peft.utils.merge_utils import ties as _peft_ties

    if not 0.0 <= density <= 1.0:
        raise ValueError(f"ties density must be in [0, 1]; got {density}")
    _check_sign_method(majority_sign_method)
    weights = torch.ones(task_vectors.shape[0], dtype=task_vectors.dtype, device=task_vectors.device)
    with warnings.catch_warnings():
        # peft warns that density >= 1 disables pruning; that is intended here.
        warnings.filterwarnings("ignore", message="The density .* no pruning")
        merged = _peft_ties(list(task_vectors.unbind(0)), weights, density, majority_sign_method)
    return scaling * merged


def _tensor_generator(task_vectors: Tensor, seed: int) -> torch.Generator:
    """A private CPU generator keyed by ``seed`` and the tensor's bytes.

    Keying on the content makes the drop pattern reproducible for identical
    inputs while decorrelating masks of different same-shaped tensors (one
    shared seed would otherwise drop the same coordinates in every layer). A
    private generator also leaves the global RNG untouched.
    """
    data = task_vectors.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(16, "little", signed=True))
    digest.update(repr((tuple(task_vectors.shape), str(task_vectors.dtype))).encode())
    digest.update(memoryview(data))
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1))
    return generator


@register_merge_method("dare", density=0.5, scaling=1.0, seed=0, use_ties=False)
def dare(
    task_vectors: Tensor,
    base: Tensor,
    *,
    density: float,
    scaling: float,
    seed: int,
    use_ties: bool,
) -> Tensor:
    """DARE: randomly drop (1 − density) of each τ_t and rescale by 1/density (Yu et al., 2024).

    peft's `dare_linear`/`dare_ties` draw their masks from the global RNG, which
    is neither reproducible per tensor nor side-effect free, so the random
    pruning is done here with a seeded generator; the combination step reuses
    peft's task-arithmetic sum or its TIES sign election + disjoint mean.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"dare density must be in (0, 1]; got {density}")
    if density < 1.0:
        generator = _tensor_generator(task_vectors, seed)
        keep = torch.rand(task_vectors.shape, generator=generator) < density
        pruned = task_vectors * keep.to(task_vectors.device) / density
    else:
        pruned = task_vectors
    if not use_ties:
        return weighted_sum(pruned, scaling)
    from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge

    sign_mask = calculate_majority_sign_mask(pruned, method="total")
    return scaling * disjoint_merge(pruned, sign_mask)
