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
    env = service_env(
        amqp_url,
        prefix,
        tmp_path / "keys",
        fleet.trust_dir,
        redis_url=None,
        registry=fleet.registry_file,
    )
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
    assert any(
        line.startswith(f"{cfg.campaign_id}: stopped after 1 of 5 rounds") for line in lines
    ), run.stderr[-3000:]
    assert (tmp_path / "runs" / cfg.campaign_id / "summary.json").exists()
    assert "\x1b" not in run.stderr and run.leftover_processes == []


def test_when_resume_attaches_to_a_running_campaign__it_follows_it_to_its_end(
    fleet, amqp_url, tmp_path
):
    import subprocess

    from cli_helpers import PDMFED, kill_session

    prefix = unique_prefix("resume")
    env = service_env(
        amqp_url,
        prefix,
        tmp_path / "keys",
        fleet.trust_dir,
        redis_url=None,
        registry=fleet.registry_file,
    )
    procs = ServiceProcesses(env, tmp_path)
    for name in SERVICES:
        procs.start(name)
    cfg = campaign_config(
        fleet.sites,
        campaign_id=f"{prefix}-c",
        rounds=3,
        seed=2,
        n_features=fleet.data.n_features,
        window=fleet.data.window,
    )
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(cfg.to_payload()))
    orch_env = {**env, "PDMFED_STATE_DIR": str(tmp_path / "orchestrator")}
    first = subprocess.Popen(
        [PDMFED, "campaign", "--config", str(config), "--out", "runs-first"],
        env=orch_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        seen = []
        for line in first.stderr:  # attach once round 1 is done
            seen.append(line)
            if line.startswith("round 1/3"):
                break
        assert seen and seen[-1].startswith("round 1/3"), "".join(seen)
        accepted = (
            f"campaign {cfg.campaign_id} accepted by trainer-dispatch: 3 rounds over 3 datasites"
        )
        assert accepted in [line.rstrip() for line in seen], "".join(seen)
        run = run_pdmfed(
            "campaign",
            "--config",
            str(config),
            "--out",
            "runs",
            "--resume",
            "--timeout",
            "300",
            tmp_path=tmp_path,
            env=orch_env,
            timeout=360,
        )
        first_rest = first.communicate(timeout=360)[1]
    finally:
        kill_session(first.pid)
        procs.stop_all()
        delete_topology(amqp_url, prefix)
    assert first.returncode == 0, first_rest[-2000:]
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert lines[-1] == f"run folder runs/{cfg.campaign_id}"
    assert f"{cfg.campaign_id}: all 3 rounds completed" in [line.rstrip() for line in lines]
    assert any(line.startswith("round 3/3") for line in lines)
    assert not any(line.startswith("round 1/3") for line in lines)  # it attached after round 1
    assert not any(
        "accepted by trainer-dispatch" in line for line in lines
    )  # it published no start
