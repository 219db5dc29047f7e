"""`pdmfed campaign` against running services: a campaign that stops short of its goal fails, saying why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from e2e_helpers import (
    ServiceProcesses,
    campaign_config,
    delete_topology,
    service_env,
    unique_prefix,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_pdmfed  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")


def test_when_the_privacy_budget_stops_a_campaign_early__campaign_exits_1_with_the_reason(
    fleet, amqp_url, tmp_path
):
    prefix = unique_prefix("short")
    env = service_env(amqp_url, prefix, tmp_path / "keys", fleet.trust_dir, redis_url=None)
    procs = ServiceProcesses(env, tmp_path)
    for name in SERVICES:
        procs.start(name)
    # client-level DP at z = 0.8 over 3 factories spends ε ≈ 6 in one round: round 2 would exceed 8
    cfg = campaign_config(
        fleet.sites,
        campaign_id=f"{prefix}-budget",
        rounds=5,
        seed=2,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
        privacy={
            "enabled": True,
            "mode": "central",
            "noise_multiplier": 0.8,
            "clip_norm": 20.0,
            "max_epsilon": 8.0,
        },
    )
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(cfg.to_payload()))
    try:
        run = run_pdmfed(
            "campaign",
            "--config",
            str(config),
            "--out",
            "runs",
            "--timeout",
            "300",
            tmp_path=tmp_path,
            env={**env, "PDMFED_STATE_DIR": str(tmp_path / "orchestrator")},
            timeout=360,
        )
    finally:
        procs.stop_all()
        delete_topology(amqp_url, prefix)
    assert run.returncode == 1, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert lines[-1] == (
        f"pdmfed: campaign {cfg.campaign_id} stopped after 1 of 5 rounds: the next round "
        "would exceed the privacy budget"
    )
    assert f"run folder runs/{cfg.campaign_id}" in lines
    assert any(line.startswith(f"{cfg.campaign_id}: stopped after 1 of 5 rounds") for line in lines)
    assert (tmp_path / "runs" / cfg.campaign_id / "summary.json").exists()
    assert "\x1b" not in run.stderr and run.leftover_processes == []
