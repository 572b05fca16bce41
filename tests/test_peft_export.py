"""`export_peft(task, dir)`: a LoRA adapter that, over the plain merged model, answers like the
recovered expert, loaded with nothing but peft and transformers."""

from __future__ import annotations

import torch
from built_models import built
from peft import PeftModel


def test_adapter_over_the_plain_merged_model_reproduces_the_task(tmp_path):
    suite, model, _ = built("bert")
    task = suite.tasks[0]  # materialize_merged() carries the first task's head by default
    model.export_peft(task, tmp_path / "adapter")
    adapted = PeftModel.from_pretrained(model.materialize_merged(), str(tmp_path / "adapter")).eval()
    inputs = {k: v[:16] for k, v in suite.test[task].items()}
    with torch.no_grad():
        expected = model(**inputs, task=task).logits[:, : model.config.num_labels_of(task)]
        torch.testing.assert_close(adapted(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        plain = model.materialize_merged()(**inputs).logits
    assert not torch.allclose(plain, expected, atol=1e-2)  # the adapter is what makes the difference


def test_adapter_for_a_task_with_its_own_label_count(tmp_path):
    suite, model, _ = built("bert")
    task = next(t for t in suite.tasks if model.config.num_labels_of(t) != model.config.num_labels_of(suite.tasks[0]))
    model.export_peft(task, tmp_path / "adapter")
    base = model.materialize_merged(head_of=task)  # the merged body with a head of this task's width
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    inputs = {k: v[:16] for k, v in suite.test[task].items()}
    with torch.no_grad():
        expected = model(**inputs, task=task).logits[:, : model.config.num_labels_of(task)]
        torch.testing.assert_close(adapted(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
