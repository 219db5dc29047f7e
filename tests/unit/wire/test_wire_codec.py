"""Tensor codec: round trips, bounds checks before allocation, digests."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from federation.errors import MalformedMessage, OversizeMessage
from federation.wire import codec

SHAPES = [(), (0,), (3,), (2, 0, 4), (2, 3), (1, 2, 3, 4)]


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 1e3).to(dtype)
    return torch.randint(0, 250, shape, generator=gen).to(dtype)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = torch.int16 if a.dtype in (torch.bfloat16, torch.float16) else None
    return torch.equal(a.view(view), b.view(view)) if view else torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(codec.DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_when_tensor_of_any_allowed_dtype_and_shape_is_encoded__it_decodes_bit_exact(name, shape):
    t = _sample(codec.DTYPES[name], shape)
    out = codec.decode_payload(codec.encode_payload({"t": t}))["t"]
    assert _bit_equal(out, t)


def test_when_nan_and_inf_are_encoded__their_bits_survive():
    t = torch.tensor([float("nan"), float("inf"), -0.0, 1e-45])
    out = codec.decode_payload(codec.encode_payload([t]))[0]
    assert torch.equal(out.view(torch.int32), t.view(torch.int32))


def test_when_a_real_model_state_dict_round_trips__every_tensor_is_bit_exact():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(14, 16, 3),
        torch.nn.BatchNorm1d(16),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 28, 1),
    )
    model(torch.randn(4, 14, 30))  # updates BatchNorm running stats and num_batches_tracked
    lstm = torch.nn.LSTM(14, 8, batch_first=True).to(torch.bfloat16)
    sd = {**model.state_dict(), **{f"lstm.{k}": v for k, v in lstm.state_dict().items()}}
    out = codec.decode_state_dict(codec.encode_state_dict(sd))
    assert list(out) == list(sd)
    assert all(_bit_equal(out[k], v) for k, v in sd.items())
    restored = torch.nn.Sequential(
        torch.nn.Conv1d(14, 16, 3),
        torch.nn.BatchNorm1d(16),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 28, 1),
    )
    restored.load_state_dict({k: v for k, v in out.items() if not k.startswith("lstm.")})
    assert codec.tensor_digest(restored.state_dict()) == codec.tensor_digest(model.state_dict())


def test_when_nested_payload_mixes_types__it_round_trips():
    payload = {
        "s": "x",
        "i": -3,
        "big": 2**63 - 1,
        "f": 1.5,
        "b": b"\x00\xff",
        "n": None,
        "ok": True,
        "list": [1, [2, {"t": torch.arange(3)}]],
        "arr": np.arange(6, dtype=np.float64).reshape(2, 3),
        "np_scalar": np.float32(2.5),
    }
    out = codec.decode_payload(codec.encode_payload(payload))
    assert out["list"][1][1]["t"].tolist() == [0, 1, 2]
    assert isinstance(out["arr"], torch.Tensor) and out["arr"].dtype == torch.float64
    assert out["arr"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out["np_scalar"] == 2.5
    assert {k: out[k] for k in ("s", "i", "big", "f", "b", "n", "ok")} == {
        k: payload[k] for k in ("s", "i", "big", "f", "b", "n", "ok")
    }


def test_when_tensor_is_non_contiguous_or_requires_grad__it_encodes_its_values():
    base = torch.arange(12.0, requires_grad=True).reshape(3, 4)
    out = codec.decode_payload(codec.encode_payload({"t": base.t()}))["t"]
    assert torch.equal(out, base.detach().t())


def test_when_input_is_read_only__decoded_tensors_are_writable_copies():
    data = codec.encode_payload({"t": torch.zeros(4)})
    out = codec.decode_payload(data)["t"]
    out += 1  # must not warn or touch `data`
    assert codec.decode_payload(data)["t"].tolist() == [0.0] * 4


def test_when_input_is_writable__decoded_tensors_view_it_without_copy():
    buf = bytearray(codec.encode_payload({"t": torch.zeros(4)}))
    out = codec.decode_payload(buf)["t"]
    out += 7
    assert codec.decode_payload(bytes(buf))["t"].tolist() == [7.0] * 4


def test_when_dtype_is_not_allowed__encode_raises_malformed():
    with pytest.raises(MalformedMessage, match="allow-list"):
        codec.encode_payload({"t": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(MalformedMessage):
        codec.encode_payload({"s": {1, 2}})
    with pytest.raises(MalformedMessage):
        codec.encode_payload({"o": object()})


def _forge(desc: list, region: bytes) -> bytes:
    """A payload whose single tensor descriptor is ``desc`` over ``region``."""
    s = msgpack.packb({"t": msgpack.ExtType(codec.TENSOR_EXT, msgpack.packb(desc))})
    return (
        b"\x93\xc6"
        + len(s).to_bytes(4, "big")
        + s
        + b"\xc4\x00"
        + b"\xc6"
        + len(region).to_bytes(4, "big")
        + region
    )


def test_when_forged_descriptor_is_decoded__it_round_trips_only_if_consistent():
    assert codec.decode_payload(_forge(["int32", [2], 0, 8], bytes(8)))["t"].tolist() == [0, 0]


@pytest.mark.parametrize(
    "desc",
    [
        ["float32", [2**40, 2**40], 0, 16],  # huge shape, tiny data: rejected before allocating
        ["float32", [4], 0, 8],  # length != shape x itemsize
        ["float32", [4], 8, 16],  # runs past the region
        ["complex64", [1], 0, 8],  # not allowed
        ["float32", [-1], 0, 4],
        ["float32", [1.5], 0, 4],
        ["float32", [1], -4, 4],
        ["float32", [1] * 40, 0, 4],
        ["float32", [1]],
        "not-a-list",
    ],
    ids=str,
)
def test_when_descriptor_is_inconsistent__decode_raises_malformed(desc):
    with pytest.raises(MalformedMessage):
        codec.decode_payload(_forge(desc, bytes(16)))


def test_when_bool_tensor_holds_other_bytes__decode_raises_malformed():
    with pytest.raises(MalformedMessage, match="bool"):
        codec.decode_payload(_forge(["bool", [2], 0, 2], b"\x01\x02"))


def test_when_tensor_exceeds_max_tensor_bytes__decode_raises_oversize():
    data = codec.encode_payload({"t": torch.zeros(100)})
    with pytest.raises(OversizeMessage):
        codec.decode_payload(data, max_tensor_bytes=399)
    assert codec.decode_payload(data, max_tensor_bytes=400)["t"].numel() == 100


def test_when_two_descriptors_overlap__decode_raises_malformed():
    d = msgpack.packb(["float32", [1], 0, 4])
    s = msgpack.packb([msgpack.ExtType(codec.TENSOR_EXT, d), msgpack.ExtType(codec.TENSOR_EXT, d)])
    data = b"\x93\xc6" + len(s).to_bytes(4, "big") + s + b"\xc4\x00\xc6\x00\x00\x00\x04" + bytes(4)
    with pytest.raises(MalformedMessage, match="overlaps"):
        codec.decode_payload(data)


def test_when_state_dict_payload_is_not_a_tensor_map__decode_state_dict_raises_malformed():
    with pytest.raises(MalformedMessage):
        codec.decode_state_dict(codec.encode_payload({"a": 1}))
    with pytest.raises(MalformedMessage):
        codec.decode_state_dict(codec.encode_payload([torch.zeros(1)]))


def test_when_state_dicts_differ_in_any_way__their_digests_differ():
    sd = {"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, 2)}
    digest = codec.tensor_digest(sd)
    assert digest == codec.tensor_digest({"b": torch.ones(2, 2), "a": torch.arange(4.0)})
    assert digest == codec.tensor_digest({**sd, "b": torch.ones(2, 2).t()})  # layout-free
    variants = [
        {**sd, "a": sd["a"].to(torch.float64)},
        {**sd, "b": torch.ones(4)},
        {"c": sd["a"], "b": sd["b"]},
        {**sd, "a": torch.tensor([0.0, 1.0, 2.0, 3.0000002])},
        {"a": sd["a"]},
    ]
    assert len({digest, *(codec.tensor_digest(v) for v in variants)}) == 1 + len(variants)
    assert len(digest) == 64 and int(digest, 16) >= 0
