"""`pdmfed campaign --config campaign.yaml`: run a campaign against the running services over RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from federation.campaign import CampaignConfig, load_campaign_config
from federation.config import Settings
from federation.errors import ConfigError, PdmFedError

__all__ = ["campaign_main", "run_campaign", "CampaignUnanswered", "DEFAULT_ACCEPT_TIMEOUT_S"]

log = logging.getLogger(__name__)

#: How long `pdmfed campaign` waits for trainer-dispatch's answer to its campaign.start.
DEFAULT_ACCEPT_TIMEOUT_S = 30.0


class CampaignUnanswered(PdmFedError):
    """Neither campaign.accepted nor campaign.rejected came back within the accept timeout."""

    reason = "unanswered"


def _unanswered(
    settings: Settings, cid: str, accept_timeout: float, sender: str
) -> CampaignUnanswered:
    from federation.bus.base import REASON_HEADER
    from federation.runtime.launch import topology_of

    dead = topology_of(settings).dead_queue.name
    return CampaignUnanswered(
        f"campaign {cid}: no answer to campaign.start within {accept_timeout:g} s "
        f"(--accept-timeout): trainer-dispatch is not running, or it does not trust or allow "
        f"this orchestrator's key ({sender}); the dead-letter queue {dead} holds the reason "
        f"({REASON_HEADER} header)"
    )


async def run_campaign(
    settings: Settings,
    cfg: CampaignConfig,
    *,
    timeout: float,
    out: Path,
    console: Any = None,
    resume: bool = False,
    bundle: dict | None = None,
    accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT_S,
) -> dict:
    """Publish campaign.start, await trainer-dispatch's answer, follow the campaign, write the
    run folder; returns the summary.

    ``console`` receives every event the orchestrator follows (e.g. a CampaignDisplay). A
    campaign.rejected raises CampaignRefused with its reason; no answer within
    ``accept_timeout`` seconds raises CampaignUnanswered. With ``resume`` nothing is published:
    the campaign already running under ``cfg.campaign_id`` is followed to its end (the summary
    holds the rounds completed from then on).
    """
    from federation.monitoring import Metrics
    from federation.orchestrator.client import CampaignClient
    from federation.orchestrator.embedded import ORCHESTRATOR_SENDER
    from federation.orchestrator.summary import build_summary, write_run
    from federation.runtime.launch import (
        make_bus,
        make_sealer,
        orchestrator_endpoint,
        sender_roles,
    )

    sealer = make_sealer(settings, ORCHESTRATOR_SENDER)
    roles = sender_roles(settings, sealer.trust.senders if sealer.trust is not None else ())
    bus = make_bus(settings, "orchestrator")
    await bus.start()
    try:
        endpoint = orchestrator_endpoint(settings, bus, sealer, Metrics("orchestrator"), roles)
        client = CampaignClient(bus, endpoint)
        if console is not None:
            client.on_event = console
        await client.listen()
        if not resume:
            await client.start_campaign(cfg)
            try:
                await client.wait_accepted(cfg.campaign_id, accept_timeout)
            except TimeoutError:
                raise _unanswered(
                    settings, cfg.campaign_id, accept_timeout, ORCHESTRATOR_SENDER
                ) from None
        record = await client.wait(cfg.campaign_id, timeout)
    finally:
        await bus.close()
    summary = build_summary(record, cfg.to_payload())
    if record.normalizer:  # round 0's federated statistics, never a factory's own
        from federation.ml.fedstats import named_normalizer

        bundle = dict(bundle or {})
        features = bundle.get("features")
        bundle["normalizer"] = (named_normalizer(record.normalizer, features).to_dict()
                                if features else dict(record.normalizer))  # fmt: skip
    if bundle and bundle.get("data_cards"):
        summary["data"] = {"data_cards": bundle["data_cards"]}
    write_run(out / cfg.campaign_id, summary, record.final_model, bundle=bundle)
    return summary


def _cards(paths: list[Path], cfg: CampaignConfig) -> dict:
    """Bundle information from the factories' data cards (a bad card stops before anything runs)."""
    import json

    from federation.console import fail
    from federation.ml.bundle import BundleError, bundle_info_from_cards

    cards = []
    for path in paths:
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            fail(f"{path}: not a readable data card: {exc}")
        if not isinstance(card, dict) or "card_version" not in card:
            fail(f"{path}: not a data card (pdmfed data import writes datacard.json)")
        cards.append(card)
    try:
        return bundle_info_from_cards(cards, cfg.training.model_dump())
    except BundleError as exc:
        fail(str(exc))


def campaign_main(
    *,
    config: Path,
    out: Path,
    timeout: float,
    resume: bool = False,
    data_cards: list[Path] | None = None,
    accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT_S,
) -> int:
    """CLI entry: exit 0 when the campaign reached its goal, else one line saying why and exit 1."""
    from rich.console import Console

    from federation.console import EXIT_FAILED, fail
    from federation.errors import CampaignRefused
    from federation.logs import setup_logging
    from federation.orchestrator.display import CampaignDisplay, outcome, results_table

    settings = Settings()
    setup_logging(settings.log_level)
    if not settings.amqp_url:
        raise ConfigError(
            "PDMFED_AMQP_URL is not set: `pdmfed campaign` talks to running services "
            "(use `pdmfed demo` for a self-contained run)"
        )
    settings.validate_secrets()
    cfg = load_campaign_config(config)
    cfg.check_model()
    bundle = _cards(list(data_cards or []), cfg)
    if cfg.campaign_id == "campaign":
        if resume:
            fail("--resume needs the campaign_id of the running campaign in the config")
        cfg = cfg.model_copy(update={"campaign_id": f"campaign-{time.strftime('%Y%m%d-%H%M%S')}"})
    console = Console(stderr=True)
    display = CampaignDisplay(console, cfg.rounds)

    def on_event(kind: str, p: dict, rec: Any = None) -> None:
        if kind == "campaign.accepted" and rec is not None and rec.accepted is p:  # ours
            console.print(
                f"campaign {cfg.campaign_id} accepted by trainer-dispatch: {p['rounds']} "
                f"rounds over {len(p['datasites'])} datasites",
                highlight=False,
                soft_wrap=True,
            )
        display(kind, p, rec)

    try:
        summary = asyncio.run(
            run_campaign(
                settings,
                cfg,
                timeout=timeout,
                out=out,
                console=on_event,
                resume=resume,
                bundle=bundle,
                accept_timeout=accept_timeout,
            )
        )
    except TimeoutError:
        fail(
            f"campaign {cfg.campaign_id}: not completed within {timeout:.0f} s (--timeout)",
            EXIT_FAILED,
        )
    except CampaignRefused as exc:
        fail(f"campaign {cfg.campaign_id} refused by trainer-dispatch: {exc}", EXIT_FAILED)
    except CampaignUnanswered as exc:
        fail(str(exc), EXIT_FAILED)
    finally:
        display.stop()
    console.print(results_table(summary, cfg.rounds))
    console.print(f"run folder {out / cfg.campaign_id}", highlight=False, soft_wrap=True)
    ok, sentence = outcome(summary["final"]["reason"], summary["final"]["rounds"], cfg.rounds)
    if not ok:
        fail(f"campaign {cfg.campaign_id} {sentence}", EXIT_FAILED)
    return 0
