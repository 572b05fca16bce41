"""One benchmark run: suite → experts → baselines → ReTeX build → measurements → report.

The ReTeX build runs in a child process so its wall time and peak memory are its own (the parent
holds every expert and baseline in memory). The child saves the checkpoint; the parent loads it
back with `from_pretrained`, so what is measured is what a user would download.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..evaluation import HeadSpec, retex_logits
from . import baselines, measure
from .suite import SUITES, SuiteData

METHODS = [
    "expert",
    "task_arithmetic",
    "ties",
    "tsv_m",
    "emr",
    "tall",
    "sim_emr",
    "sim_tall",
    "retex",
    "retex_task_given",
]
ROUTED = {"sim_emr", "sim_tall", "retex"}


@dataclass
class RunSettings:
    quick: bool = False
    seed: int = 0
    tasks: list[str] | None = None
    budget: float = 0.02
    recovery_steps: int = 200
    merge: str = "tsv"  # the strongest static merge on both suites: less left for the offsets to carry
    router_layer: int = 0  # route on the features after this many encoder layers (0: the last)
    router_rule: str = "auto"  # subspace (SiM), discriminant, or auto: chosen on held-out calibration
    threads: int = 1
    build_threads: int | None = None  # torch threads of the ReTeX build (None: ``threads``)
    scaling: bool = True
    budget_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # scaling study: multiples of ``budget``
    bootstrap_rounds: int = 1000
    throughput_batches: int = 12
    keep_checkpoint: str | None = None  # a directory to save the ReTeX checkpoint to (default: discarded)
    log: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        self.log.append(line)
        print(line, flush=True)


def load_experts(data: SuiteData) -> dict:
    import transformers

    experts = {}
    for task, directory in data.expert_dirs.items():
        config = transformers.AutoConfig.from_pretrained(directory)
        cls = getattr(transformers, (config.architectures or ["AutoModel"])[0])
        experts[task] = cls.from_pretrained(directory).eval()
    return experts


def head_specs(data: SuiteData) -> dict[str, HeadSpec] | None:
    if not data.heads:
        return None
    return {t: HeadSpec(w, data.head_logit_scale, data.normalize_features) for t, w in data.heads.items()}


# --- the ReTeX build, in a child process -------------------------------------------------------
def _build_child(request: dict, queue) -> None:
    try:
        torch.set_num_threads(request.pop("threads"))
        from .. import build_retex

        output = Path(request.pop("output"))
        start = time.perf_counter()
        model = build_retex(**request)
        seconds = time.perf_counter() - start
        model.save_pretrained(output)
        queue.put(
            {
                "build_seconds": seconds,
                "build_threads": torch.get_num_threads(),
                "peak_rss_mib": measure.peak_rss_mib(),
                "storage": model.retex_storage(),
            }
        )
    except BaseException as err:  # noqa: BLE001  (reported to the parent, which raises)
        queue.put({"error": f"{type(err).__name__}: {err}"})


def build_in_child(data: SuiteData, tasks: list[str], output: Path, settings: RunSettings, **overrides) -> dict:
    request = {
        "base": str(data.base_dir),
        "experts": {t: str(data.expert_dirs[t]) for t in tasks},
        "calibration": {t: data.calibration[t] for t in tasks},
        "merge": settings.merge,
        "budget": settings.budget,
        "recovery_steps": settings.recovery_steps,
        "heads": {t: data.heads[t] for t in tasks} if data.heads else None,
        "id2label": {t: data.id2label[t] for t in tasks},
        "normalize_features": data.normalize_features,
        "logit_scale": data.head_logit_scale,
        "seed": settings.seed,
        "router_layer": settings.router_layer,
        "router_rule": settings.router_rule,
        "quiet": True,
        "threads": settings.build_threads or settings.threads,
        "output": str(output),
        **overrides,
    }
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_build_child, args=(request, queue))
    child.start()
    result = queue.get()
    child.join()
    if "error" in result:
        raise RuntimeError(f"ReTeX build failed in the child process: {result['error']}")
    return result


def load_retex(path: Path):
    from transformers import AutoModel

    import retex_hf  # noqa: F401  (registers model_type "retex" with the Auto classes)

    return AutoModel.from_pretrained(path).eval()


# --- outcomes ------------------------------------------------------------------------------------
def retex_outcomes(model, data: SuiteData, tasks: list[str]) -> tuple[dict, dict, dict]:
    """Routed and task-given outcomes per task, and the router's accuracy and unknown rate."""
    routed, given, router = {}, {}, {}
    for task in tasks:
        split, width = data.test[task], len(data.id2label[task])
        logits, ids, unknown = retex_logits(model, split.inputs)
        right = ids == model.task_index(task)
        routed[task] = measure.outcome_from_logits(logits, width, right)
        given_logits, _, _ = retex_logits(model, split.inputs, task=task)
        given[task] = measure.outcome_from_logits(given_logits, width)
        router[task] = {"accuracy": right.float().mean().item(), "unknown_rate": unknown.float().mean().item()}
    return routed, given, router


def baseline_outcomes(pool: baselines.ExpertPool, data: SuiteData, settings: RunSettings) -> tuple[dict, dict]:
    """Outcomes of every baseline on every task's test split, and the hyper-parameters chosen."""
    tasks, test, val = pool.tasks, data.test, data.validation
    width = {t: len(data.id2label[t]) for t in tasks}
    out: dict[str, dict] = {m: {} for m in METHODS if not m.startswith("retex")}
    chosen: dict = {}
    for t in tasks:
        out["expert"][t] = measure.outcome_from_logits(pool.logits(t, None, test[t]), width[t])
    settings.say("experts evaluated; tuning task arithmetic on the validation split")
    grids = baselines.QUICK_GRIDS if settings.quick else baselines.GRIDS
    ta_lambda, chosen["task_arithmetic_validation"] = baselines.tune_static(
        pool, val, "task_arithmetic", grids["task_arithmetic"], "scaling"
    )
    ties_lambda, chosen["ties_validation"] = baselines.tune_static(pool, val, "ties", grids["ties"], "scaling")
    chosen.update(task_arithmetic_lambda=ta_lambda, ties_lambda=ties_lambda, ties_density=0.2, tsv_alpha=1.0)
    for method, body in (
        ("task_arithmetic", pool.merged("task_arithmetic", scaling=ta_lambda)),
        ("ties", pool.merged("ties", scaling=ties_lambda)),
        ("tsv_m", pool.merged("tsv", scaling=1.0)),
    ):
        for t in tasks:
            out[method][t] = measure.outcome_from_logits(pool.logits(t, body, test[t]), width[t])
        settings.say(f"{method} evaluated")
    for t, body in pool.emr_bodies().items():
        out["emr"][t] = measure.outcome_from_logits(pool.logits(t, body, test[t]), width[t])
    settings.say("EMR evaluated; TALL masks: λ per task on the validation split")
    chosen["tall_lambda"] = {}
    for t in tasks:
        scores = {lam: pool.accuracy(t, pool.tall_body(t, lam), val[t]) for lam in grids["tall"]}
        lam = chosen["tall_lambda"][t] = max(scores, key=scores.get)
        out["tall"][t] = measure.outcome_from_logits(pool.logits(t, pool.tall_body(t, lam), test[t]), width[t])
    route, chosen["sim_components"] = baselines.sim_router(pool, data.calibration)
    chosen["sim_router_accuracy"] = {}
    for i, t in enumerate(tasks):
        right = route(test[t].inputs) == i
        chosen["sim_router_accuracy"][t] = right.float().mean().item()
        for method, source in (("sim_emr", "emr"), ("sim_tall", "tall")):
            known = out[source][t]
            predictions = torch.where(right, known.predictions, torch.full_like(known.predictions, -1))
            out[method][t] = measure.Outcome(predictions, known.probs, right)
    settings.say("TALL and SiM evaluated")
    return out, chosen


# --- summary with bootstrap intervals ------------------------------------------------------------
def summarize(outcomes: dict, data: SuiteData, tasks: list[str], rounds: int, seed: int) -> dict:
    """Per task and on average: accuracy, normalised accuracy, fidelity (95 % bootstrap intervals) and KL."""
    summary: dict = {"per_task": {t: {} for t in tasks}, "mean": {}}
    expert = outcomes["expert"]
    boots: dict[str, list[dict]] = {m: [] for m in outcomes}
    for j, t in enumerate(tasks):
        labels = data.test[t].labels.numpy()
        index = measure.bootstrap_indices(len(labels), rounds, seed + j)
        expert_pred = expert[t].predictions.numpy()
        expert_correct = expert_pred == labels
        for method, per_task in outcomes.items():
            o = per_task[t]
            pred = o.predictions.numpy()
            correct, agree = pred == labels, pred == expert_pred
            boot = measure.bootstrap_task(correct, expert_correct, agree, index)
            boots[method].append(boot)
            summary["per_task"][t][method] = {
                "accuracy": float(correct.mean()),
                "accuracy_ci": measure.interval(boot["accuracy"]),
                "normalized_accuracy": float(correct.mean() / max(expert_correct.mean(), 1e-12)),
                "normalized_accuracy_ci": measure.interval(boot["normalized"]),
                "fidelity": float(agree.mean()),
                "fidelity_ci": measure.interval(boot["fidelity"]),
                "kl_from_expert": measure.mean_kl(expert[t].probs, o),
                "n": int(len(labels)),
            }
    for method, parts in boots.items():
        rows = [summary["per_task"][t][method] for t in tasks]
        mean = {}
        for key, boot_key in (
            ("accuracy", "accuracy"),
            ("normalized_accuracy", "normalized"),
            ("fidelity", "fidelity"),
        ):
            mean[key] = float(np.mean([r[key] for r in rows]))
            mean[f"{key}_ci"] = measure.interval(np.mean([p[boot_key] for p in parts], axis=0))
        kls = [r["kl_from_expert"] for r in rows if r["kl_from_expert"] is not None]
        mean["kl_from_expert"] = float(np.mean(kls)) if kls else None
        summary["mean"][method] = mean
    return summary


def run(suite: str, output: Path, cache_dir: Path, settings: RunSettings) -> dict:
    """Run the whole benchmark of one suite and write the report to ``output``; returns the report."""
    from . import report, throughput
    from .scaling import scaling_study

    torch.set_num_threads(settings.threads)
    output.mkdir(parents=True, exist_ok=True)
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; available: {sorted(SUITES)}")
    start = time.perf_counter()
    data = SUITES[suite](quick=settings.quick, cache_dir=cache_dir, seed=settings.seed, tasks=settings.tasks)
    tasks = list(data.expert_dirs)
    settings.say(f"suite {suite}: {len(tasks)} tasks, experts ready in {time.perf_counter() - start:.0f}s")
    experts = load_experts(data)
    pool = baselines.ExpertPool(data.base_dir, experts, head_specs(data))
    outcomes, chosen = baseline_outcomes(pool, data, settings)

    scratch = tempfile.TemporaryDirectory(prefix="retex-bench-")
    checkpoint = Path(settings.keep_checkpoint or Path(scratch.name) / "checkpoint")
    build = build_in_child(data, tasks, checkpoint, settings)
    build["checkpoint_bytes_on_disk"] = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    settings.say(f"ReTeX built in {build['build_seconds']:.0f}s (peak {build['peak_rss_mib']:.0f} MiB)")
    model = load_retex(checkpoint)
    outcomes["retex"], outcomes["retex_task_given"], router = retex_outcomes(model, data, tasks)
    summary = summarize(outcomes, data, tasks, settings.bootstrap_rounds, settings.seed)
    speed = throughput.measure_throughput(model, pool, data, settings)
    settings.say(f"throughput measured: {json.dumps(speed['ratios'])}")
    scaling = None
    if settings.scaling:
        expert_predictions = {t: outcomes["expert"][t].predictions for t in tasks}
        scaling = scaling_study(data, tasks, pool, settings, chosen, expert_predictions, main=(model, build))
    scratch.cleanup()
    result = {
        "suite": suite,
        "quick": settings.quick,
        "seed": settings.seed,
        "tasks": tasks,
        "domains": data.domains,
        "num_labels": {t: len(data.id2label[t]) for t in tasks},
        "test_sizes": {t: int(len(data.test[t].labels)) for t in tasks},
        "experts": data.expert_info,
        "settings": {k: v for k, v in vars(settings).items() if k != "log"},
        "chosen_hyperparameters": chosen,
        "methods": list(outcomes),
        "summary": summary,
        "router": router,
        "retex_router": {
            "rule": model.config.router_rule,
            "layer": model.config.router_layer,
            "components": model.config.router_num_components,
        },
        "storage": build["storage"],
        "build": {k: build[k] for k in ("build_seconds", "build_threads", "peak_rss_mib", "checkpoint_bytes_on_disk")},
        "throughput": speed,
        "scaling": scaling,
        "total_seconds": time.perf_counter() - start,
    }
    report.write_report(result, output)
    settings.say(f"report written to {output}")
    return result
