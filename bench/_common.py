"""Benchmark helpers: timing with medians of repeated runs, machine info, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_DIR", "time_runs", "machine_info", "write_result"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_runs(fn: Callable[[], Any], *, runs: int = 5, warmup: int = 1) -> dict[str, float]:
    """Wall time of ``fn``: median, min and max of ``runs`` (at least 5) timed calls."""
    runs = max(5, runs)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": runs,
    }


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    return info


def write_result(name: str, data: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``data`` plus machine info as JSON to ``bench/results/<name>.json`` (or ``path``)."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine_info(), **data}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
