"""Shared benchmark plumbing: adaptive repetitions, RSS readings, log-log fits, bench topologies."""

from __future__ import annotations

import math
import resource
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "AMQP_URL",
    "timed_adaptive",
    "summary",
    "peak_rss_bytes",
    "current_rss_bytes",
    "loglog_slope",
    "bench_prefix",
    "rabbit_available",
    "result_path",
]

#: The broker the bench talks to (the same default as the integration tests).
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def summary(times: list[float]) -> dict[str, float]:
    """Median, min, max and count of a list of durations (seconds)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


#: Calls of a fast function are repeated until this much time is sampled (at most MAX_RUNS),
#: so a sub-millisecond median is not decided by five calls (Flower's worker uses the same rule).
MIN_SAMPLED_S = 0.2
MAX_RUNS = 200


def timed_adaptive(
    fn: Callable[[], Any], *, runs: int = 5, budget_s: float = 10.0
) -> tuple[dict[str, float], Any]:
    """Time ``fn`` ``runs`` times after one warm-up call (more while under MIN_SAMPLED_S in
    total); fewer (stated in ``runs``) when slow.

    The warm-up is never a measurement: it may compile kernels (numba, once per machine and
    cohort size), so its time is reported apart as ``first_call_s``. A call over ``budget_s``
    after it is the only measurement; otherwise the number of calls shrinks so the cell stays
    within about ``5 * budget_s``, but never below 3. Returns (summary, result of the last call).
    """
    start = time.perf_counter()
    result = fn()
    first_call = time.perf_counter() - start
    start = time.perf_counter()
    result = fn()
    times = [time.perf_counter() - start]
    if times[0] <= budget_s:
        n = runs if times[0] * runs < 5 * budget_s else max(3, int(5 * budget_s / times[0]))
        while len(times) < min(n, runs) or (sum(times) < MIN_SAMPLED_S and len(times) < MAX_RUNS):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
    return {**summary(times), "first_call_s": first_call}, result


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize()


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): the exponent k in y ~ x^k."""
    if len(xs) < 2 or len(xs) != len(ys):
        raise ValueError("need at least two (x, y) pairs")
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sxx


def bench_prefix(name: str) -> str:
    """A unique topology prefix so a bench run never touches the real ``pdmfed`` queues."""
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


async def rabbit_available(url: str = AMQP_URL) -> str | None:
    """None when RabbitMQ answers at ``url``; otherwise why not (for a clear skip/record)."""
    import aio_pika

    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:  # any failure means "not available"; the reason is recorded
        return f"RabbitMQ not reachable at 127.0.0.1:5672: {type(exc).__name__}"
    await conn.close()
    return None


def result_path(name: str, smoke: bool) -> Path:
    """Where a benchmark's JSON goes: bench/results/<name>.json, or results/smoke/ for --smoke."""
    from bench._common import RESULTS_DIR

    return RESULTS_DIR / "smoke" / f"{name}.json" if smoke else RESULTS_DIR / f"{name}.json"


def bench_main(
    name: str, run: Callable[[bool], dict], doc: str, argv: list[str] | None = None
) -> int:
    """The command line every benchmark module shares: [--smoke] [--out FILE]."""
    import argparse

    from bench._common import write_result

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configuration, seconds")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    args = parser.parse_args(argv)
    from federation.runtime.allocator import keep_freed_buffers

    keep_freed_buffers()  # as every service process does at start
    data = run(args.smoke)
    path = write_result(name, data, args.out or result_path(name, args.smoke))
    print(f"wrote {path}")
    return 0 if "error" not in data else 2
