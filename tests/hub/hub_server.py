"""A local, in-memory, Hub-compatible HTTP server for tests (127.0.0.1 only; the real Hub is never contacted).

It implements what the real `huggingface_hub` client (2.x) and `transformers.from_pretrained` use: repo creation,
`validate-yaml`, `preupload` (answers "regular" for every file, so no LFS / Xet negotiation happens), NDJSON
commits, `model_info`, tree listing, `paths-info`, and `resolve` downloads (HEAD + GET with `X-Repo-Commit` /
`ETag`). Error responses carry `X-Error-Code` like the Hub, so the client raises its typed errors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


@dataclass
class HubState:
    token: str | None = None  # when set, writes need `Authorization: Bearer <token>`
    repos: dict[str, Repo] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)  # endpoint name ("create", "commit", ...) -> HTTP status
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) log
    lock: threading.Lock = field(default_factory=threading.Lock)


class HubHandler(BaseHTTPRequestHandler):
    server_version = "LocalHub/1.0"
    state: HubState  # set on the subclass made by `serve`

    def log_message(self, format, *args):  # noqa: A002  (silence the default stderr log)
        pass

    # -------------------------------------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None, head: bool = False):
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        if self.state.token is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _failing(self, name: str) -> bool:
        status = self.state.fail.get(name)
        if status:
            self._error(status, f"Injected failure on {name}", code="Forbidden" if status == 403 else None)
            return True
        return False

    # ------------------------------------------------------------------------------------------------ routing
    def do_HEAD(self):
        self._route("HEAD")

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str):
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        self.state.requests.append((method, url.path))
        query = parse_qs(url.query)
        try:
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo()
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml()
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                rest = parts[4:]
                if method == "POST" and rest[:1] == ["preupload"]:
                    return self._preupload(repo_id, rest[1] if len(rest) > 1 else "main")
                if method == "POST" and rest[:1] == ["commit"]:
                    return self._commit(repo_id, rest[1] if len(rest) > 1 else "main")
                if method == "POST" and rest[:1] == ["paths-info"]:
                    return self._paths_info(repo_id, rest[1] if len(rest) > 1 else "main")
                if method == "GET" and rest[:1] == ["tree"]:
                    return self._tree(repo_id, rest[1] if len(rest) > 1 else "main", "/".join(rest[2:]))
                if method == "GET" and (not rest or rest[:1] == ["revision"]):
                    return self._model_info(repo_id, rest[1] if len(rest) > 1 else "main")
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            if method == "GET" and parts == ["api", "whoami-v2"]:
                return self._json(200, {"name": "tester", "type": "user", "orgs": []})
            self._error(404, f"LocalHub: no route for {method} {url.path} ({query})")
        except Exception as err:  # a server bug must show up in the client's error, not hang it
            self._error(500, f"LocalHub error: {type(err).__name__}: {err}")

    # ------------------------------------------------------------------------------------------- endpoints
    def _repo(self, repo_id: str, revision: str = "main", head: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", code="RepoNotFound", head=head)
            return None
        if revision != "main" and revision != repo.sha:
            self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound", head=head)
            return None
        return repo

    def _create_repo(self):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        if self._failing("create"):
            return
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            repo = Repo(repo_id, private=bool(payload.get("private")))
            repo.files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            repo.commits.append(hashlib.sha1(f"{repo_id}-{time.time_ns()}".encode()).hexdigest())
            self.state.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self):
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1]) or {}
            except yaml.YAMLError as err:
                meta, errors = {}, [{"message": f"Invalid YAML: {err}"}]
            if not isinstance(meta, dict):
                errors.append({"message": "metadata must be a mapping"})
            else:
                for entry in meta.get("model-index") or []:
                    if "name" not in entry or not isinstance(entry.get("results"), list):
                        errors.append({"message": "model-index entries need a name and results"})
                    for result in entry.get("results", []):
                        for key in ("task", "dataset", "metrics"):
                            if key not in result:
                                errors.append({"message": f"model-index result without {key}"})
                if "tags" in meta and not isinstance(meta["tags"], list):
                    errors.append({"message": "tags must be a list"})
        if errors:
            return self._json(400, {"errors": errors, "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        payload = json.loads(self._body())
        files = []
        for entry in payload["files"]:
            existing = repo.files.get(entry["path"])
            files.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",  # small test files: no LFS / Xet round trip
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._json(200, {"files": files, "commitOid": repo.sha})

    def _commit(self, repo_id: str, revision: str):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        if self._failing("commit"):
            return
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.state.lock:
            files = dict(repo.files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                elif key == "header":
                    continue
                else:
                    return self._error(400, f"LocalHub accepts regular files only, got {key!r}")
            repo.files = files
            sha = hashlib.sha1(f"{repo_id}-{len(repo.commits)}-{time.time_ns()}".encode()).hexdigest()
            repo.commits.append(sha)
        host = self.headers["Host"]
        self._json(200, {"commitUrl": f"http://{host}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

    def _siblings(self, repo: Repo):
        return [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in sorted(repo.files.items())]

    def _model_info(self, repo_id: str, revision: str):
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        card = repo.files.get("README.md", b"").decode()
        card_data = None
        if card.startswith("---"):
            card_data = yaml.safe_load(card.split("---", 2)[1])
        self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.sha,
                "private": repo.private,
                "lastModified": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                "siblings": self._siblings(repo),
                "tags": (card_data or {}).get("tags", []),
                "cardData": card_data,
                "library_name": (card_data or {}).get("library_name"),
            },
        )

    def _entries(self, repo: Repo, prefix: str = "", recursive: bool = True):
        prefix = prefix.strip("/")
        out, dirs = [], set()
        for path, data in sorted(repo.files.items()):
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                continue
            rel = path[len(prefix) + 1 :] if prefix and path != prefix else path
            if not recursive and "/" in rel:
                dirs.add((prefix + "/" if prefix else "") + rel.split("/")[0])
                continue
            out.append({"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)})
        return [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs)] + out

    def _tree(self, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        recursive = "recursive=true" in (urlparse(self.path).query or "").lower()
        self._json(200, self._entries(repo, path, recursive=recursive))

    def _paths_info(self, repo_id: str, revision: str):
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        body = self._body()
        try:
            paths = json.loads(body).get("paths", [])
        except json.JSONDecodeError:
            paths = parse_qs(body.decode()).get("paths", [])
        self._json(200, [e for e in self._entries(repo) if e["path"] in paths])

    def _resolve(self, method: str, repo_id: str, revision: str, path: str):
        head = method == "HEAD"
        repo = self._repo(repo_id, revision, head=head)
        if repo is None:
            return
        data = repo.files.get(path)
        if data is None:
            return self._error(404, f"Entry not found: {path}", code="EntryNotFound", head=head)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Content-Length": str(len(data)),
        }
        self._send(200, data, headers, head=head)


class LocalHub:
    """A running server: `url`, `state` (repos, injected failures, request log), `stop()`."""

    def __init__(self, token: str | None = None) -> None:
        self.state = HubState(token=token)
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
