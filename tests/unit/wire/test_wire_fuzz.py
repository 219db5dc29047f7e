"""Property-based fuzzing: decoders raise only federation.errors types, on any input."""

from __future__ import annotations

import os

import torch
from federation.errors import PdmFedError
from federation.wire import codec
from federation.wire.envelope import Envelope, decode_envelope, encode_envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_PAYLOAD = codec.encode_payload(
    {
        "delta": {"w": torch.arange(6.0).reshape(2, 3), "m": torch.tensor([True, False])},
        "n": 3,
        "tags": ["a", b"b", None, 1.5],
    }
)
_BODY = encode_envelope(
    Envelope(
        msg_type="update.raw",
        msg_id=os.urandom(16),
        sender="c-0",
        key_id="k1",
        timestamp=1.0,
        nonce=os.urandom(12),
        encrypted_data=os.urandom(48),
        checksum="0" * 64,
        signature=os.urandom(64),
        chunk={"update_id": bytes(16), "index": 0, "total": 2, "size": 9, "sha256_all": "1" * 64},
    )
)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, extra: bytes) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    return bytes(buf) + extra


_EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)
_CUT = st.none() | st.integers(0, 10**6)
_EXTRA = st.binary(max_size=8)


def _only_typed_errors(fn, data) -> None:
    try:
        fn(data)
    except PdmFedError:
        pass


@FUZZ
@given(st.binary(max_size=512))
def test_when_arbitrary_bytes_are_decoded__only_typed_errors_are_raised(data):
    _only_typed_errors(decode_envelope, data)
    _only_typed_errors(codec.decode_payload, data)
    _only_typed_errors(codec.decode_payload, b"\x93\xc6" + data)


@FUZZ
@given(_EDITS, _CUT, _EXTRA)
def test_when_a_valid_payload_is_mutated__decode_payload_raises_only_typed_errors(
    edits, cut, extra
):
    data = _mutate(_PAYLOAD, edits, cut, extra)
    _only_typed_errors(lambda d: codec.decode_payload(d, max_tensor_bytes=1 << 20), data)
    _only_typed_errors(codec.decode_payload, bytearray(data))


@FUZZ
@given(_EDITS, _CUT, _EXTRA)
def test_when_a_valid_envelope_is_mutated__decode_envelope_raises_only_typed_errors(
    edits, cut, extra
):
    _only_typed_errors(decode_envelope, _mutate(_BODY, edits, cut, extra))


@FUZZ
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text(max_size=20)
        | st.binary(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_when_any_plain_structure_is_encoded__it_decodes_equal(obj):
    assert codec.decode_payload(codec.encode_payload(obj)) == obj
