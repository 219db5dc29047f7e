"""`pdmfed keys`: provision a deployment's keys and secrets (see federation.provision)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    help="Keys and secrets of a deployment, one directory per component.", no_args_is_help=True
)


@app.command("init")
def init(
    out: Annotated[
        Path,
        typer.Option(file_okay=False, help="new (or empty) directory to write", show_default=False),
    ],
    factory: Annotated[
        list[str],
        typer.Option(
            help="a factory's datasite id, =URL the connector reaches it at (default"
            " http://ID:8080); repeat for each factory",
            show_default=False,
        ),
    ],
    broker: Annotated[
        str, typer.Option(help="RabbitMQ URL without credentials, as the components reach it")
    ] = ("amqp://rabbitmq:5672/pdmfed"),
    redis: Annotated[
        str, typer.Option(help="Redis URL without credentials (redis:// or rediss://), or 'none'")
    ] = "redis://redis:6379/0",
    env_files: Annotated[
        bool,
        typer.Option(
            "--env-files",
            help="also write each component's secrets again as <component>/env (NAME=value),"
            " for tools that want an env file (compose and Kubernetes mount"
            " <component>/secrets/ as files instead)",
        ),
    ] = False,
    rabbitmq_definitions: Annotated[
        Path | None,
        typer.Option(
            help="RabbitMQ definitions template (deploy/rabbitmq/definitions.json) to"
            " render into rabbitmq/definitions.json with the broker users' hashes",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="UID:GID owning every file (the container images' user, 10001:10001); the"
            " servers' own secrets (Redis, Grafana) are readable by that GID"
        ),
    ] = None,
    state_url: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL URL without credentials of the services' shared state"
            " (replicas): writes <service>/state-secrets/ (and state.env), postgres/secrets/"
            " (and postgres/env)"
        ),
    ] = None,
) -> int:
    """Write service, orchestrator and factory keys, per-component secrets, per-factory datasite
    accounts, the connector's datasite registry, the Redis ACL file and manifest.json."""
    from urllib.parse import urlsplit

    from federation.console import fail
    from federation.provision import FactorySpec, ProvisionOptions, provision

    specs = [FactorySpec.parse(f) for f in factory]
    if urlsplit(broker).scheme not in ("amqp", "amqps"):
        fail(f"--broker {broker!r} is not an amqp:// or amqps:// URL")
    redis_url = None if redis == "none" else redis
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss"):
        fail(f"--redis {redis!r} is not a redis:// or rediss:// URL (or 'none')")
    owner_ids = _owner(owner) if owner else None
    if owner and owner_ids is None:
        fail(f"--owner {owner!r} is not UID:GID (numbers)")
    options = ProvisionOptions(
        broker_url=broker,
        redis_url=redis_url,
        env_files=env_files,
        broker_definitions=rabbitmq_definitions,
        owner=owner_ids,
        state_url=state_url,
    )
    manifest = provision(out, specs, options)
    for name, entry in sorted(manifest["components"].items()):
        trusts = (
            ", ".join(entry["trusts"] + [f"factory {f}" for f in entry["trusts_factories"]]) or "-"
        )
        typer.echo(f"{name:<32} keys {out / entry['keys_dir']}  trusts {trusts}")
    typer.echo(f"manifest: {out / 'manifest.json'}")
    return 0


def _owner(text: str) -> tuple[int, int] | None:
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        return None
    return int(uid), int(gid or uid)
