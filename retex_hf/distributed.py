"""Running under ``accelerate launch``: several processes build or evaluate one checkpoint together.

Building: every process computes the merge, the offsets and the signatures itself (deterministic,
cheaper than shipping them around), recovery training is data-parallel through
`transformers.Trainer` (which reads the launch from the environment), and only the main process
writes the output directory while the others wait for it. Evaluating: each process scores a
contiguous share of every task's rows and the shares are gathered back in order, so every
process ends with exactly the predictions a single process would make; the main process reports.

Nothing here starts a process group unless the process was launched with more than one process:
without a launch, everything runs exactly as it would without this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

Result = TypeVar("Result", torch.Tensor, tuple)


def world_size() -> int:
    """Processes in the launch (1 without one), read from the environment accelerate/torchrun set."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def launched_state():
    """accelerate's `PartialState` when launched with several processes, else None.

    None keeps single-process runs free of any process-group set-up (and of accelerate's device
    choices), so that they behave exactly as before.
    """
    if world_size() == 1:
        return None
    from accelerate import PartialState

    # Without an accelerator, accelerate only forms a (gloo) process group when told it runs on the
    # CPU, as Trainer tells it (TrainingArguments(use_cpu=True)); say the same, so that the shared
    # state is the same whichever of us creates it first.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.num_processes > 1 else None


def is_main_process() -> bool:
    state = launched_state()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    state = launched_state()
    if state is not None:
        state.wait_for_everyone()


@contextmanager
def main_process_writes() -> Iterator[bool]:
    """``with main_process_writes() as writer: if writer: ...``: the main process does the block's
    writing; the others skip it and wait at the end, so nobody reads a half-written output and no
    process exits while the main one still writes. An error on the main process is raised there;
    the others then stop at the barrier's timeout (the launcher tears them down first)."""
    writer = is_main_process()
    yield writer
    wait_for_everyone()


def on_rows(compute: Callable[[dict[str, torch.Tensor]], Result], inputs: Mapping[str, torch.Tensor]) -> Result:
    """``compute(inputs)`` (a tensor, or a tuple of tensors, one row per input row), with the rows
    shared out among the launched processes and the results gathered back in row order.

    Each process gets a contiguous block (accelerate's `split_between_processes`), so concatenating
    the blocks in process order restores the original order. With fewer rows than processes every
    process computes all of them (an empty share could not be run through a model).
    """
    state = launched_state()
    rows = next(iter(inputs.values())).shape[0] if inputs else 0
    if state is None or rows < state.num_processes:
        return compute(dict(inputs))
    from accelerate.utils import gather_object

    with state.split_between_processes(dict(inputs)) as share:  # copies: it slices the dict in place
        local = compute(share)
    parts = gather_object([_to_cpu(local)])
    if isinstance(local, torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat([part[i] for part in parts]) for i in range(len(local)))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return tuple(v.detach().cpu() for v in value)


def per_device_batch_size(batch_size: int) -> int:
    """The per-process batch that keeps the global batch at ``batch_size`` under data parallelism
    (rounded up when it does not divide), so a launch trains the same recipe as one process."""
    return max(1, -(-batch_size // world_size()))
