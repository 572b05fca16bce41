"""Sharing on the Hub: `push_to_hub`, `from_pretrained(repo_id)` and `retex-hf push`, round trips
against the loopback Hub server of `hub_server.py`.

Every Hub client runs in a subprocess pointed at the server (`hub_clients.py` says why); the test
process checks what arrived by reading the server's store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_clients import assert_same_outputs, run_client, save_reference
from hub_server import HubServer, client_env
from tiny_models import tiny_text
from transformers import BertTokenizer

import retex_hf
from retex_hf.cli import main
from retex_hf.safety import CHECKSUM_FILE, CheckpointError


def write_tokenizer(directory: Path) -> BertTokenizer:
    """A real WordPiece tokenizer over the tiny models' 64-token vocabulary."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(59)]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub-root")) as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved ReTeX classifier (two tasks, different label counts), its tokenizer and model card,
    and its outputs on a mixed batch (the reference every client compares with)."""
    root = tmp_path_factory.mktemp("checkpoint")
    base, experts, inputs = tiny_text("bert")
    calibration = {t: inputs(i, 16) for i, t in enumerate(experts)}
    model = retex_hf.build_retex(
        base, experts, calibration, merge="averaging", budget=0.5, recovery_steps=0, quiet=True
    ).eval()
    directory = root / "tiny-retex"
    model.save_pretrained(directory)
    write_tokenizer(directory)
    (directory / "README.md").write_text("---\nlibrary_name: transformers\ntags: [retex]\n---\n# tiny ReTeX\n")
    batch = {k: torch.cat([inputs(0, 3, 7)[k], inputs(1, 3, 7)[k]]) for k in ("input_ids", "attention_mask")}
    reference = root / "reference.safetensors"
    out = save_reference(model, batch, reference)
    assert set(out.task_ids.tolist()) == {0, 1}  # routed to both tasks: rows padded with -inf and rows not
    return directory, reference


def test_push_to_hub_then_from_pretrained_repo_id(hub, checkpoint, tmp_path):
    directory, reference = checkpoint
    code = """
    import retex_hf
    from transformers import AutoModel
    model = retex_hf.RetexModel.from_pretrained(sys.argv[2])
    commit = model.push_to_hub("user/tiny-retex", commit_message="first version")
    results = {"commit": commit.oid}
    model.save_pretrained(VIA_SAVE, push_to_hub=True, repo_id="user/via-save", commit_message="saved and pushed")
    for name, loader in (("auto", AutoModel), ("retex", retex_hf.RetexModel)):
        results[name] = compare(loader.from_pretrained("user/tiny-retex"), REFERENCE)
    emit(results)
    """
    values = {"sys.argv[2]": directory, "REFERENCE": reference, "VIA_SAVE": tmp_path / "via-save"}
    for name, value in values.items():
        code = code.replace(name, repr(str(value)))
    result = run_client(code, client_env(hub.url, tmp_path / "hf-home"))
    assert_same_outputs(result["auto"])
    assert_same_outputs(result["retex"])
    files = hub.store.files("model", "user/tiny-retex")
    assert {"config.json", "model.safetensors", CHECKSUM_FILE, "README.md"} <= set(files)
    # Byte-identical weights and checksum record: the loader's SHA-256 check passed on the downloads.
    assert files["model.safetensors"] == (directory / "model.safetensors").read_bytes()
    assert files[CHECKSUM_FILE] == (directory / CHECKSUM_FILE).read_bytes()
    # push_to_hub ships the model code by default (see test_remote_code.py for loading it without retex_hf).
    assert "modeling_retex.py" in files
    assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == "modeling_retex.RetexModel"
    repo = hub.store.load("model", "user/tiny-retex")
    assert repo["commits"][result["commit"]]["message"] == "first version"
    # save_pretrained(push_to_hub=True) uploads the finished directory: what is on disk is what is on the Hub.
    saved = {p.name: p.read_bytes() for p in (tmp_path / "via-save").iterdir()}
    assert {CHECKSUM_FILE, "modeling_retex.py", "model.safetensors"} <= set(saved)
    pushed = hub.store.files("model", "user/via-save")
    assert {name: pushed[name] for name in saved} == saved


def test_tampered_weights_on_the_hub_are_refused(hub, checkpoint, tmp_path):
    """A commit that replaces the weights but not the checksum record (tampering, a broken upload)
    must fail to load with the loader's checksum error, not load other weights silently."""
    directory, reference = checkpoint
    tampered = bytearray((directory / "model.safetensors").read_bytes())
    tampered[-5] ^= 0xFF  # inside the last tensor's data: still a valid safetensors file
    (tmp_path / "tampered.safetensors").write_bytes(bytes(tampered))
    code = """
    from huggingface_hub import HfApi
    import retex_hf
    from transformers import AutoModel
    api = HfApi()
    api.create_repo("user/tampered", exist_ok=True)
    api.upload_folder(repo_id="user/tampered", folder_path=DIRECTORY)
    api.create_branch("user/tampered", branch="bad")
    api.upload_file(repo_id="user/tampered", path_or_fileobj=TAMPERED, path_in_repo="model.safetensors", revision="bad")
    good = compare(AutoModel.from_pretrained("user/tampered"), REFERENCE)
    try:
        AutoModel.from_pretrained("user/tampered", revision="bad")
        error = None
    except retex_hf.CheckpointError as exc:
        error = str(exc)
    emit({"good": good, "error": error})
    """
    values = {"DIRECTORY": directory, "TAMPERED": tmp_path / "tampered.safetensors", "REFERENCE": reference}
    for name, value in values.items():
        code = code.replace(name, repr(str(value)))
    result = run_client(code, client_env(hub.url, tmp_path / "hf-home"))
    assert_same_outputs(result["good"])
    assert result["error"] is not None and "model.safetensors is truncated or corrupted" in result["error"]


def test_cli_push_uploads_the_directory_as_it_is(hub, checkpoint, tmp_path):
    directory, reference = checkpoint
    code = """
    from retex_hf.cli import main
    from transformers import AutoModel, AutoTokenizer
    assert main(["push", DIRECTORY, "user/cli-retex", "--private", "--branch", "dev",
                 "--commit-message", "from the CLI", "--quiet"]) == 0
    model = AutoModel.from_pretrained("user/cli-retex", revision="dev")
    tokenizer = AutoTokenizer.from_pretrained("user/cli-retex", revision="dev")
    ids = tokenizer("tok1 tok2 tok40")["input_ids"]
    emit({"outputs": compare(model, REFERENCE), "ids": ids})
    """
    code = code.replace("DIRECTORY", repr(str(directory))).replace("REFERENCE", repr(str(reference)))
    result = run_client(code, client_env(hub.url, tmp_path / "h"))
    assert_same_outputs(result["outputs"])
    assert result["ids"] == [2, 6, 7, 45, 3]  # [CLS] tok1 tok2 tok40 [SEP]: the tokenizer went up too
    repo = hub.store.load("model", "user/cli-retex", token="t")
    assert repo["private"] and set(repo["refs"]) == {"main", "dev"}
    assert set(hub.store.files("model", "user/cli-retex", "main")) == {".gitattributes"}  # --branch left main alone
    assert repo["commits"][repo["refs"]["dev"]]["message"] == "from the CLI"
    files = hub.store.files("model", "user/cli-retex", "dev")
    local = {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    for name, content in local.items():
        if name != "config.json":
            assert files[name] == content, f"{name} changed on the way up"
    # The directory was saved without code: the CLI adds it, and only the auto_map to config.json.
    uploaded_config, local_config = json.loads(files["config.json"]), json.loads(local["config.json"])
    assert uploaded_config.pop("auto_map")["AutoConfig"] == "modeling_retex.RetexConfig"
    assert uploaded_config == local_config
    assert set(files) == set(local) | {".gitattributes", "modeling_retex.py"}


def test_cli_push_refuses_what_it_should_not_publish(checkpoint, tmp_path, capsys):
    directory, _ = checkpoint
    with pytest.raises(SystemExit, match="no config.json"):
        main(["push", str(tmp_path), "user/x"])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SystemExit, match="model_type 'bert', not 'retex'"):
        main(["push", str(tmp_path), "user/x"])
    corrupted = tmp_path / "corrupted"
    corrupted.mkdir()
    for path in directory.iterdir():
        corrupted.joinpath(path.name).write_bytes(path.read_bytes())
    data = bytearray((corrupted / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (corrupted / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupted"):
        main(["push", str(corrupted), "user/x"])  # refused before any network access


def test_hub_server_rejects_what_the_hub_rejects(hub, tmp_path):
    """The fake must not be more lenient than the Hub where our code relies on it: writes need a
    token, commits go to existing branches, LFS pointers need uploaded content."""
    code = """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    errors = {}
    api = HfApi()
    api.create_repo("user/strict", exist_ok=True)
    upload = dict(path_or_fileobj=b"x", path_in_repo="x", repo_id="user/strict")
    for name, call in {
        "no_token": lambda: HfApi(token=False).upload_file(**upload),
        "no_branch": lambda: api.upload_file(**upload, revision="nope"),
        "no_repo": lambda: hf_hub_download("user/missing", "config.json"),
        "no_revision": lambda: hf_hub_download("user/strict", ".gitattributes", revision="nope"),
    }.items():
        try:
            call()
            errors[name] = None
        except HfHubHTTPError as exc:
            errors[name] = [type(exc).__name__, exc.response.status_code]
    emit(errors)
    """
    errors = run_client(code, client_env(hub.url, tmp_path / "h"), timeout=120)
    assert errors["no_token"][1] == 401
    assert errors["no_branch"] == ["RevisionNotFoundError", 404]
    assert errors["no_repo"] == ["RepositoryNotFoundError", 404]
    assert errors["no_revision"] == ["RevisionNotFoundError", 404]
