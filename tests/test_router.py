"""SiM signatures: residual routing, held-out thresholds, unknown-task policies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_text

import retex_hf
from retex_hf.routing import (
    SubspaceRouter,
    TaskRouter,
    fit_precision,
    fit_signature,
    select_router_rule,
    subspace_residuals,
)


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


def _shared_domain(sample_seed: int, n: int, dim: int = 32) -> list[torch.Tensor]:
    """Two tasks drawn from one domain: the same 4-dim subspace (three loud directions, one quiet),
    means a small step apart along the quiet one. The step lies inside both subspaces, so the
    residuals cannot tell the tasks apart; a discriminant that weighs the quiet direction can."""
    g = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    centre = torch.randn(dim, generator=g)
    scales = torch.tensor([1.0, 1.0, 1.0, 0.2] + [0.03] * (dim - 4))
    g.manual_seed(sample_seed)
    tasks = []
    for step in (0.5, -0.5):
        coords = torch.randn(n, dim, generator=g) * scales
        coords[:, 3] += step
        tasks.append(centre + coords @ rotation.T)
    return tasks


def test_discriminant_separates_tasks_that_share_a_domain_where_residuals_cannot():
    train, test = _shared_domain(1, 96), _shared_domain(2, 96)
    truth = torch.arange(2).repeat_interleave(96)
    accuracy = {}
    for rule in ("subspace", "discriminant"):
        router = TaskRouter(2, 32, 4, discriminant=rule == "discriminant")
        router.load_signatures([fit_signature(f, 4) for f in train])
        if rule == "discriminant":
            router.load_precision(fit_precision(train, 0.01))
        ids, _, _ = router.route(torch.cat(test), temperature=0.1)
        accuracy[rule] = (ids == truth).float().mean().item()
    assert accuracy["discriminant"] >= 0.95
    assert accuracy["subspace"] <= 0.8  # the situation the discriminant exists for
    assert select_router_rule(train, 4)[0] == "discriminant"
    half = router.half()  # a checkpoint loaded in float16 routes as it did in float32
    assert torch.isfinite(half.precision).all()
    half_ids, _, _ = half.route(torch.cat(test).half(), temperature=0.1)
    assert (half_ids == ids).float().mean() >= 0.98


def test_rule_selection_keeps_the_published_rule_when_it_is_as_good():
    distinct = [_cluster(s, 32) for s in range(3)]  # far apart: both rules route every held-out input
    assert select_router_rule(distinct, 3) == ("subspace", 0.0)
    assert select_router_rule(distinct, 3, ("subspace",)) == ("subspace", 0.0)
    rule, shrinkage = select_router_rule(distinct, 3, ("discriminant",))
    assert rule == "discriminant" and 0 < shrinkage <= 1
    with pytest.raises(ValueError, match="router rules"):
        select_router_rule(distinct, 3, ("nearest",))


def test_precision_matches_the_shrunk_pooled_covariance():
    tasks = [_cluster(s, 20) for s in range(2)]
    centred = torch.cat([t.double() - t.double().mean(0) for t in tasks])
    covariance = centred.T @ centred / (40 - 2)
    shrunk = 0.9 * covariance + 0.1 * covariance.diagonal().mean() * torch.eye(32, dtype=torch.float64)
    scale = covariance.diagonal().mean()  # the precision is stored scaled by it (half-precision range)
    torch.testing.assert_close(fit_precision(tasks, 0.1) @ shrunk, scale * torch.eye(32, dtype=torch.float64))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_precision(tasks, 0.0)
    with pytest.raises(ValueError, match="subspace rule"):
        TaskRouter(2, 32, 3).load_precision(torch.eye(32))


def test_discriminant_checkpoint_round_trip_and_task_changes(tmp_path):
    base, experts, inputs = tiny_text("bert")
    calibration = {t: inputs(i, 16) for i, t in enumerate(experts)}
    kwargs = dict(merge="averaging", budget=0.5, recovery_steps=0, quiet=True)
    with pytest.raises(retex_hf.BuildInputError, match="router_rule='nearest'"):
        retex_hf.build_retex(base, experts, calibration, router_rule="nearest", **kwargs)
    model = retex_hf.build_retex(base, experts, calibration, router_rule="discriminant", **kwargs)
    assert model.config.router_rule == "discriminant" and model.router.precision.abs().sum() > 0
    batch = {k: torch.cat([inputs(i, 4, gen_seed=9)[k] for i in range(2)]) for k in ("input_ids", "attention_mask")}
    before = model(**batch)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = retex_hf.RetexModel.from_pretrained(tmp_path / "ckpt").eval()
    torch.testing.assert_close(loaded.router.precision, model.router.precision)
    after = loaded(**batch)
    assert torch.equal(after.task_ids, before.task_ids)
    torch.testing.assert_close(after.logits, before.logits)
    precision = loaded.router.precision.clone()
    loaded.remove_task("beta")
    assert loaded.router.rule == "discriminant" and torch.equal(loaded.router.precision, precision)
    loaded.add_task("beta", experts["beta"], calibration["beta"], recovery_steps=0, quiet=True)
    assert torch.equal(loaded.router.precision, precision)
    assert loaded.config.task_names == ["alpha", "beta"]
    subspace = retex_hf.build_retex(base, experts, calibration, router_rule="subspace", **kwargs)
    assert subspace.router.rule == "subspace" and "router.precision" not in subspace.state_dict()
