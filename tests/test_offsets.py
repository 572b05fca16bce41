"""Offset fitting: whitened SVD, rank allocation under a budget, target discovery."""

from __future__ import annotations

import torch
from tiny_models import tiny_clip, tiny_t5

from retex_hf.offsets import Whitening, allocate_ranks, discover_targets, factorise, fit_task_offsets


def _low_rank(m, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)


def test_plain_factorisation_is_exact_at_true_rank():
    offset = _low_rank(12, 9, 3, 0)
    B, A = factorise(offset).factors(3)
    torch.testing.assert_close((B @ A).float(), offset, atol=1e-4, rtol=1e-4)


def test_activation_aware_svd_reduces_output_error():
    g = torch.Generator().manual_seed(1)
    offset = torch.randn(16, 24, generator=g)
    # Inputs that live mostly in a few directions, as real activations do.
    mixing = torch.randn(24, 4, generator=g)
    x = torch.randn(400, 4, generator=g) @ mixing.T + 0.01 * torch.randn(400, 24, generator=g)
    gram = x.T @ x / x.shape[0]

    def output_error(B, A):
        return ((offset - (B @ A).float()) @ x.T).norm()

    plain = output_error(*factorise(offset).factors(4))
    aware = output_error(*factorise(offset, Whitening("right", gram), eps=1e-6).factors(4))
    assert aware < 0.5 * plain


def test_embedding_whitening_prefers_frequent_rows():
    offset = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    freq = torch.zeros(30)
    freq[:5] = 100.0
    B, A = factorise(offset, Whitening("left", freq), eps=1e-6).factors(5)
    torch.testing.assert_close((B @ A)[:5].float(), offset[:5], atol=1e-3, rtol=1e-3)


def test_rank_allocation_follows_energy_per_parameter_and_budget():
    spectra = {"big": torch.tensor([100.0, 50.0, 1.0]), "small": torch.tensor([10.0, 5.0, 0.1])}
    costs = {"big": 10, "small": 10}
    assert allocate_ranks(spectra, costs, 30) == {"big": 2, "small": 1}
    assert allocate_ranks(spectra, costs, 9) == {"big": 0, "small": 0}
    assert allocate_ranks(spectra, {"big": 40, "small": 10}, 50) == {"big": 1, "small": 1}


def test_fit_task_offsets_stays_within_budget_and_refuses_too_small_budgets():
    matrices = {"a": _low_rank(20, 10, 4, 3), "b": _low_rank(8, 8, 2, 4)}
    vectors = {"bias": torch.ones(20)}
    fitted = fit_task_offsets(matrices, vectors, budget_parameters=100)
    assert fitted.num_parameters <= 100
    assert sum(B.numel() + A.numel() for B, A in fitted.factors.values()) + 20 == fitted.num_parameters
    try:
        fit_task_offsets(matrices, vectors, budget_parameters=10)
    except ValueError as error:
        assert "budget" in str(error)
    else:
        raise AssertionError("a budget below the vector offsets must be refused")


def test_targets_cover_conv_class_token_norms_and_skip_relative_bias():
    _, experts, _, _ = tiny_clip()
    clip = discover_targets(next(iter(experts.values())))
    assert clip.matrices["embeddings.patch_embedding.weight"] == "conv"
    assert clip.vectors["embeddings.class_embedding"] == "class_embedding"
    assert clip.vectors["pre_layrnorm.weight"] == "norm_weight"
    assert clip.matrices["embeddings.position_embedding.weight"] == "embedding"
    _, t5_experts, _ = tiny_t5(tie=True)
    t5 = discover_targets(next(iter(t5_experts.values())))
    assert "shared.weight" in t5.matrices and "encoder.embed_tokens.weight" not in t5.matrices
    assert t5.vectors["encoder.final_layer_norm.weight"] == "norm_weight"
    assert t5.unsupported == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    ]
