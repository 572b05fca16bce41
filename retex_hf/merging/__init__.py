"""Model-merging methods behind one name-based registry.

Importing this package imports every method module, which registers the
methods as a side effect; new methods only need a `register_merge_method`
decorated function in a module imported here.
"""

from . import basic, emr, tall, ties_dare, tsv  # noqa: F401  (registration side effects)
from .emr import emr_expert, emr_masks_and_rescalers
from .registry import (
    MergeMethod,
    available_merge_methods,
    get_merge_method,
    merge_tensor,
    register_merge_method,
    resolve_hparams,
    validate_inputs,
)
from .state_dict import merge_state_dict
from .tall import tall_expert, tall_masks
from .tsv import polar_orthogonalize, tsv_compress

__all__ = [
    "MergeMethod",
    "available_merge_methods",
    "emr_expert",
    "emr_masks_and_rescalers",
    "get_merge_method",
    "merge_state_dict",
    "merge_tensor",
    "polar_orthogonalize",
    "register_merge_method",
    "resolve_hparams",
    "tall_expert",
    "tall_masks",
    "tsv_compress",
    "validate_inputs",
]
