"""accelerate: `device_map` loading (whole, disk offload, a backbone split by hand) and building /
evaluating under `accelerate launch` with two CPU processes, each compared with the plain result.

On CPU the only devices are "cpu" and "disk"; the GPU placement rules are checked on the map
itself (`place_small_modules` on a meta-device model), which needs no GPU.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_clip, tiny_t5, tiny_text
from transformers import AutoModel

import retex_hf
from retex_hf import RetexModel
from retex_hf.cli import main
from retex_hf.placement import place_small_modules, resolve_device_map

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _saved(backbone: str, root: str) -> tuple[Path, dict]:
    """A tiny ReTeX checkpoint (full-rank offsets, so every offset tensor matters) and a mixed batch."""
    if backbone == "clip":
        base, experts, heads, inputs = tiny_clip()
        kwargs = {"heads": heads, "normalize_features": True, "logit_scale": 10.0}
    elif backbone == "t5":
        base, experts, inputs = tiny_t5()
        kwargs = {}
    else:
        base, experts, inputs = tiny_text("bert")
        kwargs = {}
    calibration = {t: inputs(i, 8) for i, t in enumerate(experts)}
    model = retex_hf.build_retex(base, experts, calibration, budget=1.0, recovery_steps=0, quiet=True, **kwargs)
    directory = Path(root) / backbone
    model.save_pretrained(directory)
    parts = [inputs(i, 3, gen_seed=7) for i in range(len(experts))]
    batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if backbone == "t5":
        batch["decoder_input_ids"] = torch.randint(2, 60, (batch["input_ids"].shape[0], 4))
    return directory, batch


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("device-map"))
    return lambda backbone: _saved(backbone, root)


def _split_map(backbone: str) -> dict[str, str]:
    """Backbone layers on different devices: layer 0 resident, layer 1 on disk; small modules left out."""
    if backbone == "t5":
        return {
            "backbone.shared": "cpu", "backbone.encoder.embed_tokens": "cpu", "backbone.decoder.embed_tokens": "cpu",
            "backbone.encoder.block.0": "cpu", "backbone.encoder.block.1": "disk",
            "backbone.encoder.final_layer_norm": "cpu", "backbone.encoder.dropout": "cpu",
            "backbone.decoder.block.0": "disk", "backbone.decoder.block.1": "cpu",
            "backbone.decoder.final_layer_norm": "cpu", "backbone.decoder.dropout": "cpu",
            "backbone.lm_head": "cpu",
        }  # fmt: skip
    if backbone == "clip":
        body = "backbone"  # CLIPVisionModel flattens its vision_model in transformers 5
        return {
            f"{body}.embeddings": "cpu", f"{body}.pre_layrnorm": "cpu", f"{body}.encoder.layers.0": "disk",
            f"{body}.encoder.layers.1": "cpu", f"{body}.post_layernorm": "cpu",
        }  # fmt: skip
    return {
        "backbone.bert.embeddings": "cpu", "backbone.bert.encoder.layer.0": "cpu",
        "backbone.bert.encoder.layer.1": "disk", "backbone.bert.pooler": "disk",
        "backbone.dropout": "cpu", "backbone.classifier": "disk",
    }  # fmt: skip


def _device_map_kwargs(variant: str, backbone: str, tmp_path) -> dict:
    if variant == "auto":
        return {"device_map": "auto"}
    if variant == "cpu":
        return {"device_map": {"": "cpu"}}
    if variant == "disk":  # a CPU budget far below the model: everything that can spill goes to disk
        return {"device_map": "auto", "max_memory": {"cpu": 4000}, "offload_folder": str(tmp_path / "offload")}
    return {"device_map": _split_map(backbone), "offload_folder": str(tmp_path / "offload")}


def _assert_same(plain, placed, batch) -> None:
    with torch.no_grad():
        expected, got = plain(**batch), placed(**batch)
    assert torch.equal(expected.task_ids, got.task_ids)
    assert torch.equal(expected.unknown, got.unknown)
    assert torch.isfinite(got.logits).any(dim=-1).all()
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)  # -inf padding must match too


@pytest.mark.parametrize("backbone", ["bert", "clip", "t5"])
@pytest.mark.parametrize("variant", ["auto", "cpu", "disk", "split"])
def test_device_map_loading_matches_the_plain_model(checkpoints, backbone, variant, tmp_path):
    directory, batch = checkpoints(backbone)
    plain = AutoModel.from_pretrained(directory)
    placed = AutoModel.from_pretrained(directory, **_device_map_kwargs(variant, backbone, tmp_path))
    assert type(placed) is type(plain)
    device_map = getattr(placed, "hf_device_map", None)
    if variant in ("disk", "split"):
        assert "disk" in device_map.values()
        offloaded = [n for n, p in placed.named_parameters() if p.device.type == "meta"]
        assert offloaded and all(n.startswith("backbone.") for n in offloaded)
    # The small modules are always real tensors, whatever was offloaded.
    for name in ("offsets", "router", "heads"):
        if hasattr(placed, name):
            tensors = [*getattr(placed, name).parameters(), *getattr(placed, name).buffers()]
            assert tensors and all(t.device.type == "cpu" for t in tensors), name
    _assert_same(plain, placed, batch)
    if backbone == "t5":
        with torch.no_grad():
            kwargs = {"input_ids": batch["input_ids"], "max_new_tokens": 5, "do_sample": False}
            torch.testing.assert_close(placed.generate(**kwargs, num_beams=2), plain.generate(**kwargs, num_beams=2))
            routed = placed.generate(**kwargs, return_routing=True)
        assert torch.equal(routed.sequences, plain.generate(**kwargs))
        assert torch.equal(routed.task_ids, plain(**batch).task_ids)


def test_task_classes_and_retex_model_take_device_maps(checkpoints, tmp_path):
    directory, batch = checkpoints("bert")
    plain = retex_hf.RetexForSequenceClassification.from_pretrained(directory)
    for cls in (RetexModel, retex_hf.RetexForSequenceClassification):
        placed = cls.from_pretrained(directory, **_device_map_kwargs("split", "bert", tmp_path / cls.__name__))
        assert type(placed) is retex_hf.RetexForSequenceClassification
        _assert_same(plain, placed, batch)
        with torch.no_grad():
            task_known = placed(**batch, task="beta")
        torch.testing.assert_close(task_known.logits, plain(**batch, task="beta").logits, atol=1e-5, rtol=1e-5)


def test_small_modules_never_land_on_disk_even_when_the_map_says_so(checkpoints, tmp_path):
    directory, batch = checkpoints("bert")
    device_map = {**_split_map("bert"), "offsets": "disk", "router": "disk"}
    placed = AutoModel.from_pretrained(directory, device_map=device_map, offload_folder=str(tmp_path / "o"))
    assert all(d != "disk" for k, d in placed.hf_device_map.items() if k.startswith(("offsets", "router")))
    _assert_same(AutoModel.from_pretrained(directory), placed, batch)


def test_a_map_that_misses_a_module_is_refused_by_name(checkpoints):
    directory, _ = checkpoints("bert")
    device_map = {k: v for k, v in _split_map("bert").items() if k != "backbone.bert.pooler"}
    with pytest.raises(ValueError, match="backbone.bert.pooler.dense"):
        AutoModel.from_pretrained(directory, device_map=device_map)


def _meta_model(directory) -> RetexModel:
    config = retex_hf.RetexConfig.from_pretrained(directory)
    with torch.device("meta"):
        return retex_hf.RetexForSequenceClassification(config)


def test_gpu_placement_rules_on_the_map_itself(checkpoints):
    """Two GPUs and an offloaded tail, as accelerate would dispatch them: each offset sits on its
    layer's GPU; offsets of offloaded layers, the router and the heads on the main GPU (0)."""
    directory, _ = checkpoints("bert")
    model = _meta_model(directory)
    device_map = {
        "backbone.bert.embeddings": 0, "backbone.bert.encoder.layer.0": 0, "backbone.bert.encoder.layer.1": 1,
        "backbone.bert.pooler": "cpu", "backbone.dropout": "cpu", "backbone.classifier": "disk",
        "offsets": "cpu", "router": "disk",
    }  # fmt: skip
    placed = place_small_modules(model, device_map)
    expanded = {n: d for n in [n for n, _ in model.named_parameters()] for d in [_device_of(placed, n)]}
    layer1 = "offsets.matrices.bert__encoder__layer__1__attention__self__query__weight"
    assert {d for n, d in expanded.items() if n.startswith(layer1)} == {1}
    assert {d for n, d in expanded.items() if n.startswith("offsets.matrices.bert__encoder__layer__0")} == {0}
    assert {d for n, d in expanded.items() if n.startswith("offsets.") and "pooler" in n} == {0}  # cpu offloaded
    assert {d for n, d in expanded.items() if n.startswith(("router", "backbone.classifier"))} <= {0}
    assert _device_of(placed, "backbone.bert.encoder.layer.1.output.dense.weight") == 1  # backbone as given
    assert _device_of(placed, "backbone.bert.pooler.dense.weight") == "cpu"
    # On a CPU-only map, "cpu" is resident, only "disk" moves.
    cpu_only = place_small_modules(model, {**device_map, "backbone.bert.encoder.layer.1": "disk", **_zeros_to_cpu()})
    assert {_device_of(cpu_only, n) for n, _ in model.named_parameters() if n.startswith("offsets.")} == {"cpu"}


def _zeros_to_cpu() -> dict:
    return {"backbone.bert.embeddings": "cpu", "backbone.bert.encoder.layer.0": "cpu"}


def _device_of(device_map: dict, name: str):
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        if ".".join(parts[:end]) in device_map:
            return device_map[".".join(parts[:end])]
    raise KeyError(name)


def test_single_device_maps_pass_through_untouched(checkpoints):
    directory, _ = checkpoints("bert")
    for device_map in ("cpu", 0, torch.device("cpu")):
        kwargs = {"device_map": device_map}
        assert resolve_device_map(retex_hf.RetexForSequenceClassification, directory, kwargs) is kwargs


# ----------------------------------------------------------------------------- accelerate launch
# accelerate 1.x starts ONE process for `--cpu --num_processes 2` unless given an MPI hostfile; its
# torchrun-backed launcher (`--multi_gpu`) starts two, which form a gloo group on CPU.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def _launch(args: list[str], tmp_path, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [*LAUNCH, "--main_process_port", str(port), *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """Two tiny experts saved as directories; calibration and labelled test data as jsonl files."""
    root = tmp_path_factory.mktemp("launch")
    base, experts, inputs = tiny_text("bert")
    base.save_pretrained(root / "base")
    build, data = ["--base", str(root / "base")], []
    for i, (task, expert) in enumerate(experts.items()):
        expert.save_pretrained(root / task)
        test = inputs(i, 21, gen_seed=5)  # odd: the two processes get 11 and 10 rows
        with torch.no_grad():
            labels = expert(**test).logits.argmax(-1)
        labels[::4] = 0  # some rows the expert gets wrong, so no column of the report is trivially 100 %
        calib = [{"input_ids": row.tolist()} for row in inputs(i, 24)["input_ids"]]
        rows = [{"input_ids": r.tolist(), "label": int(y)} for r, y in zip(test["input_ids"], labels)]
        for name, content in ((f"{task}_calib.jsonl", calib), (f"{task}_test.jsonl", rows)):
            (root / name).write_text("".join(json.dumps(row) + "\n" for row in content))
        build += ["--expert", f"{task}={root / task}", "--calibration", f"{task}={root / f'{task}_calib.jsonl'}"]
        data += ["--data", f"{task}={root / f'{task}_test.jsonl'}", "--expert", f"{task}={root / task}"]
    build += ["--budget", "0.5", "--recovery-steps", "12", "--quiet"]
    return root, build, data


def test_launched_build_trains_data_parallel_and_writes_once(cli_setup, tmp_path):
    from safetensors.torch import load_file

    root, build, _ = cli_setup
    # Held-out selection picks each task's best step by a score that two runs differing only in
    # summation order can rank differently on a plateau; without it the training itself is compared.
    build = [*build, "--recovery-arg", "select_on_held_out=false"]
    assert main(["build", *build, "--output", str(tmp_path / "single")]) == 0
    done = _launch(["-m", "retex_hf.cli", "build", *build, "--output", str(tmp_path / "launched")], tmp_path, 29611)
    assert done.stdout.count("wrote ") == 1  # the main process reports, and writes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left by anyone
    svd_only = [a if a != "12" else "0" for a in build]  # recovery-steps 0: the offsets before training
    assert main(["build", *svd_only, "--output", str(tmp_path / "untrained")]) == 0
    single, launched, untrained = (
        load_file(tmp_path / name / "model.safetensors") for name in ("single", "launched", "untrained")
    )
    assert single.keys() == launched.keys()
    assert max((single[k] - untrained[k]).abs().max().item() for k in single if k.startswith("offsets.")) > 1e-3
    # Same global batches (each process takes half of every one): the same weights, up to the order
    # of the gradient all-reduce; everything but the offsets is computed identically by every process.
    for key in single:
        torch.testing.assert_close(launched[key], single[key], atol=1e-5, rtol=1e-4)
        if not key.startswith("offsets."):
            assert torch.equal(launched[key], single[key]), key
    assert (tmp_path / "launched" / "README.md").exists() and (tmp_path / "launched" / "config.json").exists()


def test_launched_eval_shards_rows_and_reports_once_with_identical_numbers(cli_setup, tmp_path):
    root, build, data = cli_setup
    model_dir = tmp_path / "model"
    assert main(["build", *build, "--output", str(model_dir)]) == 0
    assert main(["eval", str(model_dir), *data, "--json", str(tmp_path / "single.json"), "--quiet"]) == 0
    args = ["-m", "retex_hf.cli", "eval", str(model_dir), *data, "--json", str(tmp_path / "launched.json"), "--quiet"]
    done = _launch(args, tmp_path, 29612)
    assert done.stdout.count("router") == 1  # one table, from the main process
    single = json.loads((tmp_path / "single.json").read_text())
    assert json.loads((tmp_path / "launched.json").read_text()) == single
    assert any(0 < row["retex_accuracy"] < 1 for row in single["tasks"])


def test_rows_are_shared_out_and_gathered_in_order(tmp_path):
    """`on_rows` under a two-process launch: each process computes a contiguous share; every
    process gets all rows back in order (and the process group is gloo on CPU)."""
    script = tmp_path / "rows.py"
    script.write_text(
        "import json, torch\n"
        "from retex_hf.distributed import launched_state, on_rows\n"
        "seen = []\n"
        "def compute(rows):\n"
        "    seen.append(rows['x'][:, 0].tolist())\n"
        "    return rows['x'] * 2, rows['x'][:, 0] + 1\n"
        "doubled, plus = on_rows(compute, {'x': torch.arange(14).view(7, 2)})\n"
        "state = launched_state()\n"
        "report = {'rank': state.process_index, 'backend': state.backend, 'seen': seen,\n"
        "          'doubled': doubled.tolist(), 'plus': plus.tolist()}\n"
        "open(f'rank{state.process_index}.json', 'w').write(json.dumps(report))\n"  # not stdout: lines interleave
    )
    _launch([str(script)], tmp_path, 29613)
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert [r["rank"] for r in sorted(reports, key=lambda r: r["rank"])] == [0, 1]
    by_rank = {r["rank"]: r for r in reports}
    assert by_rank[0]["seen"] == [[0, 2, 4, 6]] and by_rank[1]["seen"] == [[8, 10, 12]]
    for report in reports:
        assert report["backend"] == "gloo"
        assert report["doubled"] == (torch.arange(14).view(7, 2) * 2).tolist()
        assert report["plus"] == list(range(1, 14, 2))
