"""A local stand-in for the Hugging Face Hub's model API, for offline tests of the real client.

`serve_hub(hub_cache, gated=...)` answers `GET /api/models/<repo>/revision/<revision>` (what
`HfApi.model_info` and `snapshot_download` ask first) from a Hub-layout cache: the commit a
branch names is the cache's refs/<branch>, a 40-hex commit is itself if its snapshot exists.
Gated repos answer 403 with `X-Error-Code: GatedRepo`, unknown repos or revisions 404 with the
Hub's error codes, as huggingface.co does, so huggingface_hub raises its own exception classes.
Point a client at it with HF_ENDPOINT (read when huggingface_hub is imported: use a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_MODEL_INFO = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<revision>[^?]+)")


def cached_commit(hub_cache: Path, repo_id: str, revision: str) -> str | None:
    """The commit `revision` names in the Hub-layout cache, None if the cache does not have it."""
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    return revision if (repo / "snapshots" / revision).is_dir() else None


def _handler(hub_cache: Path, gated: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict, error_code: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", body["error"])
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            match = _MODEL_INFO.fullmatch(self.path.split("?")[0])
            if match is None:
                self._answer(404, {"error": f"not served here: {self.path}"}, "EntryNotFound")
                return
            repo_id, revision = match["repo"], match["revision"].replace("%2F", "/")
            if repo_id in gated:
                message = f"Access to model {repo_id} is restricted. You must have access to it."
                self._answer(403, {"error": message}, "GatedRepo")
                return
            commit = cached_commit(hub_cache, repo_id, revision)
            if commit is None:
                code = "RevisionNotFound" if cached_commit(hub_cache, repo_id, "main") else None
                code = code or "RepoNotFound"
                self._answer(404, {"error": f"{repo_id}@{revision}: {code}"}, code)
                return
            self._answer(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": []})

        def log_message(self, *args) -> None:  # keep the test output quiet
            return

    return Handler


@contextlib.contextmanager
def serve_hub(hub_cache: Path, gated: tuple[str, ...] = ()) -> Iterator[str]:
    """Serve the model API of `hub_cache` on a free local port; yield its endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(hub_cache), frozenset(gated)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
