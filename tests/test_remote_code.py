"""trust_remote_code: a checkpoint that ships its code loads, and gives the same outputs, in a
process where retex_hf cannot be imported: from a directory and from the (loopback) Hub, for a
BERT-style classifier and a CLIP tower with zero-shot tensor heads (routed by the discriminant rule)."""

from __future__ import annotations

import ast
import json
import sys

import pytest
import torch
from hub_clients import assert_same_outputs, run_client, save_reference
from hub_server import HubServer, client_env
from tiny_models import tiny_clip, tiny_text
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import retex_hf
from retex_hf import remote_code
from retex_hf.checkpointing import REMOTE_CODE_FILES


def _build_text():
    base, experts, inputs = tiny_text("bert")
    calibration = {t: inputs(i, 16) for i, t in enumerate(experts)}
    model = retex_hf.build_retex(
        base, experts, calibration, merge="averaging", budget=0.5, recovery_steps=0, quiet=True
    )
    batch = {k: torch.cat([inputs(0, 3, 7)[k], inputs(1, 3, 7)[k]]) for k in ("input_ids", "attention_mask")}
    return model.eval(), batch


def _build_clip():
    base, experts, heads, inputs = tiny_clip()
    calibration = {t: inputs(i, 16) for i, t in enumerate(experts)}
    model = retex_hf.build_retex(
        base, experts, calibration, heads=heads, normalize_features=True, logit_scale=100.0,
        merge="averaging", budget=0.5, recovery_steps=0, router_rule="discriminant", quiet=True,
    )  # fmt: skip
    assert model.router.rule == "discriminant"  # the bundle must carry the second routing rule too
    batch = {"pixel_values": torch.cat([inputs(0, 3, 7)["pixel_values"], inputs(1, 3, 7)["pixel_values"]])}
    return model.eval(), batch


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A text and a CLIP checkpoint saved with their code, and their reference outputs."""
    root = tmp_path_factory.mktemp("remote-code")
    text, text_batch = _build_text()
    try:  # the documented path: register once, then every save ships the code
        type(text).register_for_auto_class("AutoModel")
        text.save_pretrained(root / "text")
    finally:
        del type(text)._retex_ships_code
    text.save_pretrained(root / "text-plain")  # unregistered: no code, as before
    save_reference(text, text_batch, root / "text.safetensors")
    clip, clip_batch = _build_clip()
    clip.save_pretrained(root / "clip", remote_code=True)
    out = save_reference(clip, clip_batch, root / "clip.safetensors")
    assert set(out.task_ids.tolist()) == {0, 1}
    return root


def test_saves_ship_code_only_when_asked(saved):
    for name in ("text", "clip"):
        assert {p.name for p in (saved / name).iterdir()} >= set(REMOTE_CODE_FILES)
        auto_map = json.loads((saved / name / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModel"] == "modeling_retex.RetexModel"
        assert auto_map["AutoModelForImageClassification"] == "modeling_retex.RetexForImageClassification"
    plain = saved / "text-plain"
    assert not {p.name for p in plain.iterdir()} & set(REMOTE_CODE_FILES)
    assert "auto_map" not in json.loads((plain / "config.json").read_text())
    # With retex_hf imported, its own classes still load the checkpoint (local code wins over auto_map).
    assert type(retex_hf.RetexModel.from_pretrained(saved / "text")).__module__ == "retex_hf.modeling_retex"


def test_bundle_needs_only_what_transformers_needs(saved):
    """transformers' check_imports must find nothing to install, and only one sibling file to fetch."""
    modeling = saved / "text" / "modeling_retex.py"
    allowed = {"torch", "transformers", "safetensors", "huggingface_hub"} | set(sys.stdlib_module_names)
    assert set(get_imports(modeling)) <= allowed
    assert get_relative_imports(modeling) == []
    source = modeling.read_text()
    tree = ast.parse(source)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("retex_hf")]
    # Inference only: building, recovery training and PEFT export stay out, with a clear error in their place.
    assert "retex_hf.builder" not in source.split('"""')[1] and "retex_hf.recovery" not in source.split('"""')[1]
    assert "raise ImportError('export_peft needs the retex_hf package" in source
    # One source of truth: the bundle is regenerated from the installed modules, not a copy kept in the repo.
    assert remote_code.build_modeling_source() == source


def test_trust_remote_code_without_retex_hf(saved, tmp_path):
    code = """
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification
    out = {}
    try:
        AutoModel.from_pretrained(ROOT + "/text")
        out["without_trust"] = None
    except ValueError as exc:
        out["without_trust"] = str(exc)
    text = AutoModel.from_pretrained(ROOT + "/text", trust_remote_code=True)
    out["text"] = compare(text, ROOT + "/text.safetensors")
    head = AutoModelForSequenceClassification.from_pretrained(ROOT + "/text", trust_remote_code=True)
    out["text_head"] = compare(head, ROOT + "/text.safetensors")
    clip = AutoModelForImageClassification.from_pretrained(ROOT + "/clip", trust_remote_code=True)
    out["clip"] = compare(clip, ROOT + "/clip.safetensors")
    # A model loaded from the bundle saves itself with the same code, so it can be shared again.
    text.save_pretrained(ROOT + "/text-again")
    again = AutoModel.from_pretrained(ROOT + "/text-again", trust_remote_code=True)
    out["again"] = compare(again, ROOT + "/text.safetensors")
    try:
        text.export_peft("alpha", ROOT + "/peft")
    except ImportError as exc:
        out["peft"] = str(exc)
    emit(out)
    """
    result = run_client(
        code.replace("ROOT", repr(str(saved))), client_env("http://127.0.0.1:9", tmp_path), no_retex=True
    )
    assert "trust_remote_code=True" in result["without_trust"]
    for key in ("text", "text_head", "again"):
        assert_same_outputs(result[key])
        assert result[key]["module"].startswith("transformers_modules.")
    assert_same_outputs(result["clip"], "RetexForImageClassification")
    assert {p.name for p in (saved / "text-again").iterdir()} >= {*REMOTE_CODE_FILES, "retex_checksums.json"}
    assert "export_peft needs the retex_hf package" in result["peft"]


def test_trust_remote_code_from_the_hub_without_retex_hf(saved, tmp_path):
    with HubServer(tmp_path / "hub") as hub:
        push = """
        import retex_hf
        retex_hf.RetexModel.from_pretrained(ROOT + "/text-plain").push_to_hub("user/shared")
        emit({})
        """
        run_client(push.replace("ROOT", repr(str(saved))), client_env(hub.url, tmp_path / "pusher"))
        load = """
        from transformers import AutoModel
        model = AutoModel.from_pretrained("user/shared", trust_remote_code=True)
        emit(compare(model, ROOT + "/text.safetensors"))
        """
        result = run_client(load.replace("ROOT", repr(str(saved))), client_env(hub.url, tmp_path / "u"), no_retex=True)
    assert_same_outputs(result)
    assert result["module"].startswith("transformers_modules.")
