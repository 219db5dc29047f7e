"""Envelope v1: field validation, encode/decode round trips, strict decoding."""

from __future__ import annotations

import os

import msgpack
import pytest
from federation.errors import MalformedMessage, OversizeMessage
from federation.wire.envelope import Envelope, decode_envelope, encode_envelope


def _env(**over) -> Envelope:
    fields = dict(
        msg_type="update.raw",
        msg_id=os.urandom(16),
        sender="connector-0",
        key_id="k1",
        timestamp=1725543015.123456,
        datasite_id="automotive_detroit_main",
        round_num=7,
        nonce=os.urandom(12),
        encrypted_data=os.urandom(40),
        checksum="ab" * 32,
        signature=os.urandom(64),
    )
    fields.update(over)
    return Envelope(**fields)


def test_when_envelope_is_encoded__it_decodes_to_an_equal_envelope():
    env = _env()
    out = decode_envelope(encode_envelope(env))
    assert out == env
    assert isinstance(out.encrypted_data, memoryview) and out.encrypted_data.readonly
    assert out.aad() == env.aad() and out.signed_bytes() == env.signed_bytes()


def test_when_chunk_and_no_signature__envelope_round_trips():
    chunk = {
        "update_id": os.urandom(16),
        "index": 1,
        "total": 3,
        "size": 30,
        "sha256_all": "0" * 64,
    }
    env = _env(signature=None, chunk=chunk)
    assert decode_envelope(encode_envelope(env)) == env


def test_when_body_is_plain_msgpack_of_to_dict__decoder_accepts_it():
    env = _env()
    assert decode_envelope(msgpack.packb(env.to_dict(), use_bin_type=True)) == env


def test_when_seed_fields_are_present__to_dict_has_the_seed_secure_package_keys():
    d = _env().to_dict()
    for key in (
        "encrypted_data",
        "timestamp",
        "checksum",
        "security_version",
        "datasite_id",
        "round_num",
        "communication_type",
    ):
        assert key in d
    assert d["security_version"] == "1.0" and d["communication_type"] == "secure"


def test_when_any_header_field_changes__aad_changes():
    env = _env()
    changes = dict(
        msg_type="update.screened",
        msg_id=os.urandom(16),
        sender="x",
        key_id="k2",
        timestamp=1.0,
        datasite_id="d",
        round_num=8,
        nonce=os.urandom(12),
        checksum="cd" * 32,
        chunk={"update_id": bytes(16), "index": 0, "total": 1, "size": 1, "sha256_all": "0" * 64},
    )
    aads = {env.aad()} | {_env(**{k: v}).aad() for k, v in changes.items()}
    assert len(aads) == 1 + len(changes)


@pytest.mark.parametrize(
    "over",
    [
        {"security_version": "2.0"},
        {"communication_type": "plain"},
        {"msg_type": "update.cooked"},
        {"msg_id": b"short"},
        {"nonce": bytes(11)},
        {"sender": ""},
        {"sender": "x" * 300},
        {"key_id": 5},
        {"timestamp": float("nan")},
        {"timestamp": True},
        {"round_num": -1},
        {"round_num": 1.0},
        {"checksum": "AB" * 32},
        {"signature": bytes(63)},
        {"encrypted_data": bytes(15)},
        {"chunk": {"index": 0}},
        {
            "chunk": {
                "update_id": bytes(16),
                "index": 3,
                "total": 3,
                "size": 9,
                "sha256_all": "0" * 64,
            }
        },
        {
            "chunk": {
                "update_id": bytes(16),
                "index": 0,
                "total": 9,
                "size": 3,
                "sha256_all": "0" * 64,
            }
        },
    ],
    ids=str,
)
def test_when_a_field_is_invalid__envelope_raises_malformed(over):
    with pytest.raises(MalformedMessage):
        _env(**over)


def test_when_map_has_unknown_missing_or_repeated_fields__decode_raises_malformed():
    d = _env().to_dict()
    with pytest.raises(MalformedMessage, match="unknown"):
        decode_envelope(msgpack.packb({**d, "extra": 1}))
    with pytest.raises(MalformedMessage, match="missing"):
        decode_envelope(msgpack.packb({k: v for k, v in d.items() if k != "nonce"}))
    body = encode_envelope(_env())
    # Bump the map length and append a repeated key/value.
    repeated = bytes([body[0] + 1]) + body[1:] + msgpack.packb("sender") + msgpack.packb("y")
    with pytest.raises(MalformedMessage, match="repeats"):
        decode_envelope(repeated)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x90", b"\xc1", b"\x81\xa1a\xc7\x01\x01\x00", b"\xdf\xff\xff\xff\xff", b"\x81\x01\x02"],
)
def test_when_body_is_not_an_envelope_map__decode_raises_malformed(body):
    with pytest.raises(MalformedMessage):
        decode_envelope(body)


def test_when_body_has_trailing_bytes_or_is_truncated__decode_raises_malformed():
    body = encode_envelope(_env())
    with pytest.raises(MalformedMessage, match="trailing"):
        decode_envelope(body + b"\x00")
    with pytest.raises(MalformedMessage, match="truncated"):
        decode_envelope(body[:-1])


def test_when_body_exceeds_max_bytes__decode_raises_oversize():
    body = encode_envelope(_env())
    with pytest.raises(OversizeMessage):
        decode_envelope(body, max_bytes=len(body) - 1)
    assert decode_envelope(body, max_bytes=len(body)).sender == "connector-0"
