"""Shipped offline metrics, the SVG accuracy plot and the Hub model card."""

from __future__ import annotations

import math
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from setuptools import find_packages

from retex_hf.card import CARD_TAGS, PLOT_FILENAME, accuracy_plot_svg, write_model_card
from retex_hf.metrics import METRICS_DIR, available_metrics, load_metric

SVG = "{http://www.w3.org/2000/svg}"
SHIPPED = ["accuracy", "exact_match", "fidelity"]


# ------------------------------------------------------------------------------------------------------ metrics
@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub declared offline and any socket connection fails, so a metric that needed the network would error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def test_available_metrics_lists_shipped_scripts() -> None:
    assert available_metrics() == SHIPPED
    for name in SHIPPED:
        assert (METRICS_DIR / name / f"{name}.py").is_file()


def test_metric_directories_are_packaged() -> None:
    """Each metric directory is a package, so setuptools ``packages = find:`` ships its script."""
    root = Path(__file__).resolve().parents[1]
    packages = find_packages(where=str(root), include=["retex_hf", "retex_hf.*"])
    for name in SHIPPED:
        assert f"retex_hf.metrics.{name}" in packages


@pytest.mark.usefixtures("offline")
def test_accuracy_plain_weighted_and_unnormalized() -> None:
    metric = load_metric("accuracy")
    preds, refs = [0, 1, 2, 2], [0, 1, 1, 2]
    assert metric.compute(predictions=preds, references=refs) == {"accuracy": pytest.approx(0.75)}
    assert metric.compute(predictions=preds, references=refs, normalize=False) == {"accuracy": pytest.approx(3.0)}
    weights = [1.0, 1.0, 2.0, 0.0]  # correct: 1 + 1 + 0 = 2 of total 4
    assert metric.compute(predictions=preds, references=refs, sample_weight=weights) == {"accuracy": pytest.approx(0.5)}
    assert metric.compute(predictions=preds, references=refs, sample_weight=weights, normalize=False) == {
        "accuracy": pytest.approx(2.0)
    }


@pytest.mark.usefixtures("offline")
def test_fidelity_is_agreement_with_expert_predictions() -> None:
    metric = load_metric("fidelity")
    result = metric.compute(predictions=[1, 1, 0, 0, 2], references=[1, 0, 0, 1, 2])
    assert result == {"fidelity": pytest.approx(0.6)}
    weighted = metric.compute(predictions=[1, 0], references=[1, 1], sample_weight=[3.0, 1.0])
    assert weighted == {"fidelity": pytest.approx(0.75)}


@pytest.mark.usefixtures("offline")
def test_exact_match_options() -> None:
    metric = load_metric("exact_match")
    preds, refs = ["Paris", " london ", "Rome"], ["Paris", "London", "rome"]
    assert metric.compute(predictions=preds, references=refs)["exact_match"] == pytest.approx(1 / 3)
    assert metric.compute(predictions=preds, references=refs, ignore_case=True)["exact_match"] == pytest.approx(2 / 3)
    assert metric.compute(predictions=preds, references=refs, strip=True)["exact_match"] == pytest.approx(1 / 3)
    both = metric.compute(predictions=preds, references=refs, ignore_case=True, strip=True)
    assert both == {"exact_match": pytest.approx(1.0)}


def test_unknown_metric_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="f1") as err:
        load_metric("f1")
    for name in SHIPPED:
        assert name in str(err.value)


# --------------------------------------------------------------------------------------------------------- plot
ROWS = [
    {"task": "sst2", "expert": 0.9, "merged": 0.5, "retex": 0.88},
    {"task": "b&c <x>", "expert": 0.7, "merged": None, "retex": 0.65},
    {"task": "mnli", "expert": None, "merged": float("nan"), "retex": 1.0},
]


def _rects(root: ET.Element, cls: str | None = None) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if cls is None or r.get("class") == cls]


def _texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_plot_is_valid_svg_with_one_bar_per_value() -> None:
    root = ET.fromstring(accuracy_plot_svg(ROWS, "Per-task accuracy"))
    assert root.tag == f"{SVG}svg"
    present = sum(1 for r in ROWS for k in ("expert", "merged", "retex") if r[k] is not None and not math.isnan(r[k]))
    assert present == 6
    assert len(_rects(root, "bar")) == present
    assert len(_rects(root, "legend")) == 3
    assert len(_rects(root, "background")) == 1
    assert len(_rects(root)) == 1 + 3 + present  # nothing else draws rects
    texts = _texts(root)
    for row in ROWS:
        assert row["task"] in texts
    assert {"Expert", "Merged", "ReTeX"} <= set(texts)
    assert {"0 %", "100 %"} <= set(texts)
    assert "90.0" in texts and "100.0" in texts  # value labels


def test_plot_bar_heights_scale_with_value() -> None:
    root = ET.fromstring(accuracy_plot_svg([{"task": "t", "expert": 1.0, "merged": 0.5, "retex": 0.0}], "t"))
    heights = [float(r.get("height")) for r in _rects(root, "bar")]
    assert heights[0] == pytest.approx(2 * heights[1]) and heights[2] == 0.0


def test_plot_width_grows_with_tasks() -> None:
    few = ET.fromstring(accuracy_plot_svg(ROWS[:1], "few"))
    many_rows = [{"task": f"task{i}", "expert": 0.5, "merged": 0.5, "retex": 0.5} for i in range(20)]
    many = ET.fromstring(accuracy_plot_svg(many_rows, "many"))
    assert float(many.get("width")) > float(few.get("width"))
    assert len(_rects(many, "bar")) == 60
    empty = ET.fromstring(accuracy_plot_svg([], "empty"))
    assert _rects(empty, "bar") == []


# --------------------------------------------------------------------------------------------------------- card
def _info(**overrides) -> dict:
    info = {
        "base": "org/tiny-bert",
        "experts": {"sst2": "org/tiny-bert-sst2", "mnli": "./experts/mnli"},
        "merge_method": "ties_merging",
        "merge_hparams": {"density": 0.2, "scale": 1.0},
        "storage": {
            "merged_weights": 4_000_000,
            "offsets": 200_000,
            "signatures": 1_024,
            "heads": 3_000,
            "total": 4_204_024,
            "total_vs_one_model": 1.0510,
        },
        "budget": 0.05,
        "recovery_steps": 50,
        "num_labels": {"sst2": 2, "mnli": 3},
        "metrics": [
            {
                "task": "sst2",
                "expert_accuracy": 0.91,
                "merged_accuracy": 0.82,
                "retex_accuracy": 0.9,
                "router_accuracy": 1.0,
                "fidelity": 0.97,
                "normalized_accuracy": 0.989,
            },
            {"task": "mnli", "expert_accuracy": 0.8, "merged_accuracy": None, "retex_accuracy": 0.78},
        ],
    }
    info.update(overrides)
    return info


def test_model_card_with_metrics(tmp_path: Path) -> None:
    readme = write_model_card(tmp_path, _info())
    assert readme == tmp_path / "README.md" and readme.is_file()
    card = ModelCard.load(readme)
    assert card.data.library_name == "transformers"
    assert card.data.tags == CARD_TAGS
    assert card.data.base_model == "org/tiny-bert"
    text = card.text
    for needle in ("ties_merging", "sst2", "mnli", "1.05×", "Base model", "Experts", "Merge", "Storage"):
        assert needle in text
    assert "4,204,024 bytes" in text and "`density`: `0.2`" in text
    assert "Per-task metrics" in text and "91.0 %" in text and "98.9 %" in text
    assert f"]({PLOT_FILENAME})" in text
    assert "AutoModel.from_pretrained" in text and "out.task_ids" in text
    plot = tmp_path / PLOT_FILENAME
    assert plot.is_file()
    assert len(_rects(ET.parse(plot).getroot(), "bar")) == 5


def test_model_card_without_metrics_has_no_plot(tmp_path: Path) -> None:
    write_model_card(tmp_path, _info())  # an earlier build left a plot behind
    readme = write_model_card(tmp_path, _info(metrics=None, repo_id="me/my-retex"))
    assert not (tmp_path / PLOT_FILENAME).exists()
    text = ModelCard.load(readme).text
    assert "Per-task metrics" not in text and PLOT_FILENAME not in text
    assert 'from_pretrained("me/my-retex")' in text


def test_model_card_minimal_info_and_local_base(tmp_path: Path) -> None:
    info = {"base": "/models/local-backbone", "experts": {"a": "x"}, "merge_method": "task_arithmetic"}
    readme = write_model_card(tmp_path / "out", info)
    card = ModelCard.load(readme)
    assert card.data.base_model is None  # a local path is not a Hub id
    assert card.data.tags == CARD_TAGS
    assert "task_arithmetic" in card.text and "/models/local-backbone" in card.text
    assert not (tmp_path / "out" / PLOT_FILENAME).exists()
