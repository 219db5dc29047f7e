"""Fuzzing the receive path (envelope v2 decode, then Sealer.open) with field-aware mutations.

Bodies are genuine sealed messages (signed single, signed chunks, unsigned) whose header
fields, lengths, strings, ciphertext, tag and signature are overwritten with boundary and
random values, cut or extended. For every case: decoding is typed (MalformedMessage or
OversizeMessage) or canonical (the body re-encodes to the same bytes), and opening is typed
(a federation.errors type) or happens only when not one byte changed.

``PDMFED_FUZZ_CASES`` sets the number of cases (10,000 by default: about 15 s on two cores);
a long run: ``PDMFED_FUZZ_CASES=200000 .venv/bin/pytest tests/unit/crypto/test_crypto_open_fuzz.py``.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
import torch
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.crypto.replay import InMemorySeenStore, ReplayGuard
from federation.errors import MalformedMessage, OversizeMessage, PdmFedError
from federation.wire.chunking import ChunkAssembler
from federation.wire.envelope import decode_envelope, encode_envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CASES = int(os.environ.get("PDMFED_FUZZ_CASES", "10000"))
LIMIT = 4096  # max_message_bytes: the chunked genuine message is three bodies

_KEYRING = KeyRing("k1", {"k1": os.urandom(32)})
_ID = SigningIdentity.generate("connector-0")
_TRUST = TrustStore({"connector-0": _ID.public_bytes()})
_SIGNED = Sealer(_KEYRING, sender="connector-0", identity=_ID, max_message_bytes=LIMIT)
_UNSIGNED = Sealer(_KEYRING, sender="connector-0", require_signature=False)
_UPDATE = {"campaign_id": "c1", "round_num": 3, "datasite_id": "site-a", "model_version": 2,
           "delta": {"w": torch.arange(12.0).reshape(3, 4)}, "num_samples": 5}  # fmt: skip
_BODIES = {
    "signed": _SIGNED.seal("update.raw", _UPDATE, datasite_id="site-a", round_num=3),
    "chunked": _SIGNED.seal("update.raw", {**_UPDATE, "delta": {"w": torch.arange(1500.0)}}),
    "unsigned": _UNSIGNED.seal("update.raw", _UPDATE),
}
assert len(_BODIES["chunked"]) == 3 and len(_BODIES["signed"]) == 1

_U8 = [0, 1, 2, 3, 0x7F, 0x80, 0xFE, 0xFF]
_U16 = [0, 1, 12, 87, 88, 150, 152, 761, 762, 763, 0x7FFF, 0xFFFF]
_U32 = [0, 1, 15, 16, 17, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
_U64 = [0, 1, 2**31, 2**32, 2**48, 2**48 + 1, 2**63 - 1, 2**63, 2**64 - 1]
_DOUBLES = [0.0, -0.0, 1.0, -1.0, 1e300, -1e300, float("inf"), float("-inf"), float("nan"),
            5e-324]  # fmt: skip
#: (offset, struct format, interesting values) of the fixed fields (the chunk's at 88).
_FIELDS = [
    (0, ">4s", [b"PDMF", b"PDMG", b"\x00" * 4, b"\x81\xa4sec"]),
    (4, ">B", _U8),  # version
    (5, ">B", _U8),  # flags
    (6, ">H", _U16),  # header_len
    (8, ">I", _U32),  # ct_len
    (12, ">16s", [bytes(16), b"\xff" * 16]),  # msg_id
    (28, ">12s", [bytes(12)]),  # nonce
    (40, ">d", _DOUBLES),  # timestamp
    (48, ">Q", _U64),  # round_num
    (56, ">32s", [bytes(32)]),  # checksum
    (88, ">16s", [bytes(16)]),  # chunk update_id
    (104, ">I", _U32),  # chunk index
    (108, ">I", _U32 + [65536, 65537]),  # chunk total
    (112, ">Q", _U64),  # chunk size
    (120, ">32s", [bytes(32)]),  # chunk sha256_all
]


def _header_len(body: bytes) -> int:
    return struct.unpack_from(">H", body, 6)[0] if len(body) >= 8 else 0


def _edit(rng: random.Random, body: bytes) -> bytes:
    """One field-aware mutation of ``body``."""
    out = bytearray(body)
    kind = rng.choice(["field", "field", "string", "byte", "tail", "cut", "extend"])
    if len(out) < 12:  # already cut short: only growing it again means anything
        kind = "extend"
    if kind == "field":
        offset, fmt, values = rng.choice(_FIELDS)
        size = struct.calcsize(fmt)
        if offset + size > len(out):
            return bytes(out)
        if rng.random() < 0.6:
            value = rng.choice(values)
        elif fmt == ">d":
            value = struct.unpack(">d", rng.randbytes(8))[0]
        elif fmt.endswith("s"):
            value = rng.randbytes(size)
        else:
            value = rng.getrandbits(8 * size)
        struct.pack_into(fmt, out, offset, value)
    elif kind == "string":  # the four length-prefixed strings at the end of the header
        end = min(_header_len(body), len(out))
        start = 88 + (64 if out[5] & 0x02 else 0)
        if end > start:
            pos = rng.randrange(start, end)
            out[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xC0, 0xED, 0xFF, rng.randrange(256)])
    elif kind == "byte":  # anywhere, a few times
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == "tail":  # tag and signature: the last 80 bytes
        out[len(out) - 1 - rng.randrange(min(80, len(out)))] ^= rng.randint(1, 255)
    elif kind == "cut":
        del out[rng.randrange(len(out)) :]
    else:
        out += rng.randbytes(rng.randint(1, 80))
    return bytes(out)


def _receiver() -> Sealer:
    return Sealer(_KEYRING, sender="security-0", trust=_TRUST, require_signature=False,
                  max_message_bytes=LIMIT, replay=ReplayGuard(InMemorySeenStore()),
                  assembler=ChunkAssembler(max_chunk_bytes=LIMIT))  # fmt: skip


@pytest.mark.timeout(600)
@settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=True))
def test_when_genuine_bodies_are_mutated_field_by_field__decode_and_open_stay_typed(rng):
    name = rng.choice(sorted(_BODIES))
    body = rng.choice(_BODIES[name])
    bad = body
    for _ in range(rng.randint(1, 3)):
        bad = _edit(rng, bad)
    try:
        env = decode_envelope(bad, max_bytes=LIMIT)
    except (MalformedMessage, OversizeMessage):
        pass
    else:  # canonical: what decodes is exactly what an encoder writes
        assert encode_envelope(env) == bad
        assert env.aad() == bad[: _header_len(bad)]
    receiver = _receiver()
    try:
        opened = receiver.open(bad, expected_msg_type="update.raw")
    except PdmFedError:
        return
    finally:
        receiver.assembler.close()
    assert bad == body, f"a {name} body opened after a byte of it changed"
    if opened is not None:
        assert opened.payload["num_samples"] == 5
