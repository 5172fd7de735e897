"""A real HTTP server on 127.0.0.1 for a shard directory (Python's http.server; nginx is not installed
here): it can cut a file's response off midway a number of times, answer 404 for some files, and
counts the requests per file."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/").split("?")[0]
        with srv.lock:
            srv.requests[name] += 1
            drop = srv.drops.get(name, 0) > 0
            if drop:
                srv.drops[name] -= 1
        if name in srv.missing:
            self.send_error(404, "not here")
            return
        if not drop:
            return super().do_GET()
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 3])  # then the connection is gone
        self.wfile.flush()
        self.close_connection = True


class ShardServer:
    def __init__(self, root: Path, drops: dict[str, int] | None = None, missing: set[str] | None = None):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.httpd.requests, self.httpd.drops = Counter(), dict(drops or {})
        self.httpd.missing, self.httpd.lock = set(missing or ()), threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    @property
    def requests(self) -> Counter:
        return self.httpd.requests

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
