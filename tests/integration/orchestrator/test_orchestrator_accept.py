"""`pdmfed campaign` against a real trainer-dispatch over RabbitMQ learns at once what became of its
campaign.start: a duplicate campaign_id is refused within seconds with the reason, a start the
service dead-letters (an untrusted orchestrator key) ends at the accept timeout naming the likely
causes, and `--resume` publishes nothing and follows the running campaign."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from federation.campaign import CampaignConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bus"))
from bus_helpers import AMQP_URL, RABBIT_UP  # noqa: E402
from cli_helpers import PDMFED, clean_env, kill_session, run_pdmfed  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not RABBIT_UP, reason="RabbitMQ not reachable on 127.0.0.1:5672"),
]

ROLES = ("connector", "trainer-dispatch", "security", "aggregator", "orchestrator")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """trainer-dispatch as a real `pdmfed service` process with its keys, on its own topology."""

    def __init__(self, root: Path) -> None:
        from federation.runtime.launch import ensure_identities
        from federation.runtime.roles import write_roles_file

        self.root = root
        self.prefix = f"acc{uuid.uuid4().hex[:10]}"
        self.keys = root / "keys"
        ensure_identities(self.keys, list(ROLES))
        write_roles_file(self.keys, {r: r for r in ROLES})  # as `pdmfed keys init` does
        self.env = clean_env(
            PDMFED_AMQP_URL=AMQP_URL,
            PDMFED_ENCRYPTION_KEY=secrets.token_urlsafe(32),
            PDMFED_KEY_SALT=secrets.token_hex(16),
            PDMFED_KEYS_DIR=str(self.keys),
            PDMFED_TOPOLOGY_PREFIX=self.prefix,
            PDMFED_LOG_LEVEL="INFO",
        )
        self.proc: subprocess.Popen | None = None

    def start_dispatch(self) -> None:
        port = _free_port()
        state = self.root / "dispatch"
        state.mkdir()
        env = {
            **self.env,
            "PDMFED_STATE_DIR": str(state),
            "PDMFED_SERVICE_ID": "trainer-dispatch",
            "PDMFED_METRICS_PORT": str(port),
        }
        log = open(self.root / "dispatch.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "federation.cli", "service", "trainer-dispatch"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"trainer-dispatch not ready: {self.log()[-2000:]}")

    def log(self) -> str:
        return (self.root / "dispatch.log").read_text(errors="replace")

    def orchestrator_env(self, keys: Path | None = None) -> dict[str, str]:
        return {
            **self.env,
            "PDMFED_KEYS_DIR": str(keys or self.keys),
            "PDMFED_STATE_DIR": str(self.root / "orchestrator"),
        }

    def config(self, cid: str) -> Path:
        cfg = CampaignConfig.model_validate(
            dict(
                campaign_id=cid,
                datasites=["f1", "f2"],
                rounds=3,
                round_timeout_s=600,
                quorum=2,
                training={"model_type": "cnn", "epochs": 1, "n_features": 4, "window": 8},
                privacy={"enabled": False},
            )
        )
        path = self.root / f"{cid}.yaml"
        path.write_text(yaml.safe_dump(cfg.to_payload()))
        return path

    def dead_letters(self) -> list[dict]:
        """The headers of what the dead-letter queue holds (read and dropped)."""
        import aio_pika

        async def read() -> list[dict]:
            conn = await aio_pika.connect(AMQP_URL)
            try:
                channel = await conn.channel()
                queue = await channel.get_queue(f"{self.prefix}.dead", ensure=True)
                out = []
                while (msg := await queue.get(no_ack=True, fail=False)) is not None:
                    out.append(dict(msg.headers or {}))
                return out
            finally:
                await conn.close()

        return asyncio.run(read())

    def stop(self) -> None:
        from federation.bus.rabbitmq import RabbitBus
        from federation.bus.topology import DEFAULT_TOPOLOGY

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

        async def delete() -> None:
            bus = RabbitBus(
                AMQP_URL,
                service="cleanup",
                topology=DEFAULT_TOPOLOGY.with_prefix(self.prefix),
                declare=False,
            )
            await bus.start()
            try:
                await bus.delete_topology()
            finally:
                await bus.close()

        asyncio.run(delete())


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(tmp_path)
    dep.start_dispatch()
    try:
        yield dep
    finally:
        dep.stop()


def test_when_a_campaign_id_is_already_running__a_second_campaign_is_refused_at_once_and_resume_follows_it(
    deployment, tmp_path
):
    cid = f"dup-{uuid.uuid4().hex[:6]}"
    config = deployment.config(cid)
    env = deployment.orchestrator_env()
    first = subprocess.Popen(
        [PDMFED, "campaign", "--config", str(config), "--out", "runs-first", "--timeout", "600"],
        env={**env, "COLUMNS": "100"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = first.stderr.readline()
        assert (
            line.rstrip()
            == f"campaign {cid} accepted by trainer-dispatch: 3 rounds over 2 datasites"
        ), line + deployment.log()[-2000:]

        second = run_pdmfed(
            "campaign",
            "--config",
            str(config),
            "--timeout",
            "600",
            "--accept-timeout",
            "60",
            tmp_path=tmp_path,
            env=env,
            timeout=120,
        )
        assert second.returncode == 1, second.stderr
        # round 0 (statistics) or round 1, whichever the first campaign has reached
        assert re.fullmatch(
            f"pdmfed: campaign {re.escape(cid)} refused by trainer-dispatch: a campaign with this campaign_id"
            r" is already running \(round [01]\): pass --resume to follow it, or choose a new"
            " campaign_id",
            second.stderr.splitlines()[-1],
        ), second.stderr
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert second.seconds < 30, second.seconds  # at once: not the accept timeout, not --timeout
        assert second.leftover_processes == []

        # --resume publishes no start: no refusal, it follows the running campaign until --timeout
        resumed = run_pdmfed(
            "campaign",
            "--config",
            str(config),
            "--resume",
            "--timeout",
            "3",
            tmp_path=tmp_path,
            env=env,
            timeout=120,
        )
        assert resumed.returncode == 1, resumed.stderr
        assert (
            resumed.stderr.splitlines()[-1]
            == f"pdmfed: campaign {cid}: not completed within 3 s (--timeout)"
        )
        assert "refused" not in resumed.stderr
        assert first.poll() is None  # the other's refusal did not end the first orchestrator's wait
    finally:
        kill_session(first.pid)
        first.wait()
    log = deployment.log()
    assert log.count(f"campaign.start for {cid} refused (duplicate_campaign)") == 1, log[-3000:]


def test_when_dispatch_does_not_trust_the_orchestrator_key__campaign_ends_at_the_accept_timeout(
    deployment, tmp_path
):
    from federation.runtime.launch import ensure_identities

    keys = tmp_path / "orchestrator-keys"  # a fresh orchestrator key trainer-dispatch never saw
    ensure_identities(keys, ["orchestrator"])
    for name in ("trainer-dispatch.pub", "senders.json"):
        shutil.copy(deployment.keys / name, keys / name)
    cid = f"untrusted-{uuid.uuid4().hex[:6]}"
    run = run_pdmfed(
        "campaign",
        "--config",
        str(deployment.config(cid)),
        "--timeout",
        "600",
        "--accept-timeout",
        "4",
        tmp_path=tmp_path,
        env=deployment.orchestrator_env(keys),
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines() == [
        f"pdmfed: campaign {cid}: no answer to campaign.start within 4 s (--accept-timeout): "
        "trainer-dispatch is not running, or it does not trust or allow this orchestrator's key "
        f"(orchestrator); the dead-letter queue {deployment.prefix}.dead holds the reason "
        "(x-pdmfed-reason header)"
    ]
    assert run.seconds < 40, run.seconds
    reasons = [h.get("x-pdmfed-reason") for h in deployment.dead_letters()]
    assert "auth" in reasons, reasons  # where the line sends the user, the reason is
    assert not (tmp_path / "runs" / cid).exists()
