"""Tokenizers and image processors for the synthetic suites, so their checkpoints work end to end
(pipelines, `retex-hf build --text-column`, notebooks) like a real model's.

Every non-special token id ``i`` is the word ``w{i}``; images are the suites' [-1, 1] pixel
tensors as uint8 arrays, which the processor maps back (rescale 1/255, normalise by 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast

# id -> token string of the special tokens each synthetic backbone uses (see text.SPECIALS, seq2seq).
SPECIAL_TOKENS = {
    "bert": {0: "[PAD]", 1: "[UNK]", 2: "[CLS]", 3: "[SEP]", 4: "[MASK]"},
    "roberta": {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", 4: "<mask>"},
    "t5": {0: "<pad>", 1: "</s>", 2: "<unk>"},
}
_ROLES = {  # transformers attribute -> token string, per backbone
    "bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"},
    "roberta": {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>",
                "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"},
    "t5": {"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "</s>"},
}  # fmt: skip
_TEMPLATES = {"bert": ("[CLS]", "[SEP]"), "roberta": ("<s>", "</s>"), "t5": (None, "</s>")}


def word_tokenizer(backbone: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer whose ids are exactly the synthetic suite's token ids."""
    if backbone not in SPECIAL_TOKENS:
        raise ValueError(f"no tokenizer for backbone {backbone!r}; valid: {sorted(SPECIAL_TOKENS)}")
    specials = SPECIAL_TOKENS[backbone]
    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    unk = _ROLES[backbone]["unk_token"]
    core = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    start, end = _TEMPLATES[backbone]
    single = " ".join(t for t in (start, "$A", end) if t)
    pair = " ".join(t for t in (start, "$A", end, "$B:1", end) if t)
    core.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in (start, end) if t]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **_ROLES[backbone])
    tokenizer.model_max_length = 64
    return tokenizer


def to_text(input_ids: torch.Tensor, backbone: str) -> str:
    """The words of one sequence, without special tokens or padding."""
    specials = SPECIAL_TOKENS[backbone]
    return " ".join(f"w{int(i)}" for i in input_ids.tolist() if int(i) not in specials)


def image_processor(size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        do_resize=False,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=False,
        size={"height": size, "width": size},
        crop_size={"height": size, "width": size},
    )


def to_images(pixel_values: torch.Tensor) -> list[np.ndarray]:
    """[n, 3, H, W] tensors in [-1, 1] -> uint8 H×W×3 arrays, as a user would hand a pipeline."""
    scaled = ((pixel_values.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [image.permute(1, 2, 0).numpy() for image in scaled]
