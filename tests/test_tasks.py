"""`add_task` / `remove_task`: grow and shrink a built checkpoint without touching the other tasks."""

from __future__ import annotations

import pytest
import torch
from built_models import BUDGET, build_kwargs

import retex_hf
from retex_hf.evaluation import HeadSpec, plain_logits, retex_logits
from retex_hf.synthetic import make_suite


def _build(suite, tasks, **kwargs):
    heads = build_kwargs(suite)
    if "heads" in heads:
        heads["heads"] = {t: suite.heads[t] for t in tasks}
    return retex_hf.build_retex(
        suite.base, {t: suite.experts[t] for t in tasks}, {t: suite.calibration[t] for t in tasks},
        budget=BUDGET[suite.backbone], recovery_steps=0, quiet=True, **heads, **kwargs,
    )  # fmt: skip


def _given_logits(model, suite, tasks):
    """Task-known logits over each task's own labels (the padding width changes with the task set)."""
    return {t: retex_logits(model, suite.test[t], task=t)[0][:, : model.config.num_labels_of(t)] for t in tasks}


def _fidelity(model, suite, task):
    head = HeadSpec(suite.heads[task], suite.head_logit_scale, normalize=True) if suite.heads else None
    expert = plain_logits(suite.experts[task], suite.test[task], head).argmax(-1)
    routed, task_ids, _ = retex_logits(model, suite.test[task])
    return (routed.argmax(-1) == expert).float().mean().item(), (task_ids == model.task_index(task)).float().mean()


@pytest.mark.parametrize("backbone", ["bert", "clip"])
def test_add_task_recovers_the_new_expert_and_leaves_the_others_bit_identical(backbone, tmp_path):
    suite = make_suite(backbone, num_tasks=4, seed=0)
    old, new = suite.tasks[:3], suite.tasks[3]
    model = _build(suite, old)
    before = _given_logits(model, suite, old)
    routed_before = {t: _fidelity(model, suite, t)[1] for t in old}
    merged_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "heads" not in k}

    head = suite.heads[new] if suite.heads else None
    model.add_task(new, suite.experts[new], suite.calibration[new], head=head, recovery_steps=30)

    assert model.task_names == [*old, new]
    after = _given_logits(model, suite, old)
    assert all(torch.equal(before[t], after[t]) for t in old)  # other tasks untouched, to the bit
    merged_after = model.backbone.state_dict()
    assert all(torch.equal(v, merged_after[k]) for k, v in merged_before.items())  # nothing re-merged
    fidelity, routed = _fidelity(model, suite, new)
    assert fidelity >= 0.9 and routed >= 0.9, (fidelity, routed)
    for task in old:  # the new signature takes (almost) nothing from the old tasks
        assert _fidelity(model, suite, task)[1] >= routed_before[task] - 0.05

    model.save_pretrained(tmp_path / "grown")
    reloaded = retex_hf.RetexModel.from_pretrained(tmp_path / "grown")
    assert reloaded.task_names == model.task_names
    assert torch.equal(retex_logits(reloaded, suite.test[new])[0], retex_logits(model, suite.test[new])[0])


def test_remove_task_drops_it_and_keeps_the_rest(tmp_path):
    suite = make_suite("bert", num_tasks=3, seed=0)
    model = _build(suite, suite.tasks)
    gone, kept = suite.tasks[1], [suite.tasks[0], suite.tasks[2]]
    before = _given_logits(model, suite, kept)
    storage_before = model.retex_storage()["offsets"]
    model.remove_task(gone)
    assert model.task_names == kept and gone not in model.config.task_id2label
    after = _given_logits(model, suite, kept)
    assert all(torch.equal(before[t], after[t]) for t in kept)
    assert model.retex_storage()["offsets"] < storage_before
    for task in kept:
        _, task_ids, _ = retex_logits(model, suite.test[task])
        assert (task_ids == model.task_index(task)).float().mean() >= 0.9
    with pytest.raises(ValueError, match=gone):
        model(**{k: v[:2] for k, v in suite.test[kept[0]].items()}, task=gone)
    model.save_pretrained(tmp_path / "shrunk")
    assert retex_hf.RetexModel.from_pretrained(tmp_path / "shrunk").task_names == kept


def test_add_task_refuses_bad_input_and_leaves_the_model_unchanged():
    suite = make_suite("bert", num_tasks=3, seed=0)
    model = _build(suite, suite.tasks[:2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clip = make_suite("clip", num_tasks=1, seed=0)
    cases = [
        (
            (suite.tasks[0], suite.experts[suite.tasks[2]], suite.calibration[suite.tasks[2]]),
            "already in this checkpoint",
        ),
        (("new", clip.experts[clip.tasks[0]], suite.calibration[suite.tasks[2]]), "CLIPVisionModel"),
        (("new", suite.experts[suite.tasks[2]], suite.calibration[suite.tasks[2]][:2]), "calibration"),
    ]
    for args, pattern in cases:
        with pytest.raises(retex_hf.BuildInputError, match=pattern):
            model.add_task(*args)
        assert model.task_names == suite.tasks[:2]
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="only task"):
        solo = _build(suite, suite.tasks[:1])
        solo.remove_task(suite.tasks[0])
