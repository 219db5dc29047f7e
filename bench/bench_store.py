"""State store: SQLite against PostgreSQL for one instance, and where PostgreSQL keeps big values.

Run: ``.venv/bin/python -m bench.bench_store [--smoke] [--out PATH]``. Needs PostgreSQL
(``PDMFED_BENCH_POSTGRES_URL``, default the local server; a scratch database per run) and, for
the rounds, RabbitMQ. Side by side in one run:

1. Handler commits: the transaction a handler makes for one small message (inbox row, read and
   write a record, emit one message) followed by the publisher's outbox claim and delete, on
   each backend; one thread, back to back.
2. A 40 MB update stored and read back: as a file of the store's blob directory (what both
   backends do), as a PostgreSQL large object, and as a bytea column kept out of line
   (``STORAGE EXTERNAL``, no compression) - the measurement behind keeping big values in files.
3. Rounds: dispatch, security and aggregator as `pdmfed service` processes (one instance each),
   state in SQLite files or in PostgreSQL, the same campaigns alternately.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._util import AMQP_URL, bench_main, bench_prefix, rabbit_available

NAME = "store"
POSTGRES_URL = os.environ.get(
    "PDMFED_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BIG_BYTES = 40_000_036  # one 10M-parameter update, encoded
ROUNDS_FULL = [
    {"model": "hybrid-sleep", "sites": 10, "rounds": 6, "train_s": 0.5},
    {"model": "10M", "sites": 10, "rounds": 3, "train_s": 10.0},
]
ROUNDS_SMOKE = [{"model": "hybrid-sleep", "sites": 3, "rounds": 3, "train_s": 0.05}]


def _postgres_unavailable() -> str | None:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"


def _stores(db_url: str, root: Path) -> dict[str, Any]:
    from federation.runtime.store_postgres import PostgresStore
    from federation.runtime.store_sqlite import SqliteStore

    return {
        "sqlite": SqliteStore(root / "bench.sqlite"),
        "postgresql": PostgresStore(db_url, schema="pdmfed_bench", blob_dir=root / "pg-blobs"),
    }


def _handler_commit(store: Any, n: int) -> None:
    with store.transaction() as tx:
        tx.mark_handled(uuid.uuid4().bytes, "datasite.status")
        record = tx.get("round/c/000001", {"trained": []})
        record["trained"] = [*record["trained"][-20:], f"factory_{n % 10:02d}"]
        tx.put("round/c/000001", record)
        tx.emit("round.close", {"campaign_id": "c", "round_num": 1, "expected": record["trained"]})
    claim = store.claim_outbox()
    claim.done()


def _commits(stores: dict[str, Any], count: int, repeats: int) -> dict[str, Any]:
    """Per backend: milliseconds per handler commit, median (min-max) of ``repeats`` batches."""
    out: dict[str, Any] = {}
    per_batch: dict[str, list[float]] = {name: [] for name in stores}
    for store in stores.values():
        for n in range(20):  # warm-up: connections, prepared statements, page cache
            _handler_commit(store, n)
    for _ in range(repeats):
        for name, store in stores.items():  # interleaved: drift hits both alike
            start = time.perf_counter()
            for n in range(count):
                _handler_commit(store, n)
            per_batch[name].append((time.perf_counter() - start) / count)
    for name, times in per_batch.items():
        med = statistics.median(times)
        out[name] = {
            "ms_per_commit": {
                "median": med * 1e3,
                "min": min(times) * 1e3,
                "max": max(times) * 1e3,
            },
            "commits_per_s": 1.0 / med,
            "commits_per_batch": count,
            "batches": repeats,
        }
    return out


def _big_value(nbytes: int) -> dict:
    import torch

    return {"delta": {"w": torch.randn(max(1, (nbytes - 36) // 4))}}


def _big_in_stores(stores: dict[str, Any], nbytes: int, runs: int) -> dict[str, Any]:
    """Seconds to commit one big value through each store (a blob file) and to read it back."""
    value = _big_value(nbytes)
    out = {}
    for name, store in stores.items():
        writes, reads = [], []
        for _ in range(runs + 1):
            start = time.perf_counter()
            with store.transaction() as tx:
                tx.put("update/x", value)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.read("update/x")
            reads.append(time.perf_counter() - start)
        store.settle()
        out[f"{name} (blob file)"] = _write_read(writes[1:], reads[1:])
    return out


def _write_read(writes: list[float], reads: list[float]) -> dict[str, Any]:
    return {
        "write_commit_s": {
            "median": statistics.median(writes),
            "min": min(writes),
            "max": max(writes),
        },
        "read_s": {"median": statistics.median(reads), "min": min(reads), "max": max(reads)},
        "runs": len(writes),
    }


def _big_in_postgres(db_url: str, nbytes: int, runs: int) -> dict[str, Any]:
    """The same bytes kept inside PostgreSQL: a large object, and an out-of-line bytea."""
    import psycopg
    from federation.wire.codec import encode_payload

    data = encode_payload(_big_value(nbytes))
    out = {}
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE bench_bytea (id TEXT PRIMARY KEY, data BYTEA NOT NULL)")
        conn.execute("ALTER TABLE bench_bytea ALTER COLUMN data SET STORAGE EXTERNAL")
        conn.commit()

        def large_object() -> tuple[float, float]:
            start = time.perf_counter()
            oid = conn.execute("SELECT lo_from_bytea(0, %s)", (data,)).fetchone()[0]
            conn.commit()
            write = time.perf_counter() - start
            start = time.perf_counter()
            got = conn.execute("SELECT lo_get(%s)", (oid,), binary=True).fetchone()[0]
            conn.commit()
            read = time.perf_counter() - start
            assert len(got) == len(data)
            conn.execute("SELECT lo_unlink(%s)", (oid,))
            conn.commit()
            return write, read

        def bytea() -> tuple[float, float]:
            key = uuid.uuid4().hex
            start = time.perf_counter()
            conn.execute("INSERT INTO bench_bytea VALUES (%s, %s)", (key, data))
            conn.commit()
            write = time.perf_counter() - start
            start = time.perf_counter()
            got = conn.execute(
                "SELECT data FROM bench_bytea WHERE id = %s", (key,), binary=True
            ).fetchone()[0]
            conn.commit()
            read = time.perf_counter() - start
            assert len(got) == len(data)
            conn.execute("DELETE FROM bench_bytea WHERE id = %s", (key,))
            conn.commit()
            return write, read

        for name, fn in (("postgresql large object", large_object), ("postgresql bytea", bytea)):
            samples = [fn() for _ in range(runs + 1)][1:]
            out[name] = _write_read([s[0] for s in samples], [s[1] for s in samples])
    return out


def _rounds(db_url: str, smoke: bool) -> list[dict[str, Any]]:
    """Round overhead per state backend: the same campaigns, SQLite and PostgreSQL alternately."""
    from bench.bench_round import _config

    rows = []
    for spec in ROUNDS_SMOKE if smoke else ROUNDS_FULL:
        for backend in ("sqlite", "postgresql"):
            rows.append(
                _campaign(spec, backend, db_url if backend == "postgresql" else None, _config)
            )
            r = rows[-1]
            print(
                f"{backend:>11} {spec['model']:>12} x{spec['sites']:<3} wall"
                f" {r['wall_s']['median']:6.2f} s overhead {r['overhead_s']['median']:6.2f} s"
                f" ({r['rounds_per_min']:.1f} rounds/min)",
                flush=True,
            )
    return rows


def _campaign(spec: dict, backend: str, state_url: str | None, config: Any) -> dict[str, Any]:
    from federation.runtime.store_postgres import scratch_database

    from bench._standins import run_campaign

    c = config({**spec, "layout": "service processes"})

    def run(url: str | None) -> dict[str, Any]:
        return run_campaign(
            c["comm"],
            model_type=c["kind"],
            n_features=c["n_features"],
            window=c["window"],
            ids=c["ids"],
            rounds=spec["rounds"],
            amqp_url=AMQP_URL,
            prefix=bench_prefix(NAME),
            training=c["training"],
            processes=True,
            state_url=url,
        )

    if state_url is None:
        out = run(None)
    else:
        with scratch_database(state_url, "bench") as url:  # a fresh database per campaign
            out = run(url)
    counted = out["rounds"][1:]
    walls = [r["wall_s"] for r in counted]
    overheads = [r["wall_s"] - r["training_s"] for r in counted]
    return {
        **spec,
        "backend": backend,
        "params": c["params"],
        "rounds_counted": len(counted),
        "wall_s": _stats(walls),
        "training_s": _stats([r["training_s"] for r in counted]),
        "overhead_s": _stats(overheads),
        "rounds_per_min": 60.0 / statistics.median(walls),
        "participants": [r["participants"] for r in out["rounds"]],
    }


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run(smoke: bool) -> dict[str, Any]:
    base = {
        "smoke": smoke,
        "method": "1: per backend, batches of back-to-back handler commits (inbox row, read and"
        " write a record, emit a message, then claim and delete the outbox row as the"
        " publisher does), batches of the two backends interleaved; ms per commit, median"
        " (min-max) over batches. 2: one encoded 10M-parameter update (40 MB) committed and"
        " read back, median (min-max) of the runs after one warm-up: through each store (a"
        " blob file, fsynced), as a PostgreSQL large object (lo_from_bytea / lo_get) and as a"
        " bytea column stored out of line without compression. 3: one campaign per backend"
        " and configuration, dispatch, security and aggregator as `pdmfed service` processes"
        " (one instance each), the connector with sleeping datasite stand-ins in the harness;"
        " overhead = round wall time - slowest site's training time, rounds after the first;"
        " a fresh PostgreSQL database per campaign. Durable settings on both sides: SQLite"
        " WAL with synchronous=FULL, PostgreSQL's defaults (fsync, synchronous_commit on).",
    }
    reason = _postgres_unavailable()
    if reason is not None:
        return {**base, "error": reason}
    import asyncio

    from federation.runtime.store_postgres import scratch_database

    nbytes = 1_000_036 if smoke else BIG_BYTES
    with scratch_database(POSTGRES_URL, "bench") as db_url, tempfile.TemporaryDirectory() as tmp:
        stores = _stores(db_url, Path(tmp))
        try:
            commits = _commits(stores, 50 if smoke else 400, 3 if smoke else 7)
            big = _big_in_stores(stores, nbytes, 2 if smoke else 5)
        finally:
            for store in stores.values():
                store.close()
        big.update(_big_in_postgres(db_url, nbytes, 2 if smoke else 5))
    for name, row in commits.items():
        print(
            f"commit {name:>11}: {row['ms_per_commit']['median']:.2f} ms ({row['commits_per_s']:.0f}/s)"
        )
    for name, row in big.items():
        print(
            f"{nbytes / 1e6:.0f} MB {name:>24}: write+commit {row['write_commit_s']['median']:.3f} s,"
            f" read {row['read_s']['median']:.3f} s"
        )
    rabbit = asyncio.run(rabbit_available())
    rounds = [] if rabbit is not None else _rounds(POSTGRES_URL, smoke)
    ratio = (
        commits["postgresql"]["ms_per_commit"]["median"]
        / commits["sqlite"]["ms_per_commit"]["median"]
    )
    return {
        **base,
        "big_value_bytes": nbytes,
        "commits": commits,
        "big_value": big,
        "rounds": rounds,
        "rounds_skipped": rabbit,
        "summary": {
            "commit_ms_postgresql_over_sqlite": ratio,
            "big_write_large_object_over_file": big["postgresql large object"]["write_commit_s"][
                "median"
            ]
            / big["postgresql (blob file)"]["write_commit_s"]["median"],
            "big_write_bytea_over_file": big["postgresql bytea"]["write_commit_s"]["median"]
            / big["postgresql (blob file)"]["write_commit_s"]["median"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: [--smoke] [--out FILE]."""
    return bench_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
