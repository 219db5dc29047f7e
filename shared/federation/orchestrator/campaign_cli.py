"""`pdmfed campaign --config campaign.yaml`: run a campaign against the running services over RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from federation.campaign import CampaignConfig, load_campaign_config
from federation.config import Settings
from federation.errors import ConfigError

__all__ = ["campaign_main", "run_campaign"]

log = logging.getLogger(__name__)


def _print_event(console: Any, total: int) -> Any:
    def on_event(kind: str, p: dict, rec: Any) -> None:
        if kind == "round.open":
            console.print(f"[bold]round {p['round_num']}/{total}[/] opened, cohort {', '.join(p['cohort'])}")
        elif kind == "datasite.status" and p.get("status") == "failed":
            console.print(f"  [yellow]{p['datasite_id']} failed[/]: {(p.get('detail') or {}).get('error')}")
        elif kind == "round.completed":
            m = p.get("metrics") or {}
            eps = p.get("epsilon")
            rmse = m.get("rmse")
            console.print(
                f"  round {p['round_num']}: participants {len(p['participants'])}, "
                f"rejected {len(p.get('rejected') or {})}, Byzantine {p.get('byzantine') or '-'}, "
                f"ε {'off' if eps is None else f'{eps:.2f}'}, RMSE {'-' if rmse is None else f'{rmse:.2f}'}"
            )
    return on_event


async def run_campaign(settings: Settings, cfg: CampaignConfig, *, timeout: float, out: Path,
                       console: Any = None) -> dict:
    """Publish campaign.start, follow it, write the run folder; returns the summary."""
    from federation.bus.middleware import SecureEndpoint
    from federation.monitoring import Metrics
    from federation.orchestrator.client import CampaignClient
    from federation.orchestrator.embedded import ORCHESTRATOR_SENDER
    from federation.orchestrator.summary import build_summary, write_run
    from federation.runtime.launch import make_bus, make_sealer

    bus = make_bus(settings, "orchestrator")
    await bus.start()
    try:
        sealer = make_sealer(settings, ORCHESTRATOR_SENDER)
        endpoint = SecureEndpoint(bus, sealer, Metrics("orchestrator"), "orchestrator")
        client = CampaignClient(bus, sealer, endpoint)
        if console is not None:
            client.on_event = _print_event(console, cfg.rounds)
        await client.listen()
        await client.start_campaign(cfg)
        record = await client.wait(cfg.campaign_id, timeout)
    finally:
        await bus.close()
    summary = build_summary(record, cfg.to_payload())
    write_run(out / cfg.campaign_id, summary, record.final_model)
    return summary


def campaign_main(*, config: Path, out: Path, timeout: float) -> int:
    """CLI entry: exit 0 on a completed campaign, non-zero with a one-line reason otherwise."""
    from rich.console import Console

    from federation.logs import setup_logging

    settings = Settings()
    setup_logging(settings.log_level)
    if not settings.amqp_url:
        raise ConfigError("PDMFED_AMQP_URL is not set: `pdmfed campaign` talks to running services "
                          "(use `pdmfed demo` for a self-contained run)")
    settings.validate_secrets()
    cfg = load_campaign_config(config)
    if cfg.campaign_id == "campaign":
        cfg = cfg.model_copy(update={"campaign_id": f"campaign-{time.strftime('%Y%m%d-%H%M%S')}"})
    console = Console(stderr=True)
    try:
        summary = asyncio.run(run_campaign(settings, cfg, timeout=timeout, out=out,
                                           console=console))
    except TimeoutError:
        console.print(f"pdmfed campaign: no campaign.completed within {timeout:.0f}s")
        return 3
    console.print(f"campaign {cfg.campaign_id}: {summary['final']['reason']} after "
                  f"{summary['final']['rounds']} rounds; run folder {out / cfg.campaign_id}")
    return 0 if summary["final"]["reason"] in ("max_rounds", "target_rmse", "privacy_budget") else 1
