"""The Trainer recipe: fine-tune one task's offsets and head on labelled data, everything else frozen."""

from __future__ import annotations

import datasets
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

import retex_hf
from retex_hf.evaluation import retex_logits
from retex_hf.synthetic import make_suite
from retex_hf.synthetic.preprocessors import to_text
from retex_hf.synthetic.text import sample
from retex_hf.synthetic.training import generator


def _labelled(suite, task: str, n: int, seed: int) -> datasets.Dataset:
    """Fresh labelled examples of ``task`` as raw text, the way a user's dataset arrives."""
    inputs, labels = sample("bert", suite.tasks.index(task), n, generator(seed, stream=99))
    texts = [to_text(row, "bert") for row in inputs["input_ids"]]
    return datasets.Dataset.from_dict({"text": texts, "label": labels.tolist()})


def _accuracy(model, suite, task) -> float:
    logits, _, _ = retex_logits(model, suite.test[task], task=task)
    return (logits.argmax(-1) == suite.test_labels[task]).float().mean().item()


def test_trainer_fine_tunes_one_tasks_offsets_and_head_and_nothing_else(tmp_path):
    suite = make_suite("bert", num_tasks=3, seed=0)
    # A tight budget and no distillation leave room to improve one task with labelled data.
    model = retex_hf.build_retex(suite.base, suite.experts, suite.calibration, budget=0.06, recovery_steps=0)
    task, others = suite.tasks[0], suite.tasks[1:]
    before = _accuracy(model, suite, task)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    others_before = {t: retex_logits(model, suite.test[t], task=t)[0] for t in others}

    trainable = model.set_trainable(task)
    assert trainable and all(task in name.split(".") for name in trainable)
    tokenizer = suite.preprocessor()
    train = _labelled(suite, task, 512, seed=1234)
    train = train.map(lambda rows: tokenizer(rows["text"]), batched=True, remove_columns=["text"])
    train = train.add_column("task", [model.task_index(task)] * len(train))  # run every row task-known
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=16, gradient_accumulation_steps=2,
        learning_rate=3e-3, report_to="none", save_strategy="no", use_cpu=True, seed=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)).train()
    model.eval()

    after = _accuracy(model, suite, task)
    with torch.no_grad():
        expert_logits = suite.experts[task](**suite.test[task]).logits
    expert = (expert_logits.argmax(-1) == suite.test_labels[task]).float().mean().item()
    assert before <= expert - 0.1, "the setup must leave a gap for fine-tuning to close"
    assert after >= expert - 0.02, (before, after, float(expert))
    state = model.state_dict()
    changed = {k for k, v in frozen.items() if not torch.equal(v, state[k])}
    assert changed and changed <= set(trainable)  # only the task's own parameters moved
    for t in others:  # so the other tasks answer exactly as before
        assert torch.equal(others_before[t], retex_logits(model, suite.test[t], task=t)[0])
