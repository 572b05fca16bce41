"""`make_suite`: a base model and several really fine-tuned experts of it, built in seconds.

Tests and the README demo need experts whose merge genuinely loses accuracy and whose tasks are
identifiable from input features, without any download. Each backbone module (`text`, `vision`,
`seq2seq`) builds the models and data; this module holds the result type, caching and saving.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

BACKBONES = ("bert", "roberta", "clip", "t5")


@dataclass
class SyntheticSuite:
    """A base θ0, one fine-tuned expert per task, and per-task data.

    - ``calibration[task]``: unlabeled single examples (unbatched, unpadded tensors), disjoint from test.
    - ``test[task]``: batched, padded model inputs; ``test_labels[task]``: class ids ``LongTensor[n]``,
      or for T5 the target ids ``LongTensor[n, L_out]``: the target, its eos (id 1), then -100 up to the
      task's width where a target is shorter (only the "echo" task; the others have fixed lengths).
    - ``heads``: CLIP only, ``[num_labels, dim]`` zero-shot-style heads used with ``head_logit_scale``:
      ``logits = normalize(pooler_output) @ normalize(head).T * head_logit_scale``.
    - ``id2label[task]``: class id -> name; for T5, label-word token id -> name ({} if the task has none).
    - ``pad_token_id``: what to pad calibration ``input_ids`` with when batching them.
    Suites from `make_suite` are cached and shared: treat them as read-only.
    """

    backbone: str
    base: PreTrainedModel
    experts: dict[str, PreTrainedModel]
    calibration: dict[str, list[dict[str, torch.Tensor]]]
    test: dict[str, dict[str, torch.Tensor]]
    test_labels: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor] | None
    id2label: dict[str, dict[int, str]]
    head_logit_scale: float | None = None
    pad_token_id: int = 0

    @property
    def tasks(self) -> list[str]:
        return list(self.experts)

    def preprocessor(self):
        """The tokenizer (word ``w{id}`` per token id) or image processor that matches this suite's inputs."""
        from .preprocessors import image_processor, word_tokenizer

        if self.backbone == "clip":
            return image_processor(self.base.config.image_size)
        return word_tokenizer(self.backbone, self.base.config.vocab_size)

    def raw_inputs(self, task: str) -> list:
        """The test inputs as a user would hand them to a pipeline: texts, or uint8 H×W×3 images."""
        from .preprocessors import to_images, to_text

        if self.backbone == "clip":
            return to_images(self.test[task]["pixel_values"])
        return [to_text(row, self.backbone) for row in self.test[task]["input_ids"]]

    def save(self, directory: str | os.PathLike) -> dict:
        """Write ``base/`` (with its tokenizer or image processor) and ``experts/<task>/`` with
        save_pretrained (safetensors); CLIP heads go to
        ``heads.safetensors``. Returns ``{"base": path, "experts": {task: path}}`` (+ ``"heads"`` for CLIP)."""
        directory = os.fspath(directory)
        paths: dict = {"base": os.path.join(directory, "base"), "experts": {}}
        self.base.save_pretrained(paths["base"])
        self.preprocessor().save_pretrained(paths["base"])
        for task, expert in self.experts.items():
            paths["experts"][task] = os.path.join(directory, "experts", task)
            expert.save_pretrained(paths["experts"][task])
        if self.heads is not None:
            paths["heads"] = os.path.join(directory, "heads.safetensors")
            save_file({t: h.contiguous() for t, h in self.heads.items()}, paths["heads"])
        return paths


def build_suite(
    backbone: str,
    num_tasks: int = 3,
    seed: int = 0,
    n_calibration: int = 32,
    n_test: int = 128,
    train_steps: int | None = None,
) -> SyntheticSuite:
    """Build a fresh suite (uncached). ``train_steps`` overrides the fine-tuning steps per expert."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {BACKBONES}")
    if num_tasks < 1 or n_calibration < 1 or n_test < 1:
        raise ValueError("num_tasks, n_calibration and n_test must be positive")
    if backbone in ("bert", "roberta"):
        from . import text as module
    elif backbone == "clip":
        from . import vision as module
    else:
        from . import seq2seq as module
    parts = module.build(backbone, num_tasks, seed, n_calibration, n_test, train_steps)
    parts.setdefault("heads", None)
    return SyntheticSuite(backbone=backbone, **parts)


@functools.lru_cache(maxsize=16)
def make_suite(
    backbone: str,
    num_tasks: int = 3,
    seed: int = 0,
    n_calibration: int = 32,
    n_test: int = 128,
    train_steps: int | None = None,
) -> SyntheticSuite:
    """`build_suite`, cached in-process by arguments: several tests share one suite. Read-only result."""
    return build_suite(backbone, num_tasks, seed, n_calibration, n_test, train_steps)
