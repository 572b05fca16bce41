"""Tests for retex_hf.merging: hand-computed examples plus structural properties."""

from __future__ import annotations

import pytest
import torch

from retex_hf.merging import (
    MergeMethod,
    available_merge_methods,
    emr_expert,
    emr_masks_and_rescalers,
    get_merge_method,
    merge_state_dict,
    merge_tensor,
    polar_orthogonalize,
    register_merge_method,
    resolve_hparams,
    tall_expert,
    tall_masks,
    tsv_compress,
)
from retex_hf.merging import registry as registry_module

EXPECTED_METHODS = {
    "averaging",
    "task_arithmetic",
    "ties",
    "dare",
    "emr",
    "tall",
    "tsv",
}


def _experts(num_tasks: int = 3, shape: tuple[int, ...] = (5, 4), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    experts = base + 0.1 * torch.randn((num_tasks, *shape), generator=g)
    return base, experts, experts - base


# ---------------------------------------------------------------- registry ---


def test_all_methods_registered():
    assert EXPECTED_METHODS <= set(available_merge_methods())
    assert available_merge_methods() == sorted(available_merge_methods())
    spec = get_merge_method("ties")
    assert isinstance(spec, MergeMethod)
    assert spec.defaults == {
        "density": 0.2,
        "scaling": 1.0,
        "majority_sign_method": "total",
    }
    assert spec.description


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="unknown merge method 'foo'; valid:") as info:
        get_merge_method("foo")
    for name in EXPECTED_METHODS:
        assert name in str(info.value)
    base, _, tv = _experts()
    with pytest.raises(ValueError, match="averaging"):
        merge_tensor("foo", base, tv)


def test_unknown_hparam_is_named_with_valid_ones():
    base, _, tv = _experts()
    with pytest.raises(ValueError, match="'densty'.*valid: density, majority_sign_method, scaling"):
        merge_tensor("ties", base, tv, densty=0.5)
    with pytest.raises(ValueError, match="'scaling'"):
        resolve_hparams("averaging", scaling=1.0)


def test_resolve_hparams_fills_defaults():
    assert resolve_hparams("dare", density=0.3) == {
        "density": 0.3,
        "scaling": 1.0,
        "seed": 0,
        "use_ties": False,
    }
    assert resolve_hparams("task_arithmetic") == {"scaling": 0.3}
    assert resolve_hparams("emr") == {}


@pytest.fixture
def temp_method():
    name = "_test_double_mean"

    @register_merge_method(name, factor=2.0)
    def double_mean(task_vectors, base, *, factor):
        """Test method: factor times the mean task vector."""
        return factor * task_vectors.mean(dim=0)

    yield name
    registry_module._REGISTRY.pop(name, None)


def test_new_method_via_decorator(temp_method):
    base, _, tv = _experts()
    assert temp_method in available_merge_methods()
    out = merge_tensor(temp_method, base, tv)
    torch.testing.assert_close(out, base + 2.0 * tv.mean(0))
    out = merge_tensor(temp_method, base, tv, factor=0.5)
    torch.testing.assert_close(out, base + 0.5 * tv.mean(0))
    with pytest.raises(ValueError, match="already registered"):
        register_merge_method(temp_method)(lambda task_vectors, base: task_vectors[0])


def test_shape_and_finiteness_validation():
    base, _, tv = _experts()
    with pytest.raises(ValueError, match=r"\(3, 5, 4\).*\(4, 5\)"):
        merge_tensor("averaging", base.T.contiguous(), tv)
    with pytest.raises(ValueError, match="shape"):
        merge_tensor("averaging", base, tv[0])
    with pytest.raises(ValueError, match="at least one"):
        merge_tensor("averaging", base, tv[:0])
    bad = tv.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        merge_tensor("averaging", base, bad)
    bad[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        merge_tensor("task_arithmetic", base, bad)


# ------------------------------------------------------------ linear merges ---


def test_averaging_equals_mean_of_experts():
    base, experts, tv = _experts()
    torch.testing.assert_close(merge_tensor("averaging", base, tv), experts.mean(0))


def test_task_arithmetic():
    base, _, tv = _experts()
    torch.testing.assert_close(merge_tensor("task_arithmetic", base, tv, scaling=1.0), base + tv.sum(0))
    torch.testing.assert_close(merge_tensor("task_arithmetic", base, tv), base + 0.3 * tv.sum(0))


# --------------------------------------------------------------------- ties ---

TIES_TV = torch.tensor(
    [
        [1.0, -2.0, 0.5, 3.0],
        [-4.0, 1.0, 0.2, -0.1],
        [2.0, 3.0, -0.3, 0.4],
    ]
)


def test_ties_hand_example():
    # density 0.5 keeps 2 of 4 per task: τ̂1=[0,-2,0,3], τ̂2=[-4,1,0,0], τ̂3=[2,3,0,0].
    # Σ=[-2,2,0,3] -> γ=[-,+,+(zero),+]; disjoint means: [-4, (1+3)/2, 0, 3].
    base = torch.tensor([10.0, 20.0, 30.0, 40.0])
    out = merge_tensor("ties", base, TIES_TV, density=0.5)
    torch.testing.assert_close(out, base + torch.tensor([-4.0, 2.0, 0.0, 3.0]))
    out = merge_tensor("ties", base, TIES_TV, density=0.5, scaling=0.5)
    torch.testing.assert_close(out, base + torch.tensor([-2.0, 1.0, 0.0, 1.5]))


def test_ties_frequency_sign_and_full_density():
    base = torch.zeros(4)
    # Frequency vote at index 0: signs {0,-,+} tie -> +1, so only τ̂3=2 survives.
    out = merge_tensor("ties", base, TIES_TV, density=0.5, majority_sign_method="frequency")
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, 0.0, 3.0]))
    # density 1: no trimming. Σ=[-1,2,0.4,3.3] -> γ=[-,+,+,+].
    out = merge_tensor("ties", base, TIES_TV, density=1.0)
    torch.testing.assert_close(out, torch.tensor([-4.0, 2.0, 0.35, 1.7]))
    with pytest.raises(ValueError, match="majority_sign_method"):
        merge_tensor("ties", base, TIES_TV, majority_sign_method="median")
    with pytest.raises(ValueError, match="density"):
        merge_tensor("ties", base, TIES_TV, density=1.5)


# --------------------------------------------------------------------- dare ---


def test_dare_deterministic_and_seeded():
    base, _, tv = _experts(shape=(16, 16))
    state = torch.get_rng_state()
    a = merge_tensor("dare", base, tv, seed=3)
    b = merge_tensor("dare", base, tv, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "dare must not touch the global RNG"
    assert torch.equal(a, b)
    c = merge_tensor("dare", base, tv, seed=4)
    assert not torch.equal(a, c)
    # Different content -> different drop pattern even with the same seed.
    d_mask = merge_tensor("dare", torch.zeros(16, 16), torch.ones(3, 16, 16), seed=3)
    e_mask = merge_tensor("dare", torch.zeros(16, 16), 2 * torch.ones(3, 16, 16), seed=3)
    assert not torch.equal(2 * d_mask, e_mask)


def test_dare_drop_and_rescale():
    base = torch.zeros(1000)
    tv = torch.ones(1, 1000)
    out = merge_tensor("dare", base, tv, density=0.25, seed=0)
    kept = out != 0
    assert torch.all(out[kept] == 4.0), "kept entries are rescaled by 1/density"
    assert 150 < int(kept.sum()) < 350


def test_dare_full_density_equals_task_arithmetic():
    base, _, tv = _experts()
    out = merge_tensor("dare", base, tv, density=1.0, scaling=0.7)
    assert torch.equal(out, merge_tensor("task_arithmetic", base, tv, scaling=0.7))
    # With use_ties and no dropping, dare reduces to TIES without trimming.
    out = merge_tensor("dare", base, tv, density=1.0, use_ties=True)
    assert torch.equal(out, merge_tensor("ties", base, tv, density=1.0))
    with pytest.raises(ValueError, match="density"):
        merge_tensor("dare", base, tv, density=0.0)


# ---------------------------------------------------------------------- emr ---


def test_emr_hand_example():
    tv_a = torch.tensor([[1.0, -2.0, 3.0, 0.0], [2.0, 1.0, -3.0, 0.0], [-1.0, -4.0, 0.0, 0.0]])
    tv_b = torch.ones(3, 2)
    # Σ_a=[2,-5,0,0] -> γ=[+,-,+,+]; masks below; τ_uni = γ·max|m·τ| = [2,-4,3,0].
    tau_uni, masks, rescalers = emr_masks_and_rescalers({"a": tv_a, "b": tv_b})
    torch.testing.assert_close(tau_uni["a"], torch.tensor([2.0, -4.0, 3.0, 0.0]))
    torch.testing.assert_close(tau_uni["b"], torch.ones(2))
    expected_masks = torch.tensor(
        [
            [True, True, True, False],
            [True, False, False, False],
            [False, True, False, False],
        ]
    )
    assert torch.equal(masks["a"], expected_masks)
    assert masks["a"].dtype == torch.bool and torch.all(masks["b"])
    # r_t = (mean|τ_t^a| + mean|τ_t^b|) / (mean|m_t^a τ_uni^a| + mean|m_t^b τ_uni^b|)
    expected_r = torch.tensor([(1.5 + 1) / (2.25 + 1), (1.5 + 1) / (0.5 + 1), (1.25 + 1) / (1 + 1)])
    torch.testing.assert_close(rescalers, expected_r)
    base = torch.zeros(4)
    torch.testing.assert_close(merge_tensor("emr", base, tv_a), tau_uni["a"])
    torch.testing.assert_close(
        emr_expert(base, tau_uni["a"], masks["a"][1], rescalers[1]),
        torch.tensor([2.0 * 5 / 3, 0.0, 0.0, 0.0]),
    )


def test_emr_zero_sum_elects_plus():
    tau_uni, masks, _ = emr_masks_and_rescalers({"w": torch.tensor([[1.0], [-1.0]])})
    assert torch.equal(masks["w"], torch.tensor([[True], [False]]))
    torch.testing.assert_close(tau_uni["w"], torch.tensor([1.0]))


def test_emr_single_task_expert_is_exact():
    base, _, tv = _experts(num_tasks=1, shape=(6, 7))
    tv[0, 0, :3] = 0.0  # zeros must survive too
    bias_base, _, bias_tv = _experts(num_tasks=1, shape=(7,), seed=1)
    tau_uni, masks, rescalers = emr_masks_and_rescalers({"w": tv, "b": bias_tv})
    assert rescalers.tolist() == [1.0]
    assert torch.equal(emr_expert(base, tau_uni["w"], masks["w"][0], rescalers[0]), base + tv[0])
    assert torch.equal(
        emr_expert(bias_base, tau_uni["b"], masks["b"][0], rescalers[0]),
        bias_base + bias_tv[0],
    )


# --------------------------------------------------------------------- tall ---


def test_tall_masks_hand_example():
    tv = torch.tensor([[1.0, 0.1, -2.0], [0.5, 1.0, 2.0]])
    # Σ=[1.5,1.1,0]; others for t=0: [0.5,1.0,2.0], for t=1: [1.0,0.1,-2.0].
    # λ=0.5: t0: [1>=0.25, 0.1>=0.5, 2>=1] ; t1: [0.5>=0.5, 1>=0.05, 2>=1]
    masks = tall_masks(tv, tall_lambda=0.5)
    assert torch.equal(masks, torch.tensor([[True, False, True], [True, True, True]]))
    # λ=2: t0: [1>=1, 0.1>=2, 2>=4]; t1: [0.5>=2, 1>=0.2, 2>=4]
    masks = tall_masks(tv, tall_lambda=2.0)
    assert torch.equal(masks, torch.tensor([[True, False, False], [False, True, False]]))
    base = torch.tensor([1.0, 2.0, 3.0])
    tau_mtl = merge_tensor("tall", base, tv) - base
    torch.testing.assert_close(tau_mtl, 0.3 * tv.sum(0))
    torch.testing.assert_close(tall_expert(base, tau_mtl, masks[1]), base + torch.tensor([0.0, 0.33, 0.0]))


def test_tall_single_task_expert_is_exact():
    base, _, tv = _experts(num_tasks=1)
    masks = tall_masks(tv, tall_lambda=0.4)
    assert torch.all(masks)
    assert torch.equal(tall_expert(base, tv.sum(0), masks[0]), base + tv[0])
    merged = merge_tensor("tall", base, tv, scaling=1.0)
    assert torch.equal(merged, base + tv[0])


# ---------------------------------------------------------------------- tsv ---


def test_polar_orthogonalize_properties():
    g = torch.Generator().manual_seed(0)
    mat = torch.randn(12, 5, generator=g, dtype=torch.float64)
    q = polar_orthogonalize(mat)
    torch.testing.assert_close(q.T @ q, torch.eye(5, dtype=torch.float64))
    # Already orthonormal columns are a fixed point.
    torch.testing.assert_close(polar_orthogonalize(q), q)
    # Nearest orthonormal matrix: beats the QR factor in Frobenius distance.
    q_qr, _ = torch.linalg.qr(mat)
    assert torch.linalg.norm(mat - q) <= torch.linalg.norm(mat - q_qr) + 1e-12


def test_tsv_single_task_reproduces_tau():
    base, _, tv = _experts(num_tasks=1, shape=(8, 6))
    torch.testing.assert_close(merge_tensor("tsv", base, tv), base + tv[0], atol=1e-5, rtol=1e-5)


def test_tsv_orthogonal_tasks_sum_exactly():
    # Two rank-4 updates in disjoint row/column blocks of an 8x8 matrix: k=4 per
    # task keeps each one whole and their bases are already orthogonal.
    g = torch.Generator().manual_seed(1)
    tv = torch.zeros(2, 8, 8, dtype=torch.float64)
    tv[0, :4, :4] = torch.randn(4, 4, generator=g, dtype=torch.float64)
    tv[1, 4:, 4:] = torch.randn(4, 4, generator=g, dtype=torch.float64)
    base = torch.zeros(8, 8, dtype=torch.float64)
    torch.testing.assert_close(merge_tensor("tsv", base, tv), tv.sum(0))
    torch.testing.assert_close(merge_tensor("tsv", base, tv, scaling=0.5), 0.5 * tv.sum(0))


def test_tsv_interfering_tasks_and_shapes():
    base, _, tv = _experts(num_tasks=3, shape=(9, 7))
    merged = merge_tensor("tsv", base, tv) - base
    assert merged.shape == (9, 7)
    assert not torch.allclose(merged, tv.sum(0), atol=1e-3)
    # Biases fall back to the mean; conv kernels keep their shape.
    bias, _, bias_tv = _experts(shape=(7,))
    torch.testing.assert_close(merge_tensor("tsv", bias, bias_tv), bias + bias_tv.mean(0))
    conv, _, conv_tv = _experts(num_tasks=1, shape=(4, 3, 2, 2))
    torch.testing.assert_close(merge_tensor("tsv", conv, conv_tv), conv + conv_tv[0], atol=1e-5, rtol=1e-5)


def test_tsv_compress():
    g = torch.Generator().manual_seed(2)
    low_rank = torch.randn(10, 2, generator=g) @ torch.randn(2, 6, generator=g)
    u, s, v = tsv_compress(low_rank, num_tasks=3)  # k = floor(6/3) = 2
    assert u.shape == (10, 2) and s.shape == (2,) and v.shape == (6, 2)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, low_rank, atol=1e-5, rtol=1e-5)
    assert tsv_compress(low_rank, num_tasks=4)[1].shape == (1,)
    assert tsv_compress(low_rank, num_tasks=100)[1].shape == (1,)


# ---------------------------------------------------------- merge_state_dict ---


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_state_dict_dtypes_and_buffers(dtype):
    g = torch.Generator().manual_seed(0)
    base = {
        "w": torch.randn(4, 3, generator=g).to(dtype),
        "b": torch.randn(3, generator=g),
        "position_ids": torch.arange(5).unsqueeze(0),
    }
    tvs = {
        "w": (0.1 * torch.randn(2, 4, 3, generator=g)).to(dtype),
        "b": 0.1 * torch.randn(2, 3, generator=g),
    }
    requested: list[str] = []

    def load(name):
        requested.append(name)
        return tvs[name]

    out = merge_state_dict("task_arithmetic", base, load, scaling=1.0)
    assert set(out) == set(base)
    assert requested == ["w", "b"], "int buffers must not be loaded"
    assert torch.equal(out["position_ids"], base["position_ids"])
    assert out["position_ids"].dtype == torch.int64
    assert out["w"].dtype == dtype and out["b"].dtype == torch.float32
    expected_w = (base["w"].float() + tvs["w"].float().sum(0)).to(dtype)
    assert torch.equal(out["w"], expected_w)
    torch.testing.assert_close(out["b"], base["b"] + tvs["b"].sum(0))
    # A mapping works too, and `names` restricts the work.
    assert list(merge_state_dict("averaging", base, tvs, names=["b"])) == ["b"]


def test_merge_state_dict_errors_name_the_tensor():
    base = {"w": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="tensor 'w'.*shape"):
        merge_state_dict("averaging", base, {"w": torch.zeros(2, 3, 2)})
    with pytest.raises(ValueError, match="'bogus'"):
        merge_state_dict("averaging", base, {"w": torch.zeros(1, 2, 2)}, bogus=1)
    with pytest.raises(ValueError, match="not in the base"):
        merge_state_dict("averaging", base, {}, names=["missing"])
