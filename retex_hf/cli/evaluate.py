"""Evaluate a ReTeX checkpoint: per-task accuracy, router accuracy, and against experts if given.

Example:
  retex-hf eval ./retex-model --data sst2=sst2_test.csv --data mnli=mnli_test.csv \\
      --expert sst2=./sst2 --expert mnli=./mnli --json report.json
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ReTeX checkpoint directory or Hub id")
    parser.add_argument("--data", action="append", required=True, metavar="TASK=SPEC", help="labelled test data")
    parser.add_argument("--expert", action="append", default=[], metavar="TASK=MODEL", help="compare with experts")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many rows per task")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true")


def evaluate_specs(model, specs: dict[str, str], args, experts: dict | None, preprocessor) -> list[dict]:
    """Per-task report dicts for labelled data specs, with expert comparisons when experts are given."""
    from tqdm.auto import tqdm

    from ..builder.sources import WeightSource
    from ..calibration import labels_of, load_spec, to_model_inputs
    from ..distributed import is_main_process
    from ..evaluation import HeadSpec, evaluate_classification

    unknown = [t for t in specs if t not in model.config.task_names]
    if unknown:
        raise ValueError(f"--data names tasks the model does not know: {unknown}; known: {model.config.task_names}")
    test, labels = {}, {}
    quiet = getattr(args, "quiet", False) or not is_main_process()
    for task, spec in tqdm(specs.items(), desc="loading evaluation data", disable=quiet):
        dataset = load_spec(spec)
        limit = getattr(args, "limit", None)
        test[task] = to_model_inputs(dataset, preprocessor, args.text_column, args.image_column, limit=limit)
        labels[task] = labels_of(dataset, args.label_column, limit)
    loaded = {t: WeightSource(s, f"expert {t!r}").load() for t, s in (experts or {}).items() if t in specs}
    heads = None
    if model.config.head_type == "tensor":
        heads = {
            t: HeadSpec(model.heads.weights[t].detach(), model.config.logit_scale, model.config.normalize_features)
            for t in specs
        }
    reports = evaluate_classification(model, test, labels, loaded if len(loaded) == len(specs) else None, heads)
    return [r.as_dict() for r in reports]


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    import retex_hf  # noqa: F401  (registers the retex model type)

    from ..calibration import load_preprocessor, parse_assignments
    from ..distributed import main_process_writes
    from ..evaluation import TaskReport, format_reports

    model = AutoModel.from_pretrained(args.model).eval()
    experts = parse_assignments(args.expert, "--expert")
    specs = parse_assignments(args.data, "--data")
    # Under `accelerate launch` every process scores a share of the rows (`evaluation` gathers them)
    # and the main process alone reports.
    reports = evaluate_specs(model, specs, args, experts, load_preprocessor(args.model))
    with main_process_writes() as writer:
        if writer:
            print(format_reports([TaskReport(**r) for r in reports]))
            if args.json:
                with open(args.json, "w") as handle:
                    json.dump({"model": args.model, "tasks": reports}, handle, indent=2)
    return 0
