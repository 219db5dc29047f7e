"""Troubleshooting: datasite connection diagnosis and security self-test, plus CLIs."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from federation.errors import ConfigError, PdmFedError

__all__ = [
    "diagnose_connection_failures",
    "validate_security_configuration",
    "format_diagnosis",
    "format_validation",
    "diagnose_main",
    "validate_security_main",
    "METADATA_PATH",
]

#: What a PySyft 0.9.5 server answers with 200 + JSON (`/` itself is a 404 on a healthy server).
METADATA_PATH = "/api/v2/metadata"
_PASSWORD_ENV = "PDMFED_DATASITE_ADMIN_PASSWORD"


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of a requests/urllib3 error (e.g. socket.gaierror, ConnectionRefusedError)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def _probe_http(url: str, timeout: float) -> tuple[list[str], list[str], list[str], bool]:
    """Check reachability through the metadata endpoint; returns issues, recs, checks, ok."""
    import requests

    issues: list[str] = []
    recs: list[str] = []
    checks: list[str] = []
    try:
        response = requests.get(_base_url(url) + METADATA_PATH, timeout=timeout)
    except requests.exceptions.Timeout:
        issues.append("Connection timeout")
        recs.append("Check network connectivity and firewall settings")
        return issues, recs, checks, False
    except requests.exceptions.ConnectionError as exc:
        host = urlsplit(_base_url(url)).hostname or url
        cause = _root_cause(exc)
        if isinstance(cause, socket.gaierror):
            issues.append(f"Name lookup failed: cannot resolve host '{host}'")
            recs.append("Check the host name in the URL (and DNS / the container network)")
        elif isinstance(cause, ConnectionRefusedError):
            issues.append("Connection refused")
            recs.append("Verify datasite is running and URL is correct")
        else:
            issues.append(f"Cannot connect to {host}: {type(cause).__name__}")
            recs.append("Check network connectivity and that the datasite is running")
        return issues, recs, checks, False
    except requests.exceptions.RequestException as exc:
        issues.append(f"Invalid datasite URL: {exc}")
        recs.append("Use a URL like http://host:port")
        return issues, recs, checks, False
    if response.status_code != 200:
        issues.append(f"HTTP status: {response.status_code} at {METADATA_PATH}")
        recs.append("Reachable, but not a healthy PySyft 0.9 server: check datasite server status")
        return issues, recs, checks, True
    try:
        meta = response.json()
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or "name" not in meta:
        issues.append(f"{METADATA_PATH} did not return PySyft server metadata")
        recs.append("Check that the URL points at a PySyft datasite, not another web server")
        return issues, recs, checks, True
    checks.append(f"Datasite reachable: {meta.get('name')} (syft {meta.get('syft_version', '?')})")
    return issues, recs, checks, True


def _default_login(url: str, email: str, password: str) -> Any:
    import contextlib
    import io

    import syft as sy

    # sy.login prints banners to stdout, which would corrupt `pdmfed diagnose --json`.
    with contextlib.redirect_stdout(io.StringIO()):
        return sy.login(url=_base_url(url), email=email, password=password)


def diagnose_connection_failures(
    comm_manager: Any,
    datasite_configs: Sequence[Mapping[str, Any]],
    *,
    timeout: float = 5.0,
    login: Callable[[str, str, str], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Diagnose each datasite: reachability, PySyft login, and the manager's view of it.

    Each result has the seed's keys `datasite_id`, `url`, `issues`, `recommendations`, plus
    `checks` (what succeeded; the seed put "PySyft connection successful" in `issues`),
    `skipped` (steps not run, and why) and `ok` (no issues). `issues` holds real problems only.
    """
    login = login or _default_login
    results: dict[str, dict[str, Any]] = {}
    for config in datasite_configs:
        datasite_id = str(config.get("datasite_id") or config.get("url") or "?")
        url = str(config.get("url") or "")
        diagnosis: dict[str, Any] = {
            "datasite_id": datasite_id,
            "url": url,
            "issues": [],
            "recommendations": [],
            "checks": [],
            "skipped": [],
        }
        if not url:
            diagnosis["issues"].append("No URL configured")
            diagnosis["recommendations"].append("Add the datasite's URL to its configuration")
        else:
            issues, recs, checks, reachable = _probe_http(url, timeout)
            diagnosis["issues"] += issues
            diagnosis["recommendations"] += recs
            diagnosis["checks"] += checks
            creds = config.get("credentials") or {}
            if not reachable:
                diagnosis["skipped"].append("PySyft login: the server is unreachable")
            elif not creds.get("email") or not creds.get("password"):
                diagnosis["issues"].append("No credentials configured")
                diagnosis["recommendations"].append(
                    f"Provide the admin email and password (e.g. {_PASSWORD_ENV})"
                )
            else:
                _try_login(diagnosis, login, url, creds)
        _manager_view(diagnosis, comm_manager, datasite_id)
        diagnosis["ok"] = not diagnosis["issues"]
        results[datasite_id] = diagnosis
    return results


def _try_login(diagnosis: dict[str, Any], login: Callable, url: str, creds: Mapping) -> None:
    try:
        client = login(url, str(creds["email"]), str(creds["password"]))
    except Exception as exc:  # noqa: BLE001 - PySyft raises many types; all are a diagnosis
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "credential" in text.lower() or "password" in text.lower():
            diagnosis["issues"].append(f"PySyft authentication failed: {text}")
            diagnosis["recommendations"].append("Verify admin credentials are correct")
        else:
            diagnosis["issues"].append(f"PySyft error: {text}")
            diagnosis["recommendations"].append("Check PySyft server configuration and credentials")
        return
    if client is None:
        diagnosis["issues"].append("PySyft authentication failed")
        diagnosis["recommendations"].append("Verify admin credentials are correct")
        return
    diagnosis["checks"].append("PySyft connection successful")
    logout = getattr(client, "logout", None)
    if callable(logout):
        try:
            logout()
        except Exception:  # noqa: BLE001, S110 - best effort; the diagnosis already succeeded
            pass


def _manager_view(diagnosis: dict[str, Any], comm_manager: Any, datasite_id: str) -> None:
    is_connected = getattr(comm_manager, "is_connected", None)
    if not callable(is_connected):
        return
    try:
        connected = bool(is_connected(datasite_id))
    except Exception as exc:  # noqa: BLE001 - the manager's failure is itself a finding
        diagnosis["issues"].append(f"Communication manager error: {type(exc).__name__}: {exc}")
        return
    diagnosis["manager_connected"] = connected
    diagnosis["checks"].append(
        "Communication manager: " + ("connected" if connected else "not connected (yet)")
    )


# --- security self-test -------------------------------------------------------------------
def validate_security_configuration(
    secure_comm: Any, *, seed: int = 0, restore_state: bool = True
) -> dict[str, Any]:
    """Self-test encryption, DP and Byzantine detection on the manager (the keys of the communication layer's troubleshooting report).

    Beyond the seed: the decrypted update must equal the original, a tampered package must
    be refused, and a replayed package must be refused; the BFT test uses a cohort of honest
    clients that agree (as real ones do) and one obvious outlier.

    The self-test must not change what the manager reports about the federation: with
    ``restore_state`` and a manager that has ``export_state``/``import_state``, its counters,
    reputation book and privacy ledgers are put back afterwards (the tests' deliberate
    violations, fake clients and ε spent would otherwise show up in its dashboard).
    """
    import torch

    saved = _export_state(secure_comm) if restore_state else None
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, Any] = {
        "encryption": "unknown",
        "differential_privacy": "unknown",
        "byzantine_tolerance": "unknown",
        "issues": [],
        "recommendations": [],
        "checks": [],
    }
    try:
        _check_encryption(secure_comm, results, torch, gen)
        _check_dp(secure_comm, results, torch, gen)
        _check_bft(secure_comm, results, torch, gen)
    finally:
        if saved is not None:
            secure_comm.import_state(saved)
    results["ok"] = not results["issues"]
    return results


def _export_state(secure_comm: Any) -> Any:
    export, restore = (getattr(secure_comm, n, None) for n in ("export_state", "import_state"))
    if not (callable(export) and callable(restore)):
        return None
    import copy

    return copy.deepcopy(export())


def _check_encryption(secure_comm: Any, results: dict[str, Any], torch: Any, gen: Any) -> None:
    original = {"test_param": torch.randn(10, 10, generator=gen)}
    try:
        package = secure_comm.encrypt_model_update(original)
        decrypted = secure_comm.decrypt_model_update(package)
    except Exception as exc:  # noqa: BLE001 - any failure of the round trip is the finding
        results["encryption"] = "failed"
        results["issues"].append(f"Encryption test failed: {type(exc).__name__}: {exc}")
        results["recommendations"].append("Check encryption key configuration")
        return
    got = decrypted.get("test_param") if isinstance(decrypted, Mapping) else None
    if not isinstance(got, torch.Tensor) or not torch.equal(got, original["test_param"]):
        results["encryption"] = "failed"
        results["issues"].append("Encryption round trip changed the model update")
        results["recommendations"].append("Check the tensor codec and encryption key")
        return
    results["encryption"] = "working"
    results["checks"].append("Encrypt/decrypt round trip is exact")
    if isinstance(package, Mapping) and isinstance(
        package.get("encrypted_data"), bytes | bytearray
    ):
        _expect_refusal(
            secure_comm,
            _tampered(package),
            results,
            ok="Tampered package refused",
            bad="A tampered package was accepted (no integrity check)",
            fix="Seal with AEAD and verify the checksum before use",
        )
        _expect_refusal(
            secure_comm,
            package,
            results,
            ok="Replayed package refused",
            bad="A replayed package was accepted (no replay protection)",
            fix="Enable the replay guard (seen message ids, freshness window)",
        )


def _tampered(package: Mapping[str, Any]) -> dict[str, Any]:
    data = bytearray(package["encrypted_data"])
    data[len(data) // 2] ^= 0x01
    return {**package, "encrypted_data": bytes(data)}


def _expect_refusal(
    secure_comm: Any, package: Any, results: dict[str, Any], *, ok: str, bad: str, fix: str
) -> None:
    try:
        secure_comm.decrypt_model_update(package)
    except PdmFedError:
        results["checks"].append(ok)
        return
    except Exception as exc:  # noqa: BLE001 - refused, but not with a typed error
        results["checks"].append(f"{ok} (with untyped {type(exc).__name__})")
        return
    results["encryption"] = "degraded"
    results["issues"].append(bad)
    results["recommendations"].append(fix)


def _check_dp(secure_comm: Any, results: dict[str, Any], torch: Any, gen: Any) -> None:
    if not getattr(secure_comm, "differential_privacy_enabled", False):
        results["differential_privacy"] = "disabled"
        results["recommendations"].append("Enable differential privacy for model updates")
        return
    original = {"test_param": torch.randn(5, 5, generator=gen)}
    kept = original["test_param"].clone()
    try:
        noisy = secure_comm.apply_differential_privacy(original)
    except Exception as exc:  # noqa: BLE001
        results["differential_privacy"] = "failed"
        results["issues"].append(f"Differential privacy test failed: {type(exc).__name__}: {exc}")
        return
    out = noisy.get("test_param") if isinstance(noisy, Mapping) else None
    if not isinstance(out, torch.Tensor) or out.shape != kept.shape:
        results["differential_privacy"] = "failed"
        results["issues"].append("Differential privacy changed the update's shape or names")
    elif not bool(torch.isfinite(out).all()):
        results["differential_privacy"] = "failed"
        results["issues"].append("Differential privacy produced non-finite values")
    elif torch.equal(out, kept):
        results["differential_privacy"] = "not_working"
        results["issues"].append("Differential privacy noise not applied")
        results["recommendations"].append("Check noise_multiplier > 0 and the DP code path")
    else:
        results["differential_privacy"] = "working"
        results["checks"].append("DP noise applied")


def _check_bft(secure_comm: Any, results: dict[str, Any], torch: Any, gen: Any) -> None:
    if not getattr(secure_comm, "byzantine_fault_tolerance_enabled", False):
        results["byzantine_tolerance"] = "disabled"
        results["recommendations"].append("Enable Byzantine fault tolerance")
        return
    n_honest = max(2, int(getattr(secure_comm, "min_clients", 3) or 3) - 1)
    center = torch.randn(3, 3, generator=gen)
    updates = [
        {
            "datasite_id": f"normal_{i + 1}",
            "model_update": {"param": center + 0.01 * torch.randn(3, 3, generator=gen)},
        }
        for i in range(n_honest)
    ]
    updates.append(
        {
            "datasite_id": "outlier",
            "model_update": {"param": torch.randn(3, 3, generator=gen) * 100},
        }
    )
    try:
        _, byzantine = secure_comm.detect_byzantine_clients(updates)
    except Exception as exc:  # noqa: BLE001
        results["byzantine_tolerance"] = "failed"
        results["issues"].append(f"Byzantine tolerance test failed: {type(exc).__name__}: {exc}")
        return
    flagged = {str(b) for b in (byzantine or [])}
    if "outlier" not in flagged:
        results["byzantine_tolerance"] = "not_sensitive"
        results["issues"].append("Byzantine detection may not be sensitive enough")
        results["recommendations"].append("Consider adjusting BFT threshold")
    elif flagged - {"outlier"}:
        results["byzantine_tolerance"] = "too_sensitive"
        results["issues"].append(
            f"Honest clients flagged as Byzantine: {sorted(flagged - {'outlier'})}"
        )
        results["recommendations"].append("Consider raising the BFT threshold")
    else:
        results["byzantine_tolerance"] = "working"
        results["checks"].append(f"Outlier flagged among {n_honest + 1} clients, no honest client")


# --- readable output ----------------------------------------------------------------------
def format_diagnosis(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Human-readable text of diagnose_connection_failures() results."""
    if not results:
        return "No datasites to diagnose.\n"
    lines: list[str] = []
    for datasite_id, d in results.items():
        mark = "OK  " if not d.get("issues") else "FAIL"
        lines.append(f"[{mark}] {datasite_id}  {d.get('url', '')}")
        lines += [f"    ✓ {c}" for c in d.get("checks", [])]
        lines += [f"    - skipped: {c}" for c in d.get("skipped", [])]
        lines += [f"    ✗ {i}" for i in d.get("issues", [])]
        lines += [f"    → {r}" for r in d.get("recommendations", [])]
    bad = sum(1 for d in results.values() if d.get("issues"))
    lines.append(f"{len(results) - bad}/{len(results)} datasites healthy")
    return "\n".join(lines) + "\n"


def format_validation(results: Mapping[str, Any]) -> str:
    """Human-readable text of validate_security_configuration() results."""
    lines = [
        f"{name:<22} {results.get(key, 'unknown')}"
        for name, key in (
            ("encryption", "encryption"),
            ("differential privacy", "differential_privacy"),
            ("byzantine tolerance", "byzantine_tolerance"),
        )
    ]
    lines += [f"  ✓ {c}" for c in results.get("checks", [])]
    lines += [f"  ✗ {i}" for i in results.get("issues", [])]
    lines += [f"  → {r}" for r in results.get("recommendations", [])]
    lines.append(
        "security configuration OK"
        if not results.get("issues")
        else "security configuration has issues"
    )
    return "\n".join(lines) + "\n"


# --- command line (parsed by `federation.cli`) ------------------------------------------------
def _load_datasite_configs(
    datasites: Sequence[str], config: Path | None, email: str
) -> list[dict[str, Any]]:
    env_password = os.environ.get(_PASSWORD_ENV, "")
    configs: list[dict[str, Any]] = []
    if config:
        path = Path(config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - yaml and json raise different types
            raise ConfigError(
                f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
            ) from exc
        items = data.get("datasites") if isinstance(data, Mapping) else data
        if isinstance(items, Mapping):  # the connector's datasite registry
            from federation.datasite_registry import DatasiteRegistry

            registry = DatasiteRegistry.load(path)
            for ds in registry.ids:
                entry = registry.get(ds)
                configs.append(
                    {
                        "datasite_id": ds,
                        "url": entry.url,
                        "credentials": {"email": entry.email, "password": entry.password()},
                    }
                )
            items = []
        if not isinstance(items, list):
            raise ConfigError(f"{path}: expected a list of datasites (or a 'datasites' key)")
        for item in items:
            if not isinstance(item, Mapping) or "url" not in item:
                raise ConfigError(f"{path}: every datasite needs at least a 'url'")
            creds = dict(item.get("credentials") or {})
            if "password" in creds:
                raise ConfigError(
                    f"{path}: passwords do not belong in files; set {_PASSWORD_ENV} or "
                    "name an environment variable with 'password_env'"
                )
            password_env = creds.pop("password_env", None) or item.get("password_env")
            creds.setdefault("email", item.get("email") or email)
            creds["password"] = os.environ.get(password_env, "") if password_env else env_password
            configs.append(
                {
                    "datasite_id": str(item.get("datasite_id") or item["url"]),
                    "url": str(item["url"]),
                    "credentials": creds,
                }
            )
    for spec in datasites:
        datasite_id, sep, url = spec.partition("=")
        if not sep or not datasite_id or not url:
            raise ConfigError(f"--datasite expects ID=URL, got {spec!r}")
        configs.append(
            {
                "datasite_id": datasite_id,
                "url": url,
                "credentials": {"email": email, "password": env_password},
            }
        )
    if not configs:
        raise ConfigError("no datasites given: use --datasite ID=URL or --config FILE")
    return configs


def diagnose_command(
    *, datasites: Sequence[str], config: Path | None, email: str, timeout: float, json_out: bool
) -> int:
    """`pdmfed diagnose`: 0 when every datasite is healthy, 1 when any has issues, 2 on bad input."""
    configs = _load_datasite_configs(datasites, config, email)
    results = diagnose_connection_failures(None, configs, timeout=timeout)
    sys.stdout.write(
        json.dumps(results, indent=2) + "\n" if json_out else format_diagnosis(results)
    )
    return 0 if all(not d["issues"] for d in results.values()) else 1


def diagnose_main(argv: Sequence[str] | None = None) -> int:
    """`pdmfed diagnose ARGS` as a function (exit code)."""
    from federation.cli import main

    return main(["diagnose", *(argv or [])])


def validate_deployment_command(*, role: str = "orchestrator", json_out: bool) -> int:
    """`pdmfed validate-security`: check the component PDMFED_* points at; 0 when nothing is wrong."""
    from federation.config import load_settings
    from federation.monitoring.deployment import check_deployment, findings_json, format_findings

    findings = check_deployment(load_settings(), role)
    sys.stdout.write(
        json.dumps(findings_json(findings), indent=2) + "\n"
        if json_out
        else format_findings(findings)
    )
    return 0 if all(f.status != "issue" for f in findings) else 1


def validate_security_command(
    *,
    no_dp: bool,
    no_bft: bool,
    noise_multiplier: float,
    bft_threshold: float,
    min_clients: int,
    json_out: bool,
) -> int:
    """`pdmfed validate-security`: self-test the secure manager built from PDMFED_* settings."""
    from federation.communication.secure_syft_client import SecurePySyftCommunicationManager
    from federation.config import load_settings

    settings = load_settings()
    settings.validate_secrets()
    secure_comm = SecurePySyftCommunicationManager(
        encryption_key=settings.passphrase(),
        salt=settings.salt(),
        key_id=settings.key_id,
        enable_dp=not no_dp,
        noise_multiplier=noise_multiplier,
        enable_bft=not no_bft,
        bft_threshold=bft_threshold,
        min_clients=min_clients,
    )
    results = validate_security_configuration(secure_comm)
    sys.stdout.write(
        json.dumps(results, indent=2) + "\n" if json_out else format_validation(results)
    )
    return 0 if not results["issues"] else 1


def validate_security_main(argv: Sequence[str] | None = None) -> int:
    """`pdmfed validate-security ARGS` as a function (exit code)."""
    from federation.cli import main

    return main(["validate-security", *(argv or [])])
