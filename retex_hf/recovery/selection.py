"""Keep, for each task, the offsets that answer most like its expert on inputs training never saw.

Distillation sees a few dozen calibration inputs per task. On a real encoder it can fit them and
drift away from the expert everywhere else (measured on all-MiniLM-L6-v2: 100 steps took one task's
fidelity from 0.95 after the SVD fit down to 0.60). So a share of each task's calibration inputs is
held out; their score (the probability the model gives the expert's top answer, a smooth stand-in
for fidelity) is measured before training (the SVD offsets) and every few steps, and each task ends
with the snapshot of *its own* offsets at its best point. Offsets of different tasks are separate
parameters, so the choice is per task, and recovery can only leave a task's held-out score where
the SVD fit put it or better it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from transformers import TrainerCallback

from ..finetuning import task_parameter_names

Example = dict[str, torch.Tensor]
# Selection needs enough inputs per task to spare some: with fewer than MIN_INPUTS a task trains
# on all of them (as with the few dozen of a small build, where every input counts for recovery).
MIN_INPUTS = 64
MAX_HELD_OUT = 32  # per task: each measurement is a forward pass over every held-out input
HELD_OUT_SHARE = 0.2


def split_held_out(examples: list[Example], seed: int) -> tuple[list[Example], dict[int, list[Example]]]:
    """(training examples, held-out examples per task index). Tasks with fewer than ``MIN_INPUTS``
    inputs hold none out."""
    by_task: dict[int, list[Example]] = {}
    for example in examples:
        by_task.setdefault(int(example["task_index"]), []).append(example)
    train, held_out = [], {}
    rng = random.Random(seed)
    for task, rows in by_task.items():
        if len(rows) < MIN_INPUTS:
            train += rows
            continue
        count = min(int(len(rows) * HELD_OUT_SHARE), MAX_HELD_OUT)
        order = list(range(len(rows)))
        rng.shuffle(order)
        held_out[task] = [rows[i] for i in order[:count]]
        train += [rows[i] for i in order[count:]]
    return train, held_out


def _better(score: float, best: float, tolerance: float = 1e-4) -> bool:
    """Lower by more than float noise: a near tie keeps the earlier point."""
    return score < best - tolerance * max(abs(best), 1e-6)


class BestOffsetsCallback(TrainerCallback):
    """Scores each task's held-out inputs every ``every`` steps and keeps its best offsets.

    ``score_of(rows)`` scores a list of examples (no grad): lower is better.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        task_names: list[str],
        held_out: dict[int, list[Example]],
        score_of: Callable[[list[Example]], float],
        every: int,
    ):
        self.model, self.task_names, self.held_out, self.score_of = model, task_names, held_out, score_of
        self.every = max(1, every)
        self.best: dict[int, tuple[float, int, dict[str, torch.Tensor]]] = {}
        self.history: list[dict] = []
        # Which parameters are a task's offsets is decided in one place: the fine-tuning recipe's.
        params = dict(model.named_parameters())
        self._offsets = {
            task: {n: params[n] for n in task_parameter_names(model, task_names[task], head=False)} for task in held_out
        }

    @torch.no_grad()
    def measure(self, step: int) -> None:
        was_training = self.model.training
        self.model.eval()
        scores = {}
        for task, rows in self.held_out.items():
            score = scores[self.task_names[task]] = self.score_of(rows)
            if task not in self.best or _better(score, self.best[task][0]):
                snapshot = {n: p.detach().clone() for n, p in self._offsets[task].items()}
                self.best[task] = (score, step, snapshot)
        self.history.append({"step": step, "held_out_score": scores})
        self.model.train(was_training)

    def on_train_begin(self, args, state, control, **kwargs):
        self.measure(0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            self.measure(state.global_step)

    @torch.no_grad()
    def restore_best(self) -> dict[str, int]:
        """Put every task's best offsets back; returns the step each task's offsets come from."""
        chosen = {}
        for task, (_, step, snapshot) in self.best.items():
            for name, value in snapshot.items():
                self._offsets[task][name].copy_(value)
            chosen[self.task_names[task]] = step
        return chosen
