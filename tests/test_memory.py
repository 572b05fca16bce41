"""The build keeps at most one whole expert in memory at a time, whatever the number of experts:
experts given as directories are read tensor by tensor while merging and loaded one by one after."""

from __future__ import annotations

import gc
import weakref

from retex_hf.builder import sources as sources_module
from retex_hf.builder.build import build_retex
from retex_hf.synthetic import make_suite


def test_at_most_one_expert_is_loaded_at_a_time(tmp_path, monkeypatch):
    suite = make_suite("bert", num_tasks=3, seed=0)
    paths = suite.save(tmp_path)
    live: list[weakref.ref] = []
    peak = {"alive": 0, "loads": 0}
    original = sources_module.WeightSource.load

    def tracking_load(self):
        gc.collect()
        model = original(self)
        if self.directory is not None and "expert" in self.role:
            live.append(weakref.ref(model))
            peak["loads"] += 1
            peak["alive"] = max(peak["alive"], sum(ref() is not None for ref in live))
        return model

    monkeypatch.setattr(sources_module.WeightSource, "load", tracking_load)
    build_retex(paths["base"], paths["experts"], suite.calibration, budget=0.1, recovery_steps=0, quiet=True)
    assert peak["loads"] == 3
    assert peak["alive"] == 1
