"""The whole stack in containers: a 3-round campaign, a crashed security service, Prometheus,
and a `down -v` that leaves nothing behind. Run by `make test-stack` (needs Docker)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from stack_helpers import (
    FACTORIES,
    IMAGE_UID,
    IMAGES_ENV,
    ROOT,
    SERVICES,
    STACK,
    Stack,
    compose_binary,
    images_env,
    metric_value,
    run,
)

pytestmark = [pytest.mark.stack]

ROUNDS = 3
WINDOWS_PER_FACTORY = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prerequisites() -> None:
    # `make test-stack` installs Docker and builds the images first; here they must exist.
    if compose_binary() is None:
        pytest.fail("docker-compose is not installed: run `make test-stack` (it installs it)")
    if run(["docker", "info"], check=False).returncode != 0:
        pytest.fail("the Docker daemon is not reachable: run `make test-stack` (it starts it)")
    if not IMAGES_ENV.exists():
        pytest.fail(f"{IMAGES_ENV} is missing: run `make images`")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    _prerequisites()
    root = tmp_path_factory.mktemp("stack")
    owner = f"{IMAGE_UID}:{IMAGE_UID}"
    # the stack's own secrets step (`pdmfed keys init`), as `make stack` runs it
    run(
        ["bash", str(ROOT / "scripts/stack.sh"), "secrets", str(root / "secrets")],
        env={**os.environ, "PY": sys.executable},
    )
    run(
        [
            sys.executable,
            "-m",
            "federation.cli",
            "data",
            "partition",
            "--out",
            str(root / "data"),
            "--max-windows",
            str(WINDOWS_PER_FACTORY),
            "--seed",
            "3",
            "--owner",
            owner,
        ]
    )
    (root / "runs").mkdir()
    os.chown(root / "runs", IMAGE_UID, IMAGE_UID)
    campaign = yaml.safe_load((ROOT / "deploy/campaigns/synthetic.yaml").read_text())
    campaign.update(campaign_id=f"stack-{secrets.token_hex(3)}", rounds=ROUNDS, round_timeout_s=240)
    # DP-SGD stays on; no budget stop, so the campaign runs its rounds on these tiny partitions
    campaign["record_privacy"]["max_epsilon"] = None
    # a first PySyft login can take tens of seconds on two busy cores: retry within the round
    campaign["max_retries"] = 3
    (root / "campaigns").mkdir()
    (root / "campaigns" / "stack.yaml").write_text(yaml.safe_dump(campaign))
    prometheus_port = _free_port()
    env = {
        **os.environ,
        **images_env(),
        "PDMFED_SECRETS_DIR": str(root / "secrets"),
        "PDMFED_DATA_DIR": str(root / "data"),
        "PDMFED_RUNS_DIR": str(root / "runs"),
        "PDMFED_CAMPAIGNS_DIR": str(root / "campaigns"),
        "PDMFED_PROMETHEUS_PORT": str(prometheus_port),
        "PDMFED_RABBITMQ_UI_PORT": str(_free_port()),
    }
    st = Stack(
        project=f"pdmfedstack{secrets.token_hex(3)}",
        env=env,
        root=root,
        prometheus_port=prometheus_port,
    )
    st.campaign = campaign
    try:
        st.compose("up", "-d", *STACK)
        yield st
    finally:
        st.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def _follow(proc: subprocess.Popen, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line.rstrip())


def _wait_for_round(
    stack: Stack, round_num: int, orchestrator: subprocess.Popen, timeout: float
) -> float:
    """Poll trainer-dispatch's own /metrics until it has opened `round_num`; its pdmfed_round."""
    deadline = time.time() + timeout
    while time.time() < deadline and orchestrator.poll() is None:
        value = metric_value(stack.service_metrics("trainer-dispatch"), "pdmfed_round")
        if value >= round_num:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"round {round_num} never opened (orchestrator exit {orchestrator.poll()})"
    )


@pytest.mark.timeout(1200)
def test_a_campaign_in_containers_completes_every_round_exactly_through_a_security_crash(stack):
    healthy = stack.wait_healthy(
        (*SERVICES, *FACTORIES, "rabbitmq", "redis", "prometheus"), timeout=420
    )
    print(f"healthy after (s): { {k: round(v) for k, v in sorted(healthy.items())} }")
    lines: list[str] = []
    orchestrator = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            compose_binary(),
            "--project-name",
            stack.project,
            "run",
            "--rm",
            "-T",
            "orchestrator",
            "pdmfed",
            "campaign",
            "--config",
            "/campaigns/stack.yaml",
            "--timeout",
            "900",
            # trainer-dispatch answers campaign.start within seconds, but on a loaded two-core
            # CI machine the containers' first messages can take minutes
            "--accept-timeout",
            "300",
        ],
        env=stack.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    follower = threading.Thread(target=_follow, args=(orchestrator, lines), daemon=True)
    follower.start()
    try:
        try:
            at_crash = _wait_for_round(stack, 2, orchestrator, timeout=600)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n" + "\n".join(lines[-40:])) from None
        restarts_before = stack.crash("security")  # mid-round: round 2 is training/screening
        assert at_crash == 2, f"dispatch was at round {at_crash} when security was killed"
        deadline = time.time() + 180
        while time.time() < deadline:
            state = stack.inspect("security")
            if state["RestartCount"] > restarts_before and state["State"]["Running"]:
                break
            time.sleep(1)
        else:
            pytest.fail(f"security did not restart: {stack.inspect('security')['State']}")
        orchestrator.wait(timeout=900)
    finally:
        if orchestrator.poll() is None:
            orchestrator.kill()
    follower.join(timeout=10)
    logs = "\n".join(lines[-60:])
    assert orchestrator.returncode == 0, (
        f"campaign failed:\n{logs}\n{stack.logs('security')[-3000:]}"
    )

    summary = json.loads(
        (stack.root / "runs" / stack.campaign["campaign_id"] / "summary.json").read_text()
    )
    windows = {
        f: int(np.load(stack.root / "data" / f / "partition.npz")["y"].shape[0]) for f in FACTORIES
    }
    assert [r["round_num"] for r in summary["rounds"]] == list(range(1, ROUNDS + 1)), logs
    for r in summary["rounds"]:
        assert r["participants"] == sorted(FACTORIES), (
            r["failed"],
            stack.logs("connector")[-3000:],
        )
        assert r["status"] == "aggregated" and not r["rejected"] and not r["failed"], r
        # every factory's update counted exactly once, the round of the crash included
        assert r["num_samples"] == sum(windows.values()), (
            r["round_num"],
            r["num_samples"],
            windows,
        )
    assert summary["final"]["reason"] == "max_rounds"
    assert stack.inspect("security")["RestartCount"] == restarts_before + 1
    # the restarted security screened what it had not yet acked: round 2 (in part) and round 3
    assert metric_value(
        stack.service_metrics("security"), "pdmfed_messages_consumed_total", msg_type="update.raw"
    ) >= len(FACTORIES)


def test_prometheus_scrapes_every_service_and_sees_the_campaign_finish(stack):
    up = stack.wait_query('up{job="pdmfed-services"} == 1', timeout=60, min_series=len(SERVICES))
    assert {s["metric"]["service"] for s in up} == set(SERVICES)
    campaign = stack.campaign["campaign_id"]
    rounds = stack.wait_query(
        f'pdmfed_round{{campaign="{campaign}"}} == 3',
        timeout=60,
        services=frozenset({"trainer-dispatch"}),
    )
    assert {s["metric"]["service"] for s in rounds} >= {"trainer-dispatch"}
    # the connector's sessions during the campaign (it drops the series once it completed)
    connected = stack.wait_query(
        f'max_over_time(pdmfed_datasites_connected{{campaign="{campaign}"}}[1h]) > 0', timeout=60
    )
    assert {s["metric"]["service"] for s in connected} == {"connector"}
    finished = stack.wait_query(
        f'pdmfed_campaign_running{{campaign="{campaign}"}} == 0', timeout=60
    )
    assert {s["metric"]["service"] for s in finished} == {"trainer-dispatch"}
    rabbit = stack.wait_query('rabbitmq_queue_messages{queue="pdmfed.security"}', timeout=60)
    assert rabbit, "RabbitMQ's per-queue metrics are scraped too"


def test_pdmfed_status_asks_the_running_services_from_the_orchestrator_container(stack):
    result = stack.compose(
        "run", "--rm", "-T", "orchestrator", "pdmfed", "status", "--json", check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = json.loads(result.stdout[result.stdout.index("{") :])
    assert {name: s["ready"] for name, s in status["services"].items()} == dict.fromkeys(
        SERVICES, True
    )
    assert status["services"]["trainer-dispatch"]["round"] == {
        stack.campaign["campaign_id"]: ROUNDS
    }
    assert status["services"]["security"]["consumed"] > 0
    assert status["queues"]["pdmfed.security"] == 0  # nothing left behind after the campaign


def _redis_cli(stack: Stack, password: str | None, *args: str) -> str:
    """redis-cli inside the stack's Redis container, with ``password`` or none at all."""
    auth = ["-e", f"REDISCLI_AUTH={password}"] if password else []
    argv = ["docker", "exec", *auth, stack.container("redis"), "env"]
    argv += [] if password else ["-u", "REDISCLI_AUTH"]
    result = run([*argv, "redis-cli", *args], timeout=60, check=False)
    return result.stdout + result.stderr


def test_the_stacks_redis_confines_each_service_to_its_own_seen_ids(stack):
    def password(component: str) -> str:
        # the file its container reads through PDMFED_SECRETS_DIR
        return (
            stack.root / "secrets" / component / "secrets" / "pdmfed_redis_password"
        ).read_text()

    victim_key = "pdmfed:seen:security:" + secrets.token_hex(16)
    assert "OK" in _redis_cli(
        stack, password("security"), "--user", "pdmfed-security", "set", victim_key, "1"
    )
    connector = ("--user", "pdmfed-connector")
    assert "NOPERM" in _redis_cli(stack, password("connector"), *connector, "del", victim_key)
    assert "NOPERM" in _redis_cli(stack, password("connector"), *connector, "get", victim_key)
    assert "NOAUTH" in _redis_cli(stack, None, "get", victim_key)  # the default user is off
    assert "WRONGPASS" in _redis_cli(
        stack, password("connector"), "--user", "pdmfed-security", "ping"
    )
    assert (
        _redis_cli(
            stack, password("security"), "--user", "pdmfed-security", "get", victim_key
        ).strip()
        == "1"
    )


def test_down_with_volumes_leaves_no_container_volume_or_network(stack):
    assert any(stack.leftovers().values())  # the check below can see the project
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
