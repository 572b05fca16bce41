"""`RetexConfig`: everything needed to rebuild a ReTeX model's modules before weights load.

`from_pretrained` builds modules on the meta device from the config alone, so the config records
every shape-bearing choice (tasks, label sets, offset ranks per task and tensor, router size, head
layout) plus the provenance a user needs to trust a checkpoint (merge method and its settings).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

UNKNOWN_TASK_POLICIES = ("soft", "merged", "raise")


class RetexConfig(PreTrainedConfig):
    model_type = "retex"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True)}

    def __init__(
        self,
        backbone_config: PreTrainedConfig | dict | None = None,
        backbone_architecture: str | None = None,
        task_names: list[str] | None = None,
        task_id2label: dict[str, dict[int, str]] | None = None,
        head_type: str = "none",
        head_module: str | None = None,
        head_dims: dict[str, list[int]] | None = None,
        normalize_features: bool = False,
        logit_scale: float = 1.0,
        offset_matrix_targets: dict[str, str] | None = None,
        offset_vector_targets: dict[str, str] | None = None,
        offset_ranks: dict[str, dict[str, int]] | None = None,
        offset_budget: float | None = None,
        router_feature_dim: int = 0,
        router_num_components: int = 1,
        router_threshold_quantile: float = 0.99,
        router_temperature: float = 0.1,
        router_layer: int = 0,
        router_rule: str = "subspace",
        unknown_task_policy: str = "soft",
        merge_method: str | None = None,
        merge_hparams: dict[str, Any] | None = None,
        recovery_steps: int = 0,
        **kwargs,
    ):
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        if unknown_task_policy not in UNKNOWN_TASK_POLICIES:
            raise ValueError(f"unknown_task_policy={unknown_task_policy!r}; valid: {', '.join(UNKNOWN_TASK_POLICIES)}")
        if router_rule not in ("subspace", "discriminant"):
            raise ValueError(f"router_rule={router_rule!r}; valid: subspace, discriminant")
        self.backbone_config = backbone_config
        self.backbone_architecture = backbone_architecture
        self.task_names = list(task_names or [])
        # JSON turns int keys into strings: normalise back on the way in.
        self.task_id2label = {
            task: {int(i): str(label) for i, label in labels.items()} for task, labels in (task_id2label or {}).items()
        }
        self.head_type = head_type  # "module" (expert heads), "tensor" (zero-shot), "none"
        self.head_module = head_module
        self.head_dims = {t: list(d) for t, d in (head_dims or {}).items()}
        self.normalize_features = normalize_features
        self.logit_scale = float(logit_scale)
        self.offset_matrix_targets = dict(offset_matrix_targets or {})
        self.offset_vector_targets = dict(offset_vector_targets or {})
        self.offset_ranks = {t: {n: int(r) for n, r in ranks.items()} for t, ranks in (offset_ranks or {}).items()}
        self.offset_budget = offset_budget
        self.router_feature_dim = int(router_feature_dim)
        self.router_num_components = int(router_num_components)
        self.router_threshold_quantile = float(router_threshold_quantile)
        self.router_temperature = float(router_temperature)
        self.router_layer = int(router_layer)  # 0: route on the last layer's features
        self.router_rule = router_rule  # which rule picks the task; see retex_hf/routing/
        self.unknown_task_policy = unknown_task_policy
        self.merge_method = merge_method
        self.merge_hparams = dict(merge_hparams or {})
        self.recovery_steps = int(recovery_steps)
        super().__init__(**kwargs)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def num_labels_of(self, task: str) -> int:
        return len(self.task_id2label.get(task, {}))
