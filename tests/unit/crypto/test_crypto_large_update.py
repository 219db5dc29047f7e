"""A 300 MB update is chunked, sealed, opened and reassembled within 2.5x its size in memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, time
    import psutil, torch
    from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore

    size = 300 * 1024 * 1024
    ring = KeyRing("k1", {"k1": os.urandom(32)})
    ident = SigningIdentity.generate("connector-0")
    trust = TrustStore({"connector-0": ident.public_bytes()})
    sender = Sealer(ring, sender="connector-0", identity=ident)
    receiver = Sealer(ring, sender="security-0", trust=trust)
    for body in sender.seal("update.raw", {"w": torch.ones(10)}):  # load every code path
        receiver.open(body)
    update = torch.randn(size // 4, generator=torch.Generator().manual_seed(0))

    def status_kb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    try:  # start the high-water mark here: only the seal/open window counts
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = lambda: status_kb("VmHWM") * 1024
    except OSError:
        hwm = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = psutil.Process().memory_info().rss
    start = time.perf_counter()
    bodies = sender.seal("update.raw", {"delta": {"w": update}}, datasite_id="f1", round_num=1)
    opened = [receiver.open(b) for b in reversed(bodies)]
    elapsed = time.perf_counter() - start
    peak = hwm()
    out = opened[-1].payload["delta"]["w"]
    print(json.dumps({
        "chunks": len(bodies), "max_body": max(map(len, bodies)),
        "incomplete_until_last": all(o is None for o in opened[:-1]),
        "equal": bool(torch.equal(out, update)), "size": size,
        "extra": peak - base, "seconds": elapsed,
    }))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_when_a_300mb_update_is_chunked_and_reassembled__peak_extra_memory_is_under_2_5x():
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["equal"] and result["incomplete_until_last"]
    assert result["chunks"] >= 38 and result["max_body"] <= 8 * 1024 * 1024
    assert result["extra"] < 2.5 * result["size"], result
    assert result["seconds"] < 30
