"""Typed messages: every type round-trips through the codec; bad payloads are typed errors."""

from __future__ import annotations

import pytest
import torch
from federation.errors import MalformedMessage
from federation.wire import codec, messages
from federation.wire.messages import MESSAGE_CLASSES, MsgType, parse_payload

SD = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
TM = messages.TrainingMetrics(
    loss=0.5, rmse=20.0, dp=messages.DpSpend(1.1, 0.05, 40, 1.0, 1e-5, 2.5)
)
RM = messages.RoundMetrics(rmse=20.1, num_samples=128, duration_s=3.5, reputation={"f1": 1.0},
                           quorum=messages.Quorum(1, 1, 2, 2), record_epsilon={"f1": 2.5}, record_epsilon_max=2.5,
                           record_budget_allows_next=True)  # fmt: skip
EXAMPLES = [
    messages.CampaignStart("c1", {"rounds": 3, "model": "cnn"}),
    messages.RoundOpen("c1", 1, 0, ["f1", "f2"], 1725543015.5, SD),
    messages.RoundClose("c1", 1, ["f1", "f2"], {"f3": "deadline"}, "deadline"),
    messages.TrainRequest("c1", 1, "f1", 0, {"epochs": 1}, attempt=2),
    messages.UpdateRaw("c1", 1, "f1", 0, SD, 128, TM, b"\x01" * 64, "f1"),
    messages.UpdateScreened(
        "c1", 1, "f1", 0, SD, 128, 0.5, TM, messages.Verdict(True, 0.9, True), ["f1", "f2"]
    ),
    messages.UpdateRejected(
        "c1",
        1,
        "f2",
        "byzantine",
        messages.RejectionDetail(["norm 9.1"], {"norm": 9.1}, 0.2, TM),
        ["f1", "f2"],
    ),
    messages.RoundCompleted(
        "c1",
        1,
        1,
        ["f1"],
        {"f2": "byzantine"},
        ["f2"],
        RM,
        1.25,
        "aggregated",
        {"f3": "deadline"},
        SD,
    ),
    messages.CampaignCompleted("c1", 3, "max_rounds", messages.CampaignMetrics.of_round(RM, 1.25)),
    messages.CampaignAccepted("c1", 3, ["f1", "f2"], "a1b2"),
    messages.CampaignRejected("c1", messages.CampaignRejected.DUPLICATE, "already running", "a1b2"),
    messages.DatasiteStatus("f1", "failed", messages.StatusDetail("c1", 1, 2, "timeout")),
    messages.StatsRequest("c1", 0, "f1", attempt=1),
    messages.StatsRaw(
        "c1", 0, "f1", {"version": 1, "columns": ["x1"], "regimes": []}, b"\x02" * 64, "f1", 1
    ),
    messages.StatsScreened("c1", 0, "f1", {"version": 1, "columns": ["x1"], "regimes": []}, 1),
    messages.StatsRejected("c1", 0, "f2", "invalid_stats", "negative variance in x1", 1),
]
#: round.open with how its statistics were released (an older dispatch sends no such field).
ROUND_OPEN_NOISED = messages.RoundOpen(
    "c1",
    1,
    0,
    ["f1"],
    1.0,
    SD,
    {"mean": [[0.0]], "std": [[1.0]]},
    messages.StatsPrivacy(True, 1.0, 1e-5, 3.9, "row-level (add/remove one sensor row)"),
)


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_every_message_type_has_exactly_one_class():
    assert set(MESSAGE_CLASSES) == set(MsgType)
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_CLASSES.values())
    assert MsgType.UPDATE_RAW == "update.raw" and str(MsgType.UPDATE_RAW) == "update.raw"


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.msg_type.value)
def test_when_message_goes_through_the_codec__parse_payload_rebuilds_it(msg):
    decoded = codec.decode_payload(codec.encode_payload(msg.to_payload()))
    out = parse_payload(msg.msg_type.value, decoded)
    assert type(out) is type(msg)
    assert _equal(out.to_payload(), msg.to_payload())


def test_round_open_carries_how_its_statistics_were_released_and_older_payloads_still_parse():
    decoded = codec.decode_payload(codec.encode_payload(ROUND_OPEN_NOISED.to_payload()))
    assert (
        parse_payload("round.open", decoded).normalizer_privacy
        == ROUND_OPEN_NOISED.normalizer_privacy
    )
    older = {k: v for k, v in ROUND_OPEN_NOISED.to_payload().items() if k != "normalizer_privacy"}
    assert parse_payload("round.open", older).normalizer_privacy is None
    with pytest.raises(MalformedMessage, match="normalizer_privacy"):
        parse_payload("round.open", {**older, "normalizer_privacy": {"epsilon": "much"}})


def test_when_optional_fields_are_absent__defaults_apply():
    out = parse_payload(
        "update.raw", {"campaign_id": "c", "round_num": 0, "datasite_id": "f", "model_version": 0}
    )
    assert out.factory_signature is None and out.delta == {} and out.num_samples == 0


@pytest.mark.parametrize(
    "msg_type,payload",
    [
        ("round.open", {"campaign_id": "c", "round_num": 1}),  # missing model_version
        ("round.open", {"campaign_id": "c", "round_num": -1, "model_version": 0}),
        ("round.open", {"campaign_id": "c", "round_num": True, "model_version": 0}),
        ("round.open", {"campaign_id": "c", "round_num": 1, "model_version": 0, "cohort": [1]}),
        ("round.open", {"campaign_id": 1, "round_num": 1, "model_version": 0}),
        ("round.open", {"campaign_id": "c", "round_num": 1, "model_version": 0, "x": 1}),
        (
            "round.open",
            {"campaign_id": "c", "model_version": 0, "round_num": 0, "global_model": {"w": [1.0]}},
        ),
        (
            "round.completed",
            {"campaign_id": "c", "round_num": 0, "model_version": 0, "epsilon": float("inf")},
        ),
        (
            "update.raw",
            {
                "campaign_id": "c",
                "round_num": 0,
                "datasite_id": "f",
                "model_version": 0,
                "factory_signature": "hex",
            },
        ),
        ("update.raw", [1, 2]),
        ("no.such.type", {}),
    ],
    ids=str,
)
def test_when_payload_is_invalid__parse_payload_raises_malformed(msg_type, payload):
    with pytest.raises(MalformedMessage):
        parse_payload(msg_type, payload)


#: Payload parts exactly as the services sent them before the parts had types (msgpack maps).
UNTYPED_ERA = {
    "update.raw": {"campaign_id": "c", "round_num": 1, "datasite_id": "f1", "model_version": 0,
                   "metrics": {"loss": 0.5, "rmse": 20.0, "training_time": 1.5,
                               "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "sample_rate": 0.05,
                                      "steps": 40.0, "delta": 1e-5, "epsilon": 2.5}}},
    "update.screened": {"campaign_id": "c", "round_num": 1, "datasite_id": "f1", "weight": 128.0,
                        "metrics": {"loss": 0.5}, "verdict": {"accepted": True, "reputation": 1.0, "local_noise": False}},
    "update.rejected": {"campaign_id": "c", "round_num": 1, "datasite_id": "f2", "reason": "byzantine",
                        "detail": {"why": ["norm"], "scores": {"norm": 9.1}, "reputation": 0.2, "metrics": {}}},
    "round.completed": {"campaign_id": "c", "round_num": 1, "model_version": 1, "rejected": {"f2": "byzantine"},
                        "metrics": {"rmse": None, "loss": None, "num_samples": 0, "duration_s": 2.0, "noise_std": 0.0,
                                    "reputation": {}, "quorum": {"required": 2, "accepted": 0, "screened": 0,
                                                                 "min_clients": 2}}},
    "campaign.completed": {"campaign_id": "c", "rounds": 1, "reason": "no_quorum",
                           "final_metrics": {"rmse": None, "num_samples": 0, "epsilon": None}},
    "datasite.status": {"datasite_id": "f1", "status": "trained",
                        "detail": {"campaign_id": "c", "round_num": 1, "attempt": 1}},
}  # fmt: skip


@pytest.mark.parametrize("msg_type", sorted(UNTYPED_ERA))
def test_payloads_sent_before_parts_had_types_decode_into_typed_parts(msg_type):
    payload = UNTYPED_ERA[msg_type]
    msg = parse_payload(msg_type, codec.decode_payload(codec.encode_payload(payload)))
    parts = [
        getattr(msg, n)
        for n in ("metrics", "verdict", "detail", "final_metrics")
        if hasattr(msg, n)
    ]
    assert parts and all(isinstance(p, messages.Part) for p in parts)
    again = msg.to_payload()  # the wire map again: a part's unset optional fields stay absent
    for name in ("verdict", "detail"):
        if name in payload:
            assert again[name].keys() <= {**payload[name], **again[name]}.keys()
    if msg_type == "update.raw":
        assert msg.metrics.dp.steps == 40 and isinstance(msg.metrics.dp.steps, int)
        assert "accuracy" not in again["metrics"]
    if msg_type == "datasite.status":
        assert (msg.detail.campaign_id, msg.detail.round_num, msg.detail.error) == ("c", 1, None)
        assert again["detail"] == payload["detail"]


@pytest.mark.parametrize(
    "msg_type,payload,where",
    [
        ("update.screened", {"campaign_id": "c", "round_num": 1, "datasite_id": "f", "verdict": {"accepted": "yes"}},
         "field verdict: field accepted"),
        ("update.screened", {"campaign_id": "c", "round_num": 1, "datasite_id": "f", "verdict": {"cosine": 0.9}},
         "field verdict: Verdict payload has unknown fields"),
        ("update.raw", {"campaign_id": "c", "round_num": 1, "datasite_id": "f", "model_version": 0,
                        "metrics": {"dp": {"noise_multiplier": 1.0, "sample_rate": 0.1}}},
         "field dp: DpSpend payload is missing field steps"),
        ("update.rejected", {"campaign_id": "c", "round_num": 1, "datasite_id": "f", "reason": "x",
                             "detail": {"scores": {"norm": float("nan")}}}, "scores.norm"),
        ("round.completed", {"campaign_id": "c", "round_num": 1, "model_version": 1,
                             "metrics": {"quorum": {"required": 1}}}, "Quorum payload is missing field accepted"),
        ("datasite.status", {"datasite_id": "f", "status": "failed", "detail": "boom"}, "field detail"),
        ("round.close", {"campaign_id": "c", "round_num": 1, "failed": {"f1": 3}}, "field failed"),
    ],
)  # fmt: skip
def test_a_malformed_nested_part_is_a_typed_error_naming_its_field(msg_type, payload, where):
    with pytest.raises(MalformedMessage, match=where.replace("(", r"\(")):
        parse_payload(msg_type, payload)
