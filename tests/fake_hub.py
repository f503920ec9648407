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
                info = hub.dataset_info(self.path.split("?")[0])
                if info is not None and not info["private"]:  # a public dataset: anyone reads its card
                    return self._reply(200, info)
                if token not in hub.good:
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return hub.route(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def dataset_info(self, path: str) -> dict | None:
        """GET /api/datasets/<id>[/revision/<rev>] for a dataset added to `datasets`."""
        if not path.startswith("/api/datasets/"):
            return None
        repo = "/".join(path[len("/api/datasets/"):].split("/")[:2])
        if repo not in self.datasets:
            return None
        d = self.datasets[repo]
        return {"id": repo, "_id": repo, "sha": "0" * 40, "private": d.get("private", False),
                "cardData": d.get("cardData", {}), "siblings": [{"rfilename": "README.md"}], "tags": []}

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
