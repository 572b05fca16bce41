"""PEFT LoRA experts: an adapter directory over the base is merged in before building."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import tiny_text
from transformers import BertForSequenceClassification

import retex_hf


def test_lora_adapter_expert_is_recovered_like_a_full_expert(tmp_path):
    base, experts, inputs = tiny_text("bert")
    base.save_pretrained(tmp_path / "base")
    config = copy.deepcopy(base.config)
    config.num_labels = 4
    seq_cls = BertForSequenceClassification(config)
    seq_cls.bert.load_state_dict(base.state_dict(), strict=False)
    lora = get_peft_model(
        seq_cls, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value", "dense"], lora_alpha=8)
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name or "classifier" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    lora.save_pretrained(tmp_path / "adapter")
    reference = PeftModel.from_pretrained(_with_head(base, config), str(tmp_path / "adapter")).merge_and_unload().eval()

    specs = {"alpha": experts["alpha"], "lora": str(tmp_path / "adapter")}
    calibration = {"alpha": inputs(0, 12), "lora": inputs(1, 12)}
    model = retex_hf.build_retex(
        str(tmp_path / "base"), specs, calibration, merge="averaging", budget=2.0, recovery_steps=0, quiet=True
    )
    test = inputs(1, 5, gen_seed=9)
    want = reference(**test).logits
    got = model(**test, task="lora").logits[:, : want.shape[-1]]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)
    assert model.config.num_labels_of("lora") == 4


def _with_head(base, config):
    model = BertForSequenceClassification(config)
    model.bert.load_state_dict(base.state_dict(), strict=False)
    return model
