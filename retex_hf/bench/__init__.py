"""Benchmarks on real data: suites (text, vision), baselines, the ReTeX build, and the report."""

from __future__ import annotations

import importlib

from .suite import SUITES, LabelledSplit, SuiteData, register_suite

__all__ = ["SUITES", "LabelledSplit", "SuiteData", "load_suites", "register_suite"]

SUITE_MODULES = ("text", "vision")


def load_suites(names: tuple[str, ...] | list[str] = SUITE_MODULES) -> dict:
    """Import the named suite modules that exist, so each registers itself; returns the registry."""
    for name in names:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    return SUITES
