"""Checked loading and atomic saving for ReTeX checkpoints, which users download from strangers.

Loading reads safetensors only (unless ``use_safetensors`` says otherwise), checks weight files
against their recorded SHA-256, and refuses a checkpoint whose tensors are missing or disagree in
shape with its config, naming them, instead of random-initialising them. Saving writes into a
temporary sibling directory and renames it into place.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from safetensors import SafetensorError

from .safety import CheckpointError, verify_checksums, write_checksums


class CheckedCheckpointMixin:
    """Placed before `PreTrainedModel` in the bases of `RetexPreTrainedModel`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        kwargs.setdefault("use_safetensors", True)
        want_info = kwargs.pop("output_loading_info", False)
        tolerate = kwargs.get("ignore_mismatched_sizes", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # report mismatches by name below, not as a bare error
        where = Path(os.fspath(pretrained_model_name_or_path))
        if kwargs.get("subfolder"):
            where = where / kwargs["subfolder"]
        if where.is_dir():
            verify_checksums(where)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            files = ", ".join(str(p) for p in sorted(where.glob("*.safetensors"))) if where.is_dir() else str(where)
            raise CheckpointError(f"cannot read the weights of {where} ({files}): {error}") from error
        problems = []
        if info.get("missing_keys"):
            problems.append(f"missing tensors {sorted(info['missing_keys'])}")
        if info.get("mismatched_keys") and not tolerate:
            shapes = [f"{k} (file {tuple(a)}, config {tuple(b)})" for k, a, b in sorted(info["mismatched_keys"])]
            problems.append(f"tensors whose shape disagrees with config.json: {shapes}")
        if info.get("unexpected_keys"):
            problems.append(f"tensors the config does not describe {sorted(info['unexpected_keys'])}")
        if problems:
            raise CheckpointError(f"ReTeX checkpoint {where} does not match its config: " + "; ".join(problems))
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, made atomic: written into a temporary sibling directory,
        then renamed into place, so a save killed half-way leaves the previous checkpoint intact.
        Files already in ``save_directory`` that the save does not rewrite (a tokenizer, a model card)
        are kept; weight files are checksummed (`retex_hf.safety.CHECKSUM_FILE`)."""
        target = Path(os.fspath(save_directory)).absolute()
        if target.exists() and not target.is_dir():
            raise OSError(f"{target} exists and is not a directory")
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", target.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.retex-save-{uuid.uuid4().hex[:12]}"
        staging.mkdir()  # not mkdtemp: the checkpoint keeps the umask's permissions, not 0700
        try:
            result = super().save_pretrained(staging, *args, **kwargs)
            write_checksums(staging)
            if target.exists():
                _keep_other_files(target, staging)
                aside = target.parent / f".{target.name}.retex-old-{uuid.uuid4().hex[:12]}"
                os.replace(target, aside)
                os.replace(staging, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return result


_WEIGHT_FILE = re.compile(r"^(model|pytorch_model|tf_model|flax_model).*\.(safetensors|bin|h5|msgpack|json)$")


def _keep_other_files(previous: Path, staging: Path) -> None:
    """Carry over what a save into ``previous`` in place would have left there: every file the new
    save does not write, except stale weight shards and their index."""
    for entry in previous.iterdir():
        if (staging / entry.name).exists() or _WEIGHT_FILE.match(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
