"""Classification accuracy as an ``evaluate`` metric that works offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; retex-hf ships this one inside the package and
loads it by path (see ``retex_hf.metrics.load_metric``) so evaluation never needs the network.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Share of examples whose predicted label equals the reference label, optionally weighted per example.
With ``normalize=False`` the (weighted) number of correct examples is returned instead of the share.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): return the share of correct examples (default) or their (weighted) count.
    sample_weight (list of float, optional): one weight per example.
Returns:
    accuracy (float): the share (or count) of correct examples.
Examples:
    >>> metric = retex_hf.metrics.load_metric("accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""

_CITATION = ""


class Accuracy(evaluate.Metric):
    """Label accuracy with the ``normalize`` / ``sample_weight`` options people expect from the Hub metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
            reference_urls=[],
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict[str, float]:
        correct = np.asarray(predictions) == np.asarray(references)
        weights = (
            np.ones(correct.shape, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, float)
        )
        if weights.shape != correct.shape:
            raise ValueError(f"sample_weight has {weights.size} entries for {correct.size} predictions")
        hits = float(np.sum(weights * correct))
        if not normalize:
            return {"accuracy": hits}
        total = float(np.sum(weights))
        if total == 0.0:
            raise ValueError("accuracy is undefined: no examples (or all sample weights are zero)")
        return {"accuracy": hits / total}
