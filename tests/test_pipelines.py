"""`pipeline()` on ReTeX checkpoints: the built-in classification tasks and routed text2text generation."""

from __future__ import annotations

import pytest
import torch
from built_models import built
from transformers import pipeline

from retex_hf.pipelines import (
    TEXT2TEXT_TASK,
    RetexImageClassificationPipeline,
    RetexText2TextGenerationPipeline,
    RetexTextClassificationPipeline,
)


def _direct(model, preprocessor, raw, backbone):
    if backbone == "clip":
        inputs = preprocessor(images=raw, return_tensors="pt")
    else:
        inputs = preprocessor(raw, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits, out.task_ids


@pytest.mark.parametrize("backbone", ["bert", "clip"])
def test_builtin_classification_pipeline_names_the_routed_task_and_its_label(backbone):
    suite, model, directory = built(backbone)
    task_name = "image-classification" if backbone == "clip" else "text-classification"
    pipe = pipeline(task_name, model=str(directory), device="cpu")
    expected_class = RetexImageClassificationPipeline if backbone == "clip" else RetexTextClassificationPipeline
    assert isinstance(pipe, expected_class)
    preprocessor = suite.preprocessor()
    for index, task in enumerate(suite.tasks):
        raw = suite.raw_inputs(task)[:6]
        results = pipe(raw, top_k=None)
        logits, task_ids = _direct(model, preprocessor, raw, backbone)
        labels = model.config.task_id2label[task]
        for row, result in enumerate(results):
            routed = model.config.task_names[int(task_ids[row])]
            assert all(r["task"] == routed for r in result)
            assert len(result) == len(model.config.task_id2label[routed])  # only the routed task's labels
            assert abs(sum(r["score"] for r in result) - 1.0) < 1e-5
            assert result[0]["label"] == model.config.task_id2label[routed][int(logits[row].argmax())]
        assert sum(r[0]["task"] == task for r in results) >= 5  # the router sends (almost) all to their task
        # Task known: skip the router; labels come from that task's label set.
        given = pipe(raw[:2], retex_task=task)
        given = [g if isinstance(g, dict) else g[0] for g in given]
        assert all(g["task"] == task and g["label"] in labels.values() for g in given)
        assert index == model.task_index(task)


def test_text_classification_default_output_is_one_dict_per_text():
    suite, _, directory = built("bert")
    pipe = pipeline("text-classification", model=str(directory), device="cpu")
    texts = suite.raw_inputs(suite.tasks[0])[:3]
    out = pipe(texts)
    assert isinstance(out, list) and len(out) == 3
    assert set(out[0]) == {"label", "score", "task", "unknown"}
    with pytest.raises(ValueError, match="nope"):
        pipe(texts, retex_task="nope")


def test_pipelines_leave_other_models_as_the_builtins_do(tmp_path):
    """Registering our classes under the built-in names must not change results for a plain model."""
    suite, _, _ = built("bert")
    expert = suite.experts[suite.tasks[0]]
    expert.save_pretrained(tmp_path)
    suite.preprocessor().save_pretrained(tmp_path)
    pipe = pipeline("text-classification", model=str(tmp_path), device="cpu")
    text = suite.raw_inputs(suite.tasks[0])[0]
    out = pipe(text)[0]
    assert set(out) == {"label", "score"}
    with torch.no_grad():
        logits = expert(**suite.preprocessor()(text, return_tensors="pt")).logits[0]
    assert out["label"] == expert.config.id2label[int(logits.argmax())]
    assert out["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)


def test_text2text_pipeline_generates_like_the_model_and_names_the_task():
    suite, model, directory = built("t5")
    pipe = pipeline(TEXT2TEXT_TASK, model=str(directory), device="cpu")
    assert isinstance(pipe, RetexText2TextGenerationPipeline)
    tokenizer = suite.preprocessor()
    for task in suite.tasks:
        texts = suite.raw_inputs(task)[:4]
        results = pipe(texts, max_new_tokens=6)
        for text, result in zip(texts, results):
            encoded = tokenizer(text, return_tensors="pt")
            generated = model.generate(**encoded, max_new_tokens=6, return_routing=True)
            assert result["generated_text"] == tokenizer.decode(generated.sequences[0], skip_special_tokens=True)
            assert result["task"] == model.config.task_names[int(generated.task_ids[0])]
        assert sum(r["task"] == task for r in results) >= 3
        forced = pipe(texts[:1], max_new_tokens=6, retex_task=task)[0]
        assert forced["task"] == task
