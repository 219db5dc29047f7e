"""Envelope v2: field validation, encode/decode round trips, a strict bounded binary header."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest
from federation.errors import MalformedMessage, OversizeMessage
from federation.wire.envelope import (
    MAX_HEADER_BYTES,
    Envelope,
    decode_envelope,
    encode_envelope,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


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


def test_when_a_v1_msgpack_map_arrives__it_is_refused_at_the_magic_without_being_parsed():
    env = _env()
    v1 = msgpack.packb({**env.to_dict(), "security_version": "1.0"}, use_bin_type=True)
    with pytest.raises(MalformedMessage, match="magic"):
        decode_envelope(v1)
    with pytest.raises(MalformedMessage, match="security_version"):
        Envelope.from_dict({**env.to_dict(), "security_version": "1.0"})


def test_when_a_body_decodes__it_re_encodes_to_the_same_bytes():
    for env in (_env(), _env(signature=None), _env(datasite_id="", sender="é" * 100)):
        body = encode_envelope(env)
        out = decode_envelope(body)
        assert encode_envelope(out) == body
        assert out.aad() == body[: len(out.aad())]


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
    assert d["security_version"] == "2.0" and d["communication_type"] == "secure"


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
        {"security_version": "1.0"},
        {"communication_type": "plain"},
        {"msg_type": "update.cooked"},
        {"msg_id": b"short"},
        {"nonce": bytes(11)},
        {"sender": ""},
        {"sender": "x" * 300},
        {"sender": "é" * 128},
        {"key_id": "k" * 65},
        {"round_num": 2**63},
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


def test_when_a_package_dict_has_unknown_or_missing_fields__from_dict_raises_malformed():
    d = _env().to_dict()
    with pytest.raises(MalformedMessage, match="unknown"):
        Envelope.from_dict({**d, "extra": 1})
    with pytest.raises(MalformedMessage, match="missing"):
        Envelope.from_dict({k: v for k, v in d.items() if k != "nonce"})


def _patched(body: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(body)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_when_the_fixed_header_lies__decode_raises_malformed_before_reading_on():
    body = encode_envelope(_env())
    header_len, ct_len = struct.unpack_from(">HI", body, 6)
    cases = {
        "magic": _patched(body, 0, ">4s", b"PDMG"),
        "version": _patched(body, 4, ">B", 1),
        "flags": _patched(body, 5, ">B", 0x81),
        "header length": _patched(body, 6, ">H", MAX_HEADER_BYTES + 1),
        "short header": _patched(body, 6, ">H", 20),
        "ciphertext length": _patched(body, 8, ">I", ct_len + 1),
        "huge ciphertext": _patched(body, 8, ">I", 2**32 - 1),
        "chunk flag without chunk": _patched(body, 5, ">B", 0x03),
        "unsigned flag with signature": _patched(body, 5, ">B", 0x00),
        "string past header": _patched(
            body, header_len - 1 - len("automotive_detroit_main"), ">B", 200
        ),
    }
    for bad in cases.values():
        with pytest.raises(MalformedMessage):
            decode_envelope(bad)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"PDMF",
        b"\x90",
        b"\xc1",
        b"\x81\xa1a\xc7\x01\x01\x00",
        b"\xdf\xff\xff\xff\xff",
        bytes(64),
    ],
)
def test_when_body_is_not_an_envelope__decode_raises_malformed(body):
    with pytest.raises(MalformedMessage):
        decode_envelope(body)


def test_when_body_has_trailing_bytes_or_is_truncated__decode_raises_malformed():
    body = encode_envelope(_env())
    with pytest.raises(MalformedMessage, match="add up"):
        decode_envelope(body + b"\x00")
    with pytest.raises(MalformedMessage, match="add up"):
        decode_envelope(body[:-1])


def test_when_a_string_is_not_utf8__decode_raises_malformed():
    env = _env(sender="connector-\u00e9")
    body = bytearray(encode_envelope(env))
    at = body.index("\u00e9".encode())
    body[at + 1] = 0xFF  # breaks the two-byte sequence
    with pytest.raises(MalformedMessage, match="UTF-8"):
        decode_envelope(bytes(body))


def test_when_body_exceeds_max_bytes__decode_raises_oversize():
    body = encode_envelope(_env())
    with pytest.raises(OversizeMessage):
        decode_envelope(body, max_bytes=len(body) - 1)
    assert decode_envelope(body, max_bytes=len(body)).sender == "connector-0"


def test_when_a_large_body_is_decoded__the_ciphertext_is_a_view_not_a_copy():
    body = encode_envelope(_env(encrypted_data=bytes(8 * 1024 * 1024)))
    out = decode_envelope(body)
    assert isinstance(out.encrypted_data, memoryview) and out.encrypted_data.obj is body


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=400), st.integers(0, 255), st.integers(0, 600))
def test_when_header_bytes_are_arbitrary__decode_is_typed_and_canonical(tail, flags, header_len):
    """Random headers behind a valid prefix: refused typed, or decoded and re-encoded exactly."""
    ct_len = 16
    body = struct.pack(">4sBBHI", b"PDMF", 2, flags, header_len, ct_len) + tail
    try:
        env = decode_envelope(body)
    except MalformedMessage:
        return
    assert encode_envelope(env) == body
