"""Datasite lifecycle on real PySyft: crash mid-training and recovery, clean stop, standalone process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from datasite_helpers import ORCH_EMAIL, tiny_global_model, tiny_partition
from federation.communication import PySyftCommunicationManager
from federation.datasite import launch_datasite, verify_factory_result
from federation.datasite.launcher import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_when_a_datasite_dies_mid_training__result_is_an_error_and_reconnect_works_after_restart(
    tmp_path,
):
    ds, orch_pw = "aerospace_seattle_assembly", secrets.token_urlsafe(16)
    part = tiny_partition(seed=7)
    launch = dict(
        admin_password=secrets.token_urlsafe(16),
        signing_key_dir=tmp_path / "keys",
        orchestrator_email=ORCH_EMAIL,
        orchestrator_password=orch_pw,
    )
    handle = launch_datasite(ds, 0, part, **launch)
    port = handle.port
    creds = {"email": ORCH_EMAIL, "password": orch_pw, "datasite_id": ds}
    comm = PySyftCommunicationManager(approval_timeout_s=20, training_timeout_s=120)
    try:
        assert comm.connect_to_datasite(handle.url, creds)
        assert comm.send_model(tiny_global_model(), ds)
        box: dict = {}
        slow = {"epochs": 400, "batch_size": 8, "learning_rate": 1e-3, "round_number": 1}
        worker = threading.Thread(target=lambda: box.update(comm.request_training(slow, ds)))
        worker.start()
        assert _wait_for(lambda: handle.approved_requests(), 30), "job was never approved"
        time.sleep(1.0)  # the job is training now
        assert worker.is_alive(), "training finished before the crash could be simulated"
        handle.kill()
        worker.join(60)
        assert not worker.is_alive()
        assert "error" in box and box["datasite_id"] == ds
        assert comm.get_connection_status()[ds] == "disconnected"
        assert comm.reconnect(ds) is False  # still down
        handle.stop()

        handle = launch_datasite(ds, port, part, **launch)  # the factory restarts it
        assert comm.reconnect(ds) is True
        assert comm.send_model(tiny_global_model(), ds)
        result = comm.request_training({"epochs": 1, "batch_size": 16, "round_number": 2}, ds)
        assert "error" not in result, result.get("error")
        assert verify_factory_result(result, handle.public_key)
    finally:
        comm.cleanup_all_connections()
        handle.stop()


def test_when_a_datasite_is_stopped__no_process_and_no_temp_dir_remain():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    handle = launch_datasite(
        "pharma_basel_line",
        0,
        tiny_partition(seed=3, n=16),
        admin_password=secrets.token_urlsafe(16),
    )
    spawned = [p for p in me.children(recursive=True) if p.pid not in before]
    assert handle.pid in {p.pid for p in spawned}
    assert handle.temp_root.exists() and any(handle.temp_root.rglob("*.db"))
    handle.stop()
    assert not handle.is_alive()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in spawned)
    assert not handle.temp_root.exists()
    handle.stop()  # idempotent


def test_when_run_as_a_process__the_datasite_serves_until_sigterm_and_exits_cleanly(tmp_path):
    ds, orch_pw = "food_lyon_packaging", secrets.token_urlsafe(16)
    part = tiny_partition(seed=9, n=24)
    npz = tmp_path / "part.npz"
    np.savez(npz, X=part["X"], y=part["y"])
    env = dict(
        os.environ,
        PDMFED_DATASITE_ADMIN_PASSWORD=secrets.token_urlsafe(16),
        PDMFED_DATASITE_ORCHESTRATOR_PASSWORD=orch_pw,
    )
    cmd = [sys.executable, "-m", "federation.datasite", "--name", ds, "--port", str(free_port()),
           "--data", str(npz), "--keys-dir", str(tmp_path / "keys"),
           "--orchestrator-email", ORCH_EMAIL]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT)
    tree: list[psutil.Process] = []
    try:
        info = None
        for line in proc.stdout:
            if line.startswith("{"):
                info = json.loads(line)
                break
        assert info is not None, "the datasite never announced itself"
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert (tmp_path / "keys" / f"{ds}.pub").exists()
        comm = PySyftCommunicationManager()
        creds = {"email": ORCH_EMAIL, "password": orch_pw, "datasite_id": ds}
        assert comm.connect_to_datasite(info["url"], creds)
        assert comm.get_connected_datasites()[ds]["capabilities"]["num_samples"] == 24
        assert comm.send_model(tiny_global_model(), ds)
        result = comm.request_training({"epochs": 1, "round_number": 1}, ds)
        assert verify_factory_result(result, bytes.fromhex(info["public_key"]))
        comm.cleanup_all_connections()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                     for p in tree), 10)  # fmt: skip
