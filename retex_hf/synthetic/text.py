"""BERT / RoBERTa suites: a tiny encoder, briefly pre-trained with masked-LM over all domains,
then fine-tuned (all weights) into one sequence classifier per task.

The brief pre-training makes the base more than noise (it learns which tokens belong together),
so experts are fine-tunes of a shared starting point, as with real checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
)

from . import tokens
from .training import generator, seeded, train

MASK_ID = 4
MASK_RATE = 0.3
SEQ_LEN = tokens.MAX_LEN + 2  # with the two special tokens
# (prefix, suffix, pad) per backbone: BERT [CLS] x [SEP] with pad 0; RoBERTa <s> x </s> with pad 1.
SPECIALS = {"bert": ([2], [3], 0), "roberta": ([0], [2], 1)}
PRETRAIN_STEPS, FINETUNE_STEPS, BATCH = 200, 250, 32
PRETRAIN_LR, FINETUNE_LR = 4e-3, 2e-3
INIT_RANGE = 0.1  # with the usual 0.02 this tiny model sometimes stalls on a task for hundreds of steps


def _config(backbone: str, num_tasks: int) -> BertConfig | RobertaConfig:
    common = dict(
        vocab_size=tokens.vocab_size(num_tasks),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=INIT_RANGE,
    )
    if backbone == "bert":
        return BertConfig(max_position_embeddings=64, pad_token_id=0, **common)
    # RoBERTa positions start after pad_token_id + 1, hence the larger table.
    return RobertaConfig(max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)


def sample(backbone: str, task_index: int, n: int, g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Padded model inputs (width SEQ_LEN) and labels for one task."""
    rule = tokens.RULE_NAMES[task_index % len(tokens.RULE_NAMES)]
    content, lengths, labels = tokens.sample_content(rule, task_index, n, g)
    prefix, suffix, pad = SPECIALS[backbone]
    return tokens.wrap(content, lengths, prefix, suffix, pad), labels


def _pretrain(backbone: str, base: PreTrainedModel, num_tasks: int, steps: int, seed: int) -> None:
    """Masked-LM over a mixture of every task's inputs, decoding with the tied word embeddings."""
    gens = [generator(seed, 1, t) for t in range(num_tasks)]
    mask_gen = generator(seed, 2)
    per_task = max(1, BATCH // num_tasks)

    def loss_at(step: int) -> torch.Tensor:
        parts = [sample(backbone, t, per_task, gens[t])[0] for t in range(num_tasks)]
        ids = torch.cat([p["input_ids"] for p in parts])
        attention = torch.cat([p["attention_mask"] for p in parts])
        maskable = ids >= tokens.RESERVED
        masked = maskable & (torch.rand(ids.shape, generator=mask_gen) < MASK_RATE)
        hidden = base(input_ids=ids.masked_fill(masked, MASK_ID), attention_mask=attention).last_hidden_state
        logits = hidden[masked] @ base.get_input_embeddings().weight.T
        return F.cross_entropy(logits, ids[masked])

    train(base, loss_at, steps, PRETRAIN_LR)


def build(backbone: str, num_tasks: int, seed: int, n_calibration: int, n_test: int, train_steps: int | None) -> dict:
    """Base, experts and data of a text suite, as keyword arguments of SyntheticSuite."""
    finetune_steps = FINETUNE_STEPS if train_steps is None else train_steps
    pretrain_steps = PRETRAIN_STEPS if train_steps is None else min(PRETRAIN_STEPS, train_steps)
    config = _config(backbone, num_tasks)
    body_cls, model_cls = (
        (BertModel, BertForSequenceClassification)
        if backbone == "bert"
        else (RobertaModel, RobertaForSequenceClassification)
    )
    with seeded(seed):
        base = body_cls(config)
        _pretrain(backbone, base, num_tasks, pretrain_steps, seed)
    base.eval()

    experts, calibration, test, test_labels, id2label = {}, {}, {}, {}, {}
    for t in range(num_tasks):
        name = tokens.task_name(tokens.RULE_NAMES, t)
        labels_names = tokens.RULES[tokens.RULE_NAMES[t % len(tokens.RULE_NAMES)]]
        id2label[name] = dict(enumerate(labels_names))
        cfg = config.__class__(**config.to_dict())
        cfg.num_labels = len(labels_names)
        cfg.id2label = dict(id2label[name])
        cfg.label2id = {v: k for k, v in id2label[name].items()}
        with seeded(seed * 31 + t + 1):
            expert = model_cls(cfg)
            missing, unexpected = expert.base_model.load_state_dict(base.state_dict(), strict=False)
            assert not missing and all(k.startswith("pooler.") for k in unexpected), (missing, unexpected)
            data_gen = generator(seed, 3, t)

            def loss_at(step: int, expert=expert, t=t, data_gen=data_gen) -> torch.Tensor:
                inputs, labels = sample(backbone, t, BATCH, data_gen)
                return F.cross_entropy(expert(**inputs).logits, labels)

            train(expert, loss_at, finetune_steps, FINETUNE_LR)
        experts[name] = expert.eval()
        calib_inputs, _ = sample(backbone, t, n_calibration, generator(seed, 4, t))
        calibration[name] = tokens.unbatch(calib_inputs)
        test[name], test_labels[name] = sample(backbone, t, n_test, generator(seed, 5, t))
    return dict(
        base=base,
        experts=experts,
        calibration=calibration,
        test=test,
        test_labels=test_labels,
        id2label=id2label,
        pad_token_id=config.pad_token_id,
    )
