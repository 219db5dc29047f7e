"""Wire format: tensor codec, envelope v2, typed message payloads and chunking."""

from federation.wire.chunking import ChunkAssembler, chunk_bounds, chunk_count, chunks_digest, split
from federation.wire.codec import (
    decode_payload,
    decode_state_dict,
    encode_payload,
    encode_state_dict,
    tensor_digest,
)
from federation.wire.envelope import Envelope, decode_envelope, encode_envelope
from federation.wire.messages import MESSAGE_CLASSES, Message, MsgType, parse_payload

__all__ = [
    "ChunkAssembler",
    "Envelope",
    "MESSAGE_CLASSES",
    "Message",
    "MsgType",
    "chunk_bounds",
    "chunk_count",
    "chunks_digest",
    "decode_envelope",
    "decode_payload",
    "decode_state_dict",
    "encode_envelope",
    "encode_payload",
    "encode_state_dict",
    "parse_payload",
    "split",
    "tensor_digest",
]
