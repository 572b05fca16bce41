"""ReTeX offsets: what each expert lost in the merge, stored compactly and added back per sample."""

from .bank import LowRankOffset, OffsetBank, VectorOffset
from .fit import TaskOffsets, fit_task_offsets
from .svd import Whitening, allocate_ranks, factorise
from .targets import OffsetTargets, discover_targets

__all__ = [
    "LowRankOffset",
    "OffsetBank",
    "OffsetTargets",
    "TaskOffsets",
    "VectorOffset",
    "Whitening",
    "allocate_ranks",
    "discover_targets",
    "factorise",
    "fit_task_offsets",
]
