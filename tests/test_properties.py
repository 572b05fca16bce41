"""Property tests (hypothesis): router maths, config round trips, and a fuzz of the checkpoint loader."""

from __future__ import annotations

import functools
import json
import shutil
import struct
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from tiny_models import tiny_text
from transformers import BertConfig

import retex_hf
from retex_hf.routing import SubspaceRouter, fit_signature, subspace_residuals
from retex_hf.routing.signatures import Signature
from retex_hf.safety import CHECKSUM_FILE, CheckpointError

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What a damaged checkpoint may raise: `CheckpointError` (ours: bad/torn weights, config/tensor
# disagreement), any other ValueError (json.JSONDecodeError and UnicodeDecodeError are ValueErrors:
# an unparsable config.json), and OSError (transformers' error for a config or weight file it cannot
# read). safetensors' own SafetensorError must never escape: it is wrapped into CheckpointError,
# which names the file. Anything else (KeyError, RuntimeError, ...) is a bug.
ALLOWED = (CheckpointError, ValueError, OSError)


def _cluster(seed: int, n: int, dim: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(dim, generator=g)
    directions = torch.randn(rank, dim, generator=g)
    points = centre + 3 * torch.randn(n, rank, generator=g) @ directions + 0.05 * torch.randn(n, dim, generator=g)
    return F.normalize(points, dim=-1).double()


# ----------------------------------------------------------------------------- router maths
@FAST
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(2, 5),
    data=st.data(),
)
def test_permuting_tasks_permutes_residuals_and_routes(seed, num_tasks, data):
    dim, k = 12, 2
    signatures = [fit_signature(_cluster(seed + t, 16, dim, 2), k) for t in range(num_tasks)]
    perm = data.draw(st.permutations(range(num_tasks)))
    z = _cluster(seed + 999, 7, dim, 3)
    means = torch.stack([s.mean for s in signatures])
    bases = torch.stack([s.basis for s in signatures])
    residuals = subspace_residuals(z, means, bases)
    permuted = subspace_residuals(z, means[perm], bases[perm])
    torch.testing.assert_close(permuted, residuals[:, perm])

    router, permuted_router = SubspaceRouter(num_tasks, dim, k), SubspaceRouter(num_tasks, dim, k)
    router.load_signatures(signatures)
    permuted_router.load_signatures([signatures[i] for i in perm])
    torch.testing.assert_close(permuted_router.residuals(z), router.residuals(z)[:, perm])
    ids, soft, unknown = router.route(z.float(), 0.1)
    ids_p, soft_p, unknown_p = permuted_router.route(z.float(), 0.1)
    # Task i of the permuted router is task perm[i] of the original.
    assert torch.equal(torch.tensor(perm)[ids_p], ids)
    torch.testing.assert_close(soft_p, soft[:, perm])
    assert torch.equal(unknown_p, unknown)


@FAST
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 3), data=st.data())
def test_signature_residuals_do_not_depend_on_calibration_order(seed, rank, data):
    features = _cluster(seed, 20, 10, rank)
    order = data.draw(st.permutations(range(20)))
    first = fit_signature(features, rank)
    second = fit_signature(features[list(order)], rank)
    z = _cluster(seed + 1, 9, 10, 2)
    torch.testing.assert_close(
        subspace_residuals(z, first.mean[None], first.basis[None]),
        subspace_residuals(z, second.mean[None], second.basis[None]),
        rtol=1e-6,
        atol=1e-8,
    )
    assert isinstance(second, Signature)


# ----------------------------------------------------------------------------- config round trip
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
_targets = st.lists(st.sampled_from(["a.weight", "b.weight", "c.d.weight", "e.f.g.weight"]), unique=True, max_size=4)


@FAST
@given(
    tasks=st.lists(_names, min_size=1, max_size=4, unique=True),
    targets=_targets,
    data=st.data(),
    policy=st.sampled_from(["soft", "merged", "raise"]),
    temperature=st.floats(0.01, 10, allow_nan=False),
)
def test_config_json_round_trip(tasks, targets, data, policy, temperature):
    ranks = {t: {n: data.draw(st.integers(1, 64)) for n in targets} for t in tasks}
    labels = {
        t: dict(enumerate(data.draw(st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True)))) for t in tasks
    }
    config = retex_hf.RetexConfig(
        backbone_config=BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8),
        backbone_architecture="BertModel",
        task_names=tasks,
        task_id2label=labels,
        offset_matrix_targets={n: "linear" for n in targets},
        offset_ranks=ranks,
        unknown_task_policy=policy,
        router_temperature=temperature,
        merge_hparams={"density": 0.2},
    )
    again = retex_hf.RetexConfig.from_dict(json.loads(config.to_json_string()))
    assert again.task_names == tasks
    assert again.offset_ranks == ranks
    assert again.task_id2label == labels
    assert again.unknown_task_policy == policy and again.router_temperature == temperature
    assert again.backbone_config.to_dict() == config.backbone_config.to_dict()
    assert again.to_json_string() == config.to_json_string()


# ----------------------------------------------------------------------------- loader fuzz
@functools.lru_cache(maxsize=1)
def _checkpoint() -> tuple[Path, dict, torch.Tensor]:
    base, experts, inputs = tiny_text("bert")
    calibration = {t: inputs(i, 12) for i, t in enumerate(experts)}
    model = retex_hf.build_retex(
        base, experts, calibration, merge="averaging", budget=0.2, recovery_steps=0, quiet=True
    )
    directory = Path(tempfile.mkdtemp(prefix="retex-fuzz-")) / "ckpt"
    model.save_pretrained(directory)
    probe = {k: torch.cat([inputs(0, 2)[k], inputs(1, 2)[k]]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return directory, probe, model(**probe).logits


def _load_and_compare(directory: Path, probe: dict, expected: torch.Tensor) -> None:
    try:
        model = retex_hf.RetexModel.from_pretrained(directory)
    except SafetensorError as error:  # must have been wrapped
        raise AssertionError(f"raw SafetensorError escaped: {error}") from error
    except ALLOWED:
        return
    with torch.no_grad():
        assert torch.equal(model(**probe).logits, expected), "a damaged checkpoint loaded with other outputs"


_mutation = st.one_of(
    st.tuples(st.just("truncate_weights"), st.floats(0, 0.999), st.booleans()),
    st.tuples(st.just("flip_weights"), st.floats(0, 0.999), st.booleans()),
    st.tuples(st.just("truncate_config"), st.floats(0, 0.999), st.just(True)),
    st.tuples(st.just("shape_config"), st.floats(0, 0.999), st.integers(-1, 3).filter(bool)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=_mutation)
def test_damaged_checkpoints_fail_loudly_or_load_identically(mutation):
    source, probe, expected = _checkpoint()
    kind, where, option = mutation
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "ckpt"
        shutil.copytree(source, directory)
        weights, config_path = directory / "model.safetensors", directory / "config.json"
        data = weights.read_bytes()
        header_end = 8 + struct.unpack("<Q", data[:8])[0]
        if kind == "truncate_weights":
            weights.write_bytes(data[: int(where * len(data))])
            if not option:
                (directory / CHECKSUM_FILE).unlink()
        elif kind == "flip_weights":
            if option:  # with the checksum record, anywhere in the file
                position = int(where * len(data))
            else:  # without it, only a flip in the header can be noticed (safetensors has no checksum)
                position = int(where * header_end)
                (directory / CHECKSUM_FILE).unlink()
            damaged = bytearray(data)
            damaged[position] ^= 0x5A
            weights.write_bytes(bytes(damaged))
        elif kind == "truncate_config":
            text = config_path.read_bytes()
            config_path.write_bytes(text[: int(where * len(text))])
        else:
            config = json.loads(config_path.read_text())
            task = config["task_names"][int(where * len(config["task_names"]))]
            names = sorted(config["offset_ranks"][task])
            name = names[int(where * len(names))]
            config["offset_ranks"][task][name] = max(0, config["offset_ranks"][task][name] + option)
            config_path.write_text(json.dumps(config))
        _load_and_compare(directory, probe, expected)
