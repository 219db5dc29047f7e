"""Write the compose stack's per-component secrets: `<dir>/<component>/env` and `keys/`.

Stands in for `pdmfed keys init` until that command exists: same layout (one directory per
component, private keys 0600 in 0700 directories), so docker-compose.yml does not change when
it lands. Each component gets only what it needs: its own Ed25519 key, the public keys of the
senders it trusts, its own broker user, and (connector) its datasite registry with the
factories' data-scientist passwords (`connector/datasites/`); a factory gets only its own admin and data-scientist passwords and its own key.

    .venv/bin/python scripts/stack_secrets.py <dir> [--owner 10001:10001]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")
SENDERS = (*SERVICES, "orchestrator")
FACTORIES = ("factory-1", "factory-2", "factory-3")
ORCHESTRATOR_EMAIL = "orchestrator@pdm-federation.org"
VHOST = "pdmfed"


def _definitions_tool():
    spec = importlib.util.spec_from_file_location(
        "definitions_tool", ROOT / "deploy/rabbitmq/definitions_tool.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{k}={v}\n" for k, v in values.items()))


def write_secrets(out: Path, owner: tuple[int, int] | None = None) -> dict:
    """Generate every component's secrets under `out`; returns what the operator needs."""
    from federation.crypto.signing import SigningIdentity
    from federation.datasite_registry import write_registry
    from federation.provision import trusted_senders
    from federation.runtime.roles import write_roles_file

    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"stack_secrets: {out} is not empty; refusing to overwrite secrets")
    token = secrets.token_urlsafe
    sealing = {"PDMFED_ENCRYPTION_KEY": token(32), "PDMFED_KEY_SALT": secrets.token_hex(16)}
    redis_password = token(24)
    postgres_password = token(24)
    broker = {user: token(24) for user in (*SENDERS, "admin")}
    factory_ds = {f: token(24) for f in FACTORIES}

    identities = {s: SigningIdentity.generate(s) for s in (*SENDERS, *FACTORIES)}
    for sender in SENDERS:
        keys = out / sender / "keys"
        identities[sender].save(keys)
        trusted = trusted_senders(sender)  # only the senders of the types it consumes
        for other in trusted:
            (keys / f"{other}.pub").write_bytes(identities[other].public_pem())
        write_roles_file(keys, {s: s for s in {sender, *trusted}})  # each sender id is its role
        env = {
            **sealing,
            "PDMFED_AMQP_URL": f"amqp://pdmfed-{sender}:{broker[sender]}@rabbitmq:5672/{VHOST}",
        }
        if sender != "orchestrator":
            env["PDMFED_REDIS_URL"] = f"redis://:{redis_password}@redis:6379/0"
        if sender == "connector":  # its datasite registry: id -> URL, account, password file
            write_registry(out / sender / "datasites", {
                f: (f"http://{f}:8080", ORCHESTRATOR_EMAIL, factory_ds[f]) for f in FACTORIES})
        if sender == "security":
            (keys / "factories").mkdir(mode=0o700)
            for f in FACTORIES:
                (keys / "factories" / f"{f}.pub").write_bytes(identities[f].public_pem())
        _write_env(out / sender / "env", env)
        if sender != "orchestrator":  # used only by the replicas deployment (docs/replicas.md)
            _write_env(out / sender / "state.env", {
                "PDMFED_STATE_URL": f"postgresql://pdmfed:{postgres_password}@postgres:5432/pdmfed"})
    for factory in FACTORIES:
        identities[factory].save(out / factory / "keys")
        _write_env(
            out / factory / "env",
            {
                "PDMFED_DATASITE_ADMIN_PASSWORD": token(24),
                "PDMFED_DATASITE_ORCHESTRATOR_EMAIL": ORCHESTRATOR_EMAIL,
                "PDMFED_DATASITE_ORCHESTRATOR_PASSWORD": factory_ds[factory],
            },
        )
    _write_env(out / "redis" / "env", {"REDISCLI_AUTH": redis_password})
    _write_env(out / "postgres" / "env", {
        "POSTGRES_USER": "pdmfed", "POSTGRES_DB": "pdmfed", "POSTGRES_PASSWORD": postgres_password})
    _write_env(out / "grafana" / "env", {"GF_SECURITY_ADMIN_PASSWORD": token(18)})
    tool = _definitions_tool()
    definitions = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    env = {tool.password_env_var(f"pdmfed-{u}"): p for u, p in broker.items()}
    rendered = out / "rabbitmq" / "definitions.json"
    rendered.parent.mkdir(mode=0o700)
    rendered.write_text(json.dumps(tool.render(definitions, env), indent=2))
    _write_env(out / "rabbitmq" / "admin.env", {"PDMFED_RABBITMQ_ADMIN_PASSWORD": broker["admin"]})
    _own(out, owner)
    return {"orchestrator_email": ORCHESTRATOR_EMAIL}


def _own(out: Path, owner: tuple[int, int] | None) -> None:
    """Private modes everywhere; files handed to the images' user (10001) when `owner` is given.

    The broker's rendered definitions (salted hashes only) stay world-readable in a
    traversable, unlistable directory: the RabbitMQ image's own user reads them at boot, and
    its uid differs between the upstream and the Debian-built image.
    """
    for path in sorted(out.rglob("*")):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
        if owner is not None:
            os.chown(path, *owner)
    os.chmod(out, 0o711)
    os.chmod(out / "rabbitmq", 0o711)
    os.chmod(out / "rabbitmq" / "definitions.json", 0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--owner", default=None, help="UID:GID owning the files (the images' user, 10001)"
    )
    args = parser.parse_args(argv)
    owner = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        owner = (int(uid), int(gid or uid))
    write_secrets(args.out, owner)
    print(f"stack secrets written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
