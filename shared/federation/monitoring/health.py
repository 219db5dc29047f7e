"""A tiny threaded HTTP server for /metrics, /healthz (alive) and /readyz (ready) probes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["HealthServer"]

_log = logging.getLogger(__name__)


def _always() -> bool:
    return True


def _probe(check: Callable[[], bool], name: str) -> tuple[bool, str]:
    # A failing probe callback must turn into a 503, never a dead health thread.
    try:
        return bool(check()), ""
    except Exception as exc:  # noqa: BLE001 - any failure means "not ok"
        _log.warning("%s probe raised %s: %s", name, type(exc).__name__, exc)
        return False, f"{type(exc).__name__}"


class HealthServer:
    """Serves `/metrics`, `/healthz` and `/readyz` from a daemon thread; port 0 = a free port.

    `/healthz` is 200 while `alive()` is true, `/readyz` 200 while `ready()` is true, else 503.
    The server starts on construction; `.port` is the bound port; `.stop()` shuts it down.
    """

    def __init__(
        self,
        port: int = 0,
        registry: CollectorRegistry | None = None,
        ready: Callable[[], bool] = _always,
        alive: Callable[[], bool] = _always,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - probes and Prometheus scrape from outside the pod
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or metrics_registry or REGISTRY
        self._ready = ready
        self._alive = alive
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"health-{self.port}", daemon=True
        )
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL to reach this server locally."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                if path == "/metrics":
                    try:
                        body = generate_latest(owner.registry)
                    except Exception as exc:  # noqa: BLE001 - a broken collector is a 500
                        _log.warning("metrics collection failed: %s", exc)
                        self._send(500, b"metrics collection failed\n", "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._status(*_probe(owner._alive, "alive"), word="alive")
                elif path == "/readyz":
                    self._status(*_probe(owner._ready, "ready"), word="ready")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _status(self, ok: bool, why: str, *, word: str) -> None:
                text = word if ok else f"not {word}" + (f" ({why})" if why else "")
                self._send(200 if ok else 503, (text + "\n").encode(), "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                # Probes hit every few seconds; keep them out of the service log.
                _log.debug("health %s", format % args)

        return _Handler
