"""The project's targets (ANCHORS.md, issue 5), checked against one benchmark result.

Each row says what was aimed for, what was measured and by how much it is missed, so a report
never leaves a missed target to be spotted by the reader. The reasons and the design changes a
miss calls for are written by people, next to the report (README, closing notes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Target:
    name: str
    goal: str  # ">=" or "<=" or "<"
    threshold: float
    measure: Callable[[dict], float | None]
    unit: str = "%"  # "%" (a fraction shown as percent), "x" (a ratio) or "s"

    def check(self, result: dict) -> dict | None:
        value = self.measure(result)
        if value is None:
            return None
        met = {">=": value >= self.threshold, "<=": value <= self.threshold, "<": value < self.threshold}[self.goal]
        return {**{k: v for k, v in asdict(self).items() if k != "measure"}, "measured": value, "met": bool(met),
                "gap": 0.0 if met else abs(value - self.threshold)}  # fmt: skip


def _mean(method: str, key: str) -> Callable[[dict], float]:
    return lambda r: r["summary"]["mean"][method][key]


def _best_static(r: dict) -> float:
    return max(r["summary"]["mean"][m]["normalized_accuracy"] for m in ("task_arithmetic", "ties"))


TARGETS = (
    Target("ReTeX normalised accuracy, task unknown", ">=", 0.995, _mean("retex", "normalized_accuracy")),
    Target("ReTeX fidelity, task unknown", ">=", 0.99, _mean("retex", "fidelity")),
    Target(
        "router accuracy (mean over tasks)",
        ">=",
        0.99,
        lambda r: sum(v["accuracy"] for v in r["router"].values()) / len(r["router"]),
    ),  # fmt: skip
    Target(
        "checkpoint bytes vs one model (target set at 8 tasks)",
        "<=",
        1.2,
        lambda r: r["storage"]["total_vs_one_model"],
        "x",
    ),  # fmt: skip
    Target(
        "mixed-batch throughput vs one plain model",
        ">=",
        0.5,
        lambda r: r["throughput"]["ratios"]["retex_vs_plain"],
        "x",
    ),  # fmt: skip
    Target(
        "mixed-batch throughput vs per-group reload",
        ">=",
        3.0,
        lambda r: r["throughput"]["ratios"]["retex_vs_per_group_reload"],
        "x",
    ),  # fmt: skip
    Target(
        "build time, text suite (merge + offsets + signatures + recovery)",
        "<=",
        300.0,
        lambda r: r["build"]["build_seconds"] if r["suite"] == "text" else None,
        "s",
    ),  # fmt: skip
    Target("best static merge (TA at best λ, TIES) stays below, for a real gap", "<", 0.90, _best_static),
)


def check_targets(result: dict) -> list[dict]:
    return [row for row in (t.check(result) for t in TARGETS) if row is not None]


def markdown_rows(rows: list[dict]) -> list[str]:
    def show(value: float, unit: str) -> str:
        return f"{100 * value:.1f} %" if unit == "%" else (f"{value:.0f} s" if unit == "s" else f"{value:.2f}x")

    lines = ["## Targets", "", "| target | goal | measured | met | missed by |", "|---|---|---|---|---|"]
    for row in rows:
        goal = f"{row['goal']} {show(row['threshold'], row['unit'])}"
        gap = (
            ""
            if row["met"]
            else (f"{100 * row['gap']:.1f} pts" if row["unit"] == "%" else show(row["gap"], row["unit"]))
        )
        lines.append(f"| {row['name']} | {goal} | {show(row['measured'], row['unit'])} | "
                     f"{'yes' if row['met'] else '**no**'} | {gap} |")  # fmt: skip
    return lines
