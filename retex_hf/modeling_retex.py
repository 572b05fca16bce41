"""The ReTeX model classes: one merged backbone, per-task offsets, signatures and heads.

Data flows one way: inputs → router (signatures over merged-model features) → one forward pass
of the merged backbone in which hooks add each sample's offset → per-task heads → outputs that
name the task each sample was routed to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.utils.checkpoint
import transformers
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from . import backbones
from .checkpointing import CheckedCheckpointMixin
from .configuration_retex import RetexConfig
from .heads import PerTaskHead, TensorHeads, resize_head
from .modeling_outputs import RetexGenerateOutput, RetexOutput, RetexSeq2SeqOutput, UnknownTaskError
from .offsets.bank import LowRankOffset, OffsetBank, VectorOffset
from .offsets.hooks import install_offset_hooks
from .placement import resolve_device_map
from .routing.context import RoutingState, current_routing, routing
from .routing.router import TaskRouter

TaskSpec = str | Sequence[str] | torch.Tensor | None


def _matrix_shape(param: torch.Tensor) -> tuple[int, int]:
    return param.shape[0], math.prod(param.shape[1:])


class RetexPreTrainedModel(CheckedCheckpointMixin, PreTrainedModel):
    config_class = RetexConfig
    base_model_prefix = "retex"
    _supports_sdpa = True
    supports_gradient_checkpointing = True
    # forward() returns a mean loss: Trainer must not rescale it for gradient accumulation.
    accepts_loss_kwargs = False
    # Units accelerate must keep whole under device_map (the backbone's own are added by post_init).
    _no_split_modules = ["LowRankOffset", "VectorOffset", "TaskRouter", "TensorHeads", "PerTaskHead"]

    def __init__(self, config: RetexConfig):
        super().__init__(config)
        if not config.backbone_architecture or config.backbone_config is None:
            raise ValueError("RetexConfig needs backbone_architecture and backbone_config")
        backbone_cls = getattr(transformers, config.backbone_architecture, None)
        if backbone_cls is None:
            raise ValueError(f"unknown backbone architecture {config.backbone_architecture!r}")
        self.backbone = backbone_cls(config.backbone_config)
        self.main_input_name = self.backbone.main_input_name
        tasks = config.task_names
        num_labels = {t: config.num_labels_of(t) for t in tasks}
        if config.head_type == "module":
            template = getattr(self.backbone, config.head_module)
            heads = {t: resize_head(template, config.backbone_config.num_labels, n) for t, n in num_labels.items()}
            setattr(self.backbone, config.head_module, PerTaskHead(heads, tasks, num_labels))
        elif config.head_type == "tensor":
            shapes = {t: tuple(config.head_dims[t]) for t in tasks}
            self.heads = TensorHeads(shapes, config.normalize_features, config.logit_scale)
        self._offset_hooks = []
        self._make_offsets()
        self._make_router()
        self.post_init()

    def _make_offsets(self) -> None:
        """(Re)create the offset bank from the config's ranks and hook it into the backbone.

        Called at construction, and again by the builder and by add/remove_task once the ranks
        are known: structural changes between calls, never per-call state.
        """
        config = self.config
        for handle in self._offset_hooks:
            handle.remove()
        self.offsets = OffsetBank(
            config.task_names,
            {n: _matrix_shape(self.backbone.get_parameter(n)) for n in config.offset_matrix_targets},
            config.offset_ranks,
            {n: tuple(self.backbone.get_parameter(n).shape) for n in config.offset_vector_targets},
        )
        self.offsets.to(self.device)
        self._offset_hooks = install_offset_hooks(
            self.backbone, self.offsets, config.offset_matrix_targets, config.offset_vector_targets
        )

    def _make_router(self) -> None:
        config = self.config
        self.router = TaskRouter(
            len(config.task_names),
            config.router_feature_dim,
            config.router_num_components,
            discriminant=config.router_rule == "discriminant",
        )
        self.router.to(self.device)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (LowRankOffset, VectorOffset, TensorHeads)):
            for param in module.parameters():
                nn.init.zeros_(param)
        elif isinstance(module, TaskRouter):
            module.means.zero_()
            module.bases.zero_()
            module.thresholds.fill_(1.0)
            if module.rule == "discriminant":
                module.precision.zero_()

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        """Recomputation during backward happens after the forward's routing context has closed:
        give every checkpointed segment the routing it saw the first time."""
        inner = gradient_checkpointing_func or torch.utils.checkpoint.checkpoint

        def routed_checkpoint(function, *args, **ckpt_kwargs):
            state = current_routing()

            def run(*inner_args, **inner_kwargs):
                with routing(state):
                    return function(*inner_args, **inner_kwargs)

            return inner(run, *args, **ckpt_kwargs)

        super()._set_gradient_checkpointing(enable, routed_checkpoint, **kwargs)

    # ----------------------------------------------------------------- loading
    @classmethod
    def _architecture_class(cls, config: RetexConfig) -> type[RetexPreTrainedModel]:
        """The class a checkpoint was saved as, so that AutoModel returns the same class."""
        for name in config.architectures or []:
            found = _ARCHITECTURES.get(name)
            if found is not None:
                return found
        return cls

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a checkpoint as the class it was saved as (checked loading: see `CheckedCheckpointMixin`)."""
        if cls is RetexModel:
            config = kwargs.get("config")
            if not isinstance(config, RetexConfig):
                hub_keys = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder")
                config = AutoConfig.from_pretrained(
                    pretrained_model_name_or_path, **{k: kwargs[k] for k in hub_keys if k in kwargs}
                )
            target = cls._architecture_class(config)
            if target is not cls:
                return target.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        kwargs = resolve_device_map(cls, pretrained_model_name_or_path, kwargs)  # offsets, router, heads resident
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        target = cls._architecture_class(config) if cls is RetexModel else cls
        return super(RetexPreTrainedModel, target)._from_config(config, **kwargs)

    # ----------------------------------------------------------------- routing
    @property
    def task_names(self) -> list[str]:
        return list(self.config.task_names)

    def task_index(self, task: str) -> int:
        try:
            return self.config.task_names.index(task)
        except ValueError:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(self.config.task_names)}") from None

    @torch.no_grad()
    def route_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised features of the plain merged model, which the signatures were fit on
        (after ``config.router_layer`` encoder layers; 0: all of them)."""
        with routing(None):
            return backbones.pool_features(self.backbone, inputs, layer=self.config.router_layer)

    def route(self, inputs: dict[str, torch.Tensor], task: TaskSpec = None) -> tuple[RoutingState, dict]:
        """Decide every sample's task code. ``task`` skips the router (one name or one per sample)."""
        batch = _batch_size(inputs)
        device = self.router.means.device
        num_tasks = len(self.config.task_names)
        if task is not None:
            if isinstance(task, str):
                ids = torch.full((batch,), self.task_index(task), dtype=torch.long)
            elif isinstance(task, torch.Tensor):
                ids = task.to(torch.long).flatten().cpu()
            else:
                ids = torch.tensor([self.task_index(t) for t in task], dtype=torch.long)
            if ids.numel() != batch:
                raise ValueError(f"task= names {ids.numel()} tasks for a batch of {batch} samples")
            ids = ids.to(device)
            codes = torch.nn.functional.one_hot(ids, num_tasks).float()
            return RoutingState(codes, ids), {"unknown": torch.zeros(batch, dtype=torch.bool, device=device)}
        features = self.route_features(inputs).to(device)  # the backbone may end on another device
        residuals = self.router.residuals(features)
        task_ids, soft, unknown = self.router.route(features, self.config.router_temperature, residuals)
        codes = torch.nn.functional.one_hot(task_ids, num_tasks).float()
        if unknown.any():
            policy = self.config.unknown_task_policy
            if policy == "raise":
                raise UnknownTaskError(
                    f"{int(unknown.sum())} of {batch} inputs fit no known task's signature "
                    f"(tasks: {', '.join(self.config.task_names)})"
                )
            fallback = soft if policy == "soft" else torch.zeros_like(soft)
            codes = torch.where(unknown[:, None], fallback, codes)
        return RoutingState(codes, task_ids), {"unknown": unknown, "residuals": residuals.float()}

    # ----------------------------------------------------------------- artefacts
    def materialize(self, task: str) -> PreTrainedModel:
        """A plain transformers model with θ_m ⊕ o_task baked in: the recovered expert."""
        from .export import materialize_backbone

        return materialize_backbone(self, task)

    def materialize_merged(self, head_of: str | None = None) -> PreTrainedModel:
        """The plain merged model (no offsets): the static-merge baseline, and the base of an
        exported PEFT adapter. ``head_of`` picks whose classification head it carries."""
        from .export import materialize_backbone

        return materialize_backbone(self, None, head_task=head_of)

    def export_peft(self, task: str, directory):
        """Write ``task``'s offsets as a PEFT LoRA adapter over ``materialize_merged(head_of=task)``."""
        from .peft_export import export_peft

        return export_peft(self, task, directory)

    def set_trainable(self, task: str, head: bool = True, merged_weights: bool = False) -> list[str]:
        """Train only ``task``'s offsets (and head) with `Trainer`; see `retex_hf.finetuning`."""
        from .finetuning import set_trainable

        return set_trainable(self, task, head, merged_weights)

    def add_task(self, name: str, expert, calibration, **kwargs) -> RetexPreTrainedModel:
        """Add an expert without rebuilding the others (see `retex_hf.builder.tasks.add_task`)."""
        from .builder.tasks import add_task

        return add_task(self, name, expert, calibration, **kwargs)

    def remove_task(self, name: str) -> RetexPreTrainedModel:
        """Drop a task's offsets, head and signature; the other tasks are untouched."""
        from .builder.tasks import remove_task

        return remove_task(self, name)

    def retex_storage(self) -> dict[str, int]:
        """Bytes held by each part of the checkpoint, and the total as a multiple of one model."""
        from .export import storage_report

        return storage_report(self)


def _batch_size(inputs: dict[str, torch.Tensor]) -> int:
    for key in ("input_ids", "pixel_values", "inputs_embeds"):
        value = inputs.get(key)
        if value is not None:
            return value.shape[0]
    raise ValueError("cannot route: the batch holds none of input_ids, pixel_values, inputs_embeds")


def _model_inputs(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


class RetexModel(RetexPreTrainedModel):
    """The routed backbone without heads; `AutoModel` loads any ReTeX checkpoint as its saved class."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        task: TaskSpec = None,
        **kwargs,
    ) -> RetexOutput:
        inputs = _model_inputs(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)
        state, info = self.route(inputs, task)
        with routing(state):
            out = self.backbone(**inputs, return_dict=True)
        return RetexOutput(
            last_hidden_state=getattr(out, "last_hidden_state", None),
            pooler_output=getattr(out, "pooler_output", None),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
            task_ids=state.task_ids,
            **info,
        )


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None:
        return None
    return nn.functional.cross_entropy(logits.float(), labels.to(logits.device))


class RetexForSequenceClassification(RetexPreTrainedModel):
    # Named inputs (not only **kwargs) so that Trainer's remove_unused_columns keeps them.
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task: TaskSpec = None,
        **kwargs,
    ) -> RetexOutput:
        inputs = _model_inputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        state, info = self.route(inputs, task)
        with routing(state):
            out = self.backbone(**inputs, return_dict=True)
        return RetexOutput(
            loss=_classification_loss(out.logits, labels),
            logits=out.logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            task_ids=state.task_ids,
            **info,
        )


class RetexForImageClassification(RetexPreTrainedModel):
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task: TaskSpec = None,
        **kwargs,
    ) -> RetexOutput:
        inputs = _model_inputs(pixel_values=pixel_values, **kwargs)
        state, info = self.route(inputs, task)
        with routing(state):
            out = self.backbone(**inputs, return_dict=True)
        if self.config.head_type == "tensor":
            pooled = backbones.tower_pooled_output(out)
            logits = self.heads(pooled, state.task_ids)
        else:
            pooled = getattr(out, "pooler_output", None)
            logits = out.logits
        return RetexOutput(
            loss=_classification_loss(logits, labels),
            logits=logits,
            pooler_output=pooled,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            task_ids=state.task_ids,
            **info,
        )


class RetexForConditionalGeneration(RetexPreTrainedModel, transformers.GenerationMixin):
    """T5-style models: routed on the encoder input; offsets act in encoder and decoder."""

    def __init__(self, config: RetexConfig):
        super().__init__(config)
        self.generation_config = self.backbone.generation_config

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task: TaskSpec = None,
        **kwargs,
    ) -> RetexSeq2SeqOutput:
        inputs = _model_inputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            **kwargs,
        )
        state, info = self.route(inputs, task)
        with routing(state):
            out = self.backbone(**inputs, labels=labels, return_dict=True)
        return RetexSeq2SeqOutput(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            task_ids=state.task_ids,
            **info,
        )

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor | None = None, task: TaskSpec = None, return_routing: bool = False, **kwargs
    ):
        """Route once on the encoder input, then let the backbone generate under that routing.

        ``return_routing=True`` returns a `RetexGenerateOutput` (sequences plus the task each input
        went to), for callers such as pipelines that report it without routing twice.
        """
        inputs = _model_inputs(input_ids=input_ids, attention_mask=kwargs.get("attention_mask"))
        state, info = self.route(inputs, task)
        with routing(state):
            generated = self.backbone.generate(input_ids=input_ids, **kwargs)
        if not return_routing:
            return generated
        sequences = getattr(generated, "sequences", generated)  # a GenerateOutput under return_dict_in_generate
        return RetexGenerateOutput(sequences=sequences, task_ids=state.task_ids, unknown=info["unknown"])


_ARCHITECTURES: dict[str, type[RetexPreTrainedModel]] = {
    cls.__name__: cls
    for cls in (RetexModel, RetexForSequenceClassification, RetexForImageClassification, RetexForConditionalGeneration)
}
