"""Where a round's time goes: every handled and published message of one campaign, timed.

Run: ``.venv/bin/python -m bench.round_timeline [--smoke] [--claim] [--sites N] [--out PATH]``.
A diagnostic beside ``bench_round`` (not part of ``make bench``): the same in-process
federation over RabbitMQ, with each service's message handling (``ServiceRunner._on_message``:
assembled and verified message → committed) and each publish (``SecureEndpoint.publish``:
seal → broker confirm) recorded. Prints, for the last round, one line per (service, step,
message type): how many, the first start and the last end relative to the round's
``round.open``, and the summed time; writes the events as JSON.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench._common import write_result
from bench._util import result_path

NAME = "round_timeline"


class _Recorder:
    """(start, end, service, step, msg_type, datasite) of every handled or published message."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, start: float, service: str, step: str, kind: str, datasite: str) -> None:
        end = time.perf_counter() - self.t0
        with self._lock:
            self.events.append(
                {
                    "start": start - self.t0,
                    "end": end,
                    "service": service,
                    "step": step,
                    "msg_type": kind,
                    "datasite_id": datasite,
                }
            )

    def install(self) -> None:
        """Wrap the two methods every message passes through (this process only)."""
        from federation.bus.middleware import SecureEndpoint
        from federation.runtime.service import ServiceRunner

        recorder, on_message, publish = self, ServiceRunner._on_message, SecureEndpoint.publish

        async def timed_on_message(self, msg_type, payload, envelope):
            start = time.perf_counter()
            try:
                return await on_message(self, msg_type, payload, envelope)
            finally:
                kind = str(getattr(msg_type, "value", msg_type))
                recorder.add(start, self.service.name, "handle", kind, envelope.datasite_id)

        async def timed_publish(self, msg_type, message, *, datasite_id="", round_num=0):
            start = time.perf_counter()
            try:
                return await publish(
                    self, msg_type, message, datasite_id=datasite_id, round_num=round_num
                )
            finally:
                kind = str(getattr(msg_type, "value", msg_type))
                recorder.add(start, str(self.service), "publish", kind, datasite_id)

        ServiceRunner._on_message = timed_on_message
        SecureEndpoint.publish = timed_publish


def last_round_spans(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (service, step, msg_type) of the last round: count, first start, last end (seconds
    after its round.open was published) and summed duration, in order of start."""
    opens = [e["start"] for e in events if e["msg_type"] == "round.open" and e["step"] == "publish"]
    if not opens:
        return []
    begin = max(opens)
    spans: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "first_start_s": float("inf"), "last_end_s": 0.0, "busy_s": 0.0}
    )
    for e in events:
        if e["start"] < begin:
            continue
        span = spans[(e["service"], e["step"], e["msg_type"])]
        span["count"] += 1
        span["first_start_s"] = min(span["first_start_s"], e["start"] - begin)
        span["last_end_s"] = max(span["last_end_s"], e["end"] - begin)
        span["busy_s"] += e["end"] - e["start"]
    rows = [{"service": s, "step": st, "msg_type": k, **v} for (s, st, k), v in spans.items()]
    return sorted(rows, key=lambda r: r["first_start_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small model and 3 sites, seconds")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="events and spans as JSON")
    parser.add_argument(
        "--claim", action="store_true", help="updates by claim check (PDMFED_CLAIM_DIR)"
    )
    args = parser.parse_args(argv)
    from federation.runtime.allocator import keep_freed_buffers

    import bench.bench_round as bench_round

    keep_freed_buffers()  # as every service process does at start
    recorder = _Recorder()
    recorder.install()
    if args.smoke:
        spec = {
            "model": "hybrid-sleep",
            "sites": 3,
            "rounds": 2,
            "train_s": 0.05,
            "layout": bench_round.ONE_PROCESS,
        }
    else:
        spec = {
            "model": "10M",
            "sites": args.sites,
            "rounds": 2,
            "train_s": bench_round.BIG_TRAIN_S,
            "layout": bench_round.ONE_PROCESS,
        }
    spec["claim_check"] = args.claim
    row = bench_round._measure(spec)
    spans = last_round_spans(recorder.events)
    print(
        f"{spec['model']} x{spec['sites']}: round {row['wall_s']['median']:.2f} s, training"
        f" {row['training_s']['median']:.2f} s; last round, seconds after its round.open:"
    )
    print(
        f"{'service':>17} {'step':>8} {'message':>18} {'count':>5} {'first':>7} {'last':>7} {'busy':>7}"
    )
    for s in spans:
        print(
            f"{s['service']:>17} {s['step']:>8} {s['msg_type']:>18} {s['count']:>5}"
            f" {s['first_start_s']:7.2f} {s['last_end_s']:7.2f} {s['busy_s']:7.2f}"
        )
    data = {
        "spec": spec,
        "round": {k: row[k] for k in ("wall_s", "training_s")},
        "spans": spans,
        "events": recorder.events,
    }
    print(f"wrote {write_result(NAME, data, args.out or result_path(NAME, args.smoke))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
