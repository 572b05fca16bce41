"""Fine-tuning one task of a built checkpoint with `Trainer`: choose what trains, freeze the rest.

By default only the task's offsets and head train and the merged weights stay frozen, so every
other task keeps answering exactly as before; ``merged_weights=True`` trains the shared weights
too, which moves every task (use it only when that is the intent).

Recipe (see README): ``model.set_trainable("sst2")``; give the dataset a ``task`` column holding
``model.task_index("sst2")`` so each row is run task-known; ``Trainer(model, args, train_dataset=...,
data_collator=DataCollatorWithPadding(tokenizer)).train()``.
"""

from __future__ import annotations

from .modeling_retex import RetexPreTrainedModel


def task_parameter_names(
    model: RetexPreTrainedModel, task: str, head: bool = True, merged_weights: bool = False
) -> list[str]:
    """Names of the parameters that belong to ``task`` (offsets, head), plus the shared ones on request."""
    model.task_index(task)  # a clear error for an unknown task
    config = model.config
    head_prefix = f"backbone.{config.head_module}.heads." if config.head_type == "module" else None
    names = []
    for name, _ in model.named_parameters():
        if name.startswith("offsets."):
            keep = name.rsplit(".", 1)[-1] == task  # ParameterDict keys are task names
        elif head_prefix and name.startswith(head_prefix):
            keep = head and name[len(head_prefix) :].split(".", 1)[0] == task
        elif name.startswith("heads.weights."):
            keep = head and name.rsplit(".", 1)[-1] == task
        else:
            keep = merged_weights and name.startswith("backbone.")
        if keep:
            names.append(name)
    return names


def set_trainable(model: RetexPreTrainedModel, task: str, head: bool = True, merged_weights: bool = False) -> list[str]:
    """Make exactly ``task``'s parameters trainable (see the module docstring); returns their names."""
    trainable = set(task_parameter_names(model, task, head, merged_weights))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return sorted(trainable)
