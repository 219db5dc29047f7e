"""Fresh ``bytes`` objects filled in place, so a sealed body is written once and never copied.

CPython's own C code builds a ``bytes`` by allocating it uninitialised
(``PyBytes_FromStringAndSize(NULL, n)``) and filling its storage before anyone else sees it.
``new_bytes`` does the same through ctypes and hands back a writable view of the storage: the
caller fills it completely, drops the view and only then publishes the object. On other
interpreters (or if ctypes is unavailable) it falls back to a buffer that ``finish`` copies into
a ``bytes`` (one extra copy, same result). Large bodies get ``MADV_HUGEPAGE`` on Linux, as numpy
does for its own large arrays.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["new_bytes", "finish", "advise_hugepages", "IN_PLACE", "HUGEPAGE_BYTES"]


#: Fresh buffers at least this large ask for transparent huge pages (numpy's own threshold):
#: one fault per 2 MiB instead of one per 4 KiB page as the body is first written.
HUGEPAGE_BYTES = 4 * 1024 * 1024
_MADV_HUGEPAGE = 14
_HUGE = 2 * 1024 * 1024


def _madvise_factory() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        madvise.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - no libc madvise
        return None
    return madvise


_MADVISE = _madvise_factory()


def advise_hugepages(addr: int, n: int) -> bool:
    """Advise THP for the 2 MiB-aligned interior of [addr, addr + n); advice only, never fails."""
    if _MADVISE is None:
        return False
    start = (addr + _HUGE - 1) & ~(_HUGE - 1)
    end = (addr + n) & ~(_HUGE - 1)
    if end <= start:
        return False
    return _MADVISE(start, end - start, _MADV_HUGEPAGE) == 0


def _in_place_factory() -> Any:
    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes

        alloc = ctypes.pythonapi.PyBytes_FromStringAndSize
        alloc.restype = ctypes.py_object
        alloc.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    except (ImportError, AttributeError):  # pragma: no cover - exotic builds
        return None

    def new(n: int) -> tuple[bytes, memoryview]:
        obj = alloc(None, n)
        # c_char_p(bytes) points at the object's own storage (ob_sval); no copy is made.
        addr = ctypes.cast(ctypes.c_char_p(obj), ctypes.c_void_p).value
        if n >= HUGEPAGE_BYTES:
            advise_hugepages(addr, n)
        view = memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
        return obj, view

    # Self-check once: the view must alias the object's storage.
    try:
        probe, view = new(8)
        view[:] = b"pdmfed!\x00"
        if probe != b"pdmfed!\x00":
            return None
    except Exception:  # pragma: no cover - fall back rather than fail at import
        return None
    return new


_NEW = _in_place_factory()
#: True when bodies are written straight into their final ``bytes`` object.
IN_PLACE = _NEW is not None


def new_bytes(n: int, *, in_place: bool | None = None) -> tuple[Any, memoryview]:
    """(handle, writable view of n bytes). Fill every byte, then call ``finish(handle)``.

    Nothing may read the handle (hash it, compare it, publish it) before ``finish``.
    """
    if n < 1:
        raise ValueError("n must be positive")
    if (IN_PLACE if in_place is None else in_place) and _NEW is not None:
        return _NEW(n)
    buf = np.empty(n, dtype=np.uint8)
    return buf, memoryview(buf)


def finish(handle: Any) -> bytes:
    """The filled ``bytes`` object (a copy only on the fallback path)."""
    if isinstance(handle, bytes):
        return handle
    return handle.tobytes()
