"""`pdmfed export`, `predict` and `serve`: use a campaign's model bundle outside the federation."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from federation.console import EXIT_FAILED, fail

__all__ = ["export_command", "predict_command", "serve_command"]


def _load(bundle: Path):
    from federation.ml.bundle import BundleError, load_bundle

    try:
        return load_bundle(bundle)
    except BundleError as exc:
        fail(str(exc))


def _schema(path: Path | None):
    from federation.ml.tabular import load_schema

    return None if path is None else load_schema(path)


def _normalizer(path: Path | None):
    from federation.ml.data import DatasetError, Normalizer

    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
        return Normalizer.from_dict(raw.get("normalizer", raw))
    except (OSError, ValueError, AttributeError, DatasetError) as exc:
        fail(f"{path}: not usable normalisation statistics: {exc}")


def export_command(
    run: Path, *, fmt: str, out: Path | None, data: Path | None, schema: Path | None
) -> int:
    """Export, verify within the tolerance, print one line; exit 1 when verification fails."""
    from federation.ml.bundle import BundleError
    from federation.ml.data import DatasetError
    from federation.ml.export import TOLERANCE, default_path, export_bundle
    from federation.ml.predict import read_windows

    bundle = _load(run)
    windows, what = None, "seeded windows"
    try:
        if data is not None:
            windows, _, _ = read_windows(bundle, data, schema=_schema(schema), last_only=False)
            what = f"windows of {data.name}"
    except (DatasetError, BundleError) as exc:
        fail(str(exc))
    target = out or default_path(bundle, fmt)
    try:
        done = export_bundle(bundle, fmt, target, windows)
    except BundleError as exc:
        fail(str(exc), EXIT_FAILED)
    print(
        f"{done.path}: {fmt}, max |difference| to PyTorch {done.max_abs_diff:.2g} cycles, "
        f"{done.max_rel_diff:.2g} relative (<= {TOLERANCE:g}) on {done.windows} {what}"
    )
    return 0


def predict_command(
    *,
    bundle: Path,
    data: Path,
    schema: Path | None,
    normalizer: Path | None,
    fmt: str,
    out: Path | None,
) -> int:
    """RUL per unit as CSV (unit,last_cycle,rul) or JSON, to --out or stdout."""
    from federation.ml.bundle import BundleError
    from federation.ml.data import DatasetError
    from federation.ml.predict import predict_units, prediction_document

    loaded = _load(bundle)
    try:
        rows = predict_units(
            loaded, data, schema=_schema(schema), normalizer=_normalizer(normalizer)
        )
    except (DatasetError, BundleError) as exc:
        fail(str(exc))
    if fmt == "json":
        text = json.dumps(prediction_document(loaded, rows), indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["unit", "last_cycle", "rul"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"{out}: RUL of {len(rows)} units", file=sys.stderr)
    return 0


def serve_command(
    *, bundle: Path, schema: Path | None, normalizer: Path | None, host: str, port: int
) -> int:
    """Serve the bundle's RUL endpoint until interrupted (uvicorn); one line when it listens."""
    import uvicorn

    from federation.ml.bundle import BundleError
    from federation.ml.serve import make_app

    loaded = _load(bundle)
    try:
        app = make_app(loaded, schema=_schema(schema), normalizer=_normalizer(normalizer))
    except BundleError as exc:
        fail(str(exc))
    print(f"pdmfed serve: RUL of {loaded.path} at http://{host}:{port}/predict "
          "(/healthz, /metrics)", file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
