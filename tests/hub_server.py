"""The smallest Hugging Face Hub-compatible HTTP server, for push/pull round trips without a network.

huggingface_hub ships no test server, so this one serves exactly the endpoints that
huggingface_hub 2.x calls for ``create_repo``, ``create_commit`` / ``upload_folder`` (preupload,
LFS batch + basic PUT transfer + verify, ndjson commit, README metadata validation),
``create_branch``, ``repo_info`` / ``model_info`` (per revision), ``list_repo_tree``, ``whoami``
and ``hf_hub_download`` / ``snapshot_download`` (HEAD + GET on ``/{repo}/resolve/{rev}/{path}``).
Xet storage is not served: clients must run with ``HF_HUB_DISABLE_XET=1`` and then use LFS.

Repos live on disk under ``root`` (`hub_store.py`). Any non-empty bearer token may write; private
repos answer 404 (RepoNotFound) without a token, as the Hub does.

Run it for a notebook: ``python tests/hub_server.py --root DIR --port 8765`` prints the URL to put
in ``HF_ENDPOINT`` (set it before importing huggingface_hub or transformers).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from hub_store import LFS_MIN_SIZE, LFS_SUFFIXES, USER, HubError, HubStore


def _tree_entry(path: str, entry: dict) -> dict:
    item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"]:
        item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": 134}
    return item


class HubHandler(BaseHTTPRequestHandler):
    """Routes requests to the store. Paths follow the Hub: /api/... for the API, /{repo}/resolve/... for files."""

    store: HubStore
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # ---------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head=self.command == "HEAD")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() or None if auth.startswith("Bearer ") else None

    def _writer(self) -> None:
        if not self._token():
            raise HubError(401, "Invalid username or password: a write needs a token")

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]  # still quoted: a revision may hold %2F
        # Read the whole body first, whatever the answer: an unread body would corrupt the next request.
        self.payload = self._body() if self.command in ("POST", "PUT") else b""
        try:
            for pattern, handler in ROUTES.get(self.command, ()):
                match = pattern.match("/".join(parts))
                if match:
                    handler(self, **{k: (v or "") for k, v in match.groupdict().items()})
                    return
            raise HubError(404, f"no route for {self.command} {url.path}")
        except HubError as error:
            headers = {"X-Error-Code": error.code} if error.code else {}
            self._json(error.status, {"error": error.message}, {**headers, "X-Error-Message": error.message})

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # ---------------------------------------------------------------- API: account and repos
    def _whoami(self) -> None:
        if not self._token():
            raise HubError(401, "Invalid user token")
        self._json(
            200,
            {
                "type": "user",
                "id": "0",
                "name": USER,
                "fullname": USER,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _create_repo(self) -> None:
        self._writer()
        body = json.loads(self.payload or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        private = body.get("private", body.get("visibility") == "private")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.base_url}/{prefix}{repo_id}"
        if not self.store.create_repo(repo_type, repo_id, bool(private)):
            self._json(409, {"error": "You already created this repo", "url": url})
            return
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, rtype: str, repo: str, rev: str = "main") -> None:
        data = self.store.load(rtype[:-1], unquote(repo), self._token())
        sha = self.store.resolve(data, rev or "main")
        commit = data["commits"][sha]
        with_meta = self.query.get("blobs") in ("true", "True", "1")
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            item = {"rfilename": path}
            if with_meta:
                item.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    item["lfs"] = {"sha256": entry["sha256"], "size": entry["size"], "pointerSize": 134}
            siblings.append(item)
        author = data["id"].split("/")[0]
        self._json(
            200,
            {
                "_id": data["id"],
                "id": data["id"],
                "modelId": data["id"],
                "author": author,
                "sha": sha,
                "lastModified": commit["date"],
                "createdAt": data["created"],
                "private": data["private"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, rtype: str, repo: str, rev: str, path: str = "") -> None:
        data = self.store.load(rtype[:-1], unquote(repo), self._token())
        files = data["commits"][self.store.resolve(data, rev)]["files"]
        path = unquote(path).strip("/")
        prefix = f"{path}/" if path else ""
        recursive = self.query.get("recursive") in ("true", "True", "1")
        entries, folders = [], set()
        for name, entry in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :].split("/")
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                entries.append(_tree_entry(name, entry))
        if path and not entries and not folders:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        entries += [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        self._json(200, entries)

    def _create_branch(self, rtype: str, repo: str, branch: str) -> None:
        self._writer()
        body = json.loads(self.payload or b"{}")
        self.store.create_branch(rtype[:-1], unquote(repo), unquote(branch), body.get("startingPoint"))
        self._json(200, {})

    def _validate_yaml(self) -> None:
        self._json(200, {"errors": [], "warnings": []})

    # ---------------------------------------------------------------- API: uploads
    def _preupload(self, rtype: str, repo: str, rev: str) -> None:
        self._writer()
        data = self.store.load(rtype[:-1], unquote(repo), self._token())
        files = data["commits"][self.store.resolve(data, rev)]["files"]
        answer = []
        for item in json.loads(self.payload)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = files.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing["oid"] if existing else None,
                }
            )
        self._json(200, {"files": answer, "commitOid": data["refs"].get(unquote(rev))})

    def _lfs_batch(self, prefix: str, repo: str) -> None:
        self._writer()
        body = json.loads(self.payload)
        if body.get("operation") != "upload":
            raise HubError(400, "only the upload operation is served")
        self.store.load((prefix or "models/")[:-2], unquote(repo), self._token())
        objects = []
        for obj in body["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if not self.store.blob_path(obj["oid"]).is_file():
                item["actions"] = {
                    "upload": {"href": f"{self.base_url}/_lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.base_url}/_lfs/{obj['oid']}/verify", "header": {}},
                }
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str) -> None:
        data = self.payload
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not hash to {oid}")
        self.store.put_blob(data)
        self._send(200, b"")

    def _lfs_verify(self, oid: str) -> None:
        if not self.store.blob_path(oid).is_file():
            raise HubError(404, f"LFS object {oid} was not uploaded")
        self._json(200, {})

    def _commit(self, rtype: str, repo: str, rev: str) -> None:
        self._writer()
        if self.query.get("create_pr") == "1":
            raise HubError(400, "this test server does not open pull requests")
        lines = [json.loads(line) for line in self.payload.splitlines() if line.strip()]
        sha = self.store.commit(rtype[:-1], unquote(repo), rev, lines)
        prefix = "" if rtype == "models" else f"{rtype}/"
        self._json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.base_url}/{prefix}{unquote(repo)}/commit/{sha}",
                "pullRequestUrl": None,
            },
        )

    # ---------------------------------------------------------------- files
    def _resolve(self, prefix: str, repo: str, rev: str, path: str) -> None:
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix or ""]
        data = self.store.load(repo_type, unquote(repo), self._token())
        sha = self.store.resolve(data, rev)
        entry = data["commits"][sha]["files"].get(unquote(path))
        if entry is None:
            raise HubError(404, f"Entry not found: {unquote(path)}", "EntryNotFound")
        blob = self.store.blob_path(entry["sha256"]).read_bytes()
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        status = 200
        start = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if start and self.command == "GET":
            offset = int(start.group(1))
            headers["Content-Range"] = f"bytes {offset}-{len(blob) - 1}/{len(blob)}"
            blob, status = blob[offset:], 206
        self._send(status, blob, headers, head=self.command == "HEAD")


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_TYPES = r"(?P<rtype>models|datasets|spaces)"
ROUTES = {
    "GET": [
        (re.compile(r"^api/whoami-v2$"), HubHandler._whoami),
        (re.compile(rf"^api/{_TYPES}/{_REPO}/revision/(?P<rev>[^/]+)$"), HubHandler._repo_info),
        (re.compile(rf"^api/{_TYPES}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), HubHandler._tree),
        (re.compile(rf"^api/{_TYPES}/{_REPO}$"), HubHandler._repo_info),
        (
            re.compile(rf"^(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
            HubHandler._resolve,
        ),
    ],
    "POST": [
        (re.compile(r"^api/repos/create$"), HubHandler._create_repo),
        (re.compile(r"^api/validate-yaml$"), HubHandler._validate_yaml),
        (re.compile(rf"^api/{_TYPES}/{_REPO}/preupload/(?P<rev>[^/]+)$"), HubHandler._preupload),
        (re.compile(rf"^api/{_TYPES}/{_REPO}/commit/(?P<rev>[^/]+)$"), HubHandler._commit),
        (re.compile(rf"^api/{_TYPES}/{_REPO}/branch/(?P<branch>[^/]+)$"), HubHandler._create_branch),
        (re.compile(rf"^(?P<prefix>datasets/|spaces/)?{_REPO}\.git/info/lfs/objects/batch$"), HubHandler._lfs_batch),
        (re.compile(r"^_lfs/(?P<oid>[0-9a-f]{64})/verify$"), HubHandler._lfs_verify),
    ],
    "PUT": [(re.compile(r"^_lfs/(?P<oid>[0-9a-f]{64})$"), HubHandler._lfs_put)],
}
ROUTES["HEAD"] = [route for route in ROUTES["GET"] if route[1] is HubHandler._resolve]


class HubServer:
    """A running server: ``url`` for HF_ENDPOINT, ``stop()`` when done (also a context manager)."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.store = HubStore(root)
        handler = type("BoundHubHandler", (HubHandler,), {"store": self.store})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.verbose = verbose
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def client_env(url: str, home: str | Path, token: str = "dummy") -> dict[str, str]:
    """Environment variables for a client process of this server (huggingface_hub reads them at import).

    HF_HOME isolates the download cache and transformers' remote-code module cache; Xet is disabled
    so uploads use LFS; a dummy token lets writes through.
    """
    return {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="directory that holds the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args()
    server = HubServer(args.root, args.host, args.port, args.verbose)
    print(server.url, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
