"""Sealer: round trips, every single-byte flip rejected with its reason, key/sender/freshness."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
import torch
from federation.config import Settings
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.errors import (
    AuthError,
    ConfigError,
    ExpiredError,
    IntegrityError,
    MalformedMessage,
    OversizeMessage,
    PdmFedError,
    ReplayError,
    UnknownKeyError,
)
from federation.wire import messages
from federation.wire.envelope import Envelope, decode_envelope, encode_envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _update() -> messages.UpdateRaw:
    delta = {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)}
    return messages.UpdateRaw("c1", 2, "f1", 1, delta, 64, {"loss": 0.25})


def _spans(body: bytes) -> dict[str, tuple[int, int]]:
    """Byte span of each field of a v2 body, read from the layout the docs describe."""
    header_len, ct_len = struct.unpack_from(">HI", body, 6)
    chunked = body[5] & 0x02
    spans = {"magic": (0, 4), "version": (4, 5), "flags": (5, 6), "lengths": (6, 12)}
    pos = 12
    fixed = [("msg_id", 16), ("nonce", 12), ("timestamp", 8), ("round_num", 8), ("checksum", 32)]
    for name, n in fixed + ([("chunk", 64)] if chunked else []):
        spans[name] = (pos, pos + n)
        pos += n
    for name in ("msg_type", "sender", "key_id", "datasite_id"):
        spans[f"{name}_len"] = (pos, pos + 1)
        spans[name] = (pos + 1, pos + 1 + body[pos])
        pos += 1 + body[pos]
    assert pos == header_len
    spans["ciphertext"] = (header_len, header_len + ct_len - 16)
    spans["tag"] = (header_len + ct_len - 16, header_len + ct_len)
    spans["signature"] = (header_len + ct_len, len(body))
    return spans


def _expected(spans, pos: int, signed: bool):
    """The error type a flip of the lowest bit of byte ``pos`` must raise (None: any typed)."""
    altered = AuthError if signed else IntegrityError  # the header is AAD and signed
    for key, (start, end) in spans.items():
        if not start <= pos < end:
            continue
        if key in ("magic", "version", "flags", "lengths", "msg_type") or key.endswith("_len"):
            return MalformedMessage
        if key == "key_id":
            return UnknownKeyError
        if key == "ciphertext":
            return IntegrityError
        if key in ("signature", "tag"):
            return altered if key == "tag" else AuthError
        if key == "chunk":
            return None
        return altered
    return None


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_when_any_single_byte_of_a_sealed_message_flips__open_rejects_it_with_its_reason(
    make_sealer, signed
):
    opts = {} if signed else {"identity": None, "trust": None, "require_signature": False}
    sealer = make_sealer(**opts)
    (body,) = sealer.seal("update.raw", _update(), datasite_id="f1", round_num=2)
    spans = _spans(body)
    checked = {}
    for pos in range(len(body)):
        for mask in (0x01, 0xFF):
            bad = bytearray(body)
            bad[pos] ^= mask
            expected = _expected(spans, pos, signed) if mask == 1 else None
            with pytest.raises(PdmFedError) as err:
                sealer.open(bytes(bad))
            if expected is not None:
                assert isinstance(err.value, expected), (pos, mask, err.value)
                checked[expected.__name__] = checked.get(expected.__name__, 0) + 1
    assert sealer.open(body).payload["num_samples"] == 64  # the untouched body still opens
    want = {"MalformedMessage", "UnknownKeyError", "IntegrityError"}
    assert want | ({"AuthError"} if signed else set()) <= set(checked)


def test_when_a_chunked_message_flips_a_byte__open_never_accepts_it(make_sealer):
    sealer = make_sealer(max_message_bytes=4096)
    payload = {"w": torch.randn(700)}
    bodies = sealer.seal("round.open", payload)
    assert len(bodies) == 2
    body = bodies[0]
    for pos in range(0, len(body), 3):
        bad = bytearray(body)
        bad[pos] ^= 0x01
        with pytest.raises(PdmFedError):
            sealer.open(bytes(bad))
    assert sealer.open(bodies[1]) is None
    assert torch.equal(sealer.open(bodies[0]).payload["w"], payload["w"])


def test_when_typed_message_is_sealed_and_opened__payload_parses_back(make_sealer):
    sealer = make_sealer()
    msg = _update()
    (body,) = sealer.seal(msg.msg_type, msg, datasite_id="f1", round_num=2)
    opened = sealer.open(body, expected_msg_type="update.raw")
    env = opened.envelope
    assert (env.sender, env.datasite_id, env.round_num, env.key_id) == (
        "connector-0",
        "f1",
        2,
        "k1",
    )
    out = messages.parse_payload(env.msg_type, opened.payload)
    assert torch.equal(out.delta["w"], msg.delta["w"]) and out.metrics == messages.TrainingMetrics(
        loss=0.25
    )
    out.delta["w"].add_(1)  # decoded tensors are writable


def test_when_key_differs_under_the_same_key_id__integrity_error(make_sealer):
    (body,) = make_sealer().seal("round.open", {"x": 1})
    other = make_sealer(keyring=KeyRing("k1", {"k1": os.urandom(32)}))
    with pytest.raises(IntegrityError):
        other.open(body)


def test_when_key_id_is_unknown__unknown_key_error(make_sealer):
    (body,) = make_sealer().seal("round.open", {"x": 1})
    with pytest.raises(UnknownKeyError) as err:
        make_sealer(keyring=KeyRing("k2", {"k2": os.urandom(32)})).open(body)
    assert err.value.reason == "unknown_key"


def test_when_key_rotates__messages_under_the_previous_key_still_open(keyring, make_sealer):
    (old_body,) = make_sealer().seal("round.open", {"x": 1})
    rotated = KeyRing("k2", {"k1": keyring.opening_key("k1"), "k2": os.urandom(32)})
    new = make_sealer(keyring=rotated)
    (new_body,) = new.seal("round.open", {"x": 2})
    assert decode_envelope(new_body).key_id == "k2"
    assert new.open(old_body).payload == {"x": 1} and new.open(new_body).payload == {"x": 2}


def test_when_sender_is_forged__auth_error(make_sealer, keyring, trust):
    mallory = SigningIdentity.generate("mallory")
    forger = make_sealer(sender="mallory", identity=mallory)
    (body,) = forger.seal("update.raw", {"x": 1})
    with pytest.raises(AuthError, match="not in the trust store"):
        make_sealer().open(body)
    # Same bytes, sender field rewritten to a trusted id: the signature no longer verifies.
    forged = encode_envelope(
        Envelope.from_dict({**decode_envelope(body).to_dict(), "sender": "connector-0"})
    )
    with pytest.raises(AuthError, match="invalid signature"):
        make_sealer().open(forged)


def test_when_signature_is_missing_but_required__auth_error(make_sealer):
    (body,) = make_sealer(identity=None, require_signature=False).seal("round.open", {"x": 1})
    with pytest.raises(AuthError, match="unsigned"):
        make_sealer().open(body)
    assert make_sealer(require_signature=False).open(body).payload == {"x": 1}


def test_when_signatures_are_required_without_identity__sealing_is_a_config_error(make_sealer):
    with pytest.raises(ConfigError):
        make_sealer(identity=None).seal("round.open", {"x": 1})
    with pytest.raises(ConfigError):
        make_sealer(sender="someone-else")


def test_when_timestamp_is_too_old_or_too_new__expired_error(make_sealer):
    for skew in (-700.0, 700.0):
        old = make_sealer(clock=lambda s=skew: time.time() + s)
        (body,) = old.seal("round.open", {"x": 1})
        with pytest.raises(ExpiredError):
            make_sealer().open(body)


def test_when_a_key_holder_seals_a_message_dated_in_the_future__open_refuses_past_the_skew(
    tmp_path,
):
    conf = Settings(demo=True, keys_dir=tmp_path, clock_skew_s=30.0, message_ttl_s=600.0)
    sender = Sealer.from_settings(conf, "connector-0")
    receiver = Sealer.from_settings(conf, "security-0")  # trusts connector-0's key on disk
    for ahead, accepted in ((20.0, True), (45.0, False), (600.0, False)):
        sender._clock = lambda a=ahead: time.time() + a
        (body,) = sender.seal("round.open", {"x": 1})
        if accepted:
            assert receiver.open(body).payload == {"x": 1}
        else:
            with pytest.raises(ExpiredError, match="future"):
                receiver.open(body)


def test_when_signatures_are_switched_off_outside_the_demo__no_service_sealer_is_built(tmp_path):
    secrets = {"encryption_key": "a-production-passphrase", "key_salt": "saltsalt1"}
    off = Settings(require_signatures=False, keys_dir=tmp_path, **secrets)
    with pytest.raises(ConfigError, match="PDMFED_REQUIRE_SIGNATURES=false"):
        off.validate_secrets()
    with pytest.raises(ConfigError, match="PDMFED_REQUIRE_SIGNATURES=false"):
        Sealer.from_settings(off, "security-0")
    # Why: with signatures off, anyone holding the shared key speaks as any service.
    demo = Settings(require_signatures=False, demo=True, keys_dir=tmp_path)
    receiver = Sealer.from_settings(demo, "security-0")
    forger = Sealer(KeyRing.from_settings(demo), sender="trainer-dispatch", require_signature=False)
    (body,) = forger.seal("round.open", {"x": 1})
    assert receiver.open(body).envelope.sender == "trainer-dispatch"


def test_when_msg_id_is_replayed__replay_error(make_sealer):
    sealer = make_sealer()
    (body,) = sealer.seal("round.open", {"x": 1})
    sealer.open(body)
    with pytest.raises(ReplayError):
        sealer.open(body)


def test_when_routing_key_differs_from_msg_type__malformed(make_sealer):
    (body,) = make_sealer().seal("round.open", {"x": 1})
    with pytest.raises(MalformedMessage, match="routing key"):
        make_sealer().open(body, expected_msg_type="update.raw")


def test_when_payload_exceeds_max_message_bytes__it_is_chunked_and_reassembled_in_any_order(
    make_sealer,
):
    sealer = make_sealer(max_message_bytes=64 * 1024)
    delta = {"w": torch.randn(100_000), "b": torch.arange(10)}
    bodies = sealer.seal("update.raw", {"delta": delta}, datasite_id="f1", round_num=3)
    assert len(bodies) == 7 and all(len(b) <= 64 * 1024 for b in bodies)
    order = list(range(len(bodies)))
    random.Random(1).shuffle(order)
    results = [sealer.open(bodies[i]) for i in order]
    assert all(r is None for r in results[:-1])
    out = results[-1].payload["delta"]
    assert torch.equal(out["w"], delta["w"]) and torch.equal(out["b"], delta["b"])
    with pytest.raises(ReplayError):
        sealer.open(bodies[order[0]])
    with pytest.raises(OversizeMessage):
        make_sealer(max_message_bytes=32 * 1024).open(bodies[0])


def test_when_seed_package_dict_round_trips__open_envelope_verifies_it(make_sealer):
    sealer = make_sealer()
    env = sealer.seal_envelope(
        "update.raw", {"delta": {"w": torch.ones(2)}}, datasite_id="f1", round_num=7
    )
    package = env.to_dict()
    assert package["security_version"] == "2.0" and package["round_num"] == 7
    opened = sealer.open_envelope(Envelope.from_dict(package))
    assert torch.equal(opened.payload["delta"]["w"], torch.ones(2))


def test_when_services_share_settings_and_keys_dir__they_open_each_others_messages(tmp_path):
    conf = Settings(demo=True, keys_dir=tmp_path)
    connector = Sealer.from_settings(conf, "connector-0")
    security = Sealer.from_settings(conf, "security-0")  # trusts connector-0's .pub on disk
    (body,) = connector.seal("update.raw", {"x": 1})
    assert security.open(body).payload == {"x": 1}
    assert security.require_signature and security.max_message_bytes == conf.max_message_bytes
    assert security.replay.window_s == conf.freshness_window_s


_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@_FUZZ
@given(st.binary(max_size=600))
def test_when_open_gets_arbitrary_bytes__only_typed_errors(data):
    sealer = Sealer(KeyRing("k1", {"k1": bytes(32)}), sender="x", require_signature=False)
    with pytest.raises(PdmFedError):
        sealer.open(data)


_KEYRING = KeyRing("k1", {"k1": os.urandom(32)})
_ID = SigningIdentity.generate("connector-0")
_TRUST = TrustStore({"connector-0": _ID.public_bytes()})
_BODY = Sealer(_KEYRING, sender="connector-0", identity=_ID).seal(
    "update.raw", {"delta": {"w": torch.arange(8.0)}, "n": 1}
)[0]


@_FUZZ
@given(
    st.dictionaries(st.integers(0, len(_BODY) - 1), st.integers(1, 255), min_size=1, max_size=4),
    st.binary(max_size=4),
)
def test_when_a_valid_body_is_mutated__open_raises_only_typed_errors(edits, extra):
    bad = bytearray(_BODY)
    for pos, x in edits.items():  # distinct positions, non-zero XOR: the body really changes
        bad[pos] ^= x
    sealer = Sealer(_KEYRING, sender="security-0", trust=_TRUST)
    with pytest.raises(PdmFedError):
        sealer.open(bytes(bad) + extra)
