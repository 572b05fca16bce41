"""Exact string match as an ``evaluate`` metric that works offline (for generative / seq2seq experts).

Shipped inside retex-hf and loaded by path (``retex_hf.metrics.load_metric("exact_match")``) because
``evaluate.load("exact_match")`` would need the Hub.
"""

import datasets
import evaluate

_DESCRIPTION = """
Share of predictions that are identical to their reference string, optionally after stripping surrounding
whitespace and/or ignoring case.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated strings.
    references (list of str): reference strings.
    ignore_case (bool): compare case-insensitively (default False).
    strip (bool): strip leading/trailing whitespace before comparing (default False).
Returns:
    exact_match (float): share of identical strings.
Examples:
    >>> metric = retex_hf.metrics.load_metric("exact_match")
    >>> metric.compute(predictions=["Yes", "no"], references=["yes", "no"], ignore_case=True)
    {'exact_match': 1.0}
"""

_CITATION = ""


def _normalise(text: str, ignore_case: bool, strip: bool) -> str:
    """Apply the requested normalisation; casefold() rather than lower() so e.g. German sharp s compares equal."""
    if strip:
        text = text.strip()
    return text.casefold() if ignore_case else text


class ExactMatch(evaluate.Metric):
    """Share of predictions that equal their reference string."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[],
        )

    def _compute(self, predictions, references, ignore_case: bool = False, strip: bool = False) -> dict[str, float]:
        if len(predictions) == 0:
            raise ValueError("exact_match is undefined: no examples")
        hits = sum(
            _normalise(p, ignore_case, strip) == _normalise(r, ignore_case, strip)
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(predictions)}
