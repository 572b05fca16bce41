"""Where the base's and the experts' weights come from, read tensor by tensor.

Merging needs the same tensor of every expert at once, never whole experts: reading safetensors
lazily (``safe_open``) keeps the build's peak memory near two models whatever the number of
experts. Pickle checkpoints (``.bin``) are refused unless the caller opts in, and even then are
read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

ModelSpec = PreTrainedModel | str | os.PathLike
ADAPTER_CONFIG = "adapter_config.json"


def resolve_directory(spec: str | os.PathLike) -> Path:
    """A local directory as is; a Hub id downloaded (configs and safetensors only) to the cache."""
    path = Path(spec)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(spec), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    for name in config.architectures or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return AutoModel


class WeightSource:
    """One checkpoint: its config, its tensors by name, and the full model on demand."""

    def __init__(self, spec: ModelSpec, role: str, allow_pickle: bool = False):
        self.role = role
        self.allow_pickle = allow_pickle
        self._model = spec.eval() if isinstance(spec, PreTrainedModel) else None
        self._files: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self._state: dict[str, torch.Tensor] | None = None
        if self._model is not None:
            self.directory = None
            self.config = spec.config
            return
        if not isinstance(spec, (str, os.PathLike)):
            raise TypeError(f"{role}: expected a PreTrainedModel, a directory or a Hub id, got {type(spec).__name__}")
        self.directory = resolve_directory(spec)
        if (self.directory / ADAPTER_CONFIG).exists():
            raise ValueError(
                f"{role}: {self.directory} is a PEFT adapter, not a model; pass it to build_retex as an expert "
                "and it is merged over the base there"
            )
        self.config = AutoConfig.from_pretrained(self.directory)
        self._index_safetensors()

    def _index_safetensors(self) -> None:
        index = self.directory / SAFE_WEIGHTS_INDEX_NAME
        single = self.directory / SAFE_WEIGHTS_NAME
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {k: self.directory / f for k, f in weight_map.items()}
        elif single.exists():
            with safe_open(single, framework="pt") as handle:
                self._files = {k: single for k in handle.keys()}
        elif (self.directory / WEIGHTS_NAME).exists() or (self.directory / WEIGHTS_INDEX_NAME).exists():
            if not self.allow_pickle:
                raise ValueError(
                    f"{self.role}: {self.directory} holds only a pickle checkpoint ({WEIGHTS_NAME}); pickles can run "
                    "code when loaded. Convert it to safetensors, or pass allow_pickle=True to load it with "
                    "torch.load(weights_only=True)"
                )
        else:
            raise ValueError(f"{self.role}: no model weights ({SAFE_WEIGHTS_NAME}) in {self.directory}")

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return type(self._model) if self._model is not None else model_class(self.config)

    def _memory_state(self) -> dict[str, torch.Tensor] | None:
        """Tensors of a model held in memory (given as an object, or a pickle checkpoint, which cannot
        be read lazily and is loaded once with weights_only), gathered once rather than per read."""
        if self._model is None and not self._files and self.allow_pickle:
            self._model = self.load()
        if self._model is None:
            return None
        if self._state is None:
            self._state = {k: v.detach() for k, v in self._model.state_dict(keep_vars=True).items()}
        return self._state

    def keys(self) -> set[str]:
        state = self._memory_state()
        return set(state) if state is not None else set(self._files)

    def get(self, name: str) -> torch.Tensor | None:
        """The tensor saved under ``name`` (None when the checkpoint lacks it)."""
        state = self._memory_state()
        if state is not None:
            return state.get(name)
        path = self._files.get(name)
        if path is None:
            return None
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path].get_tensor(name)

    def load(self) -> PreTrainedModel:
        """The whole model (for forward passes): the given object, or a fresh from_pretrained."""
        if self._model is not None:
            return self._model
        kwargs = {"use_safetensors": not self.allow_pickle or bool(self._files)}
        return self.model_class.from_pretrained(self.directory, **kwargs).eval()

    def close(self) -> None:
        self._handles.clear()
