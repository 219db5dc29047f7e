"""The security service never runs without factory public keys, says whom it trusts, reloads on SIGHUP."""

from __future__ import annotations

import signal

import pytest
from federation.crypto.signing import SigningIdentity
from service_helpers import ServiceProcess, service_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _keys(tmp_path, factories: list[str]):
    keys = tmp_path / "keys"
    SigningIdentity.load_or_create(keys, "security")
    if factories:
        (keys / "factories").mkdir()
        for ds in factories:
            (keys / "factories" / f"{ds}.pub").write_bytes(
                SigningIdentity.generate(ds).public_pem()
            )
    return keys


@pytest.mark.parametrize("layout", ["no factories directory", "an empty factories directory"])
def test_when_security_starts_without_factory_public_keys__it_refuses_with_one_line(
    tmp_path, layout
):
    keys = _keys(tmp_path, [])
    if layout == "an empty factories directory":
        (keys / "factories").mkdir()
    service = ServiceProcess("security", service_env(keys, tmp_path / "state"))
    try:
        code = service.wait_exit()
    finally:
        service.stop()
    assert code == 2, (
        f"security kept running without factory keys (signatures unchecked): {service.lines[-5:]}"
    )
    errors = [ln for ln in service.lines if ln.startswith("pdmfed:")]
    assert len(errors) == 1 and "factor" in errors[0] and str(keys / "factories") in errors[0]


def test_when_security_starts_with_factory_keys__it_logs_them_and_reloads_them_on_sighup(tmp_path):
    keys = _keys(tmp_path, ["automotive_detroit_main", "chemical_houston_reactor"])
    service = ServiceProcess("security", service_env(keys, tmp_path / "state"))
    try:
        line = service.wait_for_line("trusts factories")
        assert line is not None, service.lines[-10:]
        assert "automotive_detroit_main, chemical_houston_reactor" in line
        assert service.wait_for_line("SIGHUP reloads") is not None, service.lines[-10:]
        newcomer = SigningIdentity.generate("aerospace_seattle_assembly")
        (keys / "factories" / "aerospace_seattle_assembly.pub").write_bytes(newcomer.public_pem())
        (keys / "factories" / "chemical_houston_reactor.pub").unlink()  # revoked
        service.signal(signal.SIGHUP)
        line = service.wait_for_line("reloaded trusted public keys")
        assert line is not None, service.lines[-10:]
        assert "factories: aerospace_seattle_assembly, automotive_detroit_main" in line
        assert service.proc.poll() is None
    finally:
        service.stop()
    assert service.proc.returncode == 0
