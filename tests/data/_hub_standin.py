"""A local HTTP server standing in for the Hugging Face Hub (HF_ENDPOINT), on 127.0.0.1 only.

It answers the calls ``datasets.load_dataset`` makes for a parquet-backed dataset repo (dataset
info, the file tree, file downloads), and for the repos listed in ``ERRORS`` answers like the Hub
does when access is refused (status + X-Error-Code). Nothing here contacts huggingface.co.

Which endpoints and fields are needed was found by running ``datasets`` 5.x against it; the answers
are the Hub's documented JSON shapes reduced to the fields those calls read.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
import urllib.parse

SHA = "0123456789abcdef0123456789abcdef01234567"  # the one revision every repo here has


class HubStandIn(http.server.BaseHTTPRequestHandler):
    repos: dict[str, dict[str, bytes]] = {}  # "owner/name" -> {path in repo: file bytes}
    ERRORS = {"gated401": (401, "GatedRepo"), "gated403": (403, "GatedRepo"), "missing": (404, "RepoNotFound")}

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status: int, code: str) -> None:
        self._send(status, b'{"error": "Access to this dataset is restricted."}',
                   {"X-Error-Code": code, "X-Error-Message": "Access to this dataset is restricted."})

    def _answer(self) -> None:
        url = urllib.parse.urlparse(self.path)
        path = urllib.parse.unquote(url.path)
        for key, (status, code) in self.ERRORS.items():
            if f"/{key}/" in path:
                return self._refuse(status, code)
        m = re.match(r"^/api/datasets/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
        if m and m.group(1) in self.repos:
            info = {"id": m.group(1), "_id": "0", "sha": SHA, "private": False, "gated": False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": [], "cardData": {},
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": f} for f in self.repos[m.group(1)]]}
            return self._send(200, json.dumps(info).encode())
        m = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/[^/]+(?:/(.*))?$", path)
        if m and m.group(1) in self.repos:
            return self._send(200, json.dumps(self._tree(self.repos[m.group(1)], (m.group(2) or "").strip("/"),
                                                         "recursive=true" in url.query.lower())).encode())
        m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.*)$", path)
        if m and m.group(1) in self.repos:
            data = self.repos[m.group(1)].get(m.group(2))
            if data is None:
                return self._send(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
            return self._send(200, data, {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": SHA},
                              ctype="application/octet-stream")
        return self._refuse(404, "RepoNotFound")

    @staticmethod
    def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        out, dirs = [], set()
        for name, data in files.items():
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1:] if prefix else name
            if "/" in rest and not recursive:
                d = (prefix + "/" if prefix else "") + rest.split("/")[0]
                if d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "oid": SHA, "size": 0, "path": d})
                continue
            out.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name})
        return out

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def publish(repo: str, ds, split: str = "train") -> None:
    """Serve ``ds`` (a datasets.Dataset) as repo ``repo``: one parquet file, as the Hub converts datasets."""
    buf = io.BytesIO()
    ds.to_parquet(buf)
    HubStandIn.repos[repo] = {f"data/{split}-00000-of-00001.parquet": buf.getvalue()}


def start() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
