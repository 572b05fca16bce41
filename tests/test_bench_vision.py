"""The ``vision`` benchmark suite in quick mode: real data, a real pretrained tower, real experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPVisionModel

from retex_hf.bench import vision_data
from retex_hf.bench.suite import SUITES
from retex_hf.bench.vision import prepare
from retex_hf.bench.vision_pretrain import relative_distance


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench-cache")
    return cache, prepare(quick=True, cache_dir=cache, seed=0, tasks=None)


def test_registered_under_its_name():
    assert SUITES["vision"] is prepare


def test_quick_suite_structure(suite):
    _, data = suite
    tasks = list(vision_data.QUICK_TASKS)
    assert list(data.expert_dirs) == tasks
    for mapping in (data.calibration, data.validation, data.test, data.domains, data.id2label, data.heads):
        assert list(mapping) == tasks
    assert len(set(data.domains.values())) == len(tasks), "every quick task has its own input domain"
    hidden = CLIPVisionModel.from_pretrained(data.base_dir).config.hidden_size
    for task in tasks:
        num_labels = len(data.id2label[task])
        assert data.heads[task].shape == (num_labels, hidden)
        assert data.calibration[task]["pixel_values"].shape == (64, 3, 28, 28)
        test = data.test[task]
        assert test.inputs["pixel_values"].shape == (100, 3, 28, 28)
        assert test.labels.dtype == torch.long and 0 <= int(test.labels.min()) and int(test.labels.max()) < num_labels
        assert len(set(test.labels.tolist())) == num_labels, f"{task}: every class appears in its test split"
        info = data.expert_info[task]
        for key in ("test_accuracy", "relative_distance", "train_seconds", "validation_accuracy_by_epoch"):
            assert key in info, f"{task}: expert_info lacks {key}"
    assert data.expert_info["digits"]["shares_source_images_with"] == ["digits_inverted"]
    assert data.normalize_features and data.head_logit_scale > 1


def test_experts_are_fine_tunes_of_the_base(suite):
    _, data = suite
    base = CLIPVisionModel.from_pretrained(data.base_dir)
    for task, directory in data.expert_dirs.items():
        distance = relative_distance(CLIPVisionModel.from_pretrained(directory), base)
        assert 0 < distance < 1.0, f"{task}: relative distance {distance}"
        assert distance == pytest.approx(data.expert_info[task]["relative_distance"], abs=1e-3)


def test_no_test_image_is_trained_or_pretrained_on():
    sizes = vision_data.QUICK_SIZES["mnist"]
    splits = vision_data.load_source("mnist", sizes, seed=0)

    def keys(x: torch.Tensor) -> set[bytes]:
        return {row.numpy().tobytes() for row in x}

    test = keys(splits.test[0])
    assert len(test) == sizes.test
    assert not test & keys(splits.train[0])
    assert not test & keys(splits.validation[0])
    assert not test & keys(splits.pretrain)


def test_shipped_image_processor_reproduces_pixel_values(suite):
    _, data = suite
    grey = vision_data.load_mnist_5k()[0][:4]
    processor = AutoImageProcessor.from_pretrained(data.preprocessor_dir)
    images = [Image.fromarray((x.numpy() * 255).round().astype(np.uint8)).convert("RGB") for x in grey]
    processed = processor(images=images, return_tensors="pt")["pixel_values"]
    expected = vision_data.to_pixel_values(vision_data.grey(grey))
    torch.testing.assert_close(processed, expected, atol=1e-5, rtol=0)


def test_rerun_reuses_the_cache(suite):
    cache, data = suite
    before = {t: (d / "model.safetensors").stat().st_mtime_ns for t, d in data.expert_dirs.items()}
    again = prepare(quick=True, cache_dir=cache, seed=0, tasks=["digits"])
    assert again.expert_dirs["digits"] == data.expert_dirs["digits"]
    assert (again.expert_dirs["digits"] / "model.safetensors").stat().st_mtime_ns == before["digits"]
    torch.testing.assert_close(again.heads["digits"], data.heads["digits"])
    torch.testing.assert_close(again.test["digits"].inputs["pixel_values"], data.test["digits"].inputs["pixel_values"])


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(ValueError, match="'no_such_task'"):
        prepare(quick=True, cache_dir=tmp_path, seed=0, tasks=["mnist", "no_such_task"])
