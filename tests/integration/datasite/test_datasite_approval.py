"""What the datasite approves is the whole request: code, input/output policies and bound assets.

One real datasite per module; every request is submitted by its data-scientist account the
way the connector submits the training job, with one piece changed at a time.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator

import pytest
from datasite_helpers import ORCH_EMAIL, tiny_partition
from federation.datasite import launch_datasite
from federation.datasite.job import pdmfed_train_job
from federation.datasite.partition import DATASET_NAME, FEATURES, LABELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DS_ID = "steel_duisburg_mill"
PARTITION = tiny_partition(seed=5)
PRIVATE_SHAPE = PARTITION["X"].shape


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[object, str]]:
    password = secrets.token_urlsafe(18)
    handle = launch_datasite(
        DS_ID,
        0,
        PARTITION,
        admin_password=secrets.token_urlsafe(18),
        signing_key_dir=tmp_path_factory.mktemp("keys"),
        orchestrator_email=ORCH_EMAIL,
        orchestrator_password=password,
        poll_interval_s=0.1,
    )
    try:
        yield handle, password
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def client(site):
    import syft as sy

    handle, password = site
    return sy.login(url=handle.url, email=ORCH_EMAIL, password=password, cache=False)


def _assets(client) -> dict:
    (dataset,) = [d for d in client.datasets if d.name == DATASET_NAME]
    return {a.name: a for a in dataset.assets}


def _upload(client, data: bytes):
    import syft as sy

    return sy.ActionObject.from_obj(data).send(client)


def _submit(client, *, inputs: dict | None = None, output_policy=None, job=pdmfed_train_job):
    """Request execution as the connector does; any piece can be replaced."""
    import syft as sy
    from syft.service.policy.policy import ExactMatch, SingleExecutionExactOutput

    assets = _assets(client)
    bound = {
        "features": assets[FEATURES],
        "labels": assets[LABELS],
        "global_model": _upload(client, b"model"),
        "train_config": _upload(client, b"config"),
    }
    bound.update(inputs or {})
    fn = sy.syft_function(
        input_policy=ExactMatch(**bound),
        output_policy=output_policy if output_policy is not None else SingleExecutionExactOutput(),
        name=f"pdmfed_train_r1_{uuid.uuid4().hex[:12]}",
    )(job)
    return client.code.request_code_execution(fn)


def _status_after_review(client, request, seconds: float = 4.0) -> str:
    """The request's status once the approval watcher has certainly seen it."""
    from syft.service.request.request import RequestStatus

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = request.status
        if status != RequestStatus.PENDING:
            return status.name
        time.sleep(0.2)
    return request.status.name


def _reported(report, request_id: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # the watcher records a decision right after applying it
        if request_id in {e["request_id"] for e in report()}:
            return True
        time.sleep(0.1)
    return False


def test_when_the_connectors_exact_request_is_submitted__it_is_approved(client, site):
    request = _submit(client)
    assert _status_after_review(client, request) == "APPROVED"
    handle, _ = site
    assert _reported(handle.approved_requests, str(request.id))


def test_when_the_same_code_asks_for_many_executions__it_stays_pending(client, site):
    from syft.service.policy.policy import OutputPolicyExecuteCount

    request = _submit(client, output_policy=OutputPolicyExecuteCount(limit=1000))
    assert _status_after_review(client, request) == "PENDING"
    handle, _ = site
    assert _reported(handle.pending_requests, str(request.id))


def test_when_the_same_code_binds_other_assets__it_stays_pending(client):
    assets = _assets(client)
    swapped = {"features": assets[LABELS], "labels": assets[FEATURES]}
    assert _status_after_review(client, _submit(client, inputs=swapped)) == "PENDING"


def test_when_the_model_argument_is_bound_to_a_private_asset__it_stays_pending(client):
    assets = _assets(client)
    assert (
        _status_after_review(client, _submit(client, inputs={"global_model": assets[FEATURES]}))
        == "PENDING"
    )


def test_when_a_request_smuggles_a_read_grant_beside_the_approved_code__it_stays_pending(client):
    """A requester may put any changes into a request; approving applies all of them as admin."""
    import syft as sy
    from syft.service.action.action_permissions import ActionPermission
    from syft.service.code.user_code import UserCodeStatus
    from syft.service.policy.policy import ExactMatch, SingleExecutionExactOutput
    from syft.service.request.request import ActionStoreChange, SubmitRequest, UserCodeStatusChange
    from syft.store.linked_obj import LinkedObject

    assets = _assets(client)
    name = f"pdmfed_train_r1_{uuid.uuid4().hex[:12]}"
    fn = sy.syft_function(
        input_policy=ExactMatch(
            features=assets[FEATURES],
            labels=assets[LABELS],
            global_model=_upload(client, b"model"),
            train_config=_upload(client, b"config"),
        ),
        output_policy=SingleExecutionExactOutput(),
        name=name,
    )(pdmfed_train_job)
    client.code.submit(fn)
    (code,) = [c for c in client.code.get_all() if c.service_func_name == name]
    run_it = UserCodeStatusChange(
        value=UserCodeStatus.APPROVED,
        linked_obj=code.status_link,
        linked_user_code=LinkedObject.from_obj(code, server_uid=client.id),
    )
    private = assets[FEATURES].pointer
    grab = ActionStoreChange(
        linked_obj=LinkedObject.from_obj(private, server_uid=client.id),
        apply_permission_type=ActionPermission.READ,
    )
    request = client.api.services.request.submit(SubmitRequest(changes=[run_it, grab]))
    status = _status_after_review(client, request)
    try:
        held = client.api.services.action.get(assets[FEATURES].action_id)
        leaked = getattr(getattr(held, "syft_action_data", held), "shape", None) == PRIVATE_SHAPE
    except Exception:  # refused
        leaked = False
    assert (status, leaked) == ("PENDING", False)


def test_when_a_training_request_carries_a_dp_noise_seed__the_datasite_refuses_it(site):
    from datasite_helpers import tiny_global_model
    from federation.communication import PySyftCommunicationManager

    handle, password = site
    comm = PySyftCommunicationManager(approval_timeout_s=20, training_timeout_s=120)
    try:
        assert comm.connect_to_datasite(
            handle.url, {"email": ORCH_EMAIL, "password": password, "datasite_id": DS_ID}
        )
        assert comm.send_model(tiny_global_model(), DS_ID)
        dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "noise_seed": 42}
        result = comm.request_training(
            {"epochs": 1, "batch_size": 16, "round_number": 1, "dp": dp}, DS_ID
        )
    finally:
        comm.cleanup_all_connections()
    assert "noise_seed" in result.get("error", "") and "model_update" not in result
