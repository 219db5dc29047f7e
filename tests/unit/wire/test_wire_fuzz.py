"""Property-based fuzzing: decoders raise only federation.errors types, on any input."""

from __future__ import annotations

import dataclasses
import math
import os

import msgpack
import pytest
import torch
from federation.errors import MalformedMessage, OversizeMessage, PdmFedError
from federation.wire import codec
from federation.wire.envelope import Envelope, decode_envelope, encode_envelope
from federation.wire.messages import MESSAGE_CLASSES, MsgType, parse_payload
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


# --- hostile tensor descriptors, region bytes and nested payloads (every failure is typed) ----
# A sender holding a service key can seal any plaintext: the codec and the typed messages are
# the last line. Every failure must be MalformedMessage/OversizeMessage, raised on first sight.

_TYPED = (MalformedMessage, OversizeMessage)
_HOSTILE_DIMS = [2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Nine draws in ten from ``good``: most cases get past the first check to the deeper ones."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


_DIM = _mostly(
    st.integers(0, 9) | st.sampled_from(_HOSTILE_DIMS),
    st.sampled_from([-1, -2, 1.0, "3", None, True]),
)
_DTYPE = _mostly(
    st.sampled_from(sorted(codec.DTYPES)),
    st.sampled_from(["float8", "complex64", "", "FLOAT32", 7, None, b"float32", ["float32"]]),
)
_SHAPE = _mostly(
    st.lists(_DIM, max_size=5),
    st.lists(_DIM, min_size=30, max_size=40) | st.sampled_from([None, 3, "2x3", {"a": 1}]),
)
_OFFSET = st.integers(-2, 200) | st.sampled_from(_HOSTILE_DIMS)


def _frame(structure: bytes, region: bytes, pad: int | None) -> bytes:
    """The codec's 3-element frame around a structure and a tensor region (any padding)."""
    head = bytearray(b"\x93\xc6") + len(structure).to_bytes(4, "big") + structure
    if pad is None:
        pad = -(len(head) + 2 + 5) % 64
    head += b"\xc4" + bytes([pad]) + bytes(pad)
    head += b"\xc6" + len(region).to_bytes(4, "big")
    return bytes(head) + region


@st.composite
def _descriptor(draw) -> msgpack.ExtType:
    name, shape, offset = draw(_DTYPE), draw(_SHAPE), draw(_OFFSET)
    ints = isinstance(shape, list) and all(type(d) is int for d in shape)
    if ints and draw(st.booleans()) and isinstance(name, str) and name in codec.DTYPES:
        # the size the shape needs (kept within msgpack's range): the deeper checks are reached
        nbytes = min(math.prod(shape) * codec._ITEMSIZE[name], 2**64 - 1)
    else:
        nbytes = draw(_OFFSET)
    desc: object = [name, shape, offset, nbytes]
    if draw(st.integers(0, 19)) == 0:
        desc = draw(st.sampled_from([[name, shape, offset], {"dtype": name}, 5, [name] * 5]))
    code = codec.TENSOR_EXT if draw(st.integers(0, 19)) else draw(st.integers(0, 127))
    try:
        data = msgpack.packb(desc) if draw(st.integers(0, 19)) else draw(st.binary(max_size=12))
    except OverflowError:  # a negative product beyond int64: msgpack cannot write it
        data = draw(st.binary(max_size=12))
    return msgpack.ExtType(code, data)


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | _descriptor()
)
_NESTED = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_REGION = st.binary(max_size=256) | st.sampled_from([bytes(64), b"\x01" * 128, b"\xff" * 200])
_PAD = st.none() | st.integers(0, 80)
_HOSTILE = settings(
    max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
)


def _decodes_or_refuses(data: bytes, **kw) -> object:
    try:
        out = codec.decode_payload(data, **kw)
    except _TYPED as err:
        assert err.reason in ("malformed", "oversize")
        return None
    _touch(out)
    return out


def _touch(obj: object) -> None:
    """Read every decoded tensor whole: a view past its buffer would crash here, not later."""
    if isinstance(obj, torch.Tensor):
        obj.reshape(-1).to(torch.float64).sum()
    elif isinstance(obj, dict):
        for v in obj.values():
            _touch(v)
    elif isinstance(obj, list):
        for v in obj:
            _touch(v)


def test_when_a_descriptor_has_a_zero_dim_and_huge_strides__decode_is_malformed_not_a_crash():
    desc = msgpack.packb(["float32", [0, 2**62, 2**62], 0, 0])
    data = _frame(msgpack.packb({"t": msgpack.ExtType(codec.TENSOR_EXT, desc)}), b"", None)
    with pytest.raises(MalformedMessage, match="shape"):
        codec.decode_payload(data)


@_HOSTILE
@given(_descriptor(), _REGION, _PAD, st.booleans())
def test_when_one_hostile_tensor_descriptor_is_decoded__it_decodes_or_is_refused_typed(
    desc, region, pad, writable
):
    data = _frame(msgpack.packb({"t": desc}), region, pad)
    _decodes_or_refuses(bytearray(data) if writable else data, max_tensor_bytes=1 << 20)


@_HOSTILE
@given(_NESTED, _REGION, _PAD)
def test_when_a_nested_payload_of_hostile_descriptors_is_decoded__it_is_refused_typed(
    structure, region, pad
):
    try:
        packed = msgpack.packb(structure, use_bin_type=True)
    except (ValueError, OverflowError):  # a float/int msgpack itself cannot write
        return
    _decodes_or_refuses(_frame(packed, region, pad))


_MSG_TYPES = sorted(t.value for t in MsgType)
_FIELD_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
    | st.builds(
        lambda shape, dt: torch.zeros(shape, dtype=dt),
        st.lists(st.integers(0, 3), max_size=3),
        st.sampled_from([torch.float32, torch.int64, torch.bool, torch.bfloat16]),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _typed_payload(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from(_MSG_TYPES))
    names = [f.name for f in dataclasses.fields(MESSAGE_CLASSES[MsgType(kind)])]
    keys = st.sampled_from(names) | st.text(max_size=5)
    return kind, draw(st.dictionaries(keys, _FIELD_VALUE, max_size=len(names) + 1))


@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
@given(_typed_payload())
def test_when_a_decoded_payload_is_validated_as_its_message_type__failures_are_malformed(item):
    kind, payload = item
    data = codec.encode_payload(payload)
    try:
        parse_payload(kind, codec.decode_payload(data))
    except MalformedMessage as err:
        assert err.reason == "malformed"
