"""A local HTTP server standing in for the Hugging Face Hub (point HF_ENDPOINT at it); it records requests.

Enough of the Hub's API for `create_repo` + `create_commit`/`upload_folder` with small files: every file
is uploaded "regular" (base64 inside the commit), so no LFS or Xet server is needed.
Tokens: `good` are accepted; any other token gets 401; repos in `foreign` namespaces get 403.
Every request is kept in `requests` with its Authorization header (reads too: `GET /api/datasets/…`,
`HEAD /<repo>/resolve/…`), so a test can tell whose token a request carried.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, good=("hf_goodtoken0000000000",), foreign=("someone-else",)):
        self.good, self.foreign = set(good), set(foreign)
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}  # repo id → {"private": bool, "files": {path: bytes}, "commits": [msg]}
        self.datasets: dict[str, dict] = {}  # dataset id → {"private": bool, "cardData": {...}}: GET /api/datasets/…
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body=None):
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                hub.requests.append({"method": self.command, "path": self.path, "auth": auth, "body": body})
                token = auth.removeprefix("Bearer ").strip()
                if hub.public_dataset_read(self):  # a public dataset: anyone reads its card and files
                    return None
                if token not in hub.good:
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return hub.route(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def public_dataset_read(self, h) -> bool:
        """Answer a read of a public dataset (its info, file tree or a file) without a token; False if not one."""
        path = h.path.split("?")[0]
        info = self.dataset_info(path)
        if info is not None:
            if info["private"]:
                return False
            h._reply(200, info)
            return True
        for prefix in ("/api/datasets/", "/datasets/"):
            if path.startswith(prefix):
                parts = path[len(prefix):].split("/")
                repo = "/".join(parts[:2])
                d = self.datasets.get(repo)
                if d is None or d.get("private"):
                    return False
                files = {"README.md": self.readme(repo), **d.get("files", {})}
                if prefix == "/api/datasets/" and parts[2:3] == ["tree"]:
                    h._reply(200, [{"type": "file", "path": f, "size": len(b), "oid": "1" * 40} for f, b in files.items()])
                    return True
                if prefix == "/datasets/" and parts[2:3] == ["resolve"]:
                    name = "/".join(parts[4:])
                    if name not in files:
                        h.send_response(404)
                        h.send_header("X-Error-Code", "EntryNotFound")
                        h.send_header("Content-Length", "0")
                        h.end_headers()
                        return True
                    body = files[name]
                    h.send_response(200)
                    h.send_header("Content-Length", str(len(body)))
                    h.send_header("ETag", '"' + "2" * 40 + '"')
                    h.send_header("X-Repo-Commit", "0" * 40)
                    h.end_headers()
                    if h.command != "HEAD":
                        h.wfile.write(body)
                    return True
        return False

    def readme(self, repo: str) -> bytes:
        import yaml

        card = self.datasets[repo].get("cardData", {})
        return ("---\n" + yaml.safe_dump(card) + "---\n# " + repo + "\n").encode()

    def dataset_info(self, path: str) -> dict | None:
        """GET /api/datasets/<id>[/revision/<rev>] for a dataset added to `datasets`."""
        if not path.startswith("/api/datasets/"):
            return None
        repo = "/".join(path[len("/api/datasets/"):].split("/")[:2])
        if repo not in self.datasets:
            return None
        d = self.datasets[repo]
        return {"id": repo, "_id": repo, "sha": "0" * 40, "private": d.get("private", False),
                "cardData": d.get("cardData", {}), "tags": [],
                "siblings": [{"rfilename": f} for f in ["README.md", *d.get("files", {})]]}

    def route(self, h, body: bytes):
        path = h.path.split("?")[0]
        if path == "/api/repos/create" and h.command == "POST":
            data = json.loads(body)
            repo = f"{data.get('organization') or 'me'}/{data['name']}"
            if repo.split("/")[0] in self.foreign:
                return h._reply(403, {"error": "You don't have the rights to create a model under this namespace"})
            if repo in self.repos:
                return h._reply(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"})
            self.repos[repo] = {"private": data.get("visibility") == "private" or bool(data.get("private")), "files": {}, "commits": []}
            return h._reply(200, {"url": f"{self.url}/{repo}", "name": repo})
        if path == "/api/validate-yaml":  # the client checks a README's metadata before committing it
            return h._reply(200, {"errors": [], "warnings": []})
        info = self.dataset_info(path)
        if info is not None:
            return h._reply(200, info)
        if path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body).get("files", [])
            return h._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                            for f in files]})
        if path.startswith("/api/models/") and "/commit/" in path:
            repo = path[len("/api/models/"):].split("/commit/")[0]
            if repo not in self.repos:
                return h._reply(404, {"error": "Repository not found"})
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    self.repos[repo]["commits"].append(item["value"]["summary"])
                elif item["key"] == "file":
                    self.repos[repo]["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return h._reply(200, {"commitUrl": f"{self.url}/{repo}/commit/abc123", "commitOid": "abc123" * 6 + "abcd",
                                  "success": True})
        return h._reply(404, {"error": f"fake hub: no route for {h.command} {path}"})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
