"""What is safe to build from and to load, and the errors that say why not.

Two exception types, both ``ValueError`` subclasses so that existing ``except ValueError`` code
keeps working:

- `BuildInputError`: `build_retex` was given inputs it cannot build from (mismatched experts,
  bad task names, calibration that does not fit the backbone, non-finite weights...). Raised by
  the checks here, before anything is written or any long work starts. The message names the
  culprit: the task, the expert, the tensor.
- `CheckpointError`: a ReTeX checkpoint on disk is truncated, corrupted, or disagrees with its
  config. Raised by ``from_pretrained``, never a silent random initialisation. The message names
  the file and/or the tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BuildInputError",
    "CheckpointError",
    "CHECKSUM_FILE",
    "DEFAULT_MAX_RELATIVE_DISTANCE",
    "check_architectures",
    "check_calibration",
    "check_expert_weights",
    "check_task_names",
    "verify_checksums",
    "write_checksums",
]

# ‖θ_t − θ0‖ / ‖θ0‖ over the body tensors above which an expert is refused as not fine-tuned from the base.
# Measured: synthetic fine-tuned experts 0.17–0.24, the tests' randomly perturbed experts 0.43–0.74.
DEFAULT_MAX_RELATIVE_DISTANCE = 1.0
# SHA-256 of every weight file, written by `RetexPreTrainedModel.save_pretrained`; safetensors has no checksum.
CHECKSUM_FILE = "retex_checksums.json"
# The fewest calibration inputs a task's signature can be fit on (mean + one direction + held-out folds).
MIN_CALIBRATION_INPUTS = 3


class BuildInputError(ValueError):
    """`build_retex` inputs that cannot make a valid ReTeX model; the message names the culprit."""


class CheckpointError(ValueError):
    """A ReTeX checkpoint that is truncated, corrupted or inconsistent with its config."""


# ----------------------------------------------------------------------------- build inputs
def _normalised(name: str) -> str:
    return re.sub(r"\s+", "", name).casefold()


def check_task_names(tasks: Sequence[Any]) -> None:
    """Non-empty strings without dots, distinct even ignoring case and whitespace."""
    if not tasks:
        raise BuildInputError("experts is empty: give at least one {task_name: expert}")
    seen: dict[str, str] = {}
    for task in tasks:
        if not isinstance(task, str) or not task.strip() or "." in task:
            raise BuildInputError(f"invalid task name {task!r}: use a non-empty string without dots")
        key = _normalised(task)
        if key in seen:
            raise BuildInputError(
                f"task names {seen[key]!r} and {task!r} differ only by case or whitespace: give them distinct names"
            )
        seen[key] = task


def check_calibration(
    examples: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    accepted_keys: set[str] | None,
    main_input: str | None,
) -> None:
    """Enough inputs per task, keys the backbone's forward accepts, finite values."""
    for task, rows in examples.items():
        if len(rows) < MIN_CALIBRATION_INPUTS:
            raise BuildInputError(
                f"task {task!r} has {len(rows)} calibration inputs; its signature needs at least "
                f"{MIN_CALIBRATION_INPUTS} (about 32 is a good number)"
            )
        keys = set().union(*(row.keys() for row in rows))
        if accepted_keys is not None:
            wrong = sorted(keys - accepted_keys)
            if wrong:
                raise BuildInputError(
                    f"calibration inputs of task {task!r} hold keys {wrong} that the backbone does not accept "
                    f"(it takes {sorted(accepted_keys & {'input_ids', 'pixel_values', 'attention_mask'})} ...)"
                )
        if main_input is not None and main_input not in keys:
            raise BuildInputError(
                f"calibration inputs of task {task!r} have keys {sorted(keys)} but no {main_input!r}, "
                "which the backbone needs"
            )
        for i, row in enumerate(rows):
            for key, value in row.items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise BuildInputError(f"calibration input {i} of task {task!r} has NaN or Inf in {key!r}")


def _finite(value: torch.Tensor, what: str) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise BuildInputError(f"{what} contains NaN or Inf")


@torch.no_grad()
def check_expert_weights(
    base,
    sources: Mapping[str, Any],
    body_names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    head_names: Sequence[str],
    base_name,
    max_relative_distance: float | None = DEFAULT_MAX_RELATIVE_DISTANCE,
) -> dict[str, float]:
    """Stream every tensor once: names and shapes match, values are finite, and each expert lies
    within ``max_relative_distance`` of the base (‖θ_t − θ0‖/‖θ0‖ over the body tensors).

    ``base`` and ``sources`` are `WeightSource`s; ``base_name(name)`` maps an expert tensor name to
    the base's. Returns each expert's relative distance.
    """
    squared = dict.fromkeys(sources, 0.0)
    base_squared = 0.0
    for name in body_names:
        theta0 = base.get(base_name(name))
        if theta0 is None:
            raise BuildInputError(f"base model has no tensor for expert tensor {name!r}")
        if tuple(theta0.shape) != tuple(shapes[name]):
            raise BuildInputError(
                f"base tensor {name!r} has shape {tuple(theta0.shape)}, experts have {tuple(shapes[name])}"
            )
        theta0 = theta0.double()
        _finite(theta0, f"base tensor {name!r}")
        base_squared += theta0.square().sum().item()
        for task, source in sources.items():
            value = source.get(name)
            if value is None:
                raise BuildInputError(f"expert {task!r} has no tensor {name!r}")
            if tuple(value.shape) != tuple(shapes[name]):
                raise BuildInputError(
                    f"expert {task!r} tensor {name!r} has shape {tuple(value.shape)}, base has {tuple(shapes[name])}"
                )
            _finite(value, f"expert {task!r} tensor {name!r}")
            squared[task] += (value.double() - theta0).square().sum().item()
    for name in head_names:
        for task, source in sources.items():
            value = source.get(name)
            if value is not None:
                _finite(value, f"expert {task!r} head tensor {name!r}")
    distances = {t: (s / max(base_squared, 1e-30)) ** 0.5 for t, s in squared.items()}
    if max_relative_distance is not None:
        for task, distance in distances.items():
            if distance > max_relative_distance:
                raise BuildInputError(
                    f"expert {task!r} does not look fine-tuned from this base: relative distance "
                    f"‖θ_t − θ0‖/‖θ0‖ = {distance:.3f} > max_relative_distance={max_relative_distance} "
                    "(check that it was fine-tuned from this base, or raise/disable the limit with "
                    "max_relative_distance=None)"
                )
    return distances


def check_architectures(classes: Mapping[str, str], base_model_type: str | None, model_types: Mapping[str, str]):
    """All experts share one architecture class, and the base one model type with them."""
    items = list(classes.items())
    first_task, first_cls = items[0]
    for task, cls in items[1:]:
        if cls != first_cls:
            raise BuildInputError(
                f"experts have different architectures: {first_task!r} is {first_cls}, {task!r} is {cls}"
            )
    for task, model_type in model_types.items():
        if base_model_type and model_type and model_type != base_model_type:
            raise BuildInputError(
                f"expert {task!r} is a {model_type!r} model ({classes[task]}) but the base is {base_model_type!r}"
            )


# ----------------------------------------------------------------------------- checkpoints
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: str | os.PathLike) -> None:
    """Record the SHA-256 of every ``*.safetensors`` file of a saved checkpoint."""
    directory = Path(directory)
    sums = {p.name: _sha256(p) for p in sorted(directory.glob("*.safetensors"))}
    (directory / CHECKSUM_FILE).write_text(json.dumps({"sha256": sums}, indent=2, sort_keys=True) + "\n")


def verify_checksums(directory: str | os.PathLike) -> None:
    """Compare weight files with their recorded checksums (checkpoints without the file are not checked)."""
    directory = Path(directory)
    record = directory / CHECKSUM_FILE
    if not record.is_file():
        return
    try:
        sums = json.loads(record.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{record} is not a valid checksum record: {error}") from None
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in {CHECKSUM_FILE} but missing")
        if _sha256(path) != expected:
            raise CheckpointError(
                f"{path} is truncated or corrupted: its SHA-256 differs from the one recorded in {CHECKSUM_FILE} "
                "at save time (if you changed the weights on purpose, delete that file)"
            )
