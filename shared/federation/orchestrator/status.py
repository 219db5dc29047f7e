"""`pdmfed status`: queue depths, dead letters, and the campaigns/rounds trainer-dispatch holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from federation.config import Settings

__all__ = ["status_main", "collect_status"]


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
            except Exception as exc:  # one missing queue should not hide the others
                out[q.name] = f"error: {type(exc).__name__}"
    finally:
        await bus.close()
    return out


def _campaigns(settings: Settings) -> list[dict]:
    from federation.runtime.store import open_store

    if not settings.state_url and not (Path(settings.state_dir) / "dispatch.sqlite").exists():
        return []
    store = open_store(settings, "dispatch", collect_orphans=False)
    try:
        with store.transaction() as tx:
            out = []
            for key in tx.keys("campaign/"):
                camp = tx.get(key)
                cid = key.split("/", 1)[1]
                rnd = tx.get(f"round/{cid}/{int(camp['round']):06d}") or {}
                out.append({"campaign_id": cid, "status": camp.get("status"), "round": camp.get("round"),
                            "reason": camp.get("reason"), "round_status": rnd.get("status"),
                            "cohort": rnd.get("cohort"), "trained": rnd.get("trained"),
                            "failed": rnd.get("failed")})
            return out
    finally:
        store.close()


def collect_status(settings: Settings) -> dict:
    """Everything `pdmfed status` shows, as a dict."""
    return {"queues": asyncio.run(_queues(settings)), "campaigns": _campaigns(settings)}


def status_main(*, json_out: bool = False) -> int:
    """`pdmfed status`: tables (or JSON) on stdout; exit 0."""
    from rich.console import Console
    from rich.table import Table

    status = collect_status(Settings())
    if json_out:
        print(json.dumps(status, indent=2, default=str))
        return 0
    console = Console()
    if status["queues"]:
        t = Table(title="queues")
        t.add_column("queue")
        t.add_column("ready messages")
        for name, depth in status["queues"].items():
            t.add_row(name, str(depth))
        console.print(t)
    else:
        console.print("queues: PDMFED_AMQP_URL is not set (in-memory bus has no persistent queues)")
    if status["campaigns"]:
        t = Table(title="campaigns")
        for col in ("campaign", "status", "round", "round status", "trained", "failed"):
            t.add_column(col)
        for c in status["campaigns"]:
            t.add_row(c["campaign_id"], str(c["status"]), str(c["round"]), str(c["round_status"]),
                      ", ".join(c["trained"] or []), ", ".join(f"{k}: {v}" for k, v in (c["failed"] or {}).items()))
        console.print(t)
    else:
        console.print("campaigns: none in this state dir")
    return 0
