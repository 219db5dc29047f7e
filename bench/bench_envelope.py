"""Seal+open throughput of the envelope vs AES-GCM+SHA-256 (ceiling), pickle+Fernet and Flower.

Run: ``.venv/bin/python -m bench.bench_envelope [--smoke] [--out PATH]``.
Flower's ``ndarrays_to_parameters``/``parameters_to_ndarrays`` round trip is timed in its own
virtualenv (bench/.flwr-venv, created on demand) on the same byte sizes and layer layout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from federation.crypto import KeyRing, Sealer, SigningIdentity, TrustStore
from federation.runtime.allocator import keep_freed_buffers

from bench._common import time_runs, write_result
from bench._flwr import FlowerUnavailable, run_flwr_task
from bench._util import result_path

MB = 1024 * 1024


def _update(size_bytes: int) -> dict[str, torch.Tensor]:
    """A float32 update of ``size_bytes`` split like a model (one big layer, a few small)."""
    gen = torch.Generator().manual_seed(0)
    small = {f"layer{i}.bias": torch.randn(256, generator=gen) for i in range(4)}
    rest = size_bytes // 4 - 4 * 256
    return {"layer0.weight": torch.randn(max(rest, 1), generator=gen), **small}


def _measure(size_mb: float, runs: int) -> dict[str, Any]:
    update = _update(int(size_mb * MB))
    nbytes = sum(t.numel() * t.element_size() for t in update.values())
    identity = SigningIdentity.generate("bench-0")
    sealer = Sealer(
        KeyRing("k1", {"k1": os.urandom(32)}),
        sender="bench-0",
        identity=identity,
        trust=TrustStore({"bench-0": identity.public_bytes()}),
        max_message_bytes=nbytes + 64 * MB,
    )
    chunked = Sealer(
        KeyRing("k1", {"k1": os.urandom(32)}),
        sender="bench-0",
        identity=identity,
        trust=TrustStore({"bench-0": identity.public_bytes()}),
    )
    blob = memoryview(update["layer0.weight"].numpy()).cast("B")
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    fernet = Fernet(Fernet.generate_key())

    def seal_open() -> None:
        (body,) = sealer.seal("update.raw", {"delta": update}, datasite_id="f1", round_num=1)
        sealer.open(body, expected_msg_type="update.raw")

    def seal_open_chunked() -> None:
        opened = None
        for body in chunked.seal("update.raw", {"delta": update}, datasite_id="f1", round_num=1):
            opened = chunked.open(body)
        assert opened is not None

    def ceiling() -> None:
        hashlib.sha256(blob).digest()
        ct = aead.encrypt(nonce, blob, b"header")
        pt = aead.decrypt(nonce, ct, b"header")
        hashlib.sha256(pt).digest()

    def pickle_fernet() -> None:
        token = fernet.encrypt(pickle.dumps(update))
        pickle.loads(fernet.decrypt(token))  # the naive baseline; never done on received bytes

    rows = {
        "seal_open": time_runs(seal_open, runs=runs),
        "seal_open_chunked_8MiB": time_runs(seal_open_chunked, runs=runs),
        "ceiling_aesgcm_sha256": time_runs(ceiling, runs=runs),
        "pickle_fernet": time_runs(
            pickle_fernet, runs=max(5, runs // 2) if size_mb > 100 else runs
        ),
    }
    mb = nbytes / MB
    for row in rows.values():
        row["mb_per_s"] = mb / row["median_s"]
        row["mb_per_s_min_max"] = [mb / row["max_s"], mb / row["min_s"]]
    ceil_rate = rows["ceiling_aesgcm_sha256"]["mb_per_s"]
    naive_rate = rows["pickle_fernet"]["mb_per_s"]
    return {
        "size_mb": round(mb, 2),
        **rows,
        "ratio_seal_open_vs_ceiling": rows["seal_open"]["mb_per_s"] / ceil_rate,
        "ratio_chunked_vs_ceiling": rows["seal_open_chunked_8MiB"]["mb_per_s"] / ceil_rate,
        "speedup_vs_pickle_fernet": rows["seal_open"]["mb_per_s"] / naive_rate,
    }


NAME = "envelope"
FULL_SIZES = [1, 10, 100, 500]
SMOKE_SIZES = [0.25, 1.0]


def _flower(sizes: list[float], runs: int, smoke: bool) -> tuple[list[dict] | None, Any, Any]:
    """Flower's serialisation round trip per size, or (None, None, reason)."""
    try:
        answer = run_flwr_task(
            {"task": "serde", "sizes_mb": sizes, "runs": runs, "budget_s": 30.0},
            install=not smoke,
        )
    except FlowerUnavailable as exc:
        return None, None, exc.reason
    return answer["serde"], answer["versions"], None


def run(smoke: bool, runs: int = 5) -> dict[str, Any]:
    """Every size; each row carries its ratios to the ceiling, to pickle+Fernet and to Flower."""
    sizes = SMOKE_SIZES if smoke else FULL_SIZES
    flower_rows, versions, flower_error = _flower(sizes, runs, smoke)
    results = []
    for i, size in enumerate(sizes):
        row = _measure(size, runs)
        if flower_rows is not None:
            fl = dict(flower_rows[i])
            fl["mb_per_s"] = row["size_mb"] / fl["median_s"]
            fl["mb_per_s_min_max"] = [row["size_mb"] / fl["max_s"], row["size_mb"] / fl["min_s"]]
            row["flower_serde"] = fl
            row["ratio_seal_open_vs_flower"] = row["seal_open"]["mb_per_s"] / fl["mb_per_s"]
        results.append(row)
        print(
            f"{row['size_mb']:>8.2f} MB  seal+open {row['seal_open']['mb_per_s']:7.0f} MB/s"
            f"  chunked {row['seal_open_chunked_8MiB']['mb_per_s']:7.0f}"
            f"  ceiling {row['ceiling_aesgcm_sha256']['mb_per_s']:7.0f}"
            f"  pickle+Fernet {row['pickle_fernet']['mb_per_s']:6.0f}"
            + (f"  flower {row['flower_serde']['mb_per_s']:6.0f}" if "flower_serde" in row else "")
            + f"  ratio {row['ratio_seal_open_vs_ceiling']:.2f}"
            f"  x{row['speedup_vs_pickle_fernet']:.1f}",
            flush=True,
        )
    return {
        "smoke": smoke,
        "method": "median of >=5 runs per size; MB/s = update bytes / wall time of one"
        " seal+open (ceiling: AES-256-GCM encrypt+decrypt + SHA-256 at both ends of the"
        " same bytes; naive: pickle+Fernet round trip; Flower: ndarrays_to_parameters +"
        " parameters_to_ndarrays round trip of the same layer layout in flwr's own venv,"
        " which neither encrypts nor authenticates)",
        "targets": {"ratio_vs_ceiling_min": 0.7, "speedup_vs_pickle_fernet_min": 5.0},
        "flower_versions": versions,
        "flower_error": flower_error,
        "results": results,
        "summary": {
            "min_ratio_vs_ceiling": min(r["ratio_seal_open_vs_ceiling"] for r in results),
            "min_speedup_vs_pickle_fernet": min(r["speedup_vs_pickle_fernet"] for r in results),
            "ratio_vs_flower": {
                str(r["size_mb"]): r.get("ratio_seal_open_vs_flower") for r in results
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="result file")
    args = parser.parse_args(argv)
    keep_freed_buffers()  # as every service process does at start
    data = run(args.smoke, args.runs)
    path = write_result(NAME, data, args.out or result_path(NAME, args.smoke))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
