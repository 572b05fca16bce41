"""retex-hf: several fine-tuned experts of one backbone in one Hugging Face checkpoint.

Importing the package registers model_type "retex" with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from .builder import build_retex
from .configuration_retex import RetexConfig
from .merging import available_merge_methods, register_merge_method
from .modeling_retex import (
    RetexForConditionalGeneration,
    RetexForImageClassification,
    RetexForSequenceClassification,
    RetexModel,
    RetexOutput,
    RetexPreTrainedModel,
    UnknownTaskError,
)
from .pipelines import register_pipelines
from .safety import BuildInputError, CheckpointError

__version__ = "0.1.0"

AutoConfig.register("retex", RetexConfig, exist_ok=True)
AutoModel.register(RetexConfig, RetexModel, exist_ok=True)
AutoModelForImageClassification.register(RetexConfig, RetexForImageClassification, exist_ok=True)
AutoModelForSequenceClassification.register(RetexConfig, RetexForSequenceClassification, exist_ok=True)
AutoModelForSeq2SeqLM.register(RetexConfig, RetexForConditionalGeneration, exist_ok=True)
register_pipelines()

__all__ = [
    "BuildInputError",
    "CheckpointError",
    "RetexConfig",
    "RetexForConditionalGeneration",
    "RetexForImageClassification",
    "RetexForSequenceClassification",
    "RetexModel",
    "RetexOutput",
    "RetexPreTrainedModel",
    "UnknownTaskError",
    "available_merge_methods",
    "build_retex",
    "register_merge_method",
]
