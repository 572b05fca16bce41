"""Upload a saved ReTeX checkpoint directory to the Hub, as it is, in one commit.

Example:
  retex-hf push ./retex-model me/retex-model --private --commit-message "first version"

Every file of the directory goes up byte for byte (config, safetensors, retex_checksums.json,
tokenizer or image processor, model card); the weights are checked against their checksums
first, so a corrupted checkpoint is never published. The repo is created if needed. Unless
--no-remote-code is given, a directory saved without the model code gets it added in the same
commit (modeling_retex.py and an auto_map in the uploaded config.json),
so that machines without retex_hf load it with trust_remote_code=True.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a directory written by save_pretrained or `retex-hf build`")
    parser.add_argument("repo_id", help="Hub repo id, e.g. me/retex-model (a bare name goes to your namespace)")
    parser.add_argument("--revision", "--branch", dest="revision", default=None, help="branch to commit to (created)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--commit-description", default=None)
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--no-remote-code", action="store_true", help="do not add the model code for trust_remote_code")
    parser.add_argument("--quiet", action="store_true")


def _files(directory: Path) -> list[Path]:
    """Every file to upload; hidden files and folders (.git, caches) stay local, .gitattributes goes up."""
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        hidden = any(part.startswith(".") and part != ".gitattributes" for part in relative.parts)
        if path.is_file() and not hidden:
            found.append(path)
    return found


def _check_directory(directory: Path) -> dict:
    from ..safety import verify_checksums

    if not directory.is_dir():
        raise SystemExit(f"retex-hf push: {directory} is not a directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"retex-hf push: {directory} has no config.json: is it a save_pretrained directory?")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise SystemExit(f"retex-hf push: {config_path} is not valid JSON: {error}") from None
    if config.get("model_type") != "retex":
        raise SystemExit(f"retex-hf push: {config_path} has model_type {config.get('model_type')!r}, not 'retex'")
    if not list(directory.glob("*.safetensors")):
        raise SystemExit(f"retex-hf push: {directory} holds no .safetensors weights")
    verify_checksums(directory)  # CheckpointError names the corrupted file
    return config


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import CommitOperationAdd, HfApi

    from ..checkpointing import REMOTE_AUTO_MAP, REMOTE_CODE_FILES
    from ..remote_code import write_remote_code

    directory = Path(args.directory)
    config = _check_directory(directory)
    files = _files(directory)
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(directory).as_posix(), path_or_fileobj=p) for p in files
    ]
    has_code = all((directory / name).is_file() for name in REMOTE_CODE_FILES) and config.get("auto_map")
    with tempfile.TemporaryDirectory() as scratch:
        added = []
        if not args.no_remote_code and not has_code:
            written = write_remote_code(scratch)
            config["auto_map"] = {**(config.get("auto_map") or {}), **REMOTE_AUTO_MAP}
            operations = [op for op in operations if op.path_in_repo not in {"config.json", *REMOTE_CODE_FILES}]
            operations.append(CommitOperationAdd("config.json", (json.dumps(config, indent=2) + "\n").encode()))
            operations += [CommitOperationAdd(p.name, p) for p in written]
            added = ["config.json (auto_map)"] + [p.name for p in written]
        api = HfApi(token=args.token)
        repo_id = api.create_repo(args.repo_id, private=args.private, exist_ok=True).repo_id
        if args.revision:
            api.create_branch(repo_id, branch=args.revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=args.commit_message or f"Upload ReTeX model ({len(config.get('task_names', []))} tasks)",
            commit_description=args.commit_description,
            revision=args.revision,
            create_pr=args.create_pr,
        )
    if not args.quiet:
        print(
            f"uploaded {len(files)} files from {directory} to {repo_id}" + (f" (+ {', '.join(added)})" if added else "")
        )
        print(commit.pr_url or commit.commit_url)
    return 0
