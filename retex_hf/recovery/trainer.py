"""Recovery training: refine the offsets so that θ_m ⊕ o_t answers like expert t.

Only offsets train; merged weights, heads and signatures stay frozen. No labels: the targets are
the experts' own outputs on unlabeled calibration inputs (KL on logits for classifiers,
token-level KL for seq2seq, feature MSE for towers without heads). It runs through
`transformers.Trainer`, so accelerate, mixed precision and gradient accumulation come for free.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..data import collate
from ..distributed import per_device_batch_size, world_size
from .selection import BestOffsetsCallback, split_held_out
from .targets import pooled_output

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "decoder_input_ids")


class _ListDataset(Dataset):
    def __init__(self, examples: list[dict[str, torch.Tensor]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.examples[index]


def _masked_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) over the labels of each row's task (−inf marks labels it lacks)."""
    valid = torch.isfinite(teacher_logits)
    t_log = F.log_softmax(teacher_logits.masked_fill(~valid, -1e9), dim=-1)
    s_log = F.log_softmax(student_logits.float().masked_fill(~valid, -1e9), dim=-1)
    per_row = torch.where(valid, t_log.exp() * (t_log - s_log), torch.zeros_like(t_log)).sum(-1)
    return per_row.mean()


class RecoveryTrainer(Trainer):
    """A Trainer whose loss is the distance between the routed model and each row's expert."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _, outputs = self.distillation(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def distillation(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor | None, object]:
        """(loss, per-row agreement, outputs). Agreement is the probability the student gives the
        expert's top answer (per token for seq2seq; None for feature targets): a smooth stand-in for
        fidelity, so held-out selection is not flipped by an input on a decision boundary."""
        model.eval()  # the targets come from deterministic experts: no dropout in the student either
        task = inputs["task_index"]
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_KEYS}
        outputs = model(**model_inputs, task=task)
        agreement = None
        if "teacher_logits" in inputs:
            loss = _masked_kl(inputs["teacher_logits"], outputs.logits)
            top = inputs["teacher_logits"].argmax(-1, keepdim=True)
            agreement = F.softmax(outputs.logits.float(), dim=-1).gather(-1, top).squeeze(-1)
        elif "teacher_top_ids" in inputs:
            s_log = F.log_softmax(outputs.logits.float(), dim=-1).gather(-1, inputs["teacher_top_ids"])
            t_log = inputs["teacher_top_logprobs"]
            per_position = (t_log.exp() * (t_log - s_log)).sum(-1)
            mask = inputs["decoder_mask"].to(per_position.dtype)
            loss = (per_position * mask).sum() / mask.sum().clamp_min(1.0)
            same = s_log[..., 0].exp()  # the student's probability of the expert's top token
            agreement = (same * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        else:
            student = pooled_output(outputs, model_inputs.get("attention_mask")).float()
            loss = F.mse_loss(student, inputs["teacher_features"])
        return loss, agreement, outputs


def _ddp_defaults() -> dict:
    """A batch trains only the offsets of the tasks routed in it, so under DDP some parameters get
    no gradient on some processes: DDP must look for them instead of waiting for them forever."""
    return {"ddp_find_unused_parameters": True} if world_size() > 1 else {}


def recover(
    model: PreTrainedModel,
    examples: list[dict[str, torch.Tensor]],
    steps: int = 200,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    quiet: bool = True,
    output_dir: str | None = None,
    tasks: list[str] | None = None,
    select_on_held_out: bool = True,
    **training_args,
) -> list[dict]:
    """Distil the experts into the offsets for ``steps`` optimiser steps; returns the loss log.

    ``examples`` come from `teacher_examples`: model inputs, the task index and the expert's
    output on them, computed while each expert was loaded. ``tasks`` limits training to those
    tasks' offsets (`add_task` trains the new task's alone, leaving the others bit-identical).
    ``select_on_held_out`` holds a fifth of each task's inputs out of training and gives every task
    the offsets of its best held-out point, the SVD fit included (`retex_hf.recovery.selection`).
    """
    pad_id = getattr(model.config.backbone_config, "pad_token_id", None) or 0
    scratch = tempfile.TemporaryDirectory(prefix="retex-recovery-")  # Trainer wants a directory; nothing is saved
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        # Offset parameters end in their task's name (ParameterDict keys): `tasks` limits training to those.
        param.requires_grad_(name.startswith("offsets.") and (tasks is None or name.rsplit(".", 1)[-1] in tasks))
    args = TrainingArguments(
        output_dir=output_dir or scratch.name,
        max_steps=steps,
        # Under `accelerate launch` Trainer trains data-parallel: split the batch so that the global
        # batch, and so the recipe, stays the one a single process trains with.
        per_device_train_batch_size=per_device_batch_size(batch_size),
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        weight_decay=0.0,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, steps // 10),
        disable_tqdm=quiet,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        **{**_ddp_defaults(), **training_args},
    )
    train, held_out = split_held_out(examples, seed) if select_on_held_out else (examples, {})
    trainer = RecoveryTrainer(
        model=model,
        args=args,
        train_dataset=_ListDataset(train),
        data_collator=lambda rows: collate(rows, pad_id),
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)
    selector = None
    if held_out:

        def held_out_score(rows: list[dict[str, torch.Tensor]]) -> float:
            """1 − mean probability of the expert's top answer (the loss for feature targets): lower is
            better. Not the KL itself: a collapsed student can have a lower KL than a confident one."""
            agreement = loss = 0.0
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch_loss, batch_agreement, _ = trainer.distillation(
                    model, trainer._prepare_inputs(collate(chunk, pad_id))
                )
                loss += float(batch_loss) * len(chunk)
                agreement = None if batch_agreement is None else agreement + float(batch_agreement.sum())
            return loss / len(rows) if agreement is None else 1.0 - agreement / len(rows)

        task_names = list(model.config.task_names)
        selector = BestOffsetsCallback(model, task_names, held_out, held_out_score, every=max(1, steps // 5))
        trainer.add_callback(selector)
    try:
        trainer.train()
        if selector is not None:
            chosen = selector.restore_best()
            trainer.state.log_history.append({"held_out_best_step": chosen, "held_out_history": selector.history})
    finally:
        scratch.cleanup()
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
    model.eval()
    return trainer.state.log_history


__all__ = ["RecoveryTrainer", "recover"]
