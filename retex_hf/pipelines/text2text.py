"""`pipeline("retex-text2text-generation", model=DIR)`: routed generation for T5-style checkpoints.

transformers 5 dropped its text2text-generation pipeline; this one is registered under its own
name so it cannot shadow anything. Each input is routed once on its encoder text, generated with
its task's offsets, and the result names that task.
"""

from __future__ import annotations

from transformers import Pipeline


class RetexText2TextGenerationPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, retex_task: str | None = None, truncation=None, max_length=None, **generate_kwargs):
        preprocess = {}
        if truncation is not None:
            preprocess["truncation"] = truncation
        if max_length is not None:
            preprocess["max_length"] = max_length
        forward = dict(generate_kwargs)
        if retex_task is not None:
            self.model.task_index(retex_task)  # a clear error for an unknown name, before any input is read
            forward["task"] = retex_task
        return preprocess, forward, {}

    def __call__(self, inputs: str | list[str], **kwargs):
        """Generate for one text or a list of texts; each result is ``{"generated_text", "task", "unknown"}``."""
        return super().__call__(inputs, **kwargs)

    def preprocess(self, text: str, **tokenizer_kwargs):
        if not isinstance(text, str):
            raise TypeError(f"retex-text2text-generation takes strings, got {type(text).__name__}")
        return self.tokenizer(text, return_tensors="pt", **tokenizer_kwargs)

    def _forward(self, model_inputs, **generate_kwargs):
        out = self.model.generate(**model_inputs, return_routing=True, **generate_kwargs)
        return {"sequences": out.sequences, "task_ids": out.task_ids, "unknown": out.unknown}

    def postprocess(self, model_outputs):
        task_names = self.model.config.task_names
        text = self.tokenizer.decode(model_outputs["sequences"][0], skip_special_tokens=True)
        return {
            "generated_text": text,
            "task": task_names[int(model_outputs["task_ids"].reshape(-1)[0])],
            "unknown": bool(model_outputs["unknown"].reshape(-1)[0]),
        }
