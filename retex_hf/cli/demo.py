"""Build a ReTeX model from a small offline setup and print its accuracy next to the experts.

The setup is made on the spot: a tiny backbone and experts fine-tuned on synthetic tasks from
different domains (retex_hf.synthetic), so it runs anywhere in well under a minute, offline.
"""

from __future__ import annotations

import argparse
import time

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="bert", choices=["bert", "roberta", "clip"], help="tiny backbone")
    parser.add_argument("--tasks", type=int, default=3, help="number of synthetic tasks (experts)")
    parser.add_argument("--merge", default="ties", help="merge method (see retex_hf.available_merge_methods())")
    parser.add_argument("--budget", type=float, default=0.1, help="offset parameters per task, fraction of the model")
    parser.add_argument("--recovery-steps", type=int, default=100, help="distillation steps (0: SVD offsets only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also save the checkpoint to this directory")


def run(args: argparse.Namespace) -> int:
    from .. import build_retex
    from ..evaluation import HeadSpec, evaluate_classification, format_reports
    from ..synthetic import make_suite

    # Models this small run several times faster on one thread than on two.
    torch.set_num_threads(1)
    start = time.perf_counter()
    suite = make_suite(args.backbone, num_tasks=args.tasks, seed=args.seed)
    print(f"made {len(suite.experts)} {args.backbone} experts on synthetic tasks in {time.perf_counter() - start:.1f}s")
    head_kwargs, head_specs = {}, None
    if suite.heads:
        scale = suite.head_logit_scale
        head_kwargs = {"heads": suite.heads, "normalize_features": True, "logit_scale": scale}
        head_specs = {t: HeadSpec(w, scale, normalize=True) for t, w in suite.heads.items()}
    start = time.perf_counter()
    model = build_retex(
        suite.base,
        suite.experts,
        suite.calibration,
        merge=args.merge,
        budget=args.budget,
        recovery_steps=args.recovery_steps,
        seed=args.seed,
        **head_kwargs,
    )
    print(f"built the ReTeX model ({args.merge} merge, budget {args.budget}) in {time.perf_counter() - start:.1f}s")
    reports = evaluate_classification(model, suite.test, suite.test_labels, suite.experts, head_specs)
    print("\naccuracy % (merged: static merge; retex: task unknown, routed; given: task known)")
    print(format_reports(reports))
    storage = model.retex_storage()
    print(f"\ncheckpoint: {storage['total'] / 1e6:.2f} MB = {storage['total_vs_one_model']:.2f}x one model")
    if args.output:
        model.save_pretrained(args.output)
        print(f"saved to {args.output}")
    return 0
