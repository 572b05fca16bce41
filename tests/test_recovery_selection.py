"""Recovery keeps each task's best offsets on held-out calibration inputs, the SVD fit included."""

from __future__ import annotations

import torch
from built_models import BUDGET

import retex_hf
from retex_hf.evaluation import plain_logits, retex_logits
from retex_hf.recovery.selection import split_held_out
from retex_hf.synthetic import make_suite


def _fidelity(model, suite) -> dict[str, float]:
    out = {}
    for task in suite.tasks:
        expert = plain_logits(suite.experts[task], suite.test[task]).argmax(-1)
        given = retex_logits(model, suite.test[task], task=task)[0].argmax(-1)
        out[task] = (given == expert).float().mean().item()
    return out


def _build(suite, **recovery_kwargs):
    return retex_hf.build_retex(
        suite.base, suite.experts, suite.calibration, budget=BUDGET["bert"] / 3, recovery_steps=30, quiet=True,
        recovery_kwargs={"learning_rate": 0.3, **recovery_kwargs},  # far too high: training overshoots
    )  # fmt: skip


def test_split_holds_out_a_fifth_per_task_at_most_32_and_keeps_every_example():
    examples = [{"task_index": torch.tensor(t), "x": torch.tensor(i)} for t in range(3) for i in range(100)]
    examples += [{"task_index": torch.tensor(3), "x": torch.tensor(i)} for i in range(40)]  # too few to hold out
    examples += [{"task_index": torch.tensor(4), "x": torch.tensor(i)} for i in range(500)]  # capped
    train, held_out = split_held_out(examples, seed=0)
    assert sorted(held_out) == [0, 1, 2, 4] and [len(held_out[t]) for t in (0, 1, 2, 4)] == [20, 20, 20, 32]
    assert len(train) + sum(len(r) for r in held_out.values()) == len(examples)
    seen = {(int(e["task_index"]), int(e["x"])) for e in train + [e for r in held_out.values() for e in r]}
    assert len(seen) == len(examples)


def test_overshooting_recovery_falls_back_to_the_svd_fit_per_task():
    suite = make_suite("bert", num_tasks=3, seed=0, n_calibration=80)  # enough inputs to hold some out
    svd_only = retex_hf.build_retex(
        suite.base, suite.experts, suite.calibration, budget=BUDGET["bert"] / 3, recovery_steps=0, quiet=True
    )
    unguarded = _fidelity(_build(suite, select_on_held_out=False), suite)
    guarded_model = _build(suite)
    guarded, reference = _fidelity(guarded_model, suite), _fidelity(svd_only, suite)
    # The unguarded run is worse than the SVD fit somewhere (else this test shows nothing) ...
    assert min(unguarded[t] - reference[t] for t in suite.tasks) < -0.05, (unguarded, reference)
    # ... and the guarded one is not.
    for task in suite.tasks:
        assert guarded[task] >= reference[task] - 0.03, (task, guarded, reference)
