"""Tensor-aware msgpack payload codec: zero-copy encode, bounded and copy-free decode.

Payload layout (valid msgpack, a 3-element array)::

    0x93 | bin32(S) | bin8(padding) | bin32(R)

``S`` is msgpack of the payload structure, where each tensor is replaced by the ext type
``TENSOR_EXT`` whose data is ``msgpack([dtype, shape, offset, nbytes])``; ``R`` is the tensor
region: the raw little-endian bytes of every tensor, each starting at a 64-byte aligned
``offset`` inside ``R`` (and ``R`` itself starts 64-byte aligned inside the payload). Keeping
tensor bytes out of the msgpack structure lets the encoder hand the tensors' own memory to the
hasher/cipher without copying, and lets the decoder build tensors as views into one buffer.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import torch

from federation.errors import MalformedMessage, OversizeMessage

__all__ = [
    "TENSOR_EXT",
    "DTYPES",
    "PayloadParts",
    "encode_payload",
    "encode_payload_parts",
    "decode_payload",
    "encode_state_dict",
    "decode_state_dict",
    "tensor_digest",
    "rough_nbytes",
]

#: msgpack ext type code of a tensor descriptor.
TENSOR_EXT = 0x54

#: Allowed dtypes: wire name -> (torch dtype, itemsize).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAME_OF = {dt: name for name, dt in DTYPES.items()}
_ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}
_NUMPY_TO_TORCH = {
    np.dtype("float32"): torch.float32,
    np.dtype("float16"): torch.float16,
    np.dtype("float64"): torch.float64,
    np.dtype("int64"): torch.int64,
    np.dtype("int32"): torch.int32,
    np.dtype("uint8"): torch.uint8,
    np.dtype("bool"): torch.bool,
}
_ALIGN = 64
_MAX_NDIM = 32
_MAX_REGION = 2**32 - 1
_MAX_INT64 = 2**63 - 1
_PAD = bytes(_ALIGN)
if sys.byteorder != "little":  # tensors travel as raw little-endian bytes, viewed in place
    raise ImportError("federation.wire.codec supports little-endian hosts only")
# Errors the msgpack C decoder (and our hooks' argument handling) raise on hostile input.
_DECODE_ERRORS = (
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
    RecursionError,
    msgpack.UnpackException,
)


@dataclass
class PayloadParts:
    """An encoded payload as a list of buffers whose concatenation is the payload bytes."""

    parts: list[Any] = field(default_factory=list)
    nbytes: int = 0

    def tobytes(self) -> bytes:
        """Concatenate the parts (one copy)."""
        return b"".join(self.parts)


def _raw(obj: torch.Tensor | np.ndarray) -> tuple[str, list[int], memoryview]:
    """Return (dtype name, shape, raw little-endian bytes) of a tensor/array, copying only if needed."""
    if isinstance(obj, np.ndarray):
        torch_dtype = _NUMPY_TO_TORCH.get(obj.dtype.newbyteorder("="))
        if torch_dtype is None:
            raise MalformedMessage(f"array dtype {obj.dtype} is not in the allow-list")
        shape = list(obj.shape)
        arr = np.ascontiguousarray(obj).reshape(-1)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return _NAME_OF[torch_dtype], shape, memoryview(arr).cast("B")
    if obj.layout != torch.strided:
        raise MalformedMessage(f"tensor layout {obj.layout} is not supported (dense tensors only)")
    name = _NAME_OF.get(obj.dtype)
    if name is None:
        raise MalformedMessage(
            f"tensor dtype {obj.dtype} is not in the allow-list {sorted(DTYPES)}"
        )
    shape = list(obj.shape)
    t = obj.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    t = t.contiguous().reshape(-1)
    if name == "bfloat16":
        t = t.view(torch.int16)
    return name, shape, memoryview(t.numpy()).cast("B")


class _Encoder:
    """Collects tensor regions while msgpack packs the structure."""

    def __init__(self) -> None:
        self.region: list[Any] = []
        self.region_len = 0

    def default(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor | np.ndarray):
            name, shape, data = _raw(obj)
            offset = self.region_len
            nbytes = data.nbytes
            if nbytes:
                self.region.append(data)
                pad = -nbytes % _ALIGN
                if pad:
                    self.region.append(_PAD[:pad])
                self.region_len += nbytes + pad
            desc = msgpack.packb([name, shape, offset, nbytes])
            return msgpack.ExtType(TENSOR_EXT, desc)
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (set, frozenset)):
            raise MalformedMessage("sets cannot be encoded (use a list)")
        raise MalformedMessage(f"type {type(obj).__name__} cannot be encoded in a payload")


def encode_payload_parts(obj: Any) -> PayloadParts:
    """Encode a payload as buffers that reference the tensors' memory (no tensor copy)."""
    enc = _Encoder()
    try:
        structure = msgpack.packb(obj, default=enc.default, use_bin_type=True, datetime=False)
    except MalformedMessage:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessage(f"payload cannot be encoded: {exc}") from exc
    if len(structure) > _MAX_REGION or enc.region_len > _MAX_REGION:
        raise OversizeMessage("payload exceeds 4 GiB, the codec's per-message limit")
    head = bytearray(b"\x93\xc6")
    head += len(structure).to_bytes(4, "big")
    head += structure
    # bin8 padding so that R's data starts 64-byte aligned within the payload.
    pad = -(len(head) + 2 + 5) % _ALIGN
    head += b"\xc4" + bytes([pad]) + _PAD[:pad]
    head += b"\xc6" + enc.region_len.to_bytes(4, "big")
    parts = [bytes(head), *enc.region]
    return PayloadParts(parts=parts, nbytes=len(head) + enc.region_len)


def encode_payload(obj: Any) -> bytes:
    """Encode a nested payload (dict/list/str/int/float/bool/None/bytes/Tensor/ndarray)."""
    return encode_payload_parts(obj).tobytes()


def _read_bin32(mv: memoryview, pos: int, what: str) -> tuple[int, int]:
    if pos + 5 > len(mv) or mv[pos] != 0xC6:
        raise MalformedMessage(f"payload {what}: expected a bin32 header at byte {pos}")
    n = int.from_bytes(mv[pos + 1 : pos + 5], "big")
    start = pos + 5
    if start + n > len(mv):
        raise MalformedMessage(f"payload {what}: length {n} runs past the end of the payload")
    return start, n


class _Decoder:
    """Turns tensor descriptors into tensors that view the region buffer."""

    def __init__(self, region: Any, region_offset: int, region_len: int, max_tensor: int | None):
        self.region = region
        self.region_offset = region_offset
        self.region_len = region_len
        self.max_tensor = max_tensor
        self.next_free = 0

    def ext_hook(self, code: int, data: bytes) -> torch.Tensor:
        if code != TENSOR_EXT:
            raise MalformedMessage(f"unknown msgpack ext type {code}")
        desc = msgpack.unpackb(data, use_list=True, raw=False, strict_map_key=True)
        if not (isinstance(desc, list) and len(desc) == 4):
            raise MalformedMessage("tensor descriptor must be [dtype, shape, offset, nbytes]")
        name, shape, offset, nbytes = desc
        if not isinstance(name, str) or name not in DTYPES:
            raise MalformedMessage(f"tensor dtype {name!r} is not in the allow-list")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
            raise MalformedMessage("tensor shape must be a list of at most 32 dimensions")
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise MalformedMessage(f"tensor shape {shape!r} has an invalid dimension")
        for value in (offset, nbytes):
            if type(value) is not int or value < 0:
                raise MalformedMessage("tensor offset/nbytes must be non-negative integers")
        # Python ints: no overflow; checked before any allocation. torch computes each stride as
        # the product of the later dimensions (a zero counted as one) even for an empty tensor,
        # so [0, 2**62, 2**62] would overflow int64 there: bound that product as well.
        if math.prod(max(dim, 1) for dim in shape) * _ITEMSIZE[name] > _MAX_INT64:
            raise MalformedMessage(f"tensor shape {shape!r} overflows 64-bit strides")
        expected = math.prod(shape) * _ITEMSIZE[name]
        if nbytes != expected:
            raise MalformedMessage(
                f"tensor data is {nbytes} bytes but shape {shape} x {name} needs {expected}"
            )
        if self.max_tensor is not None and nbytes > self.max_tensor:
            raise OversizeMessage(f"tensor of {nbytes} bytes exceeds the {self.max_tensor} limit")
        if offset < self.next_free or offset + nbytes > self.region_len:
            raise MalformedMessage("tensor data lies outside its region or overlaps another tensor")
        self.next_free = offset + nbytes
        try:
            return self._tensor(name, shape, offset, nbytes)
        except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
            # Every check above should make this unreachable; if torch or numpy still refuses
            # the descriptor, it is the sender's malformed message, not a transient fault.
            raise MalformedMessage(f"tensor {name} {shape!r} cannot be built: {exc}") from exc

    def _tensor(self, name: str, shape: list[int], offset: int, nbytes: int) -> torch.Tensor:
        dtype = DTYPES[name]
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        start = self.region_offset + offset
        if name == "bool":
            raw = np.frombuffer(self.region, dtype=np.uint8, count=nbytes, offset=start)
            if raw.max() > 1:
                raise MalformedMessage("bool tensor holds bytes other than 0 and 1")
        t = torch.frombuffer(
            self.region, dtype=dtype, count=nbytes // _ITEMSIZE[name], offset=start
        )
        return t.view(shape)


def decode_payload(data: Any, *, max_tensor_bytes: int | None = None) -> Any:
    """Decode a payload; tensors are writable and share memory with a writable ``data``.

    A read-only input (``bytes``) has its tensor region copied once into a fresh buffer.
    Raises MalformedMessage or OversizeMessage only.
    """
    try:
        mv = memoryview(data).cast("B")
    except TypeError as exc:
        raise MalformedMessage(f"payload must be bytes-like, not {type(data).__name__}") from exc
    if len(mv) < 1 or mv[0] != 0x93:
        raise MalformedMessage("payload does not start with the codec's 3-element frame")
    s_start, s_len = _read_bin32(mv, 1, "structure")
    pos = s_start + s_len
    if pos + 2 > len(mv) or mv[pos] != 0xC4:
        raise MalformedMessage("payload padding field is missing")
    pos += 2 + mv[pos + 1]
    r_start, r_len = _read_bin32(mv, pos, "tensor region")
    if r_start + r_len != len(mv):
        raise MalformedMessage("payload has trailing bytes after the tensor region")
    if mv.readonly and r_len:
        region = np.empty(r_len, dtype=np.uint8)
        region[:] = np.frombuffer(mv, dtype=np.uint8, count=r_len, offset=r_start)
        decoder = _Decoder(region, 0, r_len, max_tensor_bytes)
    else:
        decoder = _Decoder(mv, r_start, r_len, max_tensor_bytes)
    structure = mv[s_start : s_start + s_len]
    try:
        return msgpack.unpackb(
            structure,
            ext_hook=decoder.ext_hook,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=s_len,
            max_bin_len=s_len,
            max_array_len=s_len,
            max_map_len=s_len,
            max_ext_len=s_len,
        )
    except (MalformedMessage, OversizeMessage):
        raise
    except _DECODE_ERRORS as exc:
        raise MalformedMessage(f"payload structure is not valid msgpack: {exc}") from exc


def encode_state_dict(sd: Mapping[str, Any]) -> bytes:
    """Encode a state dict (name -> tensor)."""
    _check_state_dict(sd)
    return encode_payload(dict(sd))


def decode_state_dict(data: Any, *, max_tensor_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Decode a state dict; anything but a map of str -> tensor is MalformedMessage."""
    sd = decode_payload(data, max_tensor_bytes=max_tensor_bytes)
    if not isinstance(sd, dict):
        raise MalformedMessage("state dict payload is not a map")
    _check_state_dict(sd)
    return sd


def _check_state_dict(sd: Any) -> None:
    if not isinstance(sd, Mapping):
        raise MalformedMessage("state dict must be a mapping of name -> tensor")
    for name, value in sd.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor | np.ndarray):
            raise MalformedMessage(f"state dict entry {name!r} is not a str -> tensor pair")


def tensor_digest(sd: Mapping[str, Any]) -> str:
    """SHA-256 hex of a state dict: sorted names, dtype, shape and raw bytes of each tensor."""
    _check_state_dict(sd)
    h = hashlib.sha256(b"pdmfed-tensor-digest-v1\x00")
    for name in sorted(sd):
        dtype, shape, data = _raw(sd[name])
        header = msgpack.packb([name, dtype, shape, data.nbytes])
        h.update(len(header).to_bytes(4, "big"))
        h.update(header)
        h.update(data)
    return h.hexdigest()


def rough_nbytes(obj: Any, limit: int, _depth: int = 0) -> int:
    """Bytes of the tensors/arrays/bytes in a payload, counted until ``limit`` is passed.

    A cheap walk (no encoding): where to seal a message, whether decoded fields fit a cache;
    anything too deep or too long to walk counts as over the limit.
    """
    if isinstance(obj, bytes | bytearray | memoryview | str):
        return len(obj)
    nbytes = getattr(obj, "nbytes", None)  # numpy arrays; torch tensors below
    if nbytes is not None and not callable(nbytes):
        return int(nbytes)
    numel = getattr(obj, "numel", None)
    if callable(numel) and hasattr(obj, "element_size"):
        return int(numel()) * int(obj.element_size())
    if isinstance(obj, Mapping | list | tuple):
        values = obj.values() if isinstance(obj, Mapping) else obj
        if _depth >= 8 or len(values) > 4096:
            return limit + 1
        total = 0
        for value in values:
            total += rough_nbytes(value, limit, _depth + 1)
            if total > limit:
                break
        return total
    return 0
