"""The disk cache of the public pre-training: hit, key, corrupt file, permissions."""

from __future__ import annotations

import logging
import stat

import pytest
import torch
from federation.ml import pretrain_cache
from federation.ml.pretrain_cache import cache_dir, cache_key, cached_state

ARGS = ("cnn", 30, 3, 1000)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PDMFED_CACHE_DIR", str(tmp_path / "cache"))


class _Compute:
    """Counts its calls; returns a fresh deterministic state dict."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        g = torch.Generator().manual_seed(7)
        return {"w": torch.randn(4, 3, generator=g), "b": torch.arange(3, dtype=torch.float64)}


def _files():
    return sorted(p for p in cache_dir().iterdir() if not p.name.startswith(".tmp-"))


def test_second_call_is_a_hit_with_equal_tensors():
    compute = _Compute()
    first = cached_state(*ARGS, compute)
    again = cached_state(*ARGS, compute)
    assert compute.calls == 1
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) and first[k].dtype == again[k].dtype for k in first)


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("PDMFED_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "pdmfed" / "pretrained"


@pytest.mark.parametrize("index", range(4))
def test_each_argument_changes_the_key(index):
    changed = list(ARGS)
    changed[index] = "hybrid" if index == 0 else changed[index] + 1
    assert cache_key(*changed) != cache_key(*ARGS)


def test_torch_version_changes_the_key(monkeypatch):
    before = cache_key(*ARGS)
    monkeypatch.setattr(pretrain_cache.torch, "__version__", "0.0.0-other")
    assert cache_key(*ARGS) != before


@pytest.mark.parametrize("source", pretrain_cache._SOURCES)
def test_each_deciding_source_changes_the_key(source, monkeypatch):
    before = cache_key(*ARGS)
    real = pretrain_cache.Path.read_bytes

    def edited(path):
        return real(path) + (b"# edited\n" if path.name == source else b"")

    monkeypatch.setattr(pretrain_cache.Path, "read_bytes", edited)
    assert cache_key(*ARGS) != before


@pytest.mark.parametrize(
    "damage",
    [lambda raw: raw[:-5], lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), lambda raw: b"junk"],
    ids=["truncated", "flipped-bit", "not-a-cache-file"],
)
def test_corrupt_file_is_recomputed_with_a_warning(damage, caplog):
    compute = _Compute()
    cached_state(*ARGS, compute)
    (path,) = _files()
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger=pretrain_cache.__name__):
        state = cached_state(*ARGS, compute)
    assert compute.calls == 2
    assert torch.equal(state["w"], _Compute()()["w"])
    assert "recomputing" in caplog.text
    assert cached_state(*ARGS, compute) and compute.calls == 2  # rewritten intact


def test_valid_checksum_over_a_non_state_payload_is_recomputed(caplog):
    import hashlib

    from federation.wire.codec import encode_payload

    compute = _Compute()
    cached_state(*ARGS, compute)
    (path,) = _files()
    payload = encode_payload({"w": "not a tensor"})
    path.write_bytes(pretrain_cache._FORMAT + hashlib.sha256(payload).digest() + payload)
    with caplog.at_level(logging.WARNING, logger=pretrain_cache.__name__):
        cached_state(*ARGS, compute)
    assert compute.calls == 2 and "does not decode" in caplog.text


def test_file_is_0600_directory_0700_and_no_temp_left():
    cached_state(*ARGS, _Compute())
    (path,) = _files()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700
    assert [p.name for p in cache_dir().iterdir()] == [path.name]


def test_unwritable_cache_still_returns_the_state(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    monkeypatch.setenv("PDMFED_CACHE_DIR", str(blocker))
    compute = _Compute()
    with caplog.at_level(logging.WARNING, logger=pretrain_cache.__name__):
        state = cached_state(*ARGS, compute)
    assert compute.calls == 1 and set(state) == {"w", "b"}
    assert "not written" in caplog.text
