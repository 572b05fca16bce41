"""Tests for retex_hf.synthetic: the experts are real (accurate on their task), merging them costs
accuracy (a gap to recover), tasks are identifiable from base features, and suites are
deterministic and round-trip through save_pretrained."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, CLIPVisionModel, T5ForConditionalGeneration

from retex_hf.synthetic import (
    BACKBONES,
    SyntheticSuite,
    accuracy,
    averaged_experts,
    build_suite,
    generation_exact_match,
    generation_token_accuracy,
    make_suite,
    task_identification_accuracy,
    with_base_body,
)


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """These models are tiny: extra intra-op threads only add synchronisation (on a 2-core sandbox, 2 threads
    made training 5-40x slower than 1). Scoped to this module and restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _scores(suite: SyntheticSuite, models: dict) -> dict[str, float]:
    """Per-task accuracy (T5: exact match of the greedy generation)."""
    if suite.backbone == "t5":
        return {t: generation_exact_match(models[t], suite.test[t], suite.test_labels[t]) for t in suite.tasks}
    heads = suite.heads or {}
    return {
        t: accuracy(models[t], suite.test[t], suite.test_labels[t], heads.get(t), suite.head_logit_scale)
        for t in suite.tasks
    }


def _base_models(suite: SyntheticSuite) -> dict:
    return {t: with_base_body(suite.base, e) for t, e in suite.experts.items()}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_structure(backbone):
    suite = make_suite(backbone, 3)
    assert suite is make_suite(backbone, 3)  # cached
    assert len(suite.tasks) == 3 and len({type(e) for e in suite.experts.values()}) == 1
    assert not suite.base.training and not any(e.training for e in suite.experts.values())
    for task in suite.tasks:
        calibration, test, labels = suite.calibration[task], suite.test[task], suite.test_labels[task]
        assert len(calibration) == 32 and set(calibration[0]) == set(test)
        assert all(v.shape[0] == 128 for v in test.values()) and labels.shape[0] == 128
        if backbone == "clip":
            assert calibration[0]["pixel_values"].shape == (3, 16, 16)
            assert suite.heads[task].shape == (len(suite.id2label[task]), 32) and suite.head_logit_scale > 0
        else:
            assert calibration[0]["input_ids"].dim() == 1 and test["input_ids"].dim() == 2
            assert int(test["attention_mask"].sum(1).min()) < test["input_ids"].shape[1]  # really padded
        if backbone == "t5":
            is_eos = labels == 1
            assert labels.dim() == 2 and bool((is_eos.sum(1) == 1).all())
            after_eos = is_eos.long().cumsum(1).bool() & ~is_eos
            assert bool((labels[after_eos] == -100).all()) and bool((labels[~after_eos] >= 0).all())
        else:
            assert labels.dtype == torch.long and int(labels.max()) < len(suite.id2label[task])
            assert len(labels.unique()) == len(suite.id2label[task])
    if backbone in ("bert", "roberta"):
        assert len({e.config.num_labels for e in suite.experts.values()}) > 1


@pytest.mark.parametrize("backbone", BACKBONES)
def test_experts_are_accurate(backbone):
    suite = make_suite(backbone, 3)
    scores = _scores(suite, suite.experts)
    print(f"{backbone} experts: {scores}")
    if backbone == "t5":
        tokens = {
            t: generation_token_accuracy(e, suite.test[t], suite.test_labels[t]) for t, e in suite.experts.items()
        }
        assert all(scores[t] >= 0.85 or tokens[t] >= 0.9 for t in suite.tasks), (scores, tokens)
    else:
        assert min(scores.values()) >= 0.9, scores


@pytest.mark.parametrize("backbone", BACKBONES)
def test_base_and_average_lose_accuracy(backbone):
    suite = make_suite(backbone, 3)
    experts = _scores(suite, suite.experts)
    base = _scores(suite, _base_models(suite))
    average = _scores(suite, averaged_experts(suite.experts))
    print(f"{backbone} base: {base} average: {average}")
    assert max(experts[t] - base[t] for t in suite.tasks) >= 0.3
    assert max(experts[t] - average[t] for t in suite.tasks) >= 0.15


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tasks_identifiable_from_base_features(backbone):
    suite = make_suite(backbone, 3)
    identified = task_identification_accuracy(suite.base, suite.calibration, suite.test, suite.pad_token_id)
    print(f"{backbone} task identification: {identified}")
    assert min(identified.values()) >= 0.95, identified


def test_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    first = build_suite("roberta", 2, seed=3, n_calibration=4, n_test=8, train_steps=15)
    assert torch.equal(state, torch.random.get_rng_state())
    second = build_suite("roberta", 2, seed=3, n_calibration=4, n_test=8, train_steps=15)
    other = build_suite("roberta", 2, seed=4, n_calibration=4, n_test=8, train_steps=15)
    for task, expert in first.experts.items():
        a, b, c = expert.state_dict(), second.experts[task].state_dict(), other.experts[task].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
        assert torch.equal(first.test[task]["input_ids"], second.test[task]["input_ids"])
    assert all(torch.equal(v, second.base.state_dict()[k]) for k, v in first.base.state_dict().items())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_and_reload(backbone, tmp_path):
    suite = make_suite(backbone, 3)
    paths = suite.save(tmp_path)
    assert set(paths["experts"]) == set(suite.tasks)
    assert os.path.isfile(os.path.join(paths["base"], "model.safetensors"))
    task = suite.tasks[-1]
    loader = {"clip": CLIPVisionModel, "t5": T5ForConditionalGeneration}.get(
        backbone, AutoModelForSequenceClassification
    )
    reloaded = loader.from_pretrained(paths["experts"][task]).eval()
    assert type(reloaded) is type(suite.experts[task])
    inputs = suite.test[task]
    with torch.no_grad():
        if backbone == "t5":
            labels = suite.test_labels[task]
            assert torch.equal(
                reloaded(**inputs, labels=labels).logits, suite.experts[task](**inputs, labels=labels).logits
            )
        else:
            key = "pooler_output" if backbone == "clip" else "logits"
            assert torch.equal(reloaded(**inputs)[key], suite.experts[task](**inputs)[key])
        base = (AutoModel if backbone in ("bert", "roberta") else loader).from_pretrained(paths["base"]).eval()
        body = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        out = base.get_encoder()(**body) if backbone == "t5" else base(**body)
        ref = suite.base.get_encoder()(**body) if backbone == "t5" else suite.base(**body)
        assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    if backbone == "clip":
        from safetensors.torch import load_file

        heads = load_file(paths["heads"])
        assert all(torch.equal(heads[t], suite.heads[t]) for t in suite.tasks)
