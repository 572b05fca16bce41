"""`build_retex`: experts → merge → offsets + signatures → one RetexModel."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from transformers import PreTrainedModel

from .. import backbones
from ..configuration_retex import RetexConfig
from ..data import batches, to_examples
from ..merging import merge_tensor, resolve_hparams
from ..modeling_retex import (
    RetexForConditionalGeneration,
    RetexForImageClassification,
    RetexForSequenceClassification,
    RetexModel,
    RetexPreTrainedModel,
)
from ..offsets.activations import collect_input_statistics
from ..offsets.fit import fit_task_offsets
from ..offsets.targets import discover_targets
from ..routing.signatures import default_components, fit_signature, select_components
from .loading import ModelSpec, align_base, body_parameter_names, check_experts, head_of, load_model

# Offsets per task, as a fraction of the model. Above 1 only makes sense to reach full rank in tests.
MAX_BUDGET = 2.0


def _check_tasks(experts: Mapping[str, Any], calibration: Mapping[str, Any]) -> list[str]:
    tasks = list(experts)
    if not tasks:
        raise ValueError("experts is empty: give at least one {task_name: expert}")
    for task in tasks:
        if not isinstance(task, str) or not task.strip() or "." in task:
            raise ValueError(f"invalid task name {task!r}: use a non-empty string without dots")
    missing = [t for t in tasks if t not in calibration]
    extra = [t for t in calibration if t not in experts]
    if missing or extra:
        raise ValueError(
            f"calibration and experts name different tasks: no calibration for {missing}, no expert for {extra}"
        )
    return tasks


def _model_class(expert: PreTrainedModel, head_type: str) -> type[RetexPreTrainedModel]:
    if backbones.is_encoder_decoder(expert):
        return RetexForConditionalGeneration
    if head_type == "tensor" or (head_type == "module" and backbones.is_vision(expert)):
        return RetexForImageClassification
    if head_type == "module":
        return RetexForSequenceClassification
    return RetexModel


@torch.no_grad()
def _with_decoder_inputs(expert: PreTrainedModel, batch: dict, max_new_tokens: int) -> dict:
    """Encoder-decoder calibration needs decoder inputs: the expert's own greedy answer."""
    if not backbones.is_encoder_decoder(expert) or "decoder_input_ids" in batch:
        return batch
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    generated = expert.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return {**batch, "decoder_input_ids": generated}


def _id2label(task: str, expert: PreTrainedModel, head_type: str, heads, id2label) -> dict[int, str]:
    if id2label and task in id2label:
        return {int(k): str(v) for k, v in id2label[task].items()}
    if head_type == "module":
        return {int(k): str(v) for k, v in expert.config.id2label.items()}
    if head_type == "tensor":
        return {i: f"LABEL_{i}" for i in range(heads[task].shape[0])}
    return {}


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
    unknown_task_policy: str = "soft",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    recovery_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> RetexPreTrainedModel:
    """Build one ReTeX checkpoint from a base and its fine-tuned experts (see DESIGN.md §6)."""
    tasks = _check_tasks(experts, calibration)
    if not 0 < budget <= MAX_BUDGET:
        raise ValueError(f"budget={budget} must be a fraction of the model size in (0, {MAX_BUDGET}]")
    hparams = resolve_hparams(merge, **dict(merge_kwargs or {}))
    torch.manual_seed(seed)

    base_model = load_model(base, "base")
    expert_models = {t: load_model(spec, f"expert {t!r}") for t, spec in experts.items()}
    first = expert_models[tasks[0]]
    head = head_of(first)
    head_type = "module" if head else ("tensor" if heads else "none")
    if heads and set(heads) != set(tasks):
        raise ValueError(f"heads name tasks {sorted(heads)}, experts name {sorted(tasks)}")
    names = body_parameter_names(first, head)
    base_tensors = align_base(base_model, first, names)
    check_experts(base_tensors, expert_models)
    expert_params = {t: dict(m.named_parameters()) for t, m in expert_models.items()}

    # 1. Merge, tensor by tensor.
    merged = {}
    for name in names:
        theta0 = base_tensors[name].detach().float()
        task_vectors = torch.stack([expert_params[t][name].detach().float() - theta0 for t in tasks])
        merged[name] = merge_tensor(merge, theta0, task_vectors, **hparams)
    backbone = copy.deepcopy(first)
    for name in names:
        backbone.get_parameter(name).copy_(merged[name])
    targets = discover_targets(backbone, exclude_prefixes=(head,) if head else ())

    # 2. Calibration batches (with the expert's own decoder inputs for seq2seq).
    pad_id = getattr(first.config, "pad_token_id", None) or 0
    calib = {
        t: [
            _with_decoder_inputs(expert_models[t], b, max_new_tokens)
            for b in batches(to_examples(calibration[t]), batch_size, pad_id)
        ]
        for t in tasks
    }

    # 3. Signatures on the merged model's features.
    features = {t: torch.cat([backbones.pool_features(backbone, b) for b in calib[t]]) for t in tasks}
    feature_dim = next(iter(features.values())).shape[1]
    smallest = min(f.shape[0] for f in features.values())
    if smallest < 3:
        raise ValueError(f"signatures need at least 3 calibration inputs per task, got {smallest}")
    default = default_components(feature_dim, smallest)
    components = signature_components or select_components(list(features.values()), default)
    signatures = [
        fit_signature(features[t], min(components, features[t].shape[0] - 1), threshold_quantile) for t in tasks
    ]

    # 4. Offsets per task under the budget.
    total = sum(p.numel() for n, p in backbone.named_parameters() if n in set(names))
    budget_parameters = int(budget * total)
    fitted = {}
    for t in tasks:
        stats = collect_input_statistics(expert_models[t], targets.matrices, calib[t]) if activation_aware else {}
        matrices = {n: expert_params[t][n].detach().float() - merged[n] for n in targets.matrices}
        vectors = {n: expert_params[t][n].detach().float() - merged[n] for n in targets.vectors}
        fitted[t] = fit_task_offsets(matrices, vectors, budget_parameters, stats)

    # 5. Assemble the checkpoint.
    config = RetexConfig(
        backbone_config=copy.deepcopy(first.config),
        backbone_architecture=type(first).__name__,
        task_names=tasks,
        task_id2label={t: _id2label(t, expert_models[t], head_type, heads, id2label) for t in tasks},
        head_type=head_type,
        head_module=head,
        head_dims={t: list(heads[t].shape) for t in tasks} if head_type == "tensor" else None,
        normalize_features=normalize_features,
        logit_scale=logit_scale,
        offset_matrix_targets=targets.matrices,
        offset_vector_targets=targets.vectors,
        offset_ranks={t: {n: r for n, r in fitted[t].ranks.items() if r > 0} for t in tasks},
        offset_budget=budget,
        router_feature_dim=feature_dim,
        router_num_components=max(s.basis.shape[1] for s in signatures),
        router_threshold_quantile=threshold_quantile,
        router_temperature=router_temperature,
        unknown_task_policy=unknown_task_policy,
        merge_method=merge,
        merge_hparams=hparams,
        recovery_steps=recovery_steps,
    )
    model_cls = _model_class(first, head_type)
    config.architectures = [model_cls.__name__]
    model = model_cls(config)
    _load_weights(model, backbone, expert_models, head, heads, fitted, signatures)
    if recovery_steps > 0:
        from ..recovery import recover

        with torch.enable_grad():
            recover(model, expert_models, calib, steps=recovery_steps, seed=seed, **dict(recovery_kwargs or {}))
    return model.eval()


def _load_weights(model, backbone, expert_models, head, heads, fitted, signatures) -> None:
    state = {k: v for k, v in backbone.state_dict().items() if not (head and k.startswith(head + "."))}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or any(not (head and k.startswith(head + ".")) for k in missing):
        raise RuntimeError(f"merged weights do not fit the backbone: missing {missing}, unexpected {unexpected}")
    for task, expert in expert_models.items():
        if head:
            getattr(model.backbone, head).heads[task].load_state_dict(getattr(expert, head).state_dict())
        elif heads:
            model.heads.weights[task].copy_(heads[task])
        for name, (B, A) in fitted[task].factors.items():
            offset = model.offsets.matrix(name)
            offset.A[task].copy_(A)
            offset.B[task].copy_(B)
        for name, delta in fitted[task].vectors.items():
            model.offsets.vector(name).delta[task].copy_(delta)
    model.router.load_signatures(signatures)
