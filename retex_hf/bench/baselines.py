"""The baselines ReTeX is measured against, computed from the same experts and splits.

Static merges (one model for all tasks): task arithmetic at its best λ and TIES, both tuned on the
validation split, and TSV-M at its published α = 1. Dynamic, task-known reconstructions: EMR
(as published: unified vector, per-task masks and rescalers) and TALL masks (λ per task on the
validation split, as in the paper). SiM: training-free routing (affine-subspace signatures of the
pretrained encoder's features) over EMR or TALL; its accuracy is the reconstruction's accuracy on
the inputs routed to the right task, every other input counts as wrong.

Every variant is a body state dict evaluated through a per-task "probe": a copy of that task's
expert (so its own head) whose body weights are overwritten.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from .. import backbones
from ..evaluation import HeadSpec, slices
from ..merging import emr_masks_and_rescalers, merge_tensor, tall_masks
from ..routing.selection import select_components
from ..routing.signatures import default_components, fit_signature, subspace_residuals
from . import measure
from .suite import LabelledSplit

State = dict[str, torch.Tensor]

# Hyper-parameter grids searched on the validation split (quick mode: a smoke test, one or two points).
GRIDS = {"task_arithmetic": (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0), "ties": (0.6, 1.0, 1.4), "tall": (0.2, 0.4, 0.6)}
QUICK_GRIDS = {"task_arithmetic": (0.3, 1.0), "ties": (1.0,), "tall": (0.4,)}
SIM_SUPPORT = 32  # SiM's support set: 32 unlabelled inputs per task


def load_base_state(base_dir: Path) -> State:
    state: State = {}
    for path in sorted(Path(base_dir).glob("*.safetensors")):
        state.update(load_file(str(path)))
    if not state:
        raise FileNotFoundError(f"no safetensors weights in the base directory {base_dir}")
    return state


def _base_key(keys, name: str, prefix: str) -> str | None:
    for candidate in (name, name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else None,
                      f"{prefix}.{name}" if prefix else None):  # fmt: skip
        if candidate and candidate in keys:
            return candidate
    return None


class ExpertPool:
    """Experts in memory, their task vectors over the body, and probes that evaluate any body."""

    def __init__(self, base_dir: Path, experts: Mapping[str, PreTrainedModel], heads: Mapping[str, HeadSpec] | None):
        self.tasks = list(experts)
        self.experts = dict(experts)
        self.heads = dict(heads or {})
        first = self.experts[self.tasks[0]]
        head = backbones.head_attribute(first)
        prefix = getattr(first, "base_model_prefix", "")
        base = load_base_state(base_dir)
        params = dict(first.named_parameters())
        self.names = [n for n in params if not (head and n.startswith(head + "."))]
        missing = [n for n in self.names if _base_key(base, n, prefix) is None]
        if missing:
            raise ValueError(f"the base checkpoint has no tensor for expert tensors {missing[:5]}")
        self.theta0 = {n: base[_base_key(base, n, prefix)].float() for n in self.names}
        self.stacked = {}
        for n in self.names:
            self.stacked[n] = torch.stack(
                [dict(self.experts[t].named_parameters())[n].detach().float() for t in self.tasks]
            )
            self.stacked[n] -= self.theta0[n]
        self._probes: dict[str, PreTrainedModel] = {}

    # --- evaluation -------------------------------------------------------------------------
    def forward_for(self, model: PreTrainedModel, task: str) -> Callable[[dict], torch.Tensor]:
        head = self.heads.get(task)
        if head is None:
            return measure.classifier_forward(model)

        def forward(batch: dict) -> torch.Tensor:
            pooled = backbones.tower_pooled_output(model(**batch, return_dict=True)).float()
            weight = head.weight.float()
            if head.normalize:
                pooled, weight = (
                    torch.nn.functional.normalize(pooled, dim=-1),
                    torch.nn.functional.normalize(weight, dim=-1),
                )
            return head.logit_scale * pooled @ weight.T

        return forward

    def probe(self, task: str, body: State) -> PreTrainedModel:
        model = self._probes.get(task)
        if model is None:
            model = self._probes[task] = copy.deepcopy(self.experts[task]).eval()
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in body.items():
                params[name].copy_(value)
        return model

    def logits(self, task: str, body: State | None, split: LabelledSplit) -> torch.Tensor:
        model = self.experts[task] if body is None else self.probe(task, body)
        return measure.logits_of(self.forward_for(model, task), split.inputs)

    def accuracy(self, task: str, body: State | None, split: LabelledSplit) -> float:
        return (self.logits(task, body, split).argmax(-1) == split.labels).float().mean().item()

    # --- bodies ----------------------------------------------------------------------------
    def merged(self, method: str, **hparams) -> State:
        return {n: merge_tensor(method, self.theta0[n], self.stacked[n], **hparams) for n in self.names}

    def emr_bodies(self) -> dict[str, State]:
        tau_uni, masks, rescalers = emr_masks_and_rescalers(self.stacked)
        return {
            t: {n: self.theta0[n] + rescalers[i] * masks[n][i].float() * tau_uni[n] for n in self.names}
            for i, t in enumerate(self.tasks)
        }

    def tall_body(self, task: str, tall_lambda: float) -> State:
        i = self.tasks.index(task)
        body = {}
        for n in self.names:
            total = self.stacked[n].sum(0)
            body[n] = self.theta0[n] + tall_masks(self.stacked[n], tall_lambda, total)[i].float() * total
        return body


def tune_static(pool: ExpertPool, validation: Mapping[str, LabelledSplit], method: str, grid, key: str, **fixed):
    """Pick ``key`` from ``grid`` by mean validation accuracy; returns (best value, {value: mean accuracy})."""
    scores = {}
    for value in grid:
        body = pool.merged(method, **{key: value}, **fixed)
        scores[value] = sum(pool.accuracy(t, body, validation[t]) for t in pool.tasks) / len(pool.tasks)
    return max(scores, key=scores.get), scores


def sim_router(pool: ExpertPool, calibration: Mapping[str, Mapping[str, torch.Tensor]]):
    """SiM signatures on the pretrained encoder's pooled features; returns route(inputs) -> task ids."""
    encoder = pool.probe(pool.tasks[0], pool.theta0)  # θ0 in the first expert's shell (its head is unused)

    @torch.no_grad()
    def features(inputs) -> torch.Tensor:
        return torch.cat([backbones.pool_features(encoder, batch) for batch in slices(inputs, 64)])

    support = {t: features({k: v[:SIM_SUPPORT] for k, v in calibration[t].items()}) for t in pool.tasks}
    smallest = min(f.shape[0] for f in support.values())
    k = select_components(list(support.values()), default_components(next(iter(support.values())).shape[1], smallest))
    signatures = [fit_signature(support[t], min(k, support[t].shape[0] - 1)) for t in pool.tasks]
    width = max(s.basis.shape[1] for s in signatures)
    means = torch.stack([s.mean for s in signatures])
    bases = torch.stack([torch.nn.functional.pad(s.basis, (0, width - s.basis.shape[1])) for s in signatures])

    def route(inputs) -> torch.Tensor:
        # restore θ0 first: the probe is shared with the evaluation of other bodies
        pool.probe(pool.tasks[0], pool.theta0)
        return subspace_residuals(features(inputs), means, bases).argmin(-1)

    return route, k
