"""Run one `pdmfed service` process with a given keys directory and read its log as it runs."""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def service_env(keys_dir: Path, state_dir: Path, **extra: str) -> dict[str, str]:
    """A non-demo service environment (random secrets, in-memory bus unless extra says otherwise)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")}
    return {
        **clean,
        "PDMFED_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "PDMFED_KEY_SALT": secrets.token_hex(16),
        "PDMFED_KEYS_DIR": str(keys_dir),
        "PDMFED_STATE_DIR": str(state_dir),
        "PDMFED_LOG_LEVEL": "INFO",
        # each sender id's role, as `pdmfed keys init` writes it to senders.json
        "PDMFED_SENDER_ROLES": "orchestrator=orchestrator,connector=connector,trainer-dispatch=trainer-dispatch,"
        "security=security,aggregator=aggregator",
        **extra,
    }


class ServiceProcess:
    """`python -m federation.cli service NAME`, its stderr collected line by line."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "federation.cli", "service", name],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))

    def wait_for_line(self, needle: str, timeout_s: float = 240.0) -> str | None:
        """The first log line containing ``needle`` (None on timeout or exit)."""
        deadline = time.monotonic() + timeout_s
        for line in self.lines:
            if needle in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    return None
                continue
            self.lines.append(line)
            if needle in line:
                return line
        return None

    def wait_exit(self, timeout_s: float = 240.0) -> int | None:
        """The exit code, or None if still running after ``timeout_s``."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self.wait_for_line("\x00", timeout_s=1.0)  # drain what is left
        return code

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
