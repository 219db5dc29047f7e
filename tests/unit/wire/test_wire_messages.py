"""Typed messages: every type round-trips through the codec; bad payloads are typed errors."""

from __future__ import annotations

import pytest
import torch
from federation.errors import MalformedMessage
from federation.wire import codec, messages
from federation.wire.messages import MESSAGE_CLASSES, MsgType, parse_payload

SD = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
EXAMPLES = [
    messages.CampaignStart("c1", {"rounds": 3, "model": "cnn"}),
    messages.RoundOpen("c1", 1, 0, ["f1", "f2"], 1725543015.5, SD),
    messages.RoundClose("c1", 1, ["f1", "f2"], {"f3": "deadline"}, "deadline"),
    messages.TrainRequest("c1", 1, "f1", 0, {"epochs": 1}, attempt=2),
    messages.UpdateRaw("c1", 1, "f1", 0, SD, 128, {"loss": 0.5}, b"\x01" * 64, "f1"),
    messages.UpdateScreened("c1", 1, "f1", 0, SD, 128, 0.5, {"loss": 0.5}, {"cosine": 0.9}, ["f1", "f2"]),
    messages.UpdateRejected("c1", 1, "f2", "byzantine", {"score": 9.1}, ["f1", "f2"]),
    messages.RoundCompleted("c1", 1, 1, ["f1"], {"f2": "byzantine"}, ["f2"], {"rmse": 20.1}, 1.25,
                            "aggregated", {"f3": "deadline"}, SD),
    messages.CampaignCompleted("c1", 3, "max_rounds", {"rmse": 18.0}),
    messages.CampaignAccepted("c1", 3, ["f1", "f2"], "a1b2"),
    messages.CampaignRejected("c1", messages.CampaignRejected.DUPLICATE, "already running", "a1b2"),
    messages.DatasiteStatus("f1", "connected", {"url": "http://x"}),
]


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
