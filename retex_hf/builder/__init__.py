"""Building a ReTeX checkpoint from a base model and its fine-tuned experts."""

from .build import build_retex
from .sources import WeightSource

__all__ = ["WeightSource", "build_retex"]
