"""T5 suites: a tiny T5ForConditionalGeneration, briefly pre-trained by denoising inputs from every
domain, then fine-tuned with teacher forcing into one sequence-to-sequence expert per task.

Inputs come from each task's own token range (see `tokens`); targets are 0-3 tokens plus eos, by a
rule that differs per task, so experts must change different things and averaging them hurts.
Targets shorter than their task's width are padded with -100 after the eos (only "echo" has them).
"""

from __future__ import annotations

import copy

import torch
from transformers import T5Config, T5ForConditionalGeneration

from . import tokens
from .training import generator, seeded, train

PAD_ID, EOS_ID, MASK_ID = 0, 1, 9
TIE_EMBEDDINGS = True  # as in T5; the tied output softmax also groups each domain's embeddings
PRETRAIN_STEPS, FINETUNE_STEPS, BATCH, LR = 120, 150, 32, 3e-3
# Task -> (content rule of `tokens` that makes the inputs, words naming its labels, what the target is).
# Targets are content-addressed (markers, label words) rather than positional: T5's relative
# positions make "the n-th token" slow to learn, and suites must train in seconds.
RULES: dict[str, tuple[str, tuple[int, ...], str]] = {
    "classify": ("marker", (2, 3, 4), "a word naming the marker present, then the marker itself"),
    "majority": ("majority", (2, 3), "a word for which half of the domain is more frequent"),
    "echo": ("count", (), "the marker repeated as often as it occurs (0-3 times), -100-padded"),
    "count": ("count", (5, 6, 7, 8), "a word for how often the marker occurs"),
}
RULE_NAMES = tuple(RULES)
ECHO_WIDTH = 4  # at most 3 markers + eos


def _config(num_tasks: int) -> T5Config:
    return T5Config(
        vocab_size=tokens.vocab_size(num_tasks),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=PAD_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=TIE_EMBEDDINGS,
    )


def sample(task_index: int, n: int, g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs ``content + [eos]`` padded with 0, and targets ``LongTensor[n, L_out]`` ending with eos."""
    rule = RULE_NAMES[task_index % len(RULE_NAMES)]
    content_rule, words, _ = RULES[rule]
    content, lengths, labels = tokens.sample_content(content_rule, task_index, n, g)
    low = tokens.domain(task_index)[0]
    if rule == "classify":
        target = torch.stack([torch.tensor(words)[labels], low + labels], dim=1)
    elif rule == "echo":  # label = how often the marker occurs; the only task with -100 padding
        positions = torch.arange(ECHO_WIDTH)
        target = torch.where(positions < labels[:, None], low, EOS_ID)
        return tokens.wrap(content, lengths, [], [EOS_ID], PAD_ID), target.masked_fill(
            positions > labels[:, None], -100
        )
    else:
        target = torch.tensor(words)[labels].unsqueeze(1)
    target = torch.cat([target, torch.full((n, 1), EOS_ID)], dim=1)
    return tokens.wrap(content, lengths, [], [EOS_ID], PAD_ID), target


def _pretrain(base: T5ForConditionalGeneration, num_tasks: int, steps: int, seed: int) -> None:
    """Denoising over a mixture of all domains: rebuild the input from a copy with 25% of tokens masked.

    Filling in a masked token means knowing which domain the sequence is from, so the base encoder
    learns domain-aware features, as a pre-trained encoder would.
    """
    gens = [generator(seed, 1, t) for t in range(num_tasks)]
    mask_gen = generator(seed, 2)
    per_task = max(1, BATCH // num_tasks)

    def loss_at(step: int) -> torch.Tensor:
        parts = [sample(t, per_task, gens[t])[0] for t in range(num_tasks)]
        ids = torch.cat([p["input_ids"] for p in parts])
        mask = torch.cat([p["attention_mask"] for p in parts])
        noisy = ids.masked_fill((ids >= tokens.RESERVED) & (torch.rand(ids.shape, generator=mask_gen) < 0.25), MASK_ID)
        return base(input_ids=noisy, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    train(base, loss_at, steps, LR)


def build(backbone: str, num_tasks: int, seed: int, n_calibration: int, n_test: int, train_steps: int | None) -> dict:
    """Base, experts and data of a T5 suite (SyntheticSuite kwargs)."""
    steps = FINETUNE_STEPS if train_steps is None else train_steps
    pretrain_steps = PRETRAIN_STEPS if train_steps is None else min(PRETRAIN_STEPS, train_steps)
    config = _config(num_tasks)
    with seeded(seed):
        base = T5ForConditionalGeneration(config)
        _pretrain(base, num_tasks, pretrain_steps, seed)
    base.eval()
    experts, calibration, test, test_labels, id2label = {}, {}, {}, {}, {}
    for t in range(num_tasks):
        name = tokens.task_name(RULE_NAMES, t)
        content_rule, words, _ = RULES[RULE_NAMES[t % len(RULE_NAMES)]]
        id2label[name] = dict(zip(words, tokens.RULES[content_rule]))  # label-word token id -> label name
        expert = copy.deepcopy(base)
        data_gen = generator(seed, 3, t)

        def loss_at(step: int, expert=expert, t=t, data_gen=data_gen) -> torch.Tensor:
            inputs, target = sample(t, BATCH, data_gen)
            return expert(**inputs, labels=target).loss

        with seeded(seed * 31 + t + 1):
            train(expert, loss_at, steps, LR)
        experts[name] = expert.eval()
        calib_inputs, _ = sample(t, n_calibration, generator(seed, 4, t))
        calibration[name] = tokens.unbatch(calib_inputs)
        test_inputs, test_labels[name] = sample(t, n_test, generator(seed, 5, t))
        test[name] = tokens.trim(test_inputs)
    return dict(
        base=base,
        experts=experts,
        calibration=calibration,
        test=test,
        test_labels=test_labels,
        id2label=id2label,
        pad_token_id=PAD_ID,
    )
