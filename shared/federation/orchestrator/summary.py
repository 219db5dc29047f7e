"""A campaign's run folder: model and bundle, summary.json (the report's schema), report.html."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from federation.orchestrator.client import CampaignRecord

__all__ = ["build_summary", "round_entry", "round_zero", "write_run", "message_rejections"]

log = logging.getLogger(__name__)


def message_rejections(registry: Any) -> dict[str, int]:
    """pdmfed_messages_rejected_total summed over services, by reason (non-zero only)."""
    if registry is None:
        return {}
    out: Counter[str] = Counter()
    for family in registry.collect():
        if family.name != "pdmfed_messages_rejected":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value > 0:
                out[sample.labels["reason"]] += int(sample.value)
    return dict(out)


def round_entry(r: dict, test_rmse: dict[int, float] | None = None) -> dict:
    """One round of the summary, from its round.completed payload (test RMSE when measured)."""
    m = r.get("metrics") or {}
    rn = int(r["round_num"])
    rmse = (test_rmse or {}).get(rn, m.get("rmse"))
    return {
        "round_num": rn,
        "rmse": None if rmse is None else float(rmse),
        "test_rmse": (test_rmse or {}).get(rn),
        "train_rmse": m.get("rmse"),
        # client-level ε when central/local update DP is on, else the worst factory's record-level ε
        "epsilon": r.get("epsilon")
        if r.get("epsilon") is not None
        else m.get("record_epsilon_max"),
        "client_epsilon": r.get("epsilon"),
        "record_epsilon": {k: float(v) for k, v in (m.get("record_epsilon") or {}).items()},
        "participants": list(r.get("participants") or []),
        "rejected": {k: str(v) for k, v in (r.get("rejected") or {}).items()},
        "failed": {k: str(v) for k, v in (r.get("failed") or {}).items()},
        "byzantine": list(r.get("byzantine") or []),
        # samples in the round's aggregate: every accepted update counted once
        "num_samples": m.get("num_samples"),
        "duration_s": m.get("duration_s"),
        "reputation": {k: float(v) for k, v in (m.get("reputation") or {}).items()},
        "status": r.get("status", "aggregated"),
    }


def round_zero(record: CampaignRecord, test_rmse: dict[int, float] | None) -> dict | None:
    """Round 0: the factories whose statistics it left out (reason codes) and the initial
    model's held-out RMSE (None when it neither left anyone out nor was measured)."""
    rmse = (test_rmse or {}).get(0)
    if rmse is None and not record.normalizer_left_out:
        return None
    zero = {"round_num": 0, "status": "statistics", "metrics": {},
            "rejected": dict(record.normalizer_left_out)}  # fmt: skip
    entry = round_entry(zero, test_rmse)
    entry["normalizer"] = "federated" if record.normalizer else "none"
    return entry


def build_summary(
    record: CampaignRecord,
    config: dict,
    *,
    test_rmse: dict[int, float] | None = None,
    registry: Any = None,
) -> dict:
    """The CampaignSummary dict of federation.monitoring.report (round 0, the initial model's
    held-out RMSE, first when measured)."""
    rounds = [
        round_entry(r, test_rmse)
        for r in sorted(record.rounds, key=lambda r: r["round_num"])
        if int(r["round_num"]) > 0
    ]
    zero = round_zero(record, test_rmse)
    if zero is not None:
        rounds.insert(0, zero)
    reasons: Counter[str] = Counter()
    for r in rounds:
        reasons.update(r["rejected"].values())
    reasons.update(message_rejections(registry))
    done = record.completed or {}
    last = rounds[-1] if rounds else {}
    trained = [r for r in rounds if r["round_num"] > 0]
    from federation.ml.bundle import privacy_section

    return {
        "campaign_id": record.campaign_id,
        "config": config,
        "rounds": rounds,
        # ε with its δ and scope per DP layer (the rounds' "epsilon" is the headline number only)
        "privacy": privacy_section(config, rounds, record.normalizer_privacy),
        "rejections_by_reason": dict(reasons),
        "final": {
            "rmse": last.get("rmse"),
            "epsilon": last.get("epsilon"),
            # rounds the campaign ran (a follower that attached late saw fewer of them)
            "rounds": int(done.get("rounds") or len(trained)),
            "reason": str(done.get("reason", "incomplete")),
        },
    }


def write_run(
    run_dir: Path, summary: dict, final_model: dict | None, *, bundle: dict | None = None
) -> dict[str, Path]:
    """Write model.msgpack with its bundle.json, summary.json and report.html into run_dir.

    ``bundle`` adds what only the caller knows to the bundle manifest: ``features``,
    ``normalizer``, ``rul_cap``, ``data_cards``, ``schema``, ``evaluation``
    (``federation.ml.bundle.build_manifest``).
    """
    import hashlib

    from federation.ml.bundle import WEIGHTS_FILE, build_manifest, write_bundle
    from federation.monitoring.report import render_report
    from federation.wire.codec import encode_state_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    if final_model:
        out["model"] = run_dir / WEIGHTS_FILE
        weights = encode_state_dict(final_model)
        out["model"].write_bytes(weights)
        extra = {"features": None, "normalizer": None, "rul_cap": None, **(bundle or {})}
        out["bundle"] = write_bundle(
            run_dir,
            build_manifest(
                campaign_id=summary["campaign_id"],
                config=summary.get("config") or {},
                rounds=[r for r in summary.get("rounds") or [] if r.get("round_num", 1) > 0],
                weights_sha256=hashlib.sha256(weights).hexdigest(),
                privacy=summary.get("privacy"),
                **extra,
            ),
        )
    out["summary"] = run_dir / "summary.json"
    out["summary"].write_text(json.dumps(summary, indent=2, default=float))
    out["report"] = render_report(run_dir)
    return out
