"""`pdmfed status`: asks the running services themselves (their HTTP port) and the broker.

Each service answers on its metrics port: `/readyz` (consuming), `/metrics` (round, datasites
connected per campaign, messages handled and rejected). Queue depths come from the broker. Nothing is read
from another service's files.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Mapping

from federation.config import Settings
from federation.runtime.registry import SERVICE_NAMES

__all__ = ["DEFAULT_SERVICE_URLS", "collect_status", "probe_service", "status_main"]

#: Where the services answer in the compose stack and on Kubernetes (Service names, port 9100).
DEFAULT_SERVICE_URLS = {name: f"http://{name}:9100" for name in SERVICE_NAMES}


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator-given URL
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _summarise_metrics(text: str) -> dict:
    """The figures an operator asks for first, from one service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {
        "round": {},
        "datasites": {},
        "consumed": 0,
        "published": 0,
        "rejected": {},
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == "pdmfed_round":
                out["round"][labels.get("campaign", "")] = int(value)
            elif sample.name in ("pdmfed_datasites_connected", "pdmfed_datasites_expected"):
                counts = out["datasites"].setdefault(labels.get("campaign", ""), [0, 0])
                counts[sample.name.endswith("_expected")] = int(value)
            elif sample.name == "pdmfed_messages_consumed_total":
                out["consumed"] += int(value)
            elif sample.name == "pdmfed_messages_published_total":
                out["published"] += int(value)
            elif sample.name == "pdmfed_messages_rejected_total" and value > 0:
                reason = labels.get("reason", "?")
                out["rejected"][reason] = out["rejected"].get(reason, 0) + int(value)
    return out


def probe_service(url: str, timeout: float = 3.0) -> dict:
    """One service's own answer: reachable, ready, and its metrics summary (or why not)."""
    base = url.rstrip("/")
    try:
        ready_code, _ = _get(f"{base}/readyz", timeout)
        metrics_code, text = _get(f"{base}/metrics", timeout)
    except (OSError, ValueError) as exc:  # refused, unknown host, timeout, bad URL
        reason = getattr(exc, "reason", exc)
        return {"url": base, "reachable": False, "ready": False, "error": str(reason)}
    status = {"url": base, "reachable": True, "ready": ready_code == 200}
    if metrics_code == 200:
        status.update(_summarise_metrics(text))
    else:
        status["error"] = f"/metrics answered HTTP {metrics_code}"
    return status


async def _queues(settings: Settings) -> dict[str, int | str]:
    from federation.runtime.launch import make_bus, topology_of

    out: dict[str, int | str] = {}
    if not settings.amqp_url:
        return out
    bus = make_bus(settings, "status")
    try:
        await bus.start()
        for q in topology_of(settings).all_queues():
            try:
                out[q.name] = await bus.queue_depth(q.name)
            except Exception as exc:  # one missing or forbidden queue should not hide the others
                out[q.name] = f"error: {type(exc).__name__}"
    finally:
        await bus.close()
    return out


def collect_status(
    settings: Settings, services: Mapping[str, str] | None = None, *, timeout: float = 3.0
) -> dict:
    """Everything `pdmfed status` shows: each service's answer, and the broker's queue depths."""
    urls = DEFAULT_SERVICE_URLS if services is None else dict(services)
    try:
        queues = asyncio.run(_queues(settings))
    except Exception as exc:  # the services' own answers are still worth showing
        queues = {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "services": {name: probe_service(url, timeout) for name, url in urls.items()},
        "queues": queues,
    }


def status_main(*, json_out: bool = False, services: Mapping[str, str] | None = None) -> int:
    """`pdmfed status`: tables (or JSON) on stdout; exit 0 when every service is ready, else 1."""
    from rich.console import Console
    from rich.table import Table

    status = collect_status(Settings(), services)
    all_ready = all(s["ready"] for s in status["services"].values())
    if json_out:
        print(json.dumps(status, indent=2, default=str))
        return 0 if all_ready else 1
    console = Console()
    t = Table(title="services")
    for col in ("service", "ready", "round", "datasites", "handled", "published", "rejected"):
        t.add_column(col)
    for name, s in status["services"].items():
        if not s["reachable"]:
            t.add_row(name, f"unreachable: {s['error']}", "", "", "", "", "")
            continue
        rounds = (
            ", ".join(f"{c}: {r}" if c else str(r) for c, r in s.get("round", {}).items()) or "-"
        )
        datasites = (
            ", ".join(f"{c}: {n}/{of}" for c, (n, of) in s.get("datasites", {}).items()) or "-"
        )
        rejected = ", ".join(f"{k}: {v}" for k, v in s.get("rejected", {}).items()) or "-"
        t.add_row(
            name,
            "yes" if s["ready"] else "no",
            rounds,
            datasites,
            str(s.get("consumed", "-")),
            str(s.get("published", "-")),
            rejected,
        )
    console.print(t)
    if status["queues"]:
        q = Table(title="queues")
        q.add_column("queue")
        q.add_column("ready messages")
        for name, depth in status["queues"].items():
            q.add_row(name, str(depth))
        console.print(q)
    else:
        console.print("queues: PDMFED_AMQP_URL is not set")
    return 0 if all_ready else 1
