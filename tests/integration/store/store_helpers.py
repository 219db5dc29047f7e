"""The PostgreSQL server the tests use, and whether it answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

#: PDMFED_TEST_POSTGRES_URL; the local server (trust auth) by default. Each test makes its own
#: scratch database there (federation.runtime.store_postgres.scratch_database).
ADMIN_URL = os.environ.get(
    "PDMFED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_unavailable() -> str | None:
    """None when the server answers; otherwise why not (the skip reason)."""
    import psycopg

    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {ADMIN_URL}: {type(exc).__name__}: {exc}".strip()


#: Cluster-wide (roles are not per database): tests that create the deployment's roles take it.
_ROLES_LOCK = "pdmfed-test-deployment-roles"


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


@contextmanager
def deployment_database(
    out: Path,
    services: Iterable[str],
    *,
    before_roles: Callable[[str], None] | None = None,
    admin_url: str = ADMIN_URL,
) -> Iterator[dict[str, str]]:
    """A scratch database started the way the postgres image starts on what ``pdmfed keys init
    --state-url`` wrote to ``out``: its POSTGRES_USER a superuser, then every
    ``postgres/initdb/*.sql`` run by psql as that user. Yields each service's PDMFED_STATE_URL
    from its ``state.env``, pointed at the scratch database; the roles are dropped afterwards.

    ``out`` must be provisioned with a state URL naming :func:`deployment_database_name`.
    ``before_roles(superuser URL)`` runs first: a database from before per-service roles, which
    the operator then gives them by running the same SQL with psql. ``admin_url``: a superuser
    of the server (by default the tests' server).
    """
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as lock:
        # Held for the whole test: other runs on this server (worktrees) create the same roles.
        lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (_ROLES_LOCK,))
        urls = {s: _env_file(out / s / "state.env")["PDMFED_STATE_URL"] for s in services}
        database = urlsplit(next(iter(urls.values()))).path.strip("/")
        superuser = _env_file(out / "postgres" / "env")["POSTGRES_USER"]
        service_roles = sorted({urlsplit(url).username for url in urls.values()} - {superuser})
        for role in service_roles:  # left by a run that was killed
            lock.execute(f'DROP ROLE IF EXISTS "{role}"')
        made_superuser = not lock.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (superuser,)
        ).fetchall()
        if made_superuser:
            lock.execute(f'CREATE ROLE "{superuser}" SUPERUSER LOGIN')
        lock.execute(f'CREATE DATABASE "{database}" OWNER "{superuser}"')
        try:
            as_superuser = urlunsplit(
                urlsplit(admin_url)._replace(
                    netloc=f"{superuser}@{urlsplit(admin_url).netloc.rsplit('@', 1)[-1]}",
                    path=f"/{database}",
                )
            )
            if before_roles is not None:
                before_roles(as_superuser)
            for script in sorted((out / "postgres" / "initdb").glob("*.sql")):
                # as the image runs it (docker-entrypoint.sh: docker_process_sql)
                ran = subprocess.run(
                    ["psql", "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-q"]
                    + ["-d", as_superuser, "-f", str(script)],
                    capture_output=True,
                    text=True,
                )
                if ran.returncode != 0:
                    raise RuntimeError(f"psql -f {script.name}: {ran.stderr.strip()}")
            host = urlsplit(admin_url).netloc.rsplit("@", 1)[-1]
            yield {s: _at(url, host) for s, url in urls.items()}
        finally:
            lock.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in [*service_roles, *([superuser] if made_superuser else [])]:
                lock.execute(f'DROP ROLE IF EXISTS "{role}"')


def deployment_database_name() -> str:
    """A fresh database name for :func:`deployment_database`."""
    return f"pdmfed_deploy_{uuid.uuid4().hex[:10]}"


def _at(url: str, host: str) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


@contextmanager
def password_checking_server() -> Iterator[str]:
    """A private PostgreSQL server that checks passwords (SCRAM-SHA-256) on 127.0.0.1, as the
    postgres image does, but trusts its superuser ``pdmfed`` there; its superuser URL. Skips
    unless this machine has PostgreSQL's server binaries."""
    import pytest

    bindir = (
        shutil.which("pg_config")
        and subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    )
    if not bindir or not (Path(bindir) / "initdb").exists():
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    as_server: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if (
            shutil.which("runuser") is None
            or subprocess.run(["id", "postgres"], capture_output=True).returncode
        ):
            pytest.skip("running as root without a postgres user to run the server as")
        as_server = ["runuser", "-u", "postgres", "--"]

    def server(*args: str) -> None:
        ran = subprocess.run([*as_server, *args], capture_output=True, text=True)
        if ran.returncode != 0:
            raise RuntimeError(f"{args[0]}: {ran.stderr.strip() or ran.stdout.strip()}")

    with tempfile.TemporaryDirectory(prefix="pdmfed-pg-") as tmp:
        directory = Path(tmp)
        if as_server:
            shutil.chown(directory, "postgres")
        data, port = directory / "data", _free_port()
        server(
            f"{bindir}/initdb",
            "-D",
            str(data),
            "-U",
            "pdmfed",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        hba = data / "pg_hba.conf"
        hba.write_text("host all pdmfed 127.0.0.1/32 trust\n" + hba.read_text())
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
        log = str(directory / "log")
        server(f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start")
        try:
            yield f"postgresql://pdmfed@127.0.0.1:{port}/postgres"
        finally:
            server(f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
