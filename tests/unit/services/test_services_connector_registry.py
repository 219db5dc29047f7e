"""The connector's datasite registry: only its own file says where a datasite is and how to log in."""

from __future__ import annotations

import json
import os

import pytest
from federation.campaign import CampaignConfig
from federation.datasite_registry import DatasiteRegistry, UnknownDatasite, write_registry
from federation.errors import ConfigError

from services.connector.handlers import ConnectorLogic

EMAIL = "connector@pdm-factory.com"


class RecordingSessions:
    """Fake session manager (unit tier): records every login and logout."""

    def __init__(self) -> None:
        self.logins: list[tuple[str, str, str]] = []
        self.logouts: list[str] = []
        self.connected: dict[str, str] = {}

    def is_connected(self, datasite_id):
        return datasite_id in self.connected

    def connect_to_datasite(self, datasite_url, credentials):
        self.logins.append((credentials["datasite_id"], datasite_url, credentials["password"]))
        self.connected[credentials["datasite_id"]] = datasite_url
        return True

    def disconnect_from_datasite(self, datasite_id):
        self.logouts.append(datasite_id)
        return self.connected.pop(datasite_id, None) is not None


def _write(tmp_path, sites):
    return write_registry(
        tmp_path / "datasites", {ds: (url, EMAIL, pw) for ds, (url, pw) in sites.items()}
    )


def test_write_then_load_gives_each_datasite_its_url_account_and_private_password_file(tmp_path):
    path = _write(
        tmp_path,
        {"factory-1": ("http://factory-1:8080/", "pw-1"), "factory-2": ("https://f2", "pw-2")},
    )
    registry = DatasiteRegistry.load(path)
    assert registry.ids == ["factory-1", "factory-2"]
    entry = registry.get("factory-1")
    assert (entry.url, entry.email, entry.password()) == ("http://factory-1:8080", EMAIL, "pw-1")
    assert os.stat(entry.password_file).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    with pytest.raises(UnknownDatasite, match="not in the connector's registry"):
        registry.get("attacker-site")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["datasites"]["factory-1"].update(url="ftp://x"), "not http"),
        (
            lambda d: d["datasites"]["factory-1"].update(password_env="PDMFED_ENCRYPTION_KEY"),
            "unknown",
        ),
        (lambda d: d["datasites"]["factory-1"].pop("password_file"), "missing"),
        (lambda d: d["datasites"]["factory-1"].update(password_file="nowhere"), "does not exist"),
        (
            lambda d: d["datasites"].update({"../x": d["datasites"]["factory-1"]}),
            "invalid sender id",
        ),
        (lambda d: d.update(datasites=[]), "non-empty 'datasites' mapping"),
    ],
)
def test_a_registry_file_that_is_wrong_is_refused_with_one_line(tmp_path, mutate, reason):
    path = _write(tmp_path, {"factory-1": ("http://factory-1:8080", "pw")})
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=reason) as info:
        DatasiteRegistry.load(path)
    assert "\n" not in str(info.value)


def test_when_a_datasites_url_changes_in_the_registry__the_connector_logs_in_anew_there(tmp_path):
    sessions = RecordingSessions()
    path = _write(tmp_path, {"factory-1": ("http://old:8080", "pw-old")})
    logic = ConnectorLogic(sessions, DatasiteRegistry.load(path))
    logic._ensure_connected("factory-1")
    logic._ensure_connected("factory-1")  # same entry, live session: reused
    assert sessions.logins == [("factory-1", "http://old:8080", "pw-old")]
    _write(tmp_path, {"factory-1": ("http://new:8080", "pw-new")})
    logic._ensure_connected("factory-1")
    assert sessions.logouts == ["factory-1"], "the session to the old URL must be dropped"
    assert sessions.logins[-1] == ("factory-1", "http://new:8080", "pw-new")
    assert sessions.connected == {"factory-1": "http://new:8080"}


def test_a_registry_file_broken_on_disk_leaves_the_entries_as_they_were(tmp_path):
    path = _write(tmp_path, {"factory-1": ("http://factory-1:8080", "pw")})
    registry = DatasiteRegistry.load(path)
    path.write_text("{not json")
    assert registry.reload() is False
    assert registry.get("factory-1").url == "http://factory-1:8080"


def test_an_unknown_datasite_is_counted_and_never_contacted(tmp_path):
    sessions, refusals = RecordingSessions(), []
    logic = ConnectorLogic(
        sessions,
        DatasiteRegistry.load(_write(tmp_path, {"factory-1": ("http://f1", "pw")})),
        on_refusal=refusals.append,
    )
    cfg = CampaignConfig.from_payload({"campaign_id": "c", "datasites": ["factory-1", "elsewhere"]})
    assert logic.remember_datasites(cfg) == ["elsewhere"]
    with pytest.raises(UnknownDatasite):
        logic._ensure_connected("elsewhere")
    assert refusals == ["unknown_datasite", "unknown_datasite"] and sessions.logins == []


@pytest.mark.parametrize(
    "entry",
    [
        {
            "datasite_id": "factory-1",
            "url": "http://attacker:8080",
            "password_env": "PDMFED_ENCRYPTION_KEY",
        },
        {"datasite_id": "factory-1"},
    ],
)
def test_a_campaign_names_datasites_by_id_only(entry):
    with pytest.raises(ConfigError, match="by id only"):
        CampaignConfig.from_payload({"datasites": [entry]})
