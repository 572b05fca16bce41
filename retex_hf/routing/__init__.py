"""Router-free task identification: SiM signatures, the shared-covariance discriminant for tasks
that share a domain, the choices made on calibration inputs, and the per-call routing state."""

from .context import RoutingState, current_routing, routing
from .discriminant import discriminant_scores, fit_precision
from .router import TaskRouter
from .selection import ROUTER_RULES, select_components, select_router_rule
from .signatures import Signature, default_components, fit_signature, subspace_residuals

SubspaceRouter = TaskRouter  # the name before the router had a second rule

__all__ = [
    "ROUTER_RULES",
    "RoutingState",
    "Signature",
    "SubspaceRouter",
    "TaskRouter",
    "current_routing",
    "default_components",
    "discriminant_scores",
    "fit_precision",
    "fit_signature",
    "routing",
    "select_components",
    "select_router_rule",
    "subspace_residuals",
]
