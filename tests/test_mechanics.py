"""Exact mechanics on all four backbones: offsets at full rank reproduce each expert, a mixed
batch equals single-task batches, save → Auto*.from_pretrained gives the same class and outputs,
and materialize() bakes the same expert into a plain transformers model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_clip, tiny_t5, tiny_text
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSeq2SeqLM

import retex_hf

ATOL = 2e-4


def _concat(parts):
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _build(base, experts, inputs, **kwargs):
    calibration = {t: inputs(i, 12) for i, t in enumerate(experts)}
    kwargs.setdefault("merge", "averaging")
    kwargs.setdefault("budget", 2.0)
    kwargs.setdefault("recovery_steps", 0)
    return retex_hf.build_retex(base, experts, calibration, **kwargs)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def text_case(request):
    base, experts, inputs = tiny_text(request.param)
    return _build(base, experts, inputs), experts, inputs


def test_text_offsets_reproduce_experts(text_case, tmp_path):
    model, experts, inputs = text_case
    assert isinstance(model, retex_hf.RetexForSequenceClassification)
    tests = [inputs(i, 6, gen_seed=7) for i in range(len(experts))]
    for i, (task, expert) in enumerate(experts.items()):
        want = expert(**tests[i]).logits
        got = model(**tests[i], task=task).logits
        n = want.shape[-1]
        torch.testing.assert_close(got[:, :n], want, atol=ATOL, rtol=1e-3)
        assert torch.isinf(got[:, n:]).all()
        torch.testing.assert_close(model.materialize(task)(**tests[i]).logits, want, atol=ATOL, rtol=1e-3)
    mixed = _concat(tests)
    names = list(experts)
    out = model(**mixed, task=[names[0]] * 6 + [names[1]] * 6)
    assert out.task_ids.tolist() == [0] * 6 + [1] * 6
    separate = [model(**t, task=name).logits for t, name in zip(tests, names)]
    separate = torch.cat([F.pad(s, (0, out.logits.shape[-1] - s.shape[-1])) for s in separate])
    finite = torch.isfinite(out.logits)
    torch.testing.assert_close(out.logits[finite], separate[finite], atol=1e-5, rtol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    torch.testing.assert_close(reloaded(**mixed, task=out.task_ids).logits[finite], out.logits[finite])
    routed = model(**mixed)
    torch.testing.assert_close(reloaded(**mixed).logits, routed.logits)
    assert reloaded(**mixed).task_ids.tolist() == routed.task_ids.tolist()


def test_text_budget_respected(text_case):
    model, _, _ = text_case
    body = sum(p.numel() for n, p in model.backbone.named_parameters() if not n.startswith("classifier."))
    for task, count in model.offsets.parameters_per_task().items():
        assert 0 < count <= model.config.offset_budget * body, task


def test_clip_offsets_reproduce_experts(tmp_path):
    base, experts, heads, inputs = tiny_clip()
    model = _build(base, experts, inputs, heads=heads, normalize_features=True, logit_scale=10.0)
    assert isinstance(model, retex_hf.RetexForImageClassification)
    tests = [inputs(i, 5, gen_seed=3) for i in range(2)]
    for i, (task, expert) in enumerate(experts.items()):
        pooled = expert(**tests[i]).pooler_output
        want = 10.0 * F.normalize(pooled, dim=-1) @ F.normalize(heads[task], dim=-1).T
        got = model(**tests[i], task=task).logits[:, : heads[task].shape[0]]
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(model.materialize(task)(**tests[i]).pooler_output, pooled, atol=ATOL, rtol=1e-3)
    mixed = _concat(tests)
    out = model(**mixed, task=["alpha"] * 5 + ["beta"] * 5)
    separate = torch.cat([model(**t, task=name).logits for t, name in zip(tests, ["alpha", "beta"])])
    finite = torch.isfinite(out.logits)
    torch.testing.assert_close(out.logits[finite], separate[finite], atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    torch.testing.assert_close(reloaded(**mixed).logits, model(**mixed).logits)


@pytest.mark.parametrize("tie", [False, True])
def test_t5_offsets_reproduce_experts_and_generate(tie, tmp_path):
    base, experts, inputs = tiny_t5(tie=tie)
    model = _build(base, experts, inputs)
    assert isinstance(model, retex_hf.RetexForConditionalGeneration)
    tests = [inputs(i, 4, gen_seed=5) for i in range(2)]
    decoder = torch.tensor([[0, 5, 9, 13]] * 4)
    for i, (task, expert) in enumerate(experts.items()):
        want = expert(**tests[i], decoder_input_ids=decoder).logits
        got = model(**tests[i], decoder_input_ids=decoder, task=task).logits
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-3)
        gen_want = expert.generate(**tests[i], max_new_tokens=6, do_sample=False)
        torch.testing.assert_close(model.generate(**tests[i], max_new_tokens=6, do_sample=False), gen_want)
        beams = model.generate(**tests[i], max_new_tokens=6, num_beams=2, do_sample=False)
        torch.testing.assert_close(beams, expert.generate(**tests[i], max_new_tokens=6, num_beams=2, do_sample=False))
    mixed = _concat(tests)
    routed = model.generate(**mixed, task=["alpha"] * 4 + ["beta"] * 4, max_new_tokens=6, do_sample=False)
    separate = [model.generate(**t, task=n, max_new_tokens=6, do_sample=False) for t, n in zip(tests, experts)]
    width = routed.shape[1]
    separate = torch.cat([F.pad(s, (0, width - s.shape[1])) for s in separate])
    torch.testing.assert_close(routed, separate)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    torch.testing.assert_close(
        reloaded.generate(**mixed, max_new_tokens=6, do_sample=False),
        model.generate(**mixed, max_new_tokens=6, do_sample=False),
    )
    torch.testing.assert_close(
        model.materialize("beta")(**tests[1], decoder_input_ids=decoder).logits,
        experts["beta"](**tests[1], decoder_input_ids=decoder).logits,
        atol=ATOL,
        rtol=1e-3,
    )


def test_gradient_checkpointing_keeps_offset_gradients():
    base, experts, inputs = tiny_text("bert")
    model = _build(base, experts, inputs, budget=0.5)
    batch = {**inputs(0, 4), "labels": torch.tensor([0, 1, 0, 1])}

    def offset_grads():
        model.zero_grad()
        model.train()
        model(**batch, task="alpha").loss.backward()
        return {
            n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("offsets.") and p.grad is not None
        }

    for module in model.modules():
        if hasattr(module, "p") and isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    plain = offset_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = offset_grads()
    assert plain and plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["bert", "clip", "t5"])
def test_export_peft_reproduces_the_recovered_expert(backbone, tmp_path):
    from peft import PeftModel

    if backbone == "bert":
        base, experts, inputs = tiny_text("bert")
        model = _build(base, experts, inputs, budget=0.5)
        test = inputs(1, 4, gen_seed=2)

        def run(m):
            return m(**test).logits
    elif backbone == "clip":
        base, experts, heads, inputs = tiny_clip()
        model = _build(base, experts, inputs, heads=heads, budget=0.5)
        test = inputs(1, 4, gen_seed=2)

        def run(m):
            return m(**test).pooler_output
    else:
        base, experts, inputs = tiny_t5()
        model = _build(base, experts, inputs, budget=0.5)
        test = {**inputs(1, 4, gen_seed=2), "decoder_input_ids": torch.tensor([[0, 5, 9]] * 4)}

        def run(m):
            return m(**test).logits

    model.export_peft("beta", tmp_path / "adapter")
    adapted = PeftModel.from_pretrained(model.materialize_merged(head_of="beta"), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(run(adapted), run(model.materialize("beta")), atol=1e-4, rtol=1e-4)
