"""The connector holds a data-scientist account at each factory, never the factory's admin login.

One real datasite per module, launched as a factory launches it: its own admin password (which
stays in the launcher) and a data-scientist account for the connector. Every test acts as an
attacker who holds the connector's credentials.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from datasite_helpers import ORCH_EMAIL, tiny_partition
from federation.datasite import launch_datasite
from federation.datasite.partition import DATASET_NAME, FEATURES, LABELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DS_ID = "paper_tampere_press"
PARTITION = tiny_partition(seed=9)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[object, str, str]]:
    admin_password, connector_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    handle = launch_datasite(
        DS_ID,
        0,
        PARTITION,
        admin_password=admin_password,
        signing_key_dir=tmp_path_factory.mktemp("keys"),
        orchestrator_email=ORCH_EMAIL,
        orchestrator_password=connector_password,
        poll_interval_s=0.1,
    )
    try:
        yield handle, admin_password, connector_password
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def connector(site):
    import syft as sy

    handle, _, password = site
    return sy.login(url=handle.url, email=ORCH_EMAIL, password=password, cache=False)


def _assets(client) -> dict:
    (dataset,) = [d for d in client.datasets if d.name == DATASET_NAME]
    return {a.name: a for a in dataset.assets}


def _refused(call) -> bool:
    """True when PySyft refuses ``call`` (raises, or answers with an error value)."""
    import syft as sy

    try:
        result = call()
    except Exception:
        return True
    return isinstance(result, sy.SyftError)


def test_when_the_connector_is_given_a_factory_admins_credentials__it_refuses_to_log_in_with_them(
    site,
):
    from federation.runtime.launch import connector_session_manager

    handle, admin_password, _ = site
    comm = connector_session_manager()
    try:
        ok = comm.connect_to_datasite(
            handle.url,
            {"email": handle.admin_email, "password": admin_password, "datasite_id": DS_ID},
        )
        state = comm.get_connected_datasites()[DS_ID]
    finally:
        comm.cleanup_all_connections()
    assert ok is False, "the connector holds admin rights at the factory"
    assert "data scientist" in state["last_error"]


def test_the_connectors_account_is_a_data_scientist_and_the_connector_accepts_it(site):
    from federation.runtime.launch import connector_session_manager

    handle, _, password = site
    comm = connector_session_manager()
    try:
        assert comm.connect_to_datasite(
            handle.url, {"email": ORCH_EMAIL, "password": password, "datasite_id": DS_ID}
        )
    finally:
        comm.cleanup_all_connections()


def test_when_the_connector_asks_for_the_private_partition__it_gets_only_the_mock(connector):
    assets = _assets(connector)
    for name, private in ((FEATURES, PARTITION["X"]), (LABELS, PARTITION["y"])):
        mock = np.asarray(assets[name].mock)
        assert mock.shape == private.shape and not np.allclose(mock, private)
        data = None
        try:
            data = assets[name].data
        except Exception:  # refused
            pass
        assert not (isinstance(data, np.ndarray) and np.array_equal(data, private)), (
            f"{name} leaked"
        )
        assert _refused(lambda a=assets[name]: connector.api.services.action.get(a.action_id))


def test_when_the_connector_submits_code_that_is_not_allow_listed__it_never_runs(connector, site):
    import syft as sy
    from syft.service.policy.policy import ExactMatch, SingleExecutionExactOutput

    def pdmfed_train_job(features, labels, global_model, train_config):
        return {"leak": features}

    assets = _assets(connector)
    model = sy.ActionObject.from_obj(b"m").send(connector)
    config = sy.ActionObject.from_obj(b"c").send(connector)
    name = f"pdmfed_train_r1_{uuid.uuid4().hex[:12]}"
    fn = sy.syft_function(
        input_policy=ExactMatch(
            features=assets[FEATURES],
            labels=assets[LABELS],
            global_model=model,
            train_config=config,
        ),
        output_policy=SingleExecutionExactOutput(),
        name=name,
    )(pdmfed_train_job)
    request = connector.code.request_code_execution(fn)
    time.sleep(2.0)  # the approval watcher has seen it
    assert request.status.name == "PENDING"
    connector.refresh()
    result = None
    try:
        result = getattr(connector.code, name)(
            features=assets[FEATURES],
            labels=assets[LABELS],
            global_model=model,
            train_config=config,
        )
        result = result.get() if hasattr(result, "get") else result
    except Exception:  # refused
        pass
    assert not (isinstance(result, dict) and "leak" in result), (
        "unapproved code ran on private data"
    )


def test_when_the_connector_tries_to_approve_a_request__it_is_refused(connector):
    from syft.service.request.request import RequestStatus

    requests = connector.api.services.request.get_all()
    pending = [r for r in requests if r.status == RequestStatus.PENDING]
    assert pending, "the previous test leaves a pending request"
    target = pending[0]
    assert _refused(lambda: connector.api.services.request.apply(target.id))
    assert _refused(lambda: target.approve())
    assert target.status == RequestStatus.PENDING


def test_when_the_connector_tries_to_manage_users__it_is_refused(connector, site):
    from syft.service.user.user_roles import ServiceRole

    handle, _, _ = site
    me = connector.account
    attempts = {
        "create an admin": lambda: connector.users.create(
            name="x",
            email=f"x{uuid.uuid4().hex[:6]}@evil.example",
            password="p" * 16,
            password_verify="p" * 16,
            role=ServiceRole.ADMIN,
        ),
        "promote itself": lambda: connector.api.services.user.update(
            uid=me.id, role=ServiceRole.ADMIN
        ),
        "list every user": lambda: [
            u for u in connector.users.get_all() if u.email == handle.admin_email
        ][0],
        "delete the admin": lambda: connector.api.services.user.delete(
            uid=[u for u in connector.users.get_all() if u.email == handle.admin_email][0].id
        ),
    }
    allowed = [what for what, call in attempts.items() if not _refused(call)]
    assert allowed == []
    assert connector.account.role == ServiceRole.DATA_SCIENTIST
