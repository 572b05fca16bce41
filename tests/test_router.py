"""SiM signatures: residual routing, held-out thresholds, unknown-task policies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_text

import retex_hf
from retex_hf.routing import SubspaceRouter, fit_signature, subspace_residuals


def _cluster(seed: int, n: int, dim: int = 32, rank: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(dim, generator=g)
    directions = torch.randn(rank, dim, generator=g)
    points = centre + torch.randn(n, rank, generator=g) @ directions + 0.05 * torch.randn(n, dim, generator=g)
    return F.normalize(points, dim=-1)


def test_residual_is_zero_inside_the_subspace_and_matches_projection():
    feats = _cluster(0, 40)
    sig = fit_signature(feats, num_components=3)
    inside = sig.mean + sig.basis @ torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    assert subspace_residuals(inside[None].float(), sig.mean[None], sig.basis[None]).item() < 1e-5
    z = torch.randn(1, 32, dtype=torch.float64)
    d = z[0] - sig.mean
    expected = (d - sig.basis @ (sig.basis.T @ d)).norm()
    assert subspace_residuals(z, sig.mean[None], sig.basis[None]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_router_routes_held_out_inputs_and_flags_outsiders():
    train = [_cluster(s, 32) for s in range(4)]
    test = [_cluster(s, 64)[32:] for s in range(4)]  # same clusters, fresh points
    router = SubspaceRouter(4, 32, 3)
    router.load_signatures([fit_signature(f, 3, quantile=0.99) for f in train])
    ids, soft, unknown = router.route(torch.cat(test), temperature=0.1)
    truth = torch.arange(4).repeat_interleave(32)
    assert (ids == truth).float().mean() >= 0.99
    assert unknown.float().mean() <= 0.1
    torch.testing.assert_close(soft.sum(-1), torch.ones(128))
    outsiders = _cluster(99, 20)
    _, _, flagged = router.route(outsiders, temperature=0.1)
    assert flagged.all()


def _tiny_model(policy):
    base, experts, inputs = tiny_text("bert")
    calibration = {t: inputs(i, 16) for i, t in enumerate(experts)}
    return retex_hf.build_retex(
        base, experts, calibration, merge="averaging", budget=0.5, recovery_steps=0, unknown_task_policy=policy
    ), inputs


def test_unknown_task_policies():
    model, inputs = _tiny_model("soft")
    stranger = {"input_ids": torch.full((3, 10), 62), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
    out = model(**stranger)
    assert out.unknown.all()
    state, _ = model.route(stranger)
    assert torch.allclose(state.codes.sum(-1), torch.ones(3)) and (state.codes.max(-1).values < 1).all()
    model.config.unknown_task_policy = "merged"
    state, _ = model.route(stranger)
    assert (state.codes == 0).all()
    model.config.unknown_task_policy = "raise"
    with pytest.raises(retex_hf.UnknownTaskError):
        model(**stranger)
    known = model(**inputs(0, 4, gen_seed=11))
    assert not known.unknown.any()


def test_task_argument_validation():
    model, inputs = _tiny_model("soft")
    batch = inputs(0, 2)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        model(**batch, task="nope")
    with pytest.raises(ValueError, match="2 samples"):
        model(**batch, task=["alpha"])
