"""Growing and shrinking a built checkpoint: `add_task` and `remove_task`.

The merged weights stay as they are: every existing offset was fitted against them, so
re-merging would invalidate all of them. A new expert is therefore fitted against the current
merged weights exactly as at build time (same budget fraction, same signature size), and only its
own offsets are distilled; the other tasks' offsets, heads and signatures are left bit-identical.
All fitting happens before the model is touched, so a failure leaves it as it was.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import safety
from ..data import to_examples
from ..heads import resize_head
from ..modeling_retex import RetexPreTrainedModel
from ..routing.signatures import fit_signature
from .build import _architecture, _forward_keys, _id2label, fit_expert, load_head_module, load_offsets
from .peft_experts import is_peft_adapter, merge_peft_expert
from .sources import ModelSpec, WeightSource


def _body_names(model: RetexPreTrainedModel) -> list[str]:
    head = model.config.head_module if model.config.head_type == "module" else None
    return [n for n, _ in model.backbone.named_parameters() if not (head and n.startswith(head + "."))]


def _expert_source(expert: ModelSpec, base: ModelSpec | None, allow_pickle: bool, scratch: Path, role: str):
    if not is_peft_adapter(expert):
        return WeightSource(expert, role, allow_pickle)
    if base is None:
        raise safety.BuildInputError(
            f"{role} is a PEFT adapter: pass base= (the model it was trained on) so it can be merged over it"
        )
    return merge_peft_expert(expert, WeightSource(base, "base", allow_pickle), scratch, role)


def _check_expert(model: RetexPreTrainedModel, task: str, source: WeightSource, max_relative_distance) -> None:
    config = model.config
    architecture = _architecture(source)
    if architecture != config.backbone_architecture:
        raise safety.BuildInputError(
            f"expert {task!r} is a {architecture}; this checkpoint's experts are {config.backbone_architecture}"
        )
    body = _body_names(model)
    shapes = {n: tuple(p.shape) for n, p in model.backbone.named_parameters()}
    head = config.head_module if config.head_type == "module" else None
    expert_keys = source.keys()
    head_names = [k for k in expert_keys if head and k.startswith(head + ".")]
    safety.check_expert_weights(
        WeightSource(model.backbone, "the merged model"),
        {task: source},
        body,
        shapes,
        head_names,
        lambda name: name,
        max_relative_distance,
    )


def _new_head(model: RetexPreTrainedModel, task: str, source: WeightSource, num_labels: int) -> nn.Module:
    """A copy of the per-task head module sized for ``num_labels``, holding the expert's head weights."""
    dispatcher = getattr(model.backbone, model.config.head_module)
    template_task = dispatcher.task_names[0]
    head = resize_head(dispatcher.heads[template_task], model.config.num_labels_of(template_task), num_labels)
    load_head_module(head, source, model.config.head_module, task)
    return head


@torch.no_grad()
def add_task(
    model: RetexPreTrainedModel,
    task: str,
    expert: ModelSpec,
    calibration: Any,
    *,
    head: torch.Tensor | None = None,
    id2label: Mapping[int, str] | None = None,
    base: ModelSpec | None = None,
    recovery_steps: int | None = None,
    activation_aware: bool = True,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    recovery_kwargs: Mapping[str, Any] | None = None,
    allow_pickle: bool = False,
    max_relative_distance: float | None = safety.DEFAULT_MAX_RELATIVE_DISTANCE,
    seed: int = 0,
    quiet: bool = True,
) -> RetexPreTrainedModel:
    """Add one expert to a built model in place (see the module docstring) and return the model.

    ``head``: the task's tensor head ``[num_labels, dim]`` for tower checkpoints built with
    ``heads=``. ``base``: needed only when ``expert`` is a PEFT adapter directory.
    ``recovery_steps`` defaults to the checkpoint's own setting.
    """
    config = model.config
    if task in config.task_names:
        raise safety.BuildInputError(f"task {task!r} is already in this checkpoint; remove_task({task!r}) first")
    safety.check_task_names([*config.task_names, task])
    if config.head_type == "tensor" and head is None:
        raise safety.BuildInputError(f"this checkpoint has tensor heads: pass head= for task {task!r}")
    if config.head_type != "tensor" and head is not None:
        raise safety.BuildInputError(f"head= is for tensor-head checkpoints, not head_type={config.head_type!r}")
    if head is not None and not torch.isfinite(head).all():
        raise safety.BuildInputError(f"head of task {task!r} contains NaN or Inf")
    examples = to_examples(calibration)
    steps = config.recovery_steps if recovery_steps is None else recovery_steps
    torch.manual_seed(seed)

    with tempfile.TemporaryDirectory(prefix="retex-add-task-") as scratch:
        source = _expert_source(expert, base, allow_pickle, Path(scratch), f"expert {task!r}")
        _check_expert(model, task, source, max_relative_distance)
        safety.check_calibration(
            {task: examples}, _forward_keys(model.backbone), getattr(model.backbone, "main_input_name", None)
        )
        heads = {task: head} if head is not None else None
        labels = _id2label(task, source, config.head_type, heads, {task: id2label} if id2label else None)
        new_head = _new_head(model, task, source, len(labels)) if config.head_type == "module" else None
        width = max([len(labels)] + [len(v) for v in config.task_id2label.values()])
        total = sum(p.numel() for n, p in model.backbone.named_parameters() if n in set(_body_names(model)))
        fit = fit_expert(
            model, source, len(config.task_names), examples, int(config.offset_budget * total),
            activation_aware=activation_aware, teacher=steps > 0, width=width, head_weight=head,
            batch_size=batch_size, max_new_tokens=max_new_tokens,
        )  # fmt: skip
    if fit.features.shape[0] < 3:
        raise safety.BuildInputError(f"task {task!r} needs at least 3 calibration inputs for its signature")
    components = min(config.router_num_components, fit.features.shape[0] - 1)
    signature = fit_signature(fit.features, components, config.router_threshold_quantile)

    # Everything is fitted: now change the model, keeping every existing tensor.
    offsets_before = model.offsets.state_dict()
    signatures = model.router.signatures() + [signature]
    config.task_names = [*config.task_names, task]
    config.task_id2label = {**config.task_id2label, task: labels}
    config.offset_ranks = {**config.offset_ranks, task: {n: r for n, r in fit.offsets.ranks.items() if r > 0}}
    if config.head_type == "module":
        getattr(model.backbone, config.head_module).add(task, new_head.to(model.device), len(labels))
    elif config.head_type == "tensor":
        config.head_dims = {**config.head_dims, task: list(head.shape)}
        model.heads.add(task, head.to(model.device))
    _rebuild(model, offsets_before, signatures, new_task=task)
    load_offsets(model, task, fit.offsets)
    if steps > 0:
        from ..recovery import recover

        with torch.enable_grad():
            options = {"quiet": quiet, **dict(recovery_kwargs or {})}
            recover(model, fit.examples, steps=steps, seed=seed, tasks=[task], **options)
    return model.eval()


@torch.no_grad()
def remove_task(model: RetexPreTrainedModel, task: str) -> RetexPreTrainedModel:
    """Drop one task's offsets, head and signature in place. Its contribution to the merged weights
    stays (nothing can be un-merged without the base); the other tasks are untouched."""
    config = model.config
    index = model.task_index(task)
    if len(config.task_names) == 1:
        raise ValueError(f"cannot remove {task!r}: it is the checkpoint's only task")
    offsets_before = {k: v for k, v in model.offsets.state_dict().items() if k.rsplit(".", 1)[-1] != task}
    signatures = [s for t, s in enumerate(model.router.signatures()) if t != index]
    remaining = [t for t in config.task_names if t != task]
    config.task_names = remaining
    config.task_id2label = {t: v for t, v in config.task_id2label.items() if t != task}
    config.offset_ranks = {t: v for t, v in config.offset_ranks.items() if t != task}
    if config.head_type == "module":
        getattr(model.backbone, config.head_module).remove(task, {t: config.num_labels_of(t) for t in remaining})
    elif config.head_type == "tensor":
        config.head_dims = {t: v for t, v in config.head_dims.items() if t != task}
        model.heads.remove(task)
    _rebuild(model, offsets_before, signatures)
    return model


def _rebuild(
    model: RetexPreTrainedModel, offsets_state: dict[str, torch.Tensor], signatures, new_task: str | None = None
) -> None:
    """Re-shape the offset bank and the router for the config's task list, restoring kept tensors."""
    model._make_offsets()
    missing, unexpected = model.offsets.load_state_dict(offsets_state, strict=False)
    lost = [k for k in missing if k.rsplit(".", 1)[-1] != new_task]
    if unexpected or lost:
        raise RuntimeError(f"offset tensors lost in the change: {(unexpected + lost)[:5]}")
    precision = model.router.precision.clone() if model.router.rule == "discriminant" else None
    model._make_router()
    model.router.load_signatures(signatures)
    if precision is not None:  # the discriminant's covariance stays that of the tasks it was fitted on
        model.router.load_precision(precision)
