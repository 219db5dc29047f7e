"""`pdmfed serve`: an HTTP endpoint giving RUL per unit for posted engine data (CSV, JSON, Parquet).

One implementation with `pdmfed predict`: the body is written to a private temporary file and
read by ``federation.ml.predict.predict_units``, so the same schema checks apply and a bad
table is a 422 carrying the same located error (row, unit, column).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from federation.ml.bundle import Bundle, BundleError
from federation.ml.data import DatasetError, Normalizer
from federation.ml.predict import _normalizer as bundle_normalizer
from federation.ml.predict import bundle_schema, predict_units, prediction_document
from federation.ml.tabular import DataSchema

__all__ = ["MAX_BODY_BYTES", "make_app"]

#: The largest body accepted (413 above it).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Content types understood, by the suffix the body is read as.
_SUFFIX = {
    "text/csv": ".csv",
    "text/plain": ".csv",
    "application/json": ".parquet",  # rows as objects, kept as a typed table
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
}


class BodyError(DatasetError):
    """A body that is not a table at all (wrong content type, not JSON rows)."""


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pdmfed_serve_requests_total", "prediction requests, by outcome",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        for outcome in ("ok", "invalid", "too_large", "error"):
            self.requests.labels(outcome)
        self.units = Counter(
            "pdmfed_serve_units_predicted_total", "units whose RUL was predicted",
            registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "pdmfed_serve_request_seconds", "time to answer one prediction request",
            registry=self.registry,
        )  # fmt: skip


def _json_rows(body: bytes) -> Any:
    """JSON rows (a list of objects, or {"rows": [...]}) as a DataFrame of text cells."""
    import pandas as pd

    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BodyError(f"body is not JSON: {exc}") from exc
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BodyError('JSON body must be a list of row objects or {"rows": [...]}')
    # text cells, as a CSV is read: the schema's numeric checks locate every bad value
    return pd.DataFrame([{str(k): "" if v is None else str(v) for k, v in r.items()} for r in rows])


def _write_body(body: bytes, content_type: str, folder: Path) -> Path:
    kind = content_type.split(";")[0].strip().lower()
    suffix = _SUFFIX.get(kind)
    if suffix is None:
        raise BodyError(f"content type {kind or 'none'!r} is not one of {sorted(_SUFFIX)}")
    path = folder / f"body{suffix}"
    if kind == "application/json":
        _json_rows(body).to_parquet(path, index=False)
    else:
        path.write_bytes(body)
    return path


def _predict(
    bundle: Bundle, body: bytes, content_type: str, schema: DataSchema | None,
    normalizer: Normalizer | None,
) -> list[dict[str, Any]]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pdmfed-serve-") as tmp:
        path = _write_body(body, content_type, Path(tmp))
        try:
            return predict_units(bundle, path, schema=schema, normalizer=normalizer)
        except DatasetError as exc:
            exc.args = (str(exc).replace(str(path), "body"),)
            if getattr(exc, "file", None):
                exc.file = "body"
            raise


def _located(exc: DatasetError) -> dict[str, Any]:
    detail: dict[str, Any] = {"error": str(exc)}
    for key in ("row", "unit", "column"):
        value = getattr(exc, key, None)
        if value is not None:
            detail[key] = value
    return detail


def make_app(bundle: Bundle, *, schema: DataSchema | None = None,
             normalizer: Normalizer | None = None) -> FastAPI:  # fmt: skip
    """The FastAPI app: POST /predict, GET /healthz, GET /metrics.

    The bundle's schema (or ``schema``) is checked against the model here, so a server that
    starts can read what its bundle was trained on.
    """
    bundle_schema(bundle, schema)  # BundleError now, not on the first request
    normalizer = bundle_normalizer(bundle, normalizer)
    metrics = _Metrics()
    app = FastAPI(title="pdm-federation RUL", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "campaign_id": bundle.manifest.get("campaign_id")}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        if declared > MAX_BODY_BYTES:
            metrics.requests.labels("too_large").inc()
            return JSONResponse({"detail": {"error": f"body over {MAX_BODY_BYTES} bytes"}}, 413)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            metrics.requests.labels("too_large").inc()
            return JSONResponse({"detail": {"error": f"body over {MAX_BODY_BYTES} bytes"}}, 413)
        try:
            rows = await run_in_threadpool(
                _predict, bundle, body, request.headers.get("content-type", ""), schema, normalizer
            )
        except (DatasetError, BundleError) as exc:
            metrics.requests.labels("invalid").inc()
            return JSONResponse({"detail": _located(exc)}, 422)
        except Exception as exc:  # a bug must not take the server down: 500, counted
            metrics.requests.labels("error").inc()
            return JSONResponse({"detail": {"error": f"{type(exc).__name__}: {exc}"}}, 500)
        metrics.requests.labels("ok").inc()
        metrics.units.inc(len(rows))
        metrics.seconds.observe(time.perf_counter() - started)
        return JSONResponse(prediction_document(bundle, rows))

    return app
