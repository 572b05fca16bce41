"""Hub model card for a ReTeX build, with a per-task accuracy plot drawn as hand-written SVG.

The card is what people see first on the Hub, so it states what was merged, how, what it costs in storage and how
well each task survived. The plot is plain SVG text rather than matplotlib so that building a model never needs a
plotting stack (matplotlib is not a dependency) and the image renders on the Hub as-is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = ["CARD_TAGS", "PLOT_FILENAME", "PLOT_SERIES", "accuracy_plot_svg", "write_model_card"]

CARD_TAGS: list[str] = ["retex", "model-merging", "multi-task"]
PLOT_FILENAME = "accuracy.svg"
#: (row key, legend label, colour) of the three bars drawn per task, in drawing order.
PLOT_SERIES: tuple[tuple[str, str, str], ...] = (
    ("expert", "Expert", "#4c72b0"),
    ("merged", "Merged", "#dd8452"),
    ("retex", "ReTeX", "#55a868"),
)

_DASH = "–"

# ----------------------------------------------------------------------------------------------------- SVG plot
_BAR_W = 22
_GROUP_GAP = 26
_PLOT_H = 220
_MARGIN_LEFT = 58
_MARGIN_RIGHT = 20
_MARGIN_TOP = 64  # title + legend
_MIN_WIDTH = 420
_LABEL_ANGLE = 35  # degrees by which long task names are rotated
_CHAR_W = 6.5  # rough width of one 12px sans-serif character, to decide whether task names must be rotated
_FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _clean_value(value: Any) -> float | None:
    """Bar height in [0, 1], or None when there is nothing to draw (missing or NaN)."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return min(max(value, 0.0), 1.0)


def _legend_entry_width(label: str) -> float:
    """Horizontal room taken by one legend entry: swatch, gap, label text, spacing."""
    return 17 + len(label) * _CHAR_W + 18


def _legend_width() -> float:
    return sum(_legend_entry_width(label) for _, label, _ in PLOT_SERIES)


@dataclass(frozen=True)
class _Layout:
    """Pixel geometry of one plot; width grows with the number of tasks, height and left margin with long names."""

    group_w: float
    rotate: bool
    width: float
    height: float
    x0: float
    y0: float = _MARGIN_TOP

    @classmethod
    def for_tasks(cls, tasks: Sequence[str]) -> _Layout:
        group_w = len(PLOT_SERIES) * _BAR_W + _GROUP_GAP
        longest = max((len(t) for t in tasks), default=0) * _CHAR_W
        rotate = longest > group_w - 4
        label_h = longest * math.sin(math.radians(_LABEL_ANGLE)) + 22 if rotate else 22
        # a rotated first label reaches left of its group; widen the left margin so it is not clipped
        overhang = longest * math.cos(math.radians(_LABEL_ANGLE)) - group_w / 2 if rotate else 0.0
        x0 = max(_MARGIN_LEFT, overhang + 4)
        plot_w = max(len(tasks) * group_w, _legend_width())
        width = max(_MIN_WIDTH, x0 + _MARGIN_RIGHT + plot_w)
        return cls(group_w=group_w, rotate=rotate, width=width, height=_MARGIN_TOP + _PLOT_H + label_h + 10, x0=x0)

    def y(self, value: float) -> float:
        """Vertical pixel position of a value in [0, 1] (SVG y grows downwards)."""
        return self.y0 + _PLOT_H * (1.0 - value)


def _svg_axes(lay: _Layout) -> list[str]:
    """Horizontal grid lines with percentage labels every 25 %, and the axis line."""
    x0, x1 = lay.x0, lay.width - _MARGIN_RIGHT
    parts = []
    for pct in (0, 25, 50, 75, 100):
        y = lay.y(pct / 100)
        parts.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="#dddddd" stroke-width="1"/>')
        parts.append(
            f'<text x="{x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end" font-size="11" {_FONT} '
            f'fill="#444444">{pct} %</text>'
        )
    parts.append(f'<line x1="{x0:.1f}" y1="{lay.y0}" x2="{x0:.1f}" y2="{lay.y(0):.1f}" stroke="#888888"/>')
    parts.append(
        f'<text transform="translate({lay.x0 - 44:.1f} {lay.y0 + _PLOT_H / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'font-size="12" {_FONT} fill="#444444">accuracy</text>'
    )
    return parts


def _svg_legend(lay: _Layout) -> list[str]:
    """One swatch rect (class "legend") and label per series, in a row under the title."""
    parts = []
    x = lay.x0
    for _, label, colour in PLOT_SERIES:
        parts.append(f'<rect class="legend" x="{x:.1f}" y="34" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 17:.1f}" y="44" font-size="12" {_FONT} fill="#222222">{escape(label)}</text>')
        x += _legend_entry_width(label)
    return parts


def _svg_group(index: int, row: Mapping[str, Any], lay: _Layout) -> list[str]:
    """Bars (class "bar"), value labels and the task label of one task; None values draw no bar."""
    task = str(row.get("task", ""))
    left = lay.x0 + index * lay.group_w + _GROUP_GAP / 2
    parts = []
    for k, (key, label, colour) in enumerate(PLOT_SERIES):
        value = _clean_value(row.get(key))
        if value is None:
            continue
        x, y = left + k * _BAR_W, lay.y(value)
        tip = escape(f"{task} – {label}: {100 * value:.1f} %")
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{_BAR_W - 2}" height="{_PLOT_H * value:.1f}" '
            f'fill="{colour}"><title>{tip}</title></rect>'
        )
        parts.append(
            f'<text x="{x + (_BAR_W - 2) / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9" {_FONT} '
            f'fill="#222222">{100 * value:.1f}</text>'
        )
    cx, ty = left + len(PLOT_SERIES) * _BAR_W / 2, lay.y(0) + 16
    if lay.rotate:
        parts.append(
            f'<text transform="translate({cx:.1f} {ty - 4:.1f}) rotate(-{_LABEL_ANGLE})" text-anchor="end" '
            f'font-size="12" {_FONT} fill="#222222">{escape(task)}</text>'
        )
    else:
        parts.append(
            f'<text x="{cx:.1f}" y="{ty:.1f}" text-anchor="middle" font-size="12" {_FONT} '
            f'fill="#222222">{escape(task)}</text>'
        )
    return parts


def accuracy_plot_svg(rows: list[dict], title: str) -> str:
    """Grouped bar chart (expert / merged / ReTeX per task) as a self-contained SVG document.

    Each row is ``{"task": str, "expert": float | None, "merged": float | None, "retex": float | None}`` with
    values in [0, 1] (clamped; None or NaN omit the bar). Rects drawn: one background (class "background"), one
    legend swatch per series (class "legend", 3) and one bar per present value (class "bar"). Width grows with the
    number of tasks; long task names are rotated.
    """
    lay = _Layout.for_tasks([str(r.get("task", "")) for r in rows])
    width, height = lay.width, lay.height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f'<rect class="background" x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14" font-weight="bold" {_FONT} '
        f'fill="#111111">{escape(title)}</text>',
        *_svg_legend(lay),
        *_svg_axes(lay),
    ]
    for i, row in enumerate(rows):
        parts.extend(_svg_group(i, row, lay))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------- model card
def _is_hub_id(name: Any) -> bool:
    """True for strings shaped like ``name`` or ``org/name``; local paths (``./x``, ``/x``, ``a/b/c``) are not."""
    if not isinstance(name, str) or not name or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _fmt_pct(value: Any) -> str:
    """Percentage with one decimal, or a dash when the figure was not measured."""
    clean = None if value is None else float(value)
    return _DASH if clean is None or math.isnan(clean) else f"{100 * clean:.1f} %"


def _fmt_bytes(value: Any) -> str:
    """Exact byte count (for diffing builds) plus a human-readable size."""
    if value is None:
        return _DASH
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{int(value):,} bytes ({size:.1f} {unit})"


def _fmt_multiple(value: Any) -> str:
    """Total storage as a multiple of one model, e.g. ``1.23×``."""
    return _DASH if value is None else f"{float(value):.2f}×"


def _md_cell(value: Any) -> str:
    """Make a value safe inside a markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _section_summary(info: Mapping[str, Any]) -> str:
    n = len(info.get("experts") or {})
    method = info.get("merge_method") or "an unspecified method"
    return (
        f"This checkpoint was built with `retex-hf`: {n} fine-tuned experts of one "
        f"backbone merged into one set of weights (`{method}`), plus small per-task low-rank ReTeX offsets that "
        "restore each expert's behaviour. A router built from SiM task signatures sends every input to its task's "
        "offset, so the model serves all tasks without being told which task an input belongs to."
    )


def _section_base(info: Mapping[str, Any]) -> str:
    base = info.get("base")
    return "## Base model\n\n" + (f"`{base}`" if base else _DASH)


def _section_experts(info: Mapping[str, Any]) -> str:
    experts: Mapping[str, Any] = info.get("experts") or {}
    num_labels: Mapping[str, Any] = info.get("num_labels") or {}
    lines = ["## Experts", "", "| Task | Source | Labels |", "|---|---|---|"]
    for task, source in experts.items():
        lines.append(f"| {_md_cell(task)} | `{_md_cell(source)}` | {_md_cell(num_labels.get(task, _DASH))} |")
    if not experts:
        lines.append(f"| {_DASH} | {_DASH} | {_DASH} |")
    return "\n".join(lines)


def _section_merge(info: Mapping[str, Any]) -> str:
    lines = ["## Merge", "", f"- **Method:** `{info.get('merge_method') or _DASH}`"]
    for key, value in (info.get("merge_hparams") or {}).items():
        lines.append(f"- `{key}`: `{value}`")
    if info.get("budget") is not None:
        lines.append(f"- **Offset budget:** {info['budget']}")
    if info.get("recovery_steps") is not None:
        lines.append(f"- **Recovery steps:** {info['recovery_steps']}")
    if info.get("router_rule") is not None:
        layer = info.get("router_layer") or "all"
        lines.append(f"- **Router:** {info['router_rule']} rule on the features after {layer} encoder layer(s)")
    return "\n".join(lines)


def _section_storage(info: Mapping[str, Any]) -> str:
    storage: Mapping[str, Any] = info.get("storage") or {}
    rows = [
        ("Merged weights", _fmt_bytes(storage.get("merged_weights"))),
        ("Task offsets", _fmt_bytes(storage.get("offsets"))),
        ("Router (signatures, rule)", _fmt_bytes(storage.get("signatures"))),
        ("Task heads", _fmt_bytes(storage.get("heads"))),
        ("**Total**", _fmt_bytes(storage.get("total"))),
        ("Total vs. one model", _fmt_multiple(storage.get("total_vs_one_model"))),
    ]
    return "\n".join(["## Storage", "", "| Part | Size |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _section_metrics(metrics: Sequence[Mapping[str, Any]]) -> str:
    header = "| Task | Expert | Merged | ReTeX | Router accuracy | Fidelity | Normalized accuracy |"
    keys = ("expert_accuracy", "merged_accuracy", "retex_accuracy", "router_accuracy", "fidelity")
    lines = ["## Per-task metrics", "", header, "|---|---|---|---|---|---|---|"]
    for m in metrics:
        cells = [_fmt_pct(m.get(k)) for k in keys] + [_fmt_pct(m.get("normalized_accuracy"))]
        lines.append(f"| {_md_cell(m.get('task', _DASH))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Fidelity is agreement with the expert's own predictions; normalized accuracy is ReTeX accuracy divided by "
        "expert accuracy.",
        "",
        f"![Per-task accuracy: expert, merged and ReTeX]({PLOT_FILENAME})",
    ]
    return "\n".join(lines)


def _section_usage(model_id: str) -> str:
    return "\n".join(
        [
            "## How to use",
            "",
            "```python",
            'import retex_hf  # registers model_type "retex" with the transformers Auto classes',
            "from transformers import AutoModel",
            "",
            f'model = AutoModel.from_pretrained("{model_id}")',
            "out = model(**inputs)  # inputs prepared as for the base model (tokenizer / image processor)",
            "out.logits, out.task_ids  # predictions, and the task each input was routed to",
            "```",
        ]
    )


def _plot_rows(metrics: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Map metric records onto the three plotted series."""
    return [
        {
            "task": str(m.get("task", "")),
            "expert": m.get("expert_accuracy"),
            "merged": m.get("merged_accuracy"),
            "retex": m.get("retex_accuracy"),
        }
        for m in metrics
    ]


def _card_data(info: Mapping[str, Any]) -> ModelCardData:
    """YAML front matter; base_model only when it names a Hub repo, since the Hub rejects local paths there."""
    base = info.get("base")
    return ModelCardData(
        library_name="transformers",
        tags=list(CARD_TAGS),
        base_model=base if _is_hub_id(base) else None,
        license=info.get("license"),
    )


def write_model_card(directory: str | Path, info: dict) -> Path:
    """Write ``README.md`` (and ``accuracy.svg`` when ``info["metrics"]`` is given) into a built model directory.

    ``info`` keys: base, experts (task -> source), merge_method, merge_hparams, storage, and optionally metrics,
    budget, recovery_steps, num_labels, license, repo_id (used in the usage snippet instead of the directory).
    Missing optional keys are shown as dashes rather than failing, so a partial build still gets a card.
    Returns the path of the README.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plot_path = directory / PLOT_FILENAME
    metrics = list(info.get("metrics") or [])
    sections = [
        f"# ReTeX multi-task model: {', '.join(map(str, (info.get('experts') or {}).keys())) or 'experts'}",
        _section_summary(info),
        _section_base(info),
        _section_experts(info),
        _section_merge(info),
        _section_storage(info),
    ]
    if metrics:
        plot_path.write_text(accuracy_plot_svg(_plot_rows(metrics), "Per-task accuracy"), encoding="utf-8")
        sections.append(_section_metrics(metrics))
    elif plot_path.exists():
        plot_path.unlink()  # a stale plot from an earlier build would contradict the card
    sections.append(_section_usage(str(info.get("repo_id") or directory)))
    body = "\n\n".join(sections) + "\n"
    card = ModelCard(f"---\n{_card_data(info).to_yaml()}\n---\n\n{body}")
    readme = directory / "README.md"
    card.save(readme)
    return readme
