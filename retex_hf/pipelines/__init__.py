"""Pipelines for ReTeX checkpoints, registered with transformers when `retex_hf` is imported.

``pipeline("text-classification" | "image-classification", model=DIR)`` keep the built-in task
names: the registered classes extend the built-in ones and only change what they report for a
ReTeX model (the routed task next to each label). ``"retex-text2text-generation"`` is new.
"""

from __future__ import annotations

from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .classification import RetexImageClassificationPipeline, RetexTextClassificationPipeline, routed_results
from .text2text import RetexText2TextGenerationPipeline

TEXT2TEXT_TASK = "retex-text2text-generation"


def register_pipelines() -> None:
    # Re-registering a built-in task name logs a warning meant for accidental clashes; ours is deliberate.
    pipelines_logger = logging.get_logger("transformers.pipelines.base")
    level = pipelines_logger.level
    pipelines_logger.setLevel(logging.ERROR)
    try:
        for task, pipeline_class, auto_class, kind in (
            ("text-classification", RetexTextClassificationPipeline, AutoModelForSequenceClassification, "text"),
            ("image-classification", RetexImageClassificationPipeline, AutoModelForImageClassification, "image"),
        ):
            builtin = PIPELINE_REGISTRY.supported_tasks.get(task, {})  # keep the built-in default model
            PIPELINE_REGISTRY.register_pipeline(
                task, pipeline_class=pipeline_class, pt_model=auto_class, default=builtin.get("default"), type=kind
            )
        PIPELINE_REGISTRY.register_pipeline(
            TEXT2TEXT_TASK, pipeline_class=RetexText2TextGenerationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
        )
    finally:
        pipelines_logger.setLevel(level)


__all__ = [
    "TEXT2TEXT_TASK",
    "RetexImageClassificationPipeline",
    "RetexText2TextGenerationPipeline",
    "RetexTextClassificationPipeline",
    "register_pipelines",
    "routed_results",
]
