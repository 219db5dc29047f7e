"""A running service reloads its senders' roles with their public keys on SIGHUP: a sender added
on disk is accepted after the signal, one whose role (then key) is removed is refused again."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import uuid
from pathlib import Path

import pytest
from federation.bus.base import Delivery, dead_letter_info
from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.crypto.signing import SigningIdentity
from federation.runtime.launch import ensure_identities, make_bus, make_sealer
from federation.runtime.roles import write_roles_file

sys.path.insert(0, str(Path(__file__).parents[1] / "bus"))
sys.path.insert(0, str(Path(__file__).parents[1] / "security"))
from bus_helpers import AMQP_URL, RABBIT_UP, wait_for  # noqa: E402
from service_helpers import ServiceProcess, service_env  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not RABBIT_UP, reason="RabbitMQ not reachable on 127.0.0.1:5672"),
]

NEWCOMER = "orchestrator-2"  # a second orchestrator, e.g. a new operator's workstation
BASE_ROLES = {"trainer-dispatch": "trainer-dispatch", "orchestrator": "orchestrator"}


def _config(cid: str) -> dict:
    return CampaignConfig.model_validate(dict(
        campaign_id=cid, datasites=["f1"], rounds=1, round_timeout_s=600, quorum=1, max_retries=0,
        seed=1, training={"model_type": "cnn", "epochs": 1, "n_features": 4, "window": 8},
        privacy={"enabled": False}, robustness={"enabled": False, "aggregation": "fedavg", "min_clients": 1},
    )).to_payload()  # fmt: skip


class Newcomer:
    """The newcomer's own key (kept in its own directory) and a bus to publish and watch dead letters."""

    def __init__(self, root: Path, env: dict[str, str], prefix: str) -> None:
        self.keys = root / "newcomer-keys"
        SigningIdentity.load_or_create(self.keys, NEWCOMER)
        self.settings = Settings(
            amqp_url=AMQP_URL, topology_prefix=prefix, keys_dir=self.keys, state_dir=root / "newcomer",
            encryption_key=env["PDMFED_ENCRYPTION_KEY"], key_salt=env["PDMFED_KEY_SALT"], redis_url=None,
            sender_roles=f"{NEWCOMER}=orchestrator",
        )  # fmt: skip
        self.dead: list[Delivery] = []

    async def start(self) -> None:
        self.bus = make_bus(self.settings, "orchestrator")
        await self.bus.start()  # declares the test's topology before the service starts

        async def on_dead(d: Delivery) -> None:
            self.dead.append(d)

        await self.bus.consume(f"{self.settings.topology_prefix}.dead", on_dead)

    async def start_campaign(self, cid: str) -> None:
        sealer = make_sealer(self.settings, NEWCOMER, role="orchestrator")
        for body in sealer.seal("campaign.start", {"campaign_id": cid, "config": _config(cid)}):
            await self.bus.publish("campaign.start", body)

    def refused(self, reasons: tuple[str, ...]) -> list[str]:
        return [
            dead_letter_info(d).reason for d in self.dead if dead_letter_info(d).reason in reasons
        ]

    async def stop(self) -> None:
        await self.bus.delete_topology()
        await self.bus.close()


async def _line(service: ServiceProcess, needle: str, timeout_s: float = 60.0) -> str:
    line = await asyncio.to_thread(service.wait_for_line, needle, timeout_s)
    assert line is not None, f"no log line with {needle!r}: {service.lines[-15:]}"
    return line


async def _sighup(service: ServiceProcess, expect: str) -> str:
    service.lines.clear()  # only lines logged after this signal count
    service.signal(signal.SIGHUP)
    line = await _line(service, "SIGHUP changed")
    assert expect in line, line
    return line


async def test_sighup_reloads_sender_roles_with_keys_added_then_removed_senders_take_effect(
    tmp_path,
):
    keys = tmp_path / "keys"
    ensure_identities(keys, list(BASE_ROLES))
    write_roles_file(keys, BASE_ROLES)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = service_env(
        keys, tmp_path / "state", PDMFED_AMQP_URL=AMQP_URL, PDMFED_TOPOLOGY_PREFIX=prefix
    )
    del env[
        "PDMFED_SENDER_ROLES"
    ]  # the roles come from senders.json alone, as `keys init` writes it
    newcomer = Newcomer(tmp_path, env, prefix)
    await newcomer.start()
    service = ServiceProcess("trainer-dispatch", env)
    try:
        await _line(service, "SIGHUP reloads", 120)

        # not trusted yet: refused before anything is handled
        await newcomer.start_campaign("before")
        await wait_for(lambda: newcomer.refused(("unknown_key", "auth")), 30)

        # added on disk (public key and role), then SIGHUP: its campaign.start is handled
        shutil.copy(newcomer.keys / f"{NEWCOMER}.pub", keys / f"{NEWCOMER}.pub")
        write_roles_file(keys, {**BASE_ROLES, NEWCOMER: "orchestrator"})
        line = await _sighup(service, f"+role {NEWCOMER}=orchestrator")
        assert f"+sender key {NEWCOMER}" in line
        await newcomer.start_campaign("added")
        await _line(service, "round 0 (statistics) of added opened")

        # its role removed (its key still trusted), then SIGHUP: refused as forbidden, unhandled
        write_roles_file(keys, BASE_ROLES)
        await _sighup(service, f"-role {NEWCOMER}")
        assert "refused as forbidden" in await _line(service, f"{NEWCOMER} have no role")
        await newcomer.start_campaign("role-removed")
        await wait_for(lambda: newcomer.refused(("forbidden",)), 30)

        # role back, key removed, then SIGHUP: untrusted again
        write_roles_file(keys, {**BASE_ROLES, NEWCOMER: "orchestrator"})
        (keys / f"{NEWCOMER}.pub").unlink()
        await _sighup(service, f"-sender key {NEWCOMER}")
        before = len(newcomer.refused(("unknown_key", "auth")))
        await newcomer.start_campaign("key-removed")
        await wait_for(lambda: len(newcomer.refused(("unknown_key", "auth"))) > before, 30)

        # neither refused campaign was ever handled
        await asyncio.sleep(1.0)
        for cid in ("before", "role-removed", "key-removed"):
            assert not any(f"of {cid} opened" in ln for ln in service.lines), cid
        assert service.proc.poll() is None, service.lines[-10:]
    finally:
        await asyncio.to_thread(service.stop)
        await newcomer.stop()
    assert service.proc.returncode == 0
    assert json.loads((keys / "senders.json").read_text())["senders"][NEWCOMER] == "orchestrator"
