"""Flower baselines: a separate virtualenv with flwr, driven by subprocess, timings read back as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["FLWR_VENV", "FlowerUnavailable", "ensure_flwr_venv", "run_flwr_task"]

FLWR_VENV = Path(__file__).resolve().parent / ".flwr-venv"
_WORKER = Path(__file__).resolve().parent / "_flwr_worker.py"


class FlowerUnavailable(RuntimeError):
    """flwr could not be installed or run; ``reason`` says why (recorded, never faked)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def ensure_flwr_venv(
    venv: Path = FLWR_VENV, timeout: float = 900.0, *, install: bool = True
) -> dict[str, str]:
    """Create ``venv`` with flwr when missing (unless ``install`` is False); return versions."""
    py = _python(venv)
    probe = [
        str(py),
        "-c",
        "import flwr, numpy, json; print(json.dumps({'flwr': flwr.__version__,"
        " 'numpy': numpy.__version__}))",
    ]
    if py.exists():
        done = _run(probe, 120)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
    if not install:
        raise FlowerUnavailable(
            f"{venv} has no flwr (not installed in --smoke; run the full bench)"
        )
    # flwr pins numpy 2 (ours is 1.24): a venv of its own avoids the clash.
    host = os.environ.get("PDMFED_BENCH_PYTHON", "python3")
    check = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(venv.parent / ".flwr-dl"),
            "flwr",
        ],
        timeout,
    )
    if check.returncode != 0:
        raise FlowerUnavailable(f"pip download flwr failed: {check.stderr.strip()[-400:]}")
    made = _run([host, "-m", "venv", str(venv)], 300)
    if made.returncode != 0:
        raise FlowerUnavailable(f"python3 -m venv failed: {made.stderr.strip()[-400:]}")
    inst = _run([str(py), "-m", "pip", "install", "--quiet", "flwr"], timeout)
    if inst.returncode != 0:
        raise FlowerUnavailable(f"pip install flwr failed: {inst.stderr.strip()[-400:]}")
    done = _run(probe, 120)
    if done.returncode != 0:
        raise FlowerUnavailable(f"flwr installed but not importable: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same_allocator() -> dict[str, str]:
    """glibc's environment form of the tuning our side applies with mallopt, so both sides
    allocate alike (federation.runtime.allocator)."""
    from federation.runtime.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_buffers

    if not keep_freed_buffers():
        return {}
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    }


def run_flwr_task(
    task: dict[str, Any], *, venv: Path = FLWR_VENV, timeout: float = 1800.0, install: bool = True
) -> dict:
    """Run one task of ``_flwr_worker.py`` inside the flwr venv; its JSON answer plus versions."""
    versions = ensure_flwr_venv(venv, install=install)
    try:
        done = subprocess.run(
            [str(_python(venv)), str(_WORKER)],
            input=json.dumps(task),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **_same_allocator()},
        )
    except subprocess.TimeoutExpired as exc:
        raise FlowerUnavailable(f"flwr worker timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise FlowerUnavailable(f"flwr worker failed: {done.stderr.strip()[-600:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    answer["versions"] = versions
    return answer
