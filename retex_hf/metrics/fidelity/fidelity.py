"""Fidelity: how often a model reproduces another model's (the expert's) predictions, as an ``evaluate`` metric.

Arithmetically this is accuracy against the expert's outputs instead of ground truth. It has its own name so
reports say what they measured: a merged / ReTeX model can be faithful to an expert that is itself wrong.
Shipped inside retex-hf and loaded by path (``retex_hf.metrics.load_metric("fidelity")``), so it works offline.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Share of examples on which the evaluated model predicts the same label as the reference model (the expert).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): labels predicted by the evaluated model (merged or ReTeX).
    references (list of int): labels predicted by the reference model (the fine-tuned expert), not ground truth.
    sample_weight (list of float, optional): one weight per example.
Returns:
    fidelity (float): share of examples where both models agree.
Examples:
    >>> metric = retex_hf.metrics.load_metric("fidelity")
    >>> metric.compute(predictions=[2, 1, 0, 0], references=[2, 1, 0, 1])
    {'fidelity': 0.75}
"""

_CITATION = ""


class Fidelity(evaluate.Metric):
    """Agreement rate between a model's predictions and the expert's predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
            reference_urls=[],
        )

    def _compute(self, predictions, references, sample_weight=None) -> dict[str, float]:
        agree = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(agree.shape, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, float)
        if weights.shape != agree.shape:
            raise ValueError(f"sample_weight has {weights.size} entries for {agree.size} predictions")
        total = float(np.sum(weights))
        if total == 0.0:
            raise ValueError("fidelity is undefined: no examples (or all sample weights are zero)")
        return {"fidelity": float(np.sum(weights * agree)) / total}
