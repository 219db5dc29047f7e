"""A private redis-server for a test: free port, the ACL file a deployment would use, optional TLS."""

from __future__ import annotations

import datetime
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from federation.crypto.redis_acl import REDIS_ROLES, render_acl_file


@dataclass
class AclRedis:
    """A running redis-server that requires per-role ACL users."""

    host: str
    port: int
    passwords: dict[str, str]
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        """Without credentials (they come from PDMFED_REDIS_PASSWORD); rediss:// under TLS."""
        if self.ca_file is None:
            return f"redis://{self.host}:{self.port}/0"
        return f"rediss://{self.host}:{self.port}/0?ssl_ca_certs={self.ca_file}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pdmfed test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        workdir / "ca.pem",
        workdir / "server.pem",
        workdir / "server.key",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        import pytest

        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@contextmanager
def redis_server(workdir: Path, args: list[str], port: int) -> Iterator[subprocess.Popen]:
    """Run ``redis-server <args>`` (which must listen on 127.0.0.1:``port``) until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "redis.log").open("w")
    proc = subprocess.Popen([_redis_binary(), *args], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {(workdir / 'redis.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@contextmanager
def acl_redis(workdir: Path, *, tls: bool = False) -> Iterator[AclRedis]:
    """Start redis-server with one ACL user per role (random passwords); stop it afterwards."""
    _redis_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    passwords = {role: secrets.token_urlsafe(24) for role in REDIS_ROLES}
    acl = workdir / "users.acl"
    acl.write_text(render_acl_file(passwords))
    port = free_port()
    args = [
        "--bind",
        "127.0.0.1",
        "--aclfile",
        str(acl),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    ca_file = None
    if tls:
        ca_file, cert_file, key_file = _tls_files(workdir)
        args += [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
            "--tls-ca-cert-file",
            str(ca_file),
            "--tls-auth-clients",
            "no",
        ]
    else:
        args += ["--port", str(port)]
    with redis_server(workdir, args, port):
        yield AclRedis("127.0.0.1", port, passwords, ca_file)
