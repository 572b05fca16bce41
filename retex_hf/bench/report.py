"""The benchmark report: `report.json`, a markdown table (`report.md`) and SVG plots.

Plots are hand-written SVG (like the model card's), so the report needs no plotting library.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from ..card import accuracy_plot_svg
from .targets import check_targets, markdown_rows

LABELS = {
    "expert": "individual expert",
    "task_arithmetic": "task arithmetic (best λ)",
    "ties": "TIES",
    "tsv_m": "TSV-M",
    "emr": "EMR (task known)",
    "tall": "TALL masks (task known)",
    "sim_emr": "SiM → EMR (task unknown)",
    "sim_tall": "SiM → TALL (task unknown)",
    "retex": "**ReTeX (task unknown)**",
    "retex_task_given": "ReTeX (task given)",
}
PLOTS = ("accuracy.svg", "methods.svg")
SCALING_PLOTS = ("scaling_tasks.svg", "scaling_budget.svg", "scaling_bytes.svg")
_FONT = 'font-family="Helvetica, Arial, sans-serif"'
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def markdown(result: dict) -> str:
    s, tasks = result["summary"], result["tasks"]
    short = {t: t.replace("_", " ") for t in tasks}
    lines = [
        f"# Benchmark `{result['suite']}`{' (quick)' if result['quick'] else ''}",
        "",
        f"{len(tasks)} tasks; test examples per task: "
        + ", ".join(f"{t} {n}" for t, n in result["test_sizes"].items())
        + ". Accuracy % (95 % bootstrap interval); normalised = method / expert; fidelity = same prediction "
        "as the expert. Routed methods count an input sent to another task as wrong.",
        "",
        "## Mean over tasks",
        "",
        "| method | accuracy | normalised accuracy | fidelity | KL from expert |",
        "|---|---|---|---|---|",
    ]
    for method in result["methods"]:
        m = s["mean"][method]
        kl = "–" if m["kl_from_expert"] is None else f"{m['kl_from_expert']:.4f}"
        lines.append(
            f"| {LABELS.get(method, method)} | {_pct(m['accuracy'])}{_ci(m['accuracy_ci'])} | "
            f"{_pct(m['normalized_accuracy'])}{_ci(m['normalized_accuracy_ci'])} | "
            f"{_pct(m['fidelity'])}{_ci(m['fidelity_ci'])} | {kl} |"
        )
    lines += ["", "## Accuracy per task", "", "| method | " + " | ".join(short.values()) + " |",
              "|---|" + "---|" * len(tasks)]  # fmt: skip
    for method in result["methods"]:
        row = [f"{_pct(s['per_task'][t][method]['accuracy'])}{_ci(s['per_task'][t][method]['accuracy_ci'])}"
               for t in tasks]  # fmt: skip
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(row) + " |")
    router = result["router"]
    lines += [
        "| router accuracy (ReTeX) | " + " | ".join(_pct(router[t]["accuracy"]) for t in tasks) + " |",
        "| router accuracy (SiM, θ0 features) | "
        + " | ".join(_pct(result["chosen_hyperparameters"]["sim_router_accuracy"][t]) for t in tasks)
        + " |",
        "| domain | " + " | ".join(result["domains"][t] for t in tasks) + " |",
        "",
        "## Experts",
        "",
        "| task | labels | train examples | steps | validation accuracy per epoch | ‖θt−θ0‖/‖θ0‖ | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        e = result["experts"].get(t, {})
        # the text suite's keys, then the vision suite's
        per_epoch = e.get("validation_accuracy_per_epoch", e.get("validation_accuracy_by_epoch", []))
        curve = ", ".join(_pct(v) for v in per_epoch)
        distance = e.get("relative_distance_from_base", e.get("relative_distance"))
        lines.append(
            f"| {t} | {result['num_labels'][t]} | {e.get('train_examples', '–')} | {e.get('steps', '–')} | {curve} | "
            f"{'–' if distance is None else f'{distance:.4f}'} | {e.get('train_seconds', '–')} |"
        )
    st, b, tp = result["storage"], result["build"], result["throughput"]
    lines += [
        "",
        "## Cost",
        "",
        f"- checkpoint: {st['total'] / 1e6:.1f} MB = **{st['total_vs_one_model']:.3f}x** one model "
        f"(merged {st['merged_weights'] / 1e6:.1f} MB, offsets {st['offsets'] / 1e6:.2f} MB, "
        f"signatures {st['signatures'] / 1e3:.1f} KB, heads {st['heads'] / 1e3:.1f} KB); "
        f"{b['checkpoint_bytes_on_disk'] / 1e6:.1f} MB on disk",
        f"- build (merge + offsets + signatures + recovery, experts already trained): **{b['build_seconds']:.0f} s** "
        f"({b.get('build_threads', tp['threads'])} thread(s)), "
        f"peak memory of the build process {b['peak_rss_mib']:.0f} MiB",
        f"- mixed-task batches ({tp['samples']} inputs, batch {tp['batch_size']}, {tp['threads']} thread(s)): "
        + ", ".join(f"{k} {v:.0f}/s" for k, v in tp["samples_per_second"].items())
        + f"; ReTeX = **{tp['ratios']['retex_vs_plain']:.2f}x** one plain model, "
        f"**{tp['ratios']['retex_vs_per_group_reload']:.2f}x** per-group reloading",
    ]
    ch = result["chosen_hyperparameters"]
    lines += [
        f"- chosen on the validation split: task arithmetic λ = {ch['task_arithmetic_lambda']}, "
        f"TIES λ = {ch['ties_lambda']} (density {ch['ties_density']}), TALL λ per task {ch['tall_lambda']}; "
        f"TSV-M α = {ch['tsv_alpha']}; SiM components {ch['sim_components']}",
    ]
    if result.get("retex_router"):
        rr = result["retex_router"]
        lines.append(
            f"- ReTeX router: {rr['rule']} rule, features after {rr['layer'] or 'all'} layer(s), "
            f"signatures of {rr['components']} components"
        )
    if result.get("scaling"):
        sc = result["scaling"]
        lines += ["", f"## Scaling (task unknown; {sc['subsample_per_task']} test inputs per task)", "",
                  "| tasks | budget | ReTeX normalised | TA normalised | TIES normalised | bytes vs one model |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for p in sc["by_tasks"] + sc["by_budget"]:
            lines.append(
                f"| {p['tasks']} | {p['budget']:g} | {_pct(p['retex_normalized_accuracy'])} | "
                f"{_pct(p.get('task_arithmetic_normalized_accuracy'))} | {_pct(p.get('ties_normalized_accuracy'))} | "
                f"{p['bytes_vs_one_model']:.3f} |"
            )
        for p in sc.get("skipped", []):
            lines.append(f"\nBudget {p['budget']:g} not built: {p['reason']}")
    plots = PLOTS + (SCALING_PLOTS if result.get("scaling") else ())
    if result.get("targets"):
        lines += ["", *markdown_rows(result["targets"])]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def _text(x: float, y: float, body: str, size: int = 10, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" {_FONT} {extra}>{body}</text>'


def _line_plot(title: str, xlabel: str, series: dict[str, list[tuple[float, float]]], ylabel: str) -> str:
    """A small line chart; y is a fraction shown in %, the axis spans the data (with a margin)."""
    w, h, left, top, plot_w, plot_h = 520, 300, 60, 50, 420, 200
    xs = sorted({x for pts in series.values() for x, _ in pts}) or [0.0]
    ys = [y for pts in series.values() for _, y in pts if y is not None] or [0.0, 1.0]
    lo, hi = min(ys), max(ys)
    lo, hi = lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3)

    def px(x: float) -> float:
        return left + (xs.index(x) / max(1, len(xs) - 1)) * plot_w

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
        f'<rect class="background" x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>',
        _text(w / 2, 20, escape(title), 14, extra='font-weight="bold"'),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
        _text(left + plot_w / 2, h - 8, escape(xlabel), 12),
        f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle" font-size="12" '
        f"{_FONT}>{escape(ylabel)}</text>",
    ]
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        parts.append(
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="10" {_FONT}>{100 * y:.1f}</text>'
        )
    for x in xs:
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="10" {_FONT}>{x:g}</text>'
        )
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [(x, y) for x, y in pts if y is not None]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        parts.append(_text(left + 10, top + 14 * (i + 1) - 4, escape(name), 11, "start", f'fill="{colour}"'))
    return "\n".join(parts + ["</svg>"]) + "\n"


def _methods_plot(result: dict) -> str:
    """Mean normalised accuracy per method, with its bootstrap interval."""
    means = result["summary"]["mean"]
    methods = [m for m in result["methods"] if m != "expert"]
    w, bar, left, top, plot_h = 120 + 70 * len(methods), 46, 60, 40, 220
    lo = min(0.5, min(means[m]["normalized_accuracy_ci"][0] for m in methods) - 0.02)
    hi = max(1.0, max(means[m]["normalized_accuracy_ci"][1] for m in methods)) + 0.01

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{top + plot_h + 110}">',
        f'<rect class="background" x="0" y="0" width="{w}" height="{top + plot_h + 110}" fill="#ffffff"/>',
        f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold" {_FONT}>'
        f"Mean normalised accuracy, {escape(result['suite'])} suite (95 % bootstrap)</text>",
        f'<line x1="{left}" y1="{py(1.0):.1f}" x2="{w - 20}" y2="{py(1.0):.1f}" stroke="#999" stroke-dasharray="4"/>',
    ]
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        parts.append(
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="10" {_FONT}>{100 * y:.0f}</text>'
        )
    for i, m in enumerate(methods):
        x, v = left + 10 + i * 70, means[m]["normalized_accuracy"]
        ci = means[m]["normalized_accuracy_ci"]
        colour = "#55a868" if m.startswith("retex") else "#4c72b0"
        parts.append(
            f'<rect class="bar" x="{x}" y="{py(v):.1f}" width="{bar}" height="{py(lo) - py(v):.1f}" fill="{colour}"/>'
        )
        parts.append(
            f'<line x1="{x + bar / 2}" y1="{py(ci[0]):.1f}" x2="{x + bar / 2}" y2="{py(ci[1]):.1f}" stroke="#222"/>'
        )
        parts.append(_text(x + bar / 2, py(v) - 4, f"{100 * v:.1f}"))
        parts.append(f'<text transform="translate({x + bar / 2} {top + plot_h + 14}) rotate(35)" font-size="11" '
                     f"{_FONT}>{escape(m)}</text>")  # fmt: skip
    return "\n".join(parts + ["</svg>"]) + "\n"


def write_report(result: dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    result["targets"] = check_targets(result)
    (output / "report.json").write_text(json.dumps(result, indent=1, default=str))
    (output / "report.md").write_text(markdown(result))
    per_task = result["summary"]["per_task"]
    rows = [{"task": t, "expert": per_task[t]["expert"]["accuracy"], "merged": per_task[t]["ties"]["accuracy"],
             "retex": per_task[t]["retex"]["accuracy"]} for t in result["tasks"]]  # fmt: skip
    (output / "accuracy.svg").write_text(
        accuracy_plot_svg(rows, "Test accuracy: expert, TIES merge, ReTeX (task unknown)")
    )
    (output / "methods.svg").write_text(_methods_plot(result))
    scaling = result.get("scaling")
    if scaling:
        keys = {"ReTeX": "retex_normalized_accuracy", "task arithmetic": "task_arithmetic_normalized_accuracy",
                "TIES": "ties_normalized_accuracy"}  # fmt: skip
        by_tasks = {n: [(p["tasks"], p.get(k)) for p in scaling["by_tasks"]] for n, k in keys.items()}
        (output / "scaling_tasks.svg").write_text(
            _line_plot("Normalised accuracy vs number of tasks", "tasks", by_tasks, "normalised accuracy %")
        )
        by_budget = {"ReTeX": [(p["budget"], p["retex_normalized_accuracy"]) for p in scaling["by_budget"]]}
        (output / "scaling_budget.svg").write_text(
            _line_plot("Normalised accuracy vs offset budget (all tasks)", "budget per task (fraction of model)",
                       by_budget, "normalised accuracy %")
        )  # fmt: skip
        sizes = {"vs tasks (x = tasks)": [(p["tasks"], p["bytes_vs_one_model"] - 1) for p in scaling["by_tasks"]]}
        (output / "scaling_bytes.svg").write_text(
            _line_plot("Checkpoint bytes beyond one model, vs number of tasks", "tasks", sizes, "% of one model")
        )
