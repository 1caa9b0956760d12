"""Local files for the embedded server, over loopback: large files go as an `audioUrl`.

The embedded server takes URLs of up to 500 MB, so with it a large local file needs no
re-encoding or chunking: the run serves SOURCE read-only on 127.0.0.1, under a random
path prefix that only this run and its embedded server know, and the server fetches the
file as it would a presigned S3 object. Only regular files under SOURCE are served.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class ServedFiles:
    root: str  # absolute folder whose files are served
    url: str  # http://127.0.0.1:<port>/<token>/ (a file's URL: this + its quoted path under root)


def _handler(root: str, token: str) -> type[http.server.BaseHTTPRequestHandler]:
    prefix = f"/{token}/"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self._resolve()
            if path is None:
                self.send_error(404)
                return
            with open(path, "rb") as f:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
                self.end_headers()
                with contextlib.suppress(ConnectionError):
                    shutil.copyfileobj(f, self.wfile, 1 << 20)

        def _resolve(self) -> str | None:
            if not self.path.startswith(prefix):
                return None
            rel = os.path.normpath(unquote(self.path[len(prefix):].split("?", 1)[0]))
            if rel.startswith("..") or os.path.isabs(rel):
                return None
            path = os.path.join(root, rel)
            return path if os.path.isfile(path) else None

        def log_message(self, format: str, *args: object) -> None:
            pass  # the path holds the token: never logged

    return Handler


@contextlib.contextmanager
def serve_files(root: str) -> Iterator[ServedFiles]:
    """Serve the files under `root` (a folder, or a file's folder) until the block ends."""
    root = os.path.abspath(root if os.path.isdir(root) else os.path.dirname(root))
    token = secrets.token_urlsafe(24)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, token))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bulkscribe-files", daemon=True)
    thread.start()
    try:
        yield ServedFiles(root, f"http://127.0.0.1:{server.server_address[1]}/{token}/")
    finally:
        server.shutdown()
        server.server_close()
