"""Mixed-task batch throughput: ReTeX against one plain model and against per-group reloading.

The three contenders see the same batches, drawn at random from every task's test split:
- one plain expert's forward pass (the ceiling: what serving a single task costs);
- the ReTeX model, routing each sample and applying its offsets in the same pass;
- what the public SiM code does: a routing pass through the pretrained encoder, then for each
  routed group a full state-dict reload of that task's expert body and a forward of the group.
Each is timed twice and the faster run is kept (the machine is shared; the faster run is the one
least disturbed by other processes).
"""

from __future__ import annotations

import torch

from ..evaluation import trim
from . import baselines, measure
from .suite import SuiteData


@torch.no_grad()
def measure_throughput(model, pool: baselines.ExpertPool, data: SuiteData, settings) -> dict:
    batches = measure.mixed_batches(data.test, 64, settings.throughput_batches, settings.seed)
    samples = sum(measure.size(b) for b in batches)
    tasks = pool.tasks
    plain = pool.experts[tasks[0]]
    plain_forward = pool.forward_for(plain, tasks[0])
    bodies = {t: {n: p.detach() for n, p in pool.experts[t].named_parameters() if n in pool.theta0} for t in tasks}
    route, _ = baselines.sim_router(pool, data.calibration)

    def run_plain():
        for batch in batches:
            plain_forward(batch)

    def run_retex():
        for batch in batches:
            model(**batch)

    def run_reload():
        reloads = 0
        for batch in batches:
            routed = route(batch)
            for i in routed.unique().tolist():
                task = tasks[i]
                group = trim(measure.select(batch, (routed == i).nonzero().squeeze(1)))
                probe = pool.probe(task, bodies[task])  # copies the whole body in: the reload
                pool.forward_for(probe, task)(group)
                reloads += 1
        return reloads

    seconds = {}
    repeats = 1 if settings.quick else 2
    seconds["plain_model"], _ = measure.timed(run_plain, repeats)
    seconds["retex"], _ = measure.timed(run_retex, repeats)
    seconds["per_group_reload"], reloads = measure.timed(run_reload, repeats)
    per_second = {k: samples / v for k, v in seconds.items()}
    return {
        "samples": samples,
        "batch_size": 64,
        "batches": len(batches),
        "threads": torch.get_num_threads(),
        "reloads_per_pass": reloads,
        "seconds": seconds,
        "samples_per_second": per_second,
        "ratios": {
            "retex_vs_plain": per_second["retex"] / per_second["plain_model"],
            "retex_vs_per_group_reload": per_second["retex"] / per_second["per_group_reload"],
        },
    }
