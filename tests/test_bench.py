"""Smoke test of `retex-hf bench text --quick`: the real MiniLM encoder on real data, end to end.

It checks the report's structure (JSON keys, the markdown tables, the SVG plots), and that the
numbers are well-formed (fractions, intervals around their estimate), not their values: a quick
run trains its experts for a few steps only.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from retex_hf.bench import load_suites
from retex_hf.bench.runner import METHODS
from retex_hf.cli import main

MEAN_KEYS = {"accuracy", "accuracy_ci", "normalized_accuracy", "normalized_accuracy_ci", "fidelity", "fidelity_ci",
             "kl_from_expert"}  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out, cache = root / "out", root / "cache"
    assert main(["bench", "text", "--quick", "--output", str(out), "--cache-dir", str(cache)]) == 0
    return out, cache


def _inside(value: float, ci: list[float]) -> bool:
    return ci[0] - 1e-9 <= value <= ci[1] + 1e-9


def test_quick_text_report_structure(quick_run):
    out, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    tasks = report["tasks"]
    assert report["suite"] == "text" and report["quick"] is True and len(tasks) >= 2
    assert report["methods"] == METHODS
    for method in METHODS:
        mean = report["summary"]["mean"][method]
        assert set(mean) == MEAN_KEYS
        for key in ("accuracy", "normalized_accuracy", "fidelity"):
            assert _inside(mean[key], mean[f"{key}_ci"]), (method, key, mean)
        for task in tasks:
            row = report["summary"]["per_task"][task][method]
            assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["fidelity"] <= 1.0
            assert row["n"] == report["test_sizes"][task] >= 50
    expert_mean = report["summary"]["mean"]["expert"]
    assert expert_mean["fidelity"] == 1.0 and expert_mean["normalized_accuracy"] == pytest.approx(1.0)
    for task in tasks:
        assert 0.0 <= report["router"][task]["accuracy"] <= 1.0
        info = report["experts"][task]
        assert info["relative_distance_from_base"] > 0 and info["validation_accuracy_per_epoch"]
        assert report["domains"][task]
    storage = report["storage"]
    assert storage["total"] > storage["merged_weights"] > 0 and storage["total_vs_one_model"] > 1.0
    assert report["build"]["build_seconds"] > 0 and report["build"]["peak_rss_mib"] > 0
    speed = report["throughput"]
    assert set(speed["samples_per_second"]) == {"plain_model", "retex", "per_group_reload"}
    assert set(speed["ratios"]) == {"retex_vs_plain", "retex_vs_per_group_reload"}
    chosen = report["chosen_hyperparameters"]
    targets = {row["name"]: row for row in report["targets"]}
    assert len(targets) == 8 and all(row["met"] == (row["gap"] == 0.0) for row in targets.values())
    assert targets["ReTeX fidelity, task unknown"]["measured"] == report["summary"]["mean"]["retex"]["fidelity"]
    assert str(chosen["task_arithmetic_lambda"]) in chosen["task_arithmetic_validation"]  # JSON keys are strings


def test_quick_text_markdown_and_plots(quick_run):
    out, _ = quick_run
    text = (out / "report.md").read_text()
    assert "| method | accuracy | normalised accuracy | fidelity | KL from expert |" in text
    table = [line for line in text.splitlines() if line.startswith("| **ReTeX (task unknown)**")]
    assert len(table) == 2  # the mean table and the per-task table
    assert "## Targets" in text and "| target | goal | measured | met | missed by |" in text
    assert "router accuracy (ReTeX)" in text and "checkpoint:" in text and "one plain model" in text
    for name in ("accuracy.svg", "methods.svg"):
        root = ET.fromstring((out / name).read_text())
        assert root.tag.endswith("svg")
        bars = [e for e in root.iter() if e.tag.endswith("rect") and e.get("class") == "bar"]
        assert bars, name


def test_experts_are_cached_and_reused(quick_run):
    _, cache = quick_run
    prepare = load_suites(["text"])["text"]
    data = prepare(quick=True, cache_dir=cache, seed=0, tasks=None)
    assert data.expert_info and all(info["cached"] for info in data.expert_info.values())
    assert all((d / "bench_expert.json").exists() and (d / "config.json").exists() for d in data.expert_dirs.values())


def test_unknown_task_and_suite_are_named(tmp_path):
    prepare = load_suites(["text"])["text"]
    with pytest.raises(ValueError, match="no_such_task"):
        prepare(quick=True, cache_dir=tmp_path, seed=0, tasks=["no_such_task"])
    with pytest.raises(SystemExit, match="nope"):
        main(["bench", "nope", "--quick", "--output", str(tmp_path / "o"), "--cache-dir", str(tmp_path)])


def test_quick_scaling_study(quick_run):
    """Quick mode's two-point scaling study: the all-task point at the main budget is the main
    build itself (not built twice); a doubled budget is a build of its own and weighs more."""
    out, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    scaling = report["scaling"]
    assert [p["tasks"] for p in scaling["by_tasks"]] == [len(report["tasks"])]
    main_point = scaling["by_tasks"][0]
    assert main_point["build_seconds"] == report["build"]["build_seconds"]  # reused, not rebuilt
    assert main_point["bytes_vs_one_model"] == report["storage"]["total_vs_one_model"]
    budget = report["settings"]["budget"]
    small, large = scaling["by_budget"]
    assert (small["budget"], large["budget"]) == (budget, 2 * budget)
    assert large["bytes_vs_one_model"] > small["bytes_vs_one_model"]
    assert large["build_seconds"] != main_point["build_seconds"]
    for point in scaling["by_tasks"] + scaling["by_budget"]:
        assert 0.0 <= point["retex_normalized_accuracy"] <= 2.0
    for key in ("task_arithmetic_normalized_accuracy", "ties_normalized_accuracy"):
        assert 0.0 <= main_point[key] <= 2.0  # the static merges on the same inputs
    text = (out / "report.md").read_text()
    assert "## Scaling" in text and "- build (merge + offsets + signatures + recovery" in text
    assert "scaling_budget.svg" in text
