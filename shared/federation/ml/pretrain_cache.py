"""Disk cache of the publicly pre-trained state dict: computed once per machine, not per process."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from federation.errors import PdmFedError

__all__ = ["cache_dir", "cache_key", "cached_state"]

log = logging.getLogger(__name__)

#: The modules whose source determines the pre-trained weights (besides the arguments).
_SOURCES = ("pretrain.py", "data.py", "models.py", "train.py")
_FORMAT = b"pdmfed-pretrained-v1\x00"
_DIGEST = 32  # SHA-256 of the payload, stored ahead of it


def cache_dir() -> Path:
    """``$PDMFED_CACHE_DIR/pretrained`` if set, else ``~/.cache/pdmfed/pretrained``."""
    root = os.environ.get("PDMFED_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "pdmfed"
    return base / "pretrained"


def _source_digest(model_type: str) -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\x00" + (here / name).read_bytes() + b"\x00")
    from federation.ml.own_model import is_entry_point, source_digest

    if is_entry_point(model_type):  # an own model: its installed source decides its weights too
        h.update(b"own-model\x00" + source_digest(model_type).encode())
    return h.hexdigest()


def cache_key(model_type: str, window: int, epochs: int, seed: int) -> str:
    """The hex key of a pre-training: its arguments, torch's version and the deciding sources."""
    parts = {
        "model_type": str(model_type),
        "window": int(window),
        "epochs": int(epochs),
        "seed": int(seed),
        "torch": torch.__version__,
        "sources": _source_digest(str(model_type)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None (with a warning) if the file is absent or not intact."""
    from federation.wire.codec import decode_state_dict

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("pre-training cache %s unreadable (%s): recomputing", path, exc.strerror)
        return None
    head, digest = raw[: len(_FORMAT)], raw[len(_FORMAT) : len(_FORMAT) + _DIGEST]
    payload = raw[len(_FORMAT) + _DIGEST :]
    if head != _FORMAT or hashlib.sha256(payload).digest() != digest:
        log.warning("pre-training cache %s is corrupt (checksum differs): recomputing", path)
        return None
    try:
        return decode_state_dict(payload)
    except PdmFedError as exc:
        log.warning("pre-training cache %s does not decode (%s): recomputing", path, exc)
        return None


def _write(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Atomically (temp file + rename) in a 0700 directory, the file 0600; failures only warn."""
    from federation.wire.codec import encode_state_dict

    payload = encode_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()})
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_FORMAT + hashlib.sha256(payload).digest() + payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("pre-training cache %s not written (%s)", path, exc.strerror or exc)


def cached_state(
    model_type: str,
    window: int,
    epochs: int,
    seed: int,
    compute: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The pre-trained state from the disk cache, else ``compute()``'s, then stored for next time."""
    path = cache_dir() / f"{cache_key(model_type, window, epochs, seed)}.bin"
    state = _read(path)
    if state is None:
        state = compute()
        _write(path, state)
    return state
