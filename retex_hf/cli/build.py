"""Build a ReTeX checkpoint from a base and its experts (local directories or Hub ids).

Example:
  retex-hf build --base ./base --expert sst2=./sst2 --expert mnli=./mnli \\
      --calibration sst2=sst2.csv --calibration mnli=mnli.csv --output ./retex-model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base model: directory or Hub id")
    parser.add_argument("--expert", action="append", required=True, metavar="TASK=MODEL", help="repeat per task")
    parser.add_argument("--calibration", action="append", required=True, metavar="TASK=SPEC", help="unlabeled inputs")
    parser.add_argument("--output", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--merge", default="ties", help="merge method")
    parser.add_argument("--merge-arg", action="append", default=[], metavar="NAME=VALUE", help="merge hyper-parameter")
    parser.add_argument("--budget", type=float, default=0.03, help="offset parameters per task (fraction of model)")
    parser.add_argument("--recovery-steps", type=int, default=200)
    parser.add_argument("--recovery-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="recovery option, e.g. learning_rate=1e-3 or select_on_held_out=false")  # fmt: skip
    parser.add_argument("--router-layer", type=int, default=0, help="route after K encoder layers (0: the last)")
    parser.add_argument("--router-rule", default="auto", choices=("auto", "subspace", "discriminant"),
                        help="how the router picks a task (auto: the better on held-out inputs)")  # fmt: skip
    parser.add_argument("--num-calibration", type=int, default=32, help="calibration inputs per task")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--eval", action="append", default=[], metavar="TASK=SPEC", help="labelled data for the card")
    parser.add_argument("--heads", default=None, help="safetensors file of zero-shot heads, one tensor per task")
    parser.add_argument("--logit-scale", type=float, default=None, help="with --heads: CLIP-style normalised logits")
    parser.add_argument("--allow-pickle", action="store_true", help="accept .bin experts (weights_only loading)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from .. import build_retex
    from ..calibration import load_preprocessor, load_spec, parse_assignments, to_model_inputs
    from ..distributed import is_main_process, main_process_writes

    experts = parse_assignments(args.expert, "--expert")
    calibration_specs = parse_assignments(args.calibration, "--calibration")
    merge_kwargs = {k: _value(v) for k, v in parse_assignments(args.merge_arg, "--merge-arg").items()}
    recovery_kwargs = {k: _value(v) for k, v in parse_assignments(args.recovery_arg, "--recovery-arg").items()}
    preprocessor = load_preprocessor(args.base)
    calibration = {
        task: to_model_inputs(
            load_spec(spec), preprocessor, args.text_column, args.image_column, limit=args.num_calibration
        )
        for task, spec in calibration_specs.items()
    }
    head_kwargs = {}
    if args.heads:
        head_kwargs["heads"] = load_file(args.heads)
        if args.logit_scale is not None:
            head_kwargs.update(normalize_features=True, logit_scale=args.logit_scale)
    model = build_retex(
        args.base,
        experts,
        calibration,
        merge=args.merge,
        budget=args.budget,
        recovery_steps=args.recovery_steps,
        recovery_kwargs=recovery_kwargs,
        router_layer=args.router_layer,
        router_rule=args.router_rule,
        merge_kwargs=merge_kwargs,
        allow_pickle=args.allow_pickle,
        seed=args.seed,
        quiet=args.quiet or not is_main_process(),  # under `accelerate launch`: one set of progress bars
        **head_kwargs,
    )
    metrics = None
    if args.eval:
        from .evaluate import evaluate_specs

        metrics = evaluate_specs(model, parse_assignments(args.eval, "--eval"), args, experts, preprocessor)
    with main_process_writes() as writer:  # under `accelerate launch` the others wait for the write
        if writer:
            write_checkpoint(model, Path(args.output), preprocessor, args, experts, metrics)
    if not is_main_process():
        return 0
    storage = model.retex_storage()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(
        f"wrote {args.output}: {storage['total'] / 1e6:.2f} MB = {storage['total_vs_one_model']:.2f}x one model; "
        f"peak memory of the build process {peak_mb:.0f} MiB"
    )
    return 0


def write_checkpoint(model, output: Path, preprocessor, args, experts, metrics) -> None:
    """Write into a temporary sibling directory and rename: a failed build leaves nothing half-written."""
    from ..card import write_model_card

    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.save_pretrained(staging)
        if preprocessor is not None:
            preprocessor.save_pretrained(staging)
        info = {
            "base": str(args.base),
            "experts": {t: str(s) for t, s in experts.items()},
            "merge_method": model.config.merge_method,
            "merge_hparams": model.config.merge_hparams,
            "storage": model.retex_storage(),
            "budget": model.config.offset_budget,
            "recovery_steps": model.config.recovery_steps,
            "router_rule": model.config.router_rule,
            "router_layer": model.config.router_layer,
            "num_labels": {t: len(v) for t, v in model.config.task_id2label.items()},
        }
        if metrics:
            info["metrics"] = metrics
        write_model_card(staging, info)
        if output.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
            os.replace(output, backup / "previous")
            os.replace(staging, output)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
