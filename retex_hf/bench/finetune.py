"""Full fine-tuning of one expert per task with `transformers.Trainer`, cached on disk.

Experts are the expensive part of a benchmark run (minutes each on two CPU cores), so each one is
saved under ``cache_dir/<task>-<hash of data and settings>`` and reused by any later run with the
same data and settings. What the report needs about an expert (validation accuracy per epoch,
so convergence can be judged; distance from the base; training time) is saved next to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .suite import LabelledSplit


@dataclass(frozen=True)
class FinetuneSettings:
    """Chosen so the validation accuracy has levelled off by the last epoch (recorded per epoch)."""

    epochs: float = 4.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    # One thread: on a shared 2-core machine two threads per process are 2-3x slower (measured).
    threads: int = 1

    @classmethod
    def quick(cls) -> FinetuneSettings:
        return cls(epochs=1.0, learning_rate=1e-4, batch_size=16)


def _fingerprint(base: Path, task: str, texts: list[str], labels: list[int], settings, max_length: int, seed) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([str(base.resolve()), task, asdict(settings), max_length, seed]).encode())
    for text, label in zip(texts, labels):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:12]


@torch.no_grad()
def relative_distance(base_dir: Path, expert: torch.nn.Module) -> float:
    """‖θ_t − θ0‖ / ‖θ0‖ over the encoder's tensors (the new classifier head has no θ0)."""
    from safetensors.torch import load_file

    base = load_file(str(base_dir / "model.safetensors"))
    prefix = getattr(expert, "base_model_prefix", "")
    diff = norm = 0.0
    for name, param in expert.named_parameters():
        key = name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name
        if key in base and base[key].shape == param.shape:
            theta0 = base[key].float()
            diff += (param.float() - theta0).pow(2).sum().item()
            norm += theta0.pow(2).sum().item()
    return math.sqrt(diff / max(norm, 1e-30))


def _dataset(texts: list[str], labels: list[int], tokenizer, max_length: int):
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({**enc, "labels": labels})


def _split_dataset(split: LabelledSplit):
    from datasets import Dataset

    rows: dict[str, list] = {k: [] for k in split.inputs}
    mask = split.inputs["attention_mask"]
    for i in range(len(split.labels)):
        n = int(mask[i].sum())
        for key, value in split.inputs.items():
            rows[key].append(value[i, :n].tolist())
    return Dataset.from_dict({**rows, "labels": split.labels.tolist()})


def finetune_expert(
    base: Path,
    task: str,
    texts: list[str],
    labels: list[int],
    id2label: dict[int, str],
    validation: LabelledSplit,
    tokenizer,
    cache_dir: Path,
    settings: FinetuneSettings,
    max_length: int,
    seed: int,
) -> tuple[Path, dict]:
    """Return (expert directory, info), training the expert only when no cached copy exists."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    target = cache_dir / f"{task}-{_fingerprint(base, task, texts, labels, settings, max_length, seed)}"
    info_path = target / "bench_expert.json"
    if info_path.exists():
        return target, {**json.loads(info_path.read_text()), "cached": True}
    cache_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )

        def accuracy(prediction) -> dict:
            return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

        with tempfile.TemporaryDirectory(prefix="retex-bench-ft-") as scratch:
            args = TrainingArguments(
                output_dir=scratch,
                num_train_epochs=settings.epochs,
                learning_rate=settings.learning_rate,
                per_device_train_batch_size=settings.batch_size,
                per_device_eval_batch_size=64,
                weight_decay=settings.weight_decay,
                warmup_steps=settings.warmup_ratio,
                lr_scheduler_type="linear",
                eval_strategy="epoch",
                save_strategy="no",
                logging_steps=20,
                report_to="none",
                disable_tqdm=True,
                seed=seed,
                data_seed=seed,
                use_cpu=True,
                dataloader_num_workers=0,
                train_sampling_strategy="group_by_length",  # batches of similar length: little padding
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=_dataset(texts, labels, tokenizer, max_length),
                eval_dataset=_split_dataset(validation),
                data_collator=DataCollatorWithPadding(tokenizer),
                compute_metrics=accuracy,
            )
            start = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - start
        history = trainer.state.log_history
        info = {
            "task": task,
            "train_examples": len(texts),
            "steps": int(result.global_step),
            "train_seconds": round(seconds, 1),
            "final_train_loss": float(result.training_loss),
            "validation_accuracy_per_epoch": [round(h["eval_accuracy"], 4) for h in history if "eval_accuracy" in h],
            "train_loss_log": [round(h["loss"], 4) for h in history if "loss" in h],
            "relative_distance_from_base": relative_distance(base, model),
            "settings": asdict(settings),
            "max_length": max_length,
        }
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
        model.save_pretrained(staging)
        (staging / "bench_expert.json").write_text(json.dumps(info, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic: a killed run leaves no half-written expert behind
    finally:
        torch.set_num_threads(previous_threads)
    return target, {**info, "cached": False}
