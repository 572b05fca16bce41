"""Tiny randomly initialised backbones and perturbed 'experts', for tests of exact mechanics.

These experts are not trained: they exist to check arithmetic (offsets at full rank reproduce
the expert exactly, mixed batches equal single-task batches, save/load round trips). Tests of
behaviour on real fine-tuned experts use `retex_hf.synthetic`.
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    T5Config,
    T5ForConditionalGeneration,
)

TEXT_LEN = 10


def text_inputs(task_index: int, n: int, gen_seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids from a range of the vocabulary that belongs to the task (its 'domain')."""
    g = torch.Generator().manual_seed(gen_seed + 1000 * task_index)
    low = 4 + 28 * task_index
    ids = torch.randint(low, low + 28, (n, TEXT_LEN), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "relative_attention_bias" in name:
                continue  # looked up without a batch axis: stays merged (see backbones.py)
            param.add_(scale * torch.randn(param.shape, generator=generator))


def tiny_text(arch: str, tasks=("alpha", "beta"), seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    if arch == "bert":
        config, body_cls, cls = (
            BertConfig(max_position_embeddings=32, **common),
            BertModel,
            BertForSequenceClassification,
        )
    else:
        config = RobertaConfig(max_position_embeddings=34, pad_token_id=1, **common)
        body_cls, cls = RobertaModel, RobertaForSequenceClassification
    base = body_cls(config).eval()
    experts = {}
    for i, task in enumerate(tasks):
        cfg = config.__class__(**config.to_dict())
        cfg.num_labels = 2 + i
        expert = cls(cfg)
        expert.base_model.load_state_dict(base.state_dict(), strict=False)
        _perturb(expert.base_model, seed + 100 + i)
        experts[task] = expert.eval()

    return base, experts, text_inputs


def tiny_clip(tasks=("alpha", "beta"), seed: int = 0):
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    base = CLIPVisionModel(config).eval()
    experts, heads = {}, {}
    for i, task in enumerate(tasks):
        expert = CLIPVisionModel(config)
        expert.load_state_dict(base.state_dict())
        _perturb(expert, seed + 100 + i)
        experts[task] = expert.eval()
        heads[task] = torch.randn(3 + i, 16, generator=torch.Generator().manual_seed(seed + i))

    def inputs(task_index: int, n: int, gen_seed: int = 0):
        g = torch.Generator().manual_seed(gen_seed + 1000 * task_index)
        return {"pixel_values": torch.randn(n, 3, 8, 8, generator=g) + 3.0 * task_index}

    return base, experts, heads, inputs


def tiny_t5(tasks=("alpha", "beta"), seed: int = 0, tie: bool = False):
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=tie,
    )
    base = T5ForConditionalGeneration(config).eval()
    experts = {}
    for i, task in enumerate(tasks):
        expert = T5ForConditionalGeneration(config)
        expert.load_state_dict(base.state_dict())
        _perturb(expert, seed + 100 + i)
        experts[task] = expert.eval()

    return base, experts, text_inputs
