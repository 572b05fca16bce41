"""Router-free task identification (SiM signatures) and the per-call routing state."""

from .context import RoutingState, current_routing, routing
from .signatures import Signature, SubspaceRouter, default_components, fit_signature, subspace_residuals

__all__ = [
    "RoutingState",
    "Signature",
    "SubspaceRouter",
    "current_routing",
    "default_components",
    "fit_signature",
    "routing",
    "subspace_residuals",
]
