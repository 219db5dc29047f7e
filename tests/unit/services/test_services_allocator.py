"""The allocator tuning every service applies at start: freed message buffers are reused, not faulted in afresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Seal-and-open-sized churn: a fresh 1 MiB body and a fresh 1 MiB decryption buffer per message,
# both freed before the next; minor page faults per message after a warm-up.
_CHURN = r"""
import json, resource, sys
from federation.runtime.allocator import keep_freed_buffers
applied = keep_freed_buffers() if sys.argv[1] == "tuned" else False
def message():
    body = bytearray(1 << 20); body[::4096] = b"x" * len(body[::4096])
    plain = bytearray(1 << 20); plain[::4096] = b"y" * len(plain[::4096])
    del body, plain
for _ in range(20):
    message()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    message()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"applied": applied, "faults_per_message": (after - before) / 200}))
"""


def _churn(mode: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt tuning needs glibc on Linux",
)


@glibc
def test_tuned_process_reuses_freed_megabyte_buffers_without_page_faults():
    untuned = _churn("plain")
    tuned = _churn("tuned")
    assert tuned["applied"] is True
    # untuned glibc maps each 1 MiB buffer afresh (256 pages each) or trims it back to the kernel
    assert untuned["faults_per_message"] > 100
    assert tuned["faults_per_message"] < 5


@glibc
def test_opt_out_leaves_the_allocator_alone():
    out = _churn("tuned", PDMFED_MALLOC_TUNING="off")
    assert out["applied"] is False
    assert out["faults_per_message"] > 100


def test_tuning_is_applied_once_and_reports_the_same_answer():
    from federation.runtime.allocator import keep_freed_buffers

    first = keep_freed_buffers()
    assert keep_freed_buffers() is first
