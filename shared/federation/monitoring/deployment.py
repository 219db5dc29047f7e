"""`pdmfed validate-security`: check the deployment it is pointed at (secrets, keys, trust store, broker)."""

from __future__ import annotations

import asyncio
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from federation.config import Settings
from federation.errors import PdmFedError
from federation.roles import ENVELOPE_ROLES

__all__ = ["Finding", "ROLES", "check_deployment", "findings_json", "format_findings"]

#: The components a keys directory can belong to (as `pdmfed keys init` lays them out).
ROLES = tuple(r.value for r in ENVELOPE_ROLES)


@dataclass(frozen=True)
class Finding:
    """One checked thing: ok, an issue (with what to do), or skipped (and why)."""

    status: Literal["ok", "issue", "skipped"]
    what: str
    fix: str = ""


def _secrets(settings: Settings) -> list[Finding]:
    try:
        settings.validate_secrets()
    except PdmFedError as exc:
        return [Finding("issue", str(exc), "set strong secrets in the services' environment")]
    return [Finding("ok", "encryption key and salt are set and strong")]


def _keys(settings: Settings, role: str) -> list[Finding]:
    from federation.provision import trusted_senders

    kd = settings.keys_dir
    if kd is None:
        return [
            Finding(
                "issue",
                "PDMFED_KEYS_DIR is not set: messages cannot be signed or verified",
                f"point PDMFED_KEYS_DIR at the {role}'s keys directory (`pdmfed keys init` writes it)",
            )
        ]
    kd = Path(kd)
    if not kd.is_dir():
        return [
            Finding(
                "issue",
                f"keys directory {kd} does not exist",
                "run `pdmfed keys init` and mount it",
            )
        ]
    out: list[Finding] = []
    sender = settings.service_id or role
    own = kd / f"{sender}.key"
    if not own.is_file():
        out.append(
            Finding(
                "issue",
                f"{kd} has no private key {own.name}: the {role} cannot sign",
                "mount this component's own keys directory",
            )
        )
    elif own.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        out.append(
            Finding(
                "issue", f"private key {own} is readable by group or others", f"chmod 600 {own}"
            )
        )
    else:
        out.append(Finding("ok", f"own private key {own.name}, readable by its owner only"))
    from federation.crypto.signing import TrustStore

    try:
        TrustStore.from_dir(kd)
    except PdmFedError as exc:
        out.append(
            Finding("issue", f"trust store {kd}: {exc}", "replace the unreadable public key")
        )
    expected = [s for s in trusted_senders(role) if s != sender]
    missing = [s for s in expected if not (kd / f"{s}.pub").is_file()]
    if missing:
        out.append(
            Finding(
                "issue",
                f"trust store {kd} lacks the public key of {', '.join(missing)}: their "
                f"messages to the {role} are dead-lettered",
                "copy each sender's <name>.pub into it",
            )
        )
    else:
        out.append(
            Finding(
                "ok",
                f"trust store holds every sender the {role} consumes from ({', '.join(expected)})",
            )
        )
    out.append(_roles(settings, kd))
    if role == "security":
        factories = sorted((kd / "factories").glob("*.pub")) if (kd / "factories").is_dir() else []
        if factories:
            out.append(
                Finding(
                    "ok",
                    f"{len(factories)} factory public keys ({', '.join(p.stem for p in factories)})",
                )
            )
        else:
            out.append(
                Finding(
                    "issue",
                    f"no factory public keys in {kd / 'factories'}: security cannot verify "
                    "factory-signed updates",
                    "copy each factory's <datasite>.pub into it",
                )
            )
    return out


def _roles(settings: Settings, kd: Path) -> Finding:
    from federation.crypto.signing import TrustStore
    from federation.runtime.roles import load_sender_roles

    try:
        roles = load_sender_roles(kd, settings.sender_roles, TrustStore.from_dir(kd).senders)
    except PdmFedError as exc:
        return Finding("issue", str(exc), "use the senders.json `pdmfed keys init` writes")
    return Finding("ok", f"every trusted sender has one role ({len(roles)} senders)")


async def _broker(settings: Settings, give_up_s: float) -> list[Finding]:
    import aio_pika
    import aiormq

    from federation.bus.url import connect_with_retry, parse_amqp_url
    from federation.runtime.launch import topology_of

    topology = topology_of(settings)
    try:
        target = parse_amqp_url(settings.amqp_url or "")
        conn = await connect_with_retry(
            lambda: aio_pika.connect(settings.amqp_url), target, give_up_after_s=give_up_s
        )
    except PdmFedError as exc:
        return [Finding("issue", f"broker: {exc}", "check PDMFED_AMQP_URL and the broker's users")]
    names = [("exchange", topology.exchange.name)] + [
        ("queue", q.name) for q in topology.all_queues()
    ]
    missing = []
    try:
        for (
            kind,
            name,
        ) in names:  # passive declares: a missing entity closes the channel, so one each
            channel = await conn.channel()
            try:
                if kind == "exchange":
                    await channel.declare_exchange(name, passive=True)
                else:
                    await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                missing.append(f"{kind} {name}")
            except aiormq.exceptions.ChannelAccessRefused:
                missing.append(f"{kind} {name} (access refused)")
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await conn.close()
    where = f"RabbitMQ at {target.where} (vhost '{target.vhost}', user '{target.user}')"
    if missing:
        return [
            Finding(
                "issue",
                f"{where}: missing {', '.join(missing)}",
                "load deploy/rabbitmq definitions, or start the services once",
            )
        ]
    return [Finding("ok", f"{where}: the exchange and all {len(names) - 1} queues exist")]


def _datasite_registry(settings: Settings) -> list[Finding]:
    """The connector's datasite registry loads, and each password file is its owner's only."""
    from federation.runtime.launch import load_datasite_registry

    try:
        registry = load_datasite_registry(settings)
    except PdmFedError as exc:
        return [
            Finding(
                "issue",
                str(exc),
                "point PDMFED_DATASITE_REGISTRY at connector/datasites/datasites.json",
            )
        ]
    out = [Finding("ok", f"datasite registry {registry.source}: {', '.join(registry.ids)}")]
    for ds in registry.ids:
        path = registry.get(ds).password_file
        if stat.S_IMODE(path.stat().st_mode) & 0o007:  # k8s with fsGroup adds group read
            out.append(
                Finding(
                    "issue",
                    f"the password file of datasite {ds} ({path}) is readable by every user",
                    f"chmod 600 {path}",
                )
            )
    return out


def check_deployment(
    settings: Settings, role: str = "orchestrator", *, broker_give_up_s: float = 10.0
) -> list[Finding]:
    """Everything `pdmfed validate-security` checks for one component (``role``), in order."""
    findings = _secrets(settings) + _keys(settings, role)
    if role == "connector":
        findings += _datasite_registry(settings)
    if not settings.amqp_url:
        findings.append(Finding("skipped", "broker: PDMFED_AMQP_URL is not set"))
    else:
        findings += asyncio.run(_broker(settings, broker_give_up_s))
    return findings


def format_findings(findings: list[Finding]) -> str:
    """Text for a person: ✓ ok, ✗ issue (→ what to do), - skipped; then a verdict line."""
    lines: list[str] = []
    for f in findings:
        if f.status == "ok":
            lines.append(f"  ✓ {f.what}")
        elif f.status == "skipped":
            lines.append(f"  - skipped: {f.what}")
        else:
            lines.append(f"  ✗ {f.what}")
            if f.fix:
                lines.append(f"    → {f.fix}")
    issues = sum(f.status == "issue" for f in findings)
    lines.append(
        "deployment OK"
        if not issues
        else f"deployment has {issues} issue{'s' if issues > 1 else ''}"
    )
    return "\n".join(lines) + "\n"


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    """The findings as JSON-ready dicts."""
    return [asdict(f) for f in findings]
