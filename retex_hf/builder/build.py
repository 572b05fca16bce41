"""`build_retex`: experts → merge → offsets + signatures → one RetexModel.

Memory: experts are read tensor by tensor while merging, and loaded whole one at a time
afterwards (for their activations and their outputs on calibration inputs), so the peak stays
near the merged model plus one expert whatever the number of experts.
"""

from __future__ import annotations

import copy
import inspect
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .. import backbones, safety
from ..configuration_retex import RetexConfig
from ..data import batches, to_examples
from ..heads import tensor_head_logits
from ..merging import merge_tensor, resolve_hparams
from ..modeling_retex import (
    RetexForConditionalGeneration,
    RetexForImageClassification,
    RetexForSequenceClassification,
    RetexModel,
    RetexPreTrainedModel,
)
from ..offsets.activations import collect_input_statistics
from ..offsets.fit import TaskOffsets, fit_task_offsets
from ..offsets.targets import discover_targets
from ..recovery.targets import teacher_examples
from ..routing.discriminant import fit_precision
from ..routing.selection import ROUTER_RULES, select_components, select_router_rule
from ..routing.signatures import default_components, fit_signature
from .peft_experts import is_peft_adapter, merge_peft_expert
from .sources import ModelSpec, WeightSource

# Offsets per task, as a fraction of the model. Above 1 only makes sense to reach full rank in tests.
MAX_BUDGET = 2.0


def _check_tasks(experts: Mapping[str, Any], calibration: Mapping[str, Any]) -> list[str]:
    tasks = list(experts)
    safety.check_task_names(tasks)
    missing = [t for t in tasks if t not in calibration]
    extra = [t for t in calibration if t not in experts]
    if missing or extra:
        raise safety.BuildInputError(
            f"calibration and experts name different tasks: no calibration for {missing}, no expert for {extra}"
        )
    return tasks


def _architecture(source: WeightSource) -> str:
    if source.directory is None:
        return type(source.load()).__name__
    return (source.config.architectures or [type(source.config).__name__])[0]


def _forward_keys(skeleton: PreTrainedModel) -> set[str] | None:
    """The named inputs the experts' forward accepts (None when it cannot be told)."""
    try:
        parameters = inspect.signature(skeleton.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} or None


def _model_class(skeleton: PreTrainedModel, head_type: str) -> type[RetexPreTrainedModel]:
    if backbones.is_encoder_decoder(skeleton):
        return RetexForConditionalGeneration
    if head_type == "tensor" or (head_type == "module" and backbones.is_vision(skeleton)):
        return RetexForImageClassification
    if head_type == "module":
        return RetexForSequenceClassification
    return RetexModel


def _skeleton(source: WeightSource) -> PreTrainedModel:
    """The experts' architecture without weights: names, shapes, heads and offset targets."""
    if source.directory is None:
        return source.load()
    with torch.device("meta"):
        return source.model_class(source.config)


@torch.no_grad()
def _with_decoder_inputs(expert: PreTrainedModel, batch: dict, max_new_tokens: int) -> dict:
    """Encoder-decoder calibration needs decoder inputs: the expert's own greedy answer."""
    if not backbones.is_encoder_decoder(expert) or "decoder_input_ids" in batch:
        return batch
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    generated = expert.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return {**batch, "decoder_input_ids": generated}


def _base_name(keys: set[str], name: str, prefix: str) -> str:
    """The base checkpoint's name for an expert tensor (a bare `BertModel` lacks the `bert.` prefix)."""
    candidates = [name]
    if prefix and name.startswith(prefix + "."):
        candidates.append(name[len(prefix) + 1 :])
    elif prefix:
        candidates.append(f"{prefix}.{name}")
    for candidate in candidates:
        if candidate in keys:
            return candidate
    raise safety.BuildInputError(f"base model has no tensor for expert tensor {name!r}")


@torch.no_grad()
def build_retex(
    base: ModelSpec,
    experts: Mapping[str, ModelSpec],
    calibration: Mapping[str, Any],
    merge: str = "ties",
    budget: float = 0.03,
    recovery_steps: int = 200,
    heads: Mapping[str, torch.Tensor] | None = None,
    id2label: Mapping[str, Mapping[int, str]] | None = None,
    *,
    merge_kwargs: Mapping[str, Any] | None = None,
    normalize_features: bool = False,
    logit_scale: float = 1.0,
    activation_aware: bool = True,
    signature_components: int | None = None,
    threshold_quantile: float = 0.99,
    router_temperature: float = 0.1,
    router_layer: int = 0,
    router_rule: str = "auto",
    unknown_task_policy: str = "soft",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    recovery_kwargs: Mapping[str, Any] | None = None,
    allow_pickle: bool = False,
    max_relative_distance: float | None = safety.DEFAULT_MAX_RELATIVE_DISTANCE,
    seed: int = 0,
    quiet: bool = False,
) -> RetexPreTrainedModel:
    """Build one ReTeX checkpoint from a base and its fine-tuned experts (see DESIGN.md §6).

    Every input is checked before any work starts (`retex_hf.safety`): a bad one raises
    `BuildInputError` naming the task, expert or tensor. ``max_relative_distance`` refuses an
    expert farther than that from the base (‖θ_t − θ0‖/‖θ0‖ over the body; None: no limit).
    ``router_layer`` = k > 0 routes on the merged model's features after k encoder layers, so the
    routing pass stops there (faster inference; check router accuracy); 0 routes on the last layer.
    ``router_rule`` picks a task by SiM's subspace residual or by the shared-covariance discriminant
    (better where tasks share a domain); "auto" takes the one that routes more held-out
    calibration inputs right.
    """
    # 0. Validation: cheap checks first, then one streamed pass over every weight.
    tasks = _check_tasks(experts, calibration)
    if router_rule not in ROUTER_RULES:
        raise safety.BuildInputError(f"router_rule={router_rule!r}; valid: {', '.join(ROUTER_RULES)}")
    if not 0 < budget <= MAX_BUDGET:
        raise safety.BuildInputError(f"budget={budget} must be a fraction of the model size in (0, {MAX_BUDGET}]")
    hparams = resolve_hparams(merge, **dict(merge_kwargs or {}))
    if heads and set(heads) != set(tasks):
        raise safety.BuildInputError(f"heads name tasks {sorted(heads)}, experts name {sorted(tasks)}")
    examples_of = {t: to_examples(calibration[t]) for t in tasks}
    torch.manual_seed(seed)

    base_source = WeightSource(base, "base", allow_pickle)
    scratch = tempfile.TemporaryDirectory(prefix="retex-build-")
    sources = {
        t: merge_peft_expert(spec, base_source, Path(scratch.name), f"expert {t!r}")
        if is_peft_adapter(spec)
        else WeightSource(spec, f"expert {t!r}", allow_pickle)
        for t, spec in experts.items()
    }
    safety.check_architectures(
        {t: _architecture(s) for t, s in sources.items()},
        getattr(base_source.config, "model_type", None),
        {t: getattr(s.config, "model_type", None) for t, s in sources.items()},
    )
    skeleton = _skeleton(sources[tasks[0]])
    safety.check_calibration(examples_of, _forward_keys(skeleton), getattr(skeleton, "main_input_name", None))
    layers = len(backbones.encoder_layers(skeleton))
    if not 0 <= router_layer <= layers:
        raise safety.BuildInputError(f"router_layer={router_layer} must be in [0, {layers}] (0: the last layer)")
    head = backbones.head_attribute(skeleton)
    head_type = "module" if head else ("tensor" if heads else "none")
    targets = discover_targets(skeleton, exclude_prefixes=(head,) if head else ())
    names = [n for n, _ in skeleton.named_parameters() if not (head and n.startswith(head + "."))]
    prefix = getattr(skeleton, "base_model_prefix", "")
    shapes = {n: tuple(p.shape) for n, p in skeleton.named_parameters()}
    base_keys = base_source.keys()
    base_names = {n: _base_name(base_keys, n, prefix) for n in names}
    safety.check_expert_weights(
        base_source,
        sources,
        names,
        shapes,
        [n for n in shapes if head and n.startswith(head + ".")],
        base_names.__getitem__,
        max_relative_distance,
    )
    if heads:
        for task, weight in heads.items():
            if not torch.isfinite(weight).all():
                raise safety.BuildInputError(f"head of task {task!r} contains NaN or Inf")

    # 1. The model, with every shape but the offsets' and the router's known.
    model_cls = _model_class(skeleton, head_type)
    config = RetexConfig(
        backbone_config=copy.deepcopy(skeleton.config),
        backbone_architecture=type(skeleton).__name__,
        task_names=tasks,
        task_id2label={t: _id2label(t, sources[t], head_type, heads, id2label) for t in tasks},
        head_type=head_type,
        head_module=head,
        head_dims={t: list(heads[t].shape) for t in tasks} if head_type == "tensor" else None,
        normalize_features=normalize_features,
        logit_scale=logit_scale,
        offset_matrix_targets=targets.matrices,
        offset_vector_targets=targets.vectors,
        offset_budget=budget,
        router_threshold_quantile=threshold_quantile,
        router_temperature=router_temperature,
        router_layer=router_layer,
        unknown_task_policy=unknown_task_policy,
        merge_method=merge,
        merge_hparams=hparams,
        recovery_steps=recovery_steps,
        architectures=[model_cls.__name__],
    )
    model = model_cls(config)

    # 2. Merge, tensor by tensor, straight into the model (names and shapes were checked above).
    backbone = model.backbone
    for name in tqdm(names, desc=f"merging ({merge})", disable=quiet):
        target = backbone.get_parameter(name)
        theta0 = base_source.get(base_names[name]).float()
        task_vectors = torch.stack([sources[t].get(name).float() - theta0 for t in tasks])
        target.copy_(merge_tensor(merge, theta0, task_vectors, **hparams))
    for name, buffer in backbone.named_buffers():
        saved = sources[tasks[0]].get(name)
        if saved is not None and saved.shape == buffer.shape:
            buffer.copy_(saved)
    _copy_heads(model, sources, head, heads)

    # 3. Per task, with that expert loaded: calibration batches, signatures, offsets, teacher outputs.
    total = sum(backbone.get_parameter(n).numel() for n in names)
    width = max((len(v) for v in config.task_id2label.values()), default=0)
    fits: dict[str, ExpertFit] = {}
    for index, task in enumerate(tqdm(tasks, desc="offsets per expert (load, SVD, targets)", disable=quiet)):
        head_weight = heads[task] if head_type == "tensor" else None
        fits[task] = fit_expert(
            model, sources[task], index, examples_of[task], int(budget * total),
            activation_aware=activation_aware, teacher=recovery_steps > 0, width=width, head_weight=head_weight,
            batch_size=batch_size, max_new_tokens=max_new_tokens,
        )  # fmt: skip
    features = {t: fit.features for t, fit in fits.items()}
    fitted = {t: fit.offsets for t, fit in fits.items()}
    examples = [example for fit in fits.values() for example in fit.examples]

    # 4. Signatures on the merged model's features.
    smallest = min(f.shape[0] for f in features.values())
    if smallest < 3:
        raise ValueError(f"signatures need at least 3 calibration inputs per task, got {smallest}")
    feature_dim = next(iter(features.values())).shape[1]
    default = default_components(feature_dim, smallest)
    components = signature_components or select_components(list(features.values()), default)
    signatures = [
        fit_signature(features[t], min(components, features[t].shape[0] - 1), threshold_quantile) for t in tasks
    ]
    per_task = [features[t] for t in tasks]
    candidates = ("subspace", "discriminant") if router_rule == "auto" else (router_rule,)
    router_rule, shrinkage = select_router_rule(per_task, components, candidates)

    # 5. Offsets and router take their final shapes.
    config.offset_ranks = {t: {n: r for n, r in fitted[t].ranks.items() if r > 0} for t in tasks}
    config.router_feature_dim = feature_dim
    config.router_num_components = max(s.basis.shape[1] for s in signatures)
    config.router_rule = router_rule
    model._make_offsets()
    model._make_router()
    for task in tasks:
        load_offsets(model, task, fitted[task])
    model.router.load_signatures(signatures)
    if router_rule == "discriminant":
        model.router.load_precision(fit_precision(per_task, shrinkage))

    scratch.cleanup()
    if recovery_steps > 0:
        from ..recovery import recover

        with torch.enable_grad():
            options = {"quiet": quiet, **dict(recovery_kwargs or {})}
            recover(model, examples, steps=recovery_steps, seed=seed, **options)
    return model.eval()


@dataclass
class ExpertFit:
    """What one loaded expert contributes: signature features, offsets, and distillation targets."""

    features: torch.Tensor  # merged-model features of its calibration inputs, for its signature
    offsets: TaskOffsets
    examples: list[dict[str, torch.Tensor]]  # teacher outputs for recovery (empty without recovery)


def fit_expert(
    model: RetexPreTrainedModel,
    source: WeightSource,
    task_index: int,
    calibration: list[dict[str, torch.Tensor]],
    budget_parameters: int,
    *,
    activation_aware: bool,
    teacher: bool,
    width: int,
    head_weight: torch.Tensor | None,
    batch_size: int,
    max_new_tokens: int,
) -> ExpertFit:
    """Load one expert, fit its offsets against the model's current merged weights, then let it go.

    Shared by `build_retex` and `add_task`, so an expert added later is treated exactly like
    one present at build time.
    """
    config, backbone = model.config, model.backbone
    pad_id = getattr(config.backbone_config, "pad_token_id", None) or 0
    expert = source.load()
    calib = [_with_decoder_inputs(expert, b, max_new_tokens) for b in batches(calibration, batch_size, pad_id)]
    features = torch.cat([model.route_features(b) for b in calib])
    targets = config.offset_matrix_targets
    stats = collect_input_statistics(expert, targets, calib) if activation_aware else {}
    params = dict(expert.named_parameters())
    merged = dict(backbone.named_parameters())
    offsets = fit_task_offsets(
        {n: params[n].detach().float() - merged[n].float() for n in targets},
        {n: params[n].detach().float() - merged[n].float() for n in config.offset_vector_targets},
        budget_parameters,
        stats,
    )
    examples = []
    if teacher:
        head_fn = None
        if head_weight is not None:

            def head_fn(pooled):
                return tensor_head_logits(pooled, head_weight, config.normalize_features, config.logit_scale)

        examples = teacher_examples(
            expert, task_index, calib, config.head_type, width, head_fn=head_fn, pad_token_id=pad_id
        )
    del expert, params
    source.close()
    return ExpertFit(features, offsets, examples)


@torch.no_grad()
def load_offsets(model: RetexPreTrainedModel, task: str, fitted: TaskOffsets) -> None:
    """Copy one task's fitted factors and vectors into the model's (already shaped) offset bank."""
    for name, (B, A) in fitted.factors.items():
        model.offsets.matrix(name).A[task].copy_(A)
        model.offsets.matrix(name).B[task].copy_(B)
    for name, delta in fitted.vectors.items():
        model.offsets.vector(name).delta[task].copy_(delta)


def _id2label(task: str, source: WeightSource, head_type: str, heads, id2label) -> dict[int, str]:
    if id2label and task in id2label:
        return {int(k): str(v) for k, v in id2label[task].items()}
    if head_type == "module":
        return {int(k): str(v) for k, v in source.config.id2label.items()}
    if head_type == "tensor":
        return {i: f"LABEL_{i}" for i in range(heads[task].shape[0])}
    return {}


def load_head_module(module: torch.nn.Module, source: WeightSource, head: str, task: str) -> None:
    """Fill one task's head module with the expert's own head tensors (never merged)."""
    for key, param in module.state_dict(keep_vars=True).items():
        value = source.get(f"{head}.{key}")
        if value is None or value.shape != param.shape:
            raise ValueError(f"expert {task!r} head tensor {head}.{key} is missing or has another shape")
        param.copy_(value)


def _copy_heads(model, sources: Mapping[str, WeightSource], head: str | None, heads) -> None:
    for task, source in sources.items():
        if head:
            load_head_module(getattr(model.backbone, head).heads[task], source, head, task)
        elif heads:
            model.heads.weights[task].copy_(heads[task])
