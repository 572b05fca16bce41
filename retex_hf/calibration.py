"""Calibration and evaluation data from `datasets`: specs, columns, preprocessing.

A spec is a local csv/json/jsonl/parquet file, a local dataset directory, or a `load_dataset`
name (``name``, ``name:config``, with ``@split``). Rows that already hold model inputs
(``input_ids``, ``pixel_values``) are used as they are; otherwise a text or image column is run
through the base model's tokenizer or image processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch

from .data import MODEL_INPUT_KEYS

FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def parse_assignments(values: list[str] | None, what: str) -> dict[str, str]:
    """``["task=spec", ...]`` -> ``{task: spec}``, with the culprit named on a malformed entry."""
    result = {}
    for value in values or []:
        task, sep, spec = value.partition("=")
        if not sep or not task or not spec:
            raise ValueError(f"{what} {value!r} is not of the form TASK=VALUE")
        if task in result:
            raise ValueError(f"{what} names task {task!r} twice")
        result[task] = spec
    return result


def load_spec(spec: str) -> datasets.Dataset:
    path = Path(spec.split("@")[0])
    split = spec.split("@")[1] if "@" in spec else "train"
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"unsupported data file {path} (use {', '.join(FILE_BUILDERS)})")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    name, _, config = spec.split("@")[0].partition(":")
    return datasets.load_dataset(name, config or None, split=split)


def load_preprocessor(base: str | Path):
    """The base's tokenizer or image processor (None when it ships neither)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    for loader, kwargs in ((AutoTokenizer, {}), (AutoImageProcessor, {"use_fast": False})):
        try:
            return loader.from_pretrained(str(base), **kwargs)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def to_model_inputs(
    dataset: datasets.Dataset,
    preprocessor: Any = None,
    text_column: str = "text",
    image_column: str = "image",
    max_length: int = 128,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Batched model inputs for the first ``limit`` rows of ``dataset``."""
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    present = [k for k in MODEL_INPUT_KEYS if k in dataset.column_names]
    if present:
        from .data import collate, to_examples

        return collate(to_examples(dataset.select_columns(present)))
    if preprocessor is None:
        raise ValueError(
            f"data has columns {dataset.column_names} but no model inputs, and the base has no tokenizer or "
            "image processor to make them"
        )
    if text_column in dataset.column_names:
        return dict(
            preprocessor(
                list(dataset[text_column]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        )
    if image_column in dataset.column_names:
        images = [image.convert("RGB") if hasattr(image, "convert") else image for image in dataset[image_column]]
        return {"pixel_values": preprocessor(images, return_tensors="pt")["pixel_values"]}
    raise ValueError(
        f"data has neither the text column {text_column!r} nor the image column {image_column!r}: "
        f"columns are {dataset.column_names}"
    )


def labels_of(dataset: datasets.Dataset, label_column: str = "label", limit: int | None = None) -> torch.Tensor:
    if label_column not in dataset.column_names:
        raise ValueError(f"no label column {label_column!r}; columns are {dataset.column_names}")
    values = dataset[label_column][: limit if limit is not None else len(dataset)]
    return torch.as_tensor(values, dtype=torch.long)
