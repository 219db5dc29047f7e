"""`pdmfed campaign` against a broker it cannot use: one line naming host and port, bounded time."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import clean_env, run_pdmfed  # noqa: E402

pytestmark = pytest.mark.integration

SECRETS = {"PDMFED_ENCRYPTION_KEY": "Zq8vL2mXp4Rt7Wn9Kc3Bd6Hy", "PDMFED_KEY_SALT": "8fK2pQ9xLm3v"}
#: Everything but the broker is configured: the orchestrator knows which role each sender has.
ROLES = {"PDMFED_SENDER_ROLES": "orchestrator=orchestrator,trainer-dispatch=trainer-dispatch"}


def _campaign(tmp_path: Path, url: str, **extra: str):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 2\ndatasites: [a, b]\n")
    env = clean_env(
        PDMFED_AMQP_URL=url, PDMFED_STATE_DIR=str(tmp_path / "state"), **SECRETS, **ROLES, **extra
    )
    return run_pdmfed("campaign", "--config", str(cfg), "--out", "runs", tmp_path=tmp_path, env=env)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("url", "line", "code"),
    [
        (
            "127.0.0.1:5672",
            "pdmfed: PDMFED_AMQP_URL has no scheme: expected amqp://user:password@host:5672/vhost",
            2,
        ),
        (
            "http://guest:guest@127.0.0.1:5672/",
            "pdmfed: PDMFED_AMQP_URL has scheme 'http://': RabbitMQ needs amqp:// or amqps://",
            2,
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/pdmfed-no-such-vhost",
            "pdmfed: RabbitMQ at 127.0.0.1:5672 refused "
            "vhost 'pdmfed-no-such-vhost' for user 'guest' (wrong vhost, or no permission on it)",
            2,
        ),
        (
            "amqp://guest:not-the-password@127.0.0.1:5672/",
            "pdmfed: RabbitMQ at 127.0.0.1:5672 refused the login "
            "of user 'guest' (wrong user or password)",
            2,
        ),
    ],
)
def test_when_the_broker_url_is_unusable__campaign_exits_at_once_with_one_line(
    tmp_path, url, line, code
):
    run = _campaign(tmp_path, url)
    assert (run.returncode, run.stderr.splitlines()[-1]) == (code, line)
    assert (
        run.seconds < 20 and "Traceback" not in run.stderr and "not-the-password" not in run.stderr
    )
    assert not (tmp_path / "runs").exists() and run.leftover_processes == []


def test_when_the_broker_is_unreachable__campaign_retries_with_backoff_then_names_host_and_port(
    tmp_path,
):
    port = _closed_port()
    run = _campaign(
        tmp_path, f"amqp://guest:guest@127.0.0.1:{port}/", PDMFED_AMQP_CONNECT_GIVE_UP_S="6"
    )
    assert run.returncode == 1
    last = run.stderr.splitlines()[-1]
    assert last.startswith(
        f"pdmfed: RabbitMQ at 127.0.0.1:{port} refused the connection (is it running?); "
        "gave up after "
    )
    retries = [ln for ln in run.stderr.splitlines() if "retrying in" in ln]
    delays = [float(ln.rsplit("retrying in ", 1)[1].split()[0]) for ln in retries]
    assert len(delays) >= 3 and delays == sorted(delays) and delays[1] == 2 * delays[0]
    assert 4 <= run.seconds < 20


def test_when_the_host_name_does_not_resolve__the_error_says_the_lookup_failed(tmp_path):
    run = _campaign(
        tmp_path,
        "amqp://guest:guest@pdmfed-no-such-host.invalid:5672/",
        PDMFED_AMQP_CONNECT_GIVE_UP_S="2",
    )
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1].startswith(
        "pdmfed: cannot resolve the host name 'pdmfed-no-such-host.invalid' (name lookup failed); gave up after "
    )
