"""Routing on an intermediate layer (``router_layer``): features, early stop, build, round trip."""

from __future__ import annotations

import pytest
import torch
from built_models import BUDGET, build_kwargs

import retex_hf
from retex_hf import backbones
from retex_hf.evaluation import retex_logits
from retex_hf.safety import BuildInputError
from retex_hf.synthetic import make_suite


@pytest.mark.parametrize("backbone", ["bert", "clip", "t5"])
def test_features_after_k_layers_are_the_pooled_hidden_states_and_stop_there(backbone):
    suite = make_suite(backbone, num_tasks=2, seed=0)
    model, inputs = suite.base.eval(), {k: v[:6] for k, v in suite.test[suite.tasks[0]].items()}
    layers = backbones.encoder_layers(model)
    calls = []
    handle = layers[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            features = backbones.pool_features(model, inputs, normalize=False, layer=1)
            assert not calls  # the layers above the routing layer never ran
            body = backbones.feature_body(model)
            hidden = body(**backbones.body_inputs(model, inputs), output_hidden_states=True).hidden_states[1]
    finally:
        handle.remove()
    mask = None if backbone == "clip" else inputs.get("attention_mask")
    torch.testing.assert_close(features, backbones.masked_mean(hidden, mask).float(), atol=1e-5, rtol=1e-5)


def test_build_routes_on_the_first_layer_and_saves_the_choice(tmp_path):
    suite = make_suite("bert", num_tasks=3, seed=0)
    model = retex_hf.build_retex(
        suite.base, suite.experts, suite.calibration, budget=BUDGET["bert"], recovery_steps=0, router_layer=1,
        quiet=True, **build_kwargs(suite),
    )  # fmt: skip
    assert model.config.router_layer == 1
    for i, task in enumerate(suite.tasks):
        _, ids, _ = retex_logits(model, suite.test[task])
        assert (ids == i).float().mean() >= 0.9, task  # the synthetic domains differ in their tokens
    model.save_pretrained(tmp_path)
    again = retex_hf.RetexModel.from_pretrained(tmp_path)
    assert again.config.router_layer == 1
    batch = {k: v[:8] for k, v in suite.test[suite.tasks[1]].items()}
    with torch.no_grad():
        assert torch.equal(model(**batch).task_ids, again(**batch).task_ids)


def test_router_layer_out_of_range_is_named():
    suite = make_suite("bert", num_tasks=2, seed=0)
    with pytest.raises(BuildInputError, match="router_layer=99"):
        retex_hf.build_retex(suite.base, suite.experts, suite.calibration, router_layer=99, quiet=True)
