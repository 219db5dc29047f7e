"""Bad input at the edges: the datasite entry point and the manager, without any datasite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from federation.communication import PySyftCommunicationManager
from federation.datasite import datasite_main, launch_datasite
from federation.errors import ConfigError, DatasiteConnectionError, MalformedMessage


def test_when_the_partition_file_is_missing__the_entry_point_exits_with_2(tmp_path, capsys):
    assert datasite_main(["--name", "x_site", "--data", str(tmp_path / "none.npz")]) == 2
    assert "cannot read partition" in capsys.readouterr().err


def test_when_no_admin_password_is_set_outside_a_demo__launch_refuses(tmp_path, monkeypatch):
    monkeypatch.delenv("PDMFED_DATASITE_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("PDMFED_DEMO", raising=False)
    part = {"X": np.zeros((2, 3, 1)), "y": np.zeros(2)}
    with pytest.raises(ConfigError, match="PDMFED_DATASITE_ADMIN_PASSWORD"):
        launch_datasite("x_site", 0, part)
    with pytest.raises(ConfigError, match="PySyft's public default"):
        launch_datasite("x_site", 0, part, admin_password="changethis")
    with pytest.raises(ConfigError, match="too weak"):
        launch_datasite("x_site", 0, part, admin_password="a" * 20)
    npz = tmp_path / "p.npz"
    np.savez(npz, **part)
    assert datasite_main(["--name", "x_site", "--data", str(npz)]) == 2


def test_when_constructed_with_options_of_a_subclass__the_manager_ignores_them():
    comm = PySyftCommunicationManager(encryption_key="k" * 20, enable_dp=True, connect_timeout_s=3)
    assert comm.connect_timeout_s == 3 and comm.get_connection_status() == {}


@pytest.mark.parametrize(
    "url, creds",
    [
        ("http://127.0.0.1:1", None),
        ("http://127.0.0.1:1", {"email": "a@b.c"}),
        ("http://127.0.0.1:1", {"email": "", "password": "x"}),
        ("ftp://factory:21", {"email": "a@b.c", "password": "x"}),
    ],
)
def test_when_connect_arguments_are_invalid__a_typed_error_is_raised(url, creds):
    with pytest.raises(DatasiteConnectionError):
        PySyftCommunicationManager().connect_to_datasite(url, creds)


def test_when_a_datasite_is_unknown__operations_return_false_or_an_error_result():
    comm = PySyftCommunicationManager()
    assert comm.send_model({"w": torch.zeros(2)}, "ghost") is False
    result = comm.request_training({"epochs": 1}, "ghost")
    assert result["error_type"] == "DatasiteConnectionError" and result["datasite_id"] == "ghost"
    assert comm.is_connected("ghost") is False
    assert comm.disconnect_from_datasite("ghost") is False
    assert comm.reconnect("ghost") is False
    assert comm.broadcast_to_all({"hello": 1}) == {}


@pytest.mark.parametrize("params", [{}, [1, 2], {"w": "not a tensor"}])
def test_when_model_parameters_are_not_a_state_dict__send_model_raises_malformed(params):
    with pytest.raises(MalformedMessage):
        PySyftCommunicationManager().send_model(params, "ghost")


def test_when_the_training_config_is_not_a_mapping__request_training_raises_malformed():
    with pytest.raises(MalformedMessage):
        PySyftCommunicationManager().request_training(["epochs", 1], "ghost")
