"""Benchmark a suite on real data: experts, baselines, ReTeX, and a report (JSON, markdown, SVG plots).

Suites: `text` (all-MiniLM-L6-v2 and eight real text tasks), `vision` (when installed). Experts
are fine-tuned once and cached in --cache-dir; a re-run reuses them. Needs `pip install -e .[bench]`.

Options:
  --quick              a few tasks, few samples, a two-point scaling study (budget x1, x2): the smoke test
  --output DIR         where report.json, report.md and the plots go (default bench-results/SUITE; quick: SUITE-quick)
  --cache-dir DIR      where fine-tuned experts are cached (default ~/.cache/retex_hf/bench)
  --tasks a,b          run only these tasks of the suite
  --seed N             data splits, fine-tuning and build seed
  --budget F           offset parameters per task, as a fraction of the model (default 0.02)
  --recovery-steps N   distillation steps of the ReTeX build (default 200; quick 30)
  --merge NAME         the merge under the offsets (default tsv; see retex_hf.available_merge_methods())
  --router-layer K     route on the features after K encoder layers (0, the default: the last)
  --router-rule R      auto (default), subspace (SiM's residual) or discriminant
  --threads N          torch threads (default 1: faster than 2 on a busy 2-core machine)
  --build-threads N    torch threads of the ReTeX build alone (default: --threads)
  --no-scaling         skip the scaling study (tasks 2/4/6/8, budgets x0.25..x2)
  --keep-checkpoint D  also keep the ReTeX checkpoint in directory D

Example:
  retex-hf bench text --quick --output /tmp/bench
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "retex_hf" / "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("suite", help="suite name: text or vision")
    parser.add_argument("--quick", action="store_true", help="a few tasks, few samples: the smoke test")
    parser.add_argument("--output", default=None, help="report directory (default bench-results/SUITE, or SUITE-quick)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="cache of fine-tuned experts")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.02, help="offset parameters per task (fraction of model)")
    parser.add_argument("--recovery-steps", type=int, default=None, help="distillation steps (default 200; quick 30)")
    parser.add_argument("--merge", default="tsv", help="merge method under the offsets")
    parser.add_argument("--router-layer", type=int, default=0, help="route after K encoder layers (0: last)")
    parser.add_argument("--router-rule", default="auto", choices=("auto", "subspace", "discriminant"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--build-threads", type=int, default=None, help="torch threads of the ReTeX build")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling study")
    parser.add_argument("--keep-checkpoint", default=None, help="also save the ReTeX checkpoint here")


def run(args: argparse.Namespace) -> int:
    from ..bench import SUITE_MODULES, load_suites
    from ..bench.runner import RunSettings, run

    if args.suite not in load_suites([args.suite]):
        raise SystemExit(f"unknown suite {args.suite!r}; known: {', '.join(SUITE_MODULES)}")
    settings = RunSettings(
        quick=args.quick,
        seed=args.seed,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        budget=args.budget,
        recovery_steps=args.recovery_steps if args.recovery_steps is not None else (30 if args.quick else 200),
        merge=args.merge,
        router_layer=args.router_layer,
        router_rule=args.router_rule,
        threads=args.threads,
        build_threads=args.build_threads,
        scaling=not args.no_scaling,
        budget_factors=(1.0, 2.0) if args.quick else RunSettings.budget_factors,
        bootstrap_rounds=200 if args.quick else 1000,
        throughput_batches=2 if args.quick else 12,
        keep_checkpoint=args.keep_checkpoint,
    )
    # quick runs never overwrite the committed full reports in bench-results/SUITE
    output = Path(args.output or Path("bench-results") / (f"{args.suite}-quick" if args.quick else args.suite))
    result = run(args.suite, output, Path(args.cache_dir), settings)
    print((output / "report.md").read_text())
    return 0 if result else 1
