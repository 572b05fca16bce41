"""Building a ReTeX checkpoint from a base model and its fine-tuned experts."""

from .build import build_retex
from .loading import load_model

__all__ = ["build_retex", "load_model"]
