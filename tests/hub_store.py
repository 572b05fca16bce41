"""Storage for the loopback Hub server (`hub_server.py`): repos, commits, refs and blobs on disk.

Blobs are content-addressed by SHA-256; each repo is one JSON file holding its commits (path →
blob entry) and refs, rewritten atomically under one lock, so readers see whole commits only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import unquote

USER = "user"  # the account every token belongs to; create_repo("name") lands in "user/name"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".npy", ".gguf")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores files of 10 MB or more in LFS whatever their type
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    """An HTTP error answer; ``code`` goes into X-Error-Code, which huggingface_hub maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def git_blob_sha1(data: bytes) -> str:
    """The oid git (and the Hub) gives a regular file: what huggingface_hub compares for unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStore:
    """Repos on disk. One lock serialises writes; reads see whole commits only."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    # ---------------------------------------------------------------- storage
    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id.replace('/', '--')}.json"

    def load(self, repo_type: str, repo_id: str, token: str | None = None) -> dict:
        path = self._repo_file(repo_type, repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        repo = json.loads(path.read_text())
        if repo["private"] and not token:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _save(self, repo: dict) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo))
        tmp.replace(path)

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            tmp = path.with_name(f"{sha}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    # ---------------------------------------------------------------- repos and revisions
    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """False when it already exists."""
        with self.lock:
            if self._repo_file(repo_type, repo_id).is_file():
                return False
            files = {".gitattributes": self._entry(GITATTRIBUTES, lfs=False)}
            sha = hashlib.sha1(f"{repo_id}{time.time()}{uuid.uuid4()}".encode()).hexdigest()
            repo = {
                "id": repo_id,
                "type": repo_type,
                "private": private,
                "created": _now(),
                "refs": {"main": sha},
                "commits": {sha: {"parent": None, "message": "initial commit", "files": files, "date": _now()}},
            }
            self._save(repo)
            return True

    def _entry(self, data: bytes, lfs: bool) -> dict:
        return {
            "sha256": self.put_blob(data),
            "size": len(data),
            "lfs": lfs,
            "oid": hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data),
        }

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of a revision with its content: what a test compares with what it uploaded."""
        repo = self.load(repo_type, repo_id, token="reader")
        entries = repo["commits"][self.resolve(repo, revision)]["files"]
        return {path: self.blob_path(entry["sha256"]).read_bytes() for path, entry in entries.items()}

    @staticmethod
    def resolve(repo: dict, revision: str) -> str:
        revision = unquote(revision)
        if revision in repo["refs"]:
            return repo["refs"][revision]
        if revision.startswith("refs/heads/") and revision[11:] in repo["refs"]:
            return repo["refs"][revision[11:]]
        if revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def create_branch(self, repo_type: str, repo_id: str, branch: str, start: str | None) -> None:
        with self.lock:
            repo = self.load(repo_type, repo_id, token="write")
            if branch in repo["refs"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo["refs"][branch] = self.resolve(repo, start or "main")
            self._save(repo)

    def commit(self, repo_type: str, repo_id: str, revision: str, lines: list[dict]) -> str:
        """Apply one ndjson commit payload on top of ``revision`` (a branch); return the new commit id."""
        with self.lock:
            repo = self.load(repo_type, repo_id, token="write")
            branch = unquote(revision)
            if branch not in repo["refs"]:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
            head = repo["refs"][branch]
            files = dict(repo["commits"][head]["files"])
            header = next((line["value"] for line in lines if line.get("key") == "header"), {})
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, f"parentCommit {header['parentCommit']} is not the head of {branch} ({head})")
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"unsupported encoding {value.get('encoding')!r} for {value.get('path')}")
                    files[value["path"]] = self._entry(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    oid = value["oid"]
                    if not self.blob_path(oid).is_file():
                        raise HubError(400, f"LFS object {oid} for {value['path']} was never uploaded")
                    size = self.blob_path(oid).stat().st_size
                    files[value["path"]] = {"sha256": oid, "size": size, "lfs": True, "oid": oid}
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, f"unknown commit operation {key!r}")
            sha = hashlib.sha1(json.dumps([head, files, header, time.time()], sort_keys=True).encode()).hexdigest()
            repo["commits"][sha] = {
                "parent": head,
                "message": header.get("summary", ""),
                "files": files,
                "date": _now(),
            }
            repo["refs"][branch] = sha
            self._save(repo)
            return sha


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
