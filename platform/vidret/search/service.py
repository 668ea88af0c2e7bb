"""``vidret serve``: the search index behind a Ray Serve application with a FastAPI ingress.

Routes: ``GET /search?q=&k=&rerank=`` (JSON results with per-stage timings and thumbnail URLs),
``GET /thumb/<row>`` (JPEG), ``GET /healthz`` and ``GET /`` (the web page of ``vidret.search.page``).

Each replica loads the model and the index once, in its constructor. Replicas, autoscaling and the CPUs of a
replica come from the ``search`` config section. Bad input never reaches the engine as an exception it did
not expect: every refusal is a 4xx JSON body ``{"error": ..., "status": ...}``; an unexpected failure is
logged and answered with a JSON 500 (tests assert there is none).
"""

import logging
import re
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException

from vidret.config import Config
from vidret.search.page import page_html
from vidret.search.query import QueryError, SearchEngine

log = logging.getLogger("vidret.search")

PARAMS = ("q", "k", "rerank")
_ROW = re.compile(r"^[0-9]{1,12}$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def parse_search_params(pairs: list[tuple[str, str]]) -> tuple[str, int | None, bool | None]:
    """``(q, k, rerank)`` from the query string's pairs; ``QueryError`` for unknown, repeated or bad ones."""
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key not in PARAMS:
            raise QueryError(f"unknown parameter {key[:40]!r}; expected {', '.join(PARAMS)}")
        if key in seen:
            raise QueryError(f"parameter {key!r} given more than once")
        seen[key] = value
    if "q" not in seen:
        raise QueryError("q: missing; expected /search?q=<text>")
    k: int | None = None
    if "k" in seen:
        raw = seen["k"].strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", raw):
            raise QueryError(f"k: expected an integer, got {raw[:40]!r}")
        k = int(raw)
    rerank: bool | None = None
    if "rerank" in seen:
        raw = seen["rerank"].strip().lower()
        if raw not in _TRUE + _FALSE:
            raise QueryError(f"rerank: expected true or false, got {raw[:40]!r}")
        rerank = raw in _TRUE
    return seen["q"], k, rerank


def make_api() -> FastAPI:
    """The FastAPI app with JSON error handlers (routes are added by the Serve deployment)."""
    api = FastAPI(title="vidret search", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"bad request: {exc.errors()[:1]}")

    @api.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("search service: unexpected error")
        return _error(500, f"internal error ({exc.__class__.__name__})")

    return api


API = make_api()


@serve.deployment(name="vidret-search")
@serve.ingress(API)
class SearchService:
    """One replica: the engine (model + index, loaded once) behind the routes."""

    def __init__(self, index_uri: str, cfg: Config, checkpoint: str | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, int(cfg.search.replica_cpus)))
        self.engine = SearchEngine.open(index_uri, cfg, checkpoint)
        self.lock = threading.Lock()  # one query at a time per replica: torch already uses its threads
        s = cfg.search
        info = self.engine.info()
        self.page = page_html(
            "vidret search",
            f"{info['videos']} videos in {index_uri} ({info['ann']} prefilter, "
            f"{'re-ranking available' if info['rerank_available'] else 'stage 1 weights: no re-ranking'})",
            s.k,
            s.max_k,
            s.rerank and info["rerank_available"],
        )

    @API.get("/search")
    def search(self, request: Request) -> Response:
        try:
            q, k, rerank = parse_search_params(list(request.query_params.multi_items()))
            with self.lock:
                return JSONResponse(self.engine.search(q, k, rerank))
        except QueryError as err:
            return _error(400, str(err))

    @API.get("/thumb/{row}")
    def thumb(self, row: str) -> Response:
        if not _ROW.match(row) or int(row) >= self.engine.gallery.size:
            return _error(
                404, f"no thumbnail {row[:40]!r}: expected a result row in [0, {self.engine.gallery.size})"
            )
        return Response(
            self.engine.thumbnail(int(row)),
            media_type="image/jpeg",
            headers={"Cache-Control": "max-age=3600"},
        )

    @API.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", **self.engine.info()}

    @API.get("/")
    def index_page(self) -> HTMLResponse:
        return HTMLResponse(self.page)


def deployment_options(cfg: Config) -> dict[str, Any]:
    """Ray Serve options from ``search``: fixed replicas, or autoscaling when ``max_replicas`` >
    ``replicas``."""
    s = cfg.search
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.replica_cpus},
        "max_ongoing_requests": s.max_ongoing_requests,
    }
    if s.max_replicas > s.replicas:
        opts["autoscaling_config"] = {
            "min_replicas": s.replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = s.replicas
    return opts


def build_app(index_uri: str, cfg: Config, checkpoint: str | None = None) -> serve.Application:
    """The Serve application for the index at ``index_uri``."""
    deployment = SearchService.options(**deployment_options(cfg))  # type: ignore[attr-defined]
    app: serve.Application = deployment.bind(index_uri, cfg, checkpoint)
    return app


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for ``serve deploy`` / ``serve run``: ``import_path: vidret.search.service:app_builder``
    with ``args: {index: URI, config: FILE, checkpoint: URI, overrides: [KEY=VALUE]}`` (all but index
    optional)."""
    from vidret.config import load_config, with_absolute_paths

    unknown = set(args) - {"index", "config", "checkpoint", "overrides"}
    if unknown or "index" not in args:
        raise ValueError(
            f"vidret serve app args: expected index (and config, checkpoint, overrides), got {sorted(args)}"
        )
    cfg = with_absolute_paths(load_config(args.get("config"), list(args.get("overrides", []))))
    return build_app(str(args["index"]), cfg, args.get("checkpoint"))


APP_NAME = "vidret-search"


def start_service(cfg: Config, index_uri: str, checkpoint: str | None = None) -> str:
    """Deploy the application on the current Ray (``search.host``/``search.port``); returns its base URL once
    every replica has loaded. A missing or broken index fails here with an error naming ``index_uri``."""
    from vidret.search.layout import SearchIndexError

    SearchEngine.preflight(index_uri, cfg, checkpoint)  # fail fast and clearly, before any replica starts
    serve.start(http_options={"host": cfg.search.host, "port": cfg.search.port})
    try:
        serve.run(build_app(index_uri, cfg, checkpoint), name=APP_NAME, route_prefix="/")
    except RuntimeError as err:
        serve.delete(APP_NAME, _blocking=False)
        detail = " ".join(str(err).split())[-600:]
        raise SearchIndexError(f"{index_uri}: the search service could not start: {detail}") from None
    return f"http://{cfg.search.host}:{cfg.search.port}/"


def stop_service() -> None:
    """Remove the application and stop Serve on this Ray instance."""
    serve.shutdown()  # type: ignore[no-untyped-call]
