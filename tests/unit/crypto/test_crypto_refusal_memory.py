"""Refusing a hostile body allocates nothing of its size before authentication (tracemalloc).

Memory, unlike time, is deterministic: these are the attacker-side tests of cheap refusal
(the time figures are in ``python -m bench --only hostile``). Before envelope v2 the decoder
built every msgpack object of a body before any check: +104 MiB for a 2 MiB body.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
import torch
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.errors import AuthError, IntegrityError, MalformedMessage, PdmFedError
from federation.wire.envelope import Envelope, decode_envelope, encode_envelope

MiB = 1024 * 1024
#: Bookkeeping of one refusal (exception, traceback, header fields): far below any body size.
SMALL = 64 * 1024


def _peak(fn: Callable[[], object]) -> tuple[int, object]:
    """(bytes allocated at the peak of one call, its result or the exception it raised)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            out: object = fn()
        except PdmFedError as err:
            out = err
        return max(0, tracemalloc.get_traced_memory()[1] - base), out
    finally:
        tracemalloc.stop()


def _bomb(size: int) -> bytes:
    """A msgpack map whose first value is an array of empty maps (one dict per byte)."""
    head = b"\x81" + msgpack.packb("security_version") + b"\xdd"
    n = size - len(head) - 4
    return head + n.to_bytes(4, "big") + b"\x80" * n


@pytest.fixture(scope="module")
def parties():
    keyring = KeyRing("k1", {"k1": os.urandom(32)})
    identity = SigningIdentity.generate("connector-0")
    trust = TrustStore({"connector-0": identity.public_bytes()})
    sender = Sealer(keyring, sender="connector-0", identity=identity, max_message_bytes=9 * MiB)
    return keyring, trust, sender


def _receiver(keyring: KeyRing, trust: TrustStore) -> Sealer:
    return Sealer(keyring, sender="security-0", trust=trust, max_message_bytes=9 * MiB)


@pytest.mark.parametrize("size", [2 * MiB, 8 * MiB])
def test_when_a_msgpack_bomb_arrives__it_is_refused_without_building_its_objects(size):
    bomb = _bomb(size)
    peak, out = _peak(lambda: decode_envelope(bomb))
    assert isinstance(out, MalformedMessage)
    assert peak < SMALL, f"refusing a {size >> 20} MiB bomb allocated {peak} bytes"


@pytest.mark.parametrize("size", [2 * MiB, 8 * MiB])
def test_when_a_forged_body_names_a_trusted_sender__it_is_refused_before_any_copy(size, parties):
    keyring, trust, _ = parties
    forged = encode_envelope(
        Envelope(
            msg_type="update.raw",
            msg_id=os.urandom(16),
            sender="connector-0",
            key_id="k1",
            timestamp=time.time(),
            nonce=os.urandom(12),
            encrypted_data=os.urandom(size),
            checksum="0" * 64,
            signature=os.urandom(64),
        )  # fmt: skip
    )
    receiver = _receiver(keyring, trust)
    peak, out = _peak(lambda: receiver.open(forged))
    assert isinstance(out, AuthError)
    assert peak < SMALL, f"refusing a forged {size >> 20} MiB body allocated {peak} bytes"


def test_when_a_signed_body_has_altered_ciphertext__refusing_it_costs_no_more_than_opening(
    parties,
):
    """The one refusal that must decrypt (signature and header genuine): at most 2x an open."""
    keyring, trust, sender = parties
    (body,) = sender.seal("update.raw", {"delta": {"w": torch.zeros(2 * MiB)}, "n": 1})
    tampered = bytearray(body)
    tampered[len(body) // 2] ^= 1
    genuine_peak, opened = _peak(lambda: _receiver(keyring, trust).open(body))
    assert not isinstance(opened, PdmFedError)
    refusal_peak, out = _peak(lambda: _receiver(keyring, trust).open(bytes(tampered)))
    assert isinstance(out, IntegrityError)
    assert refusal_peak <= 2 * genuine_peak
