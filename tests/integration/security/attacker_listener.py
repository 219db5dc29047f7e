"""A fake datasite on 127.0.0.1 that answers PySyft's metadata probe and records every request."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes


@dataclass
class AttackerListener:
    """What an attacker runs at the URL it names: enough of a datasite for a client to log in."""

    requests: list[Recorded] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    got_login: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def received(self, secret: str) -> bool:
        """Whether any request carried ``secret`` (in its path or body)."""
        needle = secret.encode()
        return any(needle in r.body or needle in r.path.encode() for r in self.requests)

    def start(self) -> AttackerListener:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                listener.requests.append(Recorded(self.command, self.path, body))
                if self.command == "POST" and self.path.endswith("/login"):
                    listener.got_login.set()

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._record()
                if self.path.endswith("/api/v2/metadata"):
                    body = json.dumps(
                        {
                            "metadata_version": 1,
                            "name": "factory",
                            "id": "0" * 32,
                            "verify_key": "0" * 64,
                            "syft_version": "0.9.5",
                            "server_type": "datasite",
                            "server_side_type": "high",
                            "show_warnings": False,
                            "min_size_blob_storage_mb": 16,
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    body = b"{}"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                self._record()
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
