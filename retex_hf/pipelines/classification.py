"""Text and image classification pipelines that say which task answered.

A ReTeX classifier holds one label set per task, and its logits are padded with −inf up to
the widest one, so the built-in pipelines' ``config.id2label`` lookup would mislabel every task
but one. These subclasses read the routed task of each input from the model output, score only
that task's labels, and add ``"task"`` (and ``"unknown"``, the router's flag) to every result.
For any other model they behave exactly like the built-in pipelines they extend.

``retex_task="name"`` skips the router, like ``model(..., task="name")``.
"""

from __future__ import annotations

import numpy as np
from transformers import ImageClassificationPipeline, TextClassificationPipeline
from transformers.pipelines.text_classification import ClassificationFunction


def _is_retex(model) -> bool:
    from ..modeling_retex import RetexPreTrainedModel

    return isinstance(model, RetexPreTrainedModel)


def _scores(logits: np.ndarray, function_to_apply: ClassificationFunction | None) -> np.ndarray:
    if function_to_apply in (None, ClassificationFunction.SOFTMAX):
        shifted = np.exp(logits - logits.max())
        return shifted / shifted.sum()
    if function_to_apply == ClassificationFunction.SIGMOID:
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def routed_results(model, model_outputs, function_to_apply, top_k: int | None) -> list[dict]:
    """Label scores of the task each input was routed to, best first, each naming that task."""
    task_index = int(model_outputs["task_ids"].reshape(-1)[0])
    task = model.config.task_names[task_index]
    labels = model.config.task_id2label[task]
    logits = model_outputs["logits"][0].float().numpy()[: len(labels)]
    scores = _scores(logits, function_to_apply)
    unknown = model_outputs.get("unknown")
    flagged = bool(unknown.reshape(-1)[0]) if unknown is not None else False
    results = [
        {"label": labels[i], "score": float(scores[i]), "task": task, "unknown": flagged}
        for i in np.argsort(-scores, kind="stable")
    ]
    return results if top_k is None else results[:top_k]


class _RoutedForwardMixin:
    """Lets callers name the task (``retex_task=``) and hands the routing to postprocess."""

    def _sanitize_parameters(self, retex_task: str | None = None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if retex_task is not None:
            if not _is_retex(self.model):
                raise ValueError("retex_task= is only understood by ReTeX models")
            self.model.task_index(retex_task)  # a clear error for an unknown name, before any input is read
            forward = {**forward, "retex_task": retex_task}
        return preprocess, forward, postprocess

    def _forward(self, model_inputs, retex_task: str | None = None):
        if retex_task is None:
            return super()._forward(model_inputs)
        return self.model(**model_inputs, task=retex_task)


class RetexTextClassificationPipeline(_RoutedForwardMixin, TextClassificationPipeline):
    def postprocess(self, model_outputs, function_to_apply=None, top_k=1, _legacy=True):
        if not _is_retex(self.model):
            return super().postprocess(model_outputs, function_to_apply, top_k, _legacy)
        results = routed_results(self.model, model_outputs, function_to_apply, top_k)
        return results[0] if top_k == 1 and _legacy else results


class RetexImageClassificationPipeline(_RoutedForwardMixin, ImageClassificationPipeline):
    def postprocess(self, model_outputs, function_to_apply=None, top_k=5):
        if not _is_retex(self.model):
            return super().postprocess(model_outputs, function_to_apply, top_k)
        return routed_results(self.model, model_outputs, function_to_apply, top_k)


__all__ = ["RetexImageClassificationPipeline", "RetexTextClassificationPipeline", "routed_results"]
