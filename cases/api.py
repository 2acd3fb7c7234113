"""The HTTP API for units, offices and operators: report, list, show and act on cases.

Every caller is a unit with a bearer token (`cityops units token UNIT`). A unit sees the cases it
is responsible for, a coordinating office those of its district (the city's office those of every
district), an operator all. A case the caller may not see is 404, whether or not it exists.
Errors are JSON: {"error": reason, ...}. The OpenAPI document (its models:
``cases.api_document``) is served at /openapi.json, its pages at /docs; it declares every
answer an endpoint can give.

Other packages add their endpoints to the same app (the shell wires them: ``cityops.api``): each
is a ``RouteInstaller``, given the app and a ``RouteContext`` (a pooled connection per request,
and the caller dependency); their errors are ``ApiError``, answered in the same JSON.

Annotations here are evaluated at definition (no ``from __future__ import annotations``):
FastAPI reads the dependencies of the endpoints, which are closures, from them.
"""

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from psycopg_pool import ConnectionPool
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cases import evaluation
from cases.access import Caller, caller_for_token
from cases.api_document import (
    ActionIn,
    CallerAction,
    CaseDetailOut,
    CaseFilterFields,
    CaseOut,
    OneOf,
    ReportFields,
    ReportOut,
    answers,
)
from cases.catalog import Catalog
from cases.lifecycle import Action
from cases.service import (
    BadReportError,
    CaseNotFoundError,
    CaseService,
    ForbiddenActionError,
    IllegalActionError,
    Report,
)
from redaction import error_line

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)
# A deleted token keeps working this long in a running API (at most 5 s is promised, and
# docs/security.md says so); a cached token saves its look-up, one indexed row, per request.
_TOKEN_CACHE_S = 2.0
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _error(status: int, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": reason, **extra})


class ApiError(Exception):
    """An answer that is not a success, from an installed route: {"error": reason, **extra}.

    ``extra`` must be JSON as it stands (a time as ISO 8601 text).
    """

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = extra


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a ``RouteInstaller`` gets besides the app."""

    #: A pooled connection (autocommit) for one request: ``with connection() as conn: ...``.
    connection: Callable[[], AbstractContextManager[psycopg.Connection]]
    #: The dependency that authenticates the bearer token (401 without a valid one).
    caller: Callable[..., Awaitable[Caller]]


#: Adds endpoints to the app; their errors are ``ApiError``.
RouteInstaller = Callable[[FastAPI, RouteContext], None]


def create_app(
    database_url: str,
    catalog: Catalog,
    *,
    pool_size: int = 8,
    escalate_every_s: float = 60.0,
    evaluate_every_s: float = 3600.0,
    registry: CollectorRegistry | None = None,
    routes: Sequence[RouteInstaller] = (),
) -> FastAPI:
    """The API over a connection pool to ``database_url``, with the endpoints of ``routes``.

    While it runs it also escalates overdue cases every ``escalate_every_s``, stores the
    monthly evaluation of the last and the current month at start and every
    ``evaluate_every_s`` (the dashboards read it), and serves Prometheus metrics at /metrics,
    request times included.
    """
    pool = ConnectionPool(
        database_url, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True}
    )
    metrics = registry or CollectorRegistry()
    escalated = Counter(
        "cityops_cases_escalated", "Cases escalated past their deadline.", registry=metrics
    )
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        pool.open(wait=True, timeout=30)
        worker = threading.Thread(
            target=_duties,
            args=(pool, case_service, escalated, stop),
            kwargs={"escalate_every_s": escalate_every_s, "evaluate_every_s": evaluate_every_s},
            name="escalation and evaluation",
        )
        worker.start()
        yield
        stop.set()
        worker.join()
        pool.close()

    app = FastAPI(title="cityops cases", version="1", lifespan=lifespan)
    app.add_middleware(
        _Timed,
        seconds=Histogram(
            "cityops_api_request_seconds",
            "Time to answer a request, by method, route (its template) and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=metrics,
        ),
    )
    app.mount("/metrics", make_asgi_app(registry=metrics))

    @contextmanager
    def case_service() -> Iterator[CaseService]:
        with pool.connection() as conn:
            yield CaseService(conn, catalog)

    tokens: dict[str, tuple[Caller, float]] = {}

    async def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        # async, so a cached token costs no thread hop; a new one is looked up on a worker
        if credentials is None:
            raise _Unauthorized
        cached = tokens.get(credentials.credentials)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        found = await run_in_threadpool(look_up, credentials.credentials)
        if found is None:
            raise _Unauthorized
        tokens[credentials.credentials] = (found, time.monotonic() + _TOKEN_CACHE_S)
        return found

    def look_up(token: str) -> Caller | None:
        with pool.connection() as conn:
            return caller_for_token(conn, token)

    _install_error_handlers(app)

    _install_routes(app, case_service, caller, tuple(c.code for c in catalog.category))
    for install in routes:
        install(app, RouteContext(pool.connection, caller))
    return app


def _duties(
    pool: ConnectionPool,
    case_service: Callable[[], AbstractContextManager[CaseService]],
    escalated: Counter,
    stop: threading.Event,
    *,
    escalate_every_s: float,
    evaluate_every_s: float,
) -> None:
    """The API's periodic work, until ``stop``: escalation, and storing the evaluation."""
    next_evaluation = time.monotonic()
    while True:
        if time.monotonic() >= next_evaluation:
            next_evaluation = time.monotonic() + evaluate_every_s
            try:
                with pool.connection() as conn:
                    for month in evaluation.months_to_store(datetime.now(UTC)):
                        evaluation.store(conn, month)
            except Exception as exc:  # a case the evaluation cannot read must not stop escalation
                logger.warning("evaluation skipped, tried again later: %s", error_line(exc))
        if stop.wait(escalate_every_s):
            return
        try:
            with case_service() as cases:
                escalated.inc(len(cases.escalate_overdue()))
        except psycopg.Error as exc:
            logger.warning("escalation skipped: %s", exc)


class _Timed:
    """ASGI middleware: each HTTP request's time into a histogram, labelled by route template.

    The route is the template (``/cases/{case_id}``), never the path, and a method outside
    HTTP's own is ``other``: the label sets stay bounded whatever clients send.
    """

    def __init__(self, app: ASGIApp, seconds: Histogram) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:  # a mount (/metrics), or no route matched
                route = "/metrics" if scope["path"].startswith("/metrics") else "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.seconds.labels(method, route, str(status)).observe(time.perf_counter() - began)


def _install_routes(
    app: FastAPI,
    case_service: Callable[[], AbstractContextManager[CaseService]],
    caller: Callable[..., Awaitable[Caller]],
    categories: tuple[str, ...],
) -> None:
    """The endpoints; each works on a pooled connection for exactly its own request."""
    category_code = Annotated[str, OneOf(categories)]

    class ReportIn(ReportFields):
        """A problem reported by an inspector or a citizen."""

        category: category_code = Field(description="A code of the problem catalog.")

    class CaseFilters(CaseFilterFields):
        """Which cases to list, and the page."""

        category: category_code | None = None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/cases", status_code=201, responses=answers(400, 401, 422, 503))
    def report(
        body: ReportIn,
        who: Annotated[Caller, Depends(caller)],
    ) -> ReportOut:
        """Report a problem; a second report on an open case adds to it (201 either way).

        The case is named only if the caller may see it: a report may join another unit's case.
        """
        with case_service() as cases:
            receipt = cases.report(Report(**body.model_dump()), who)
        return ReportOut.model_validate(receipt, from_attributes=True)

    @app.get("/cases", response_model=list[CaseOut], responses=answers(401, 422, 503))
    def list_cases(
        who: Annotated[Caller, Depends(caller)],
        filters: Annotated[CaseFilters, Query()],
    ) -> list[dict[str, Any]]:
        """Cases the caller may see, newest first."""
        with case_service() as cases:
            return cases.find(
                who,
                state=filters.state,
                unit_id=filters.unit,
                district_id=filters.district,
                category=filters.category,
                overdue=filters.overdue,
                after_id=filters.after,
                limit=filters.limit,
            )

    @app.get(
        "/cases/{case_id}", response_model=CaseDetailOut, responses=answers(401, 404, 422, 503)
    )
    def show(
        case_id: int,
        who: Annotated[Caller, Depends(caller)],
    ) -> dict[str, Any]:
        """One case with its history and the actions its state allows."""
        with case_service() as cases:
            return cases.show(case_id, who)

    @app.post(
        "/cases/{case_id}/{action}",
        response_model=CaseOut,
        responses=answers(400, 401, 403, 404, 409, 422, 503),
    )
    def act(
        case_id: int,
        action: CallerAction,
        who: Annotated[Caller, Depends(caller)],
        body: ActionIn | None = None,
    ) -> dict[str, Any]:
        """Register, cancel, dispatch, accept, return, dispose, verify, reopen or comment."""
        details = body or ActionIn()
        with case_service() as cases:
            return cases.act(
                case_id,
                Action(action),
                who,
                note=details.note,
                unit_id=details.unit_id,
                photo_url=details.photo_url,
            )


def _install_error_handlers(app: FastAPI) -> None:
    """Every error a caller can meet, as JSON with a reason; never a stack trace."""
    statuses: dict[type[Exception], int] = {
        CaseNotFoundError: 404,
        ForbiddenActionError: 403,
        BadReportError: 422,
    }

    async def _by_status(_r: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, _Unauthorized):
            return _error(401, "a valid bearer token is required (cityops units token UNIT)")
        if isinstance(exc, ApiError):
            return _error(exc.status, exc.reason, **exc.extra)
        return _error(statuses[type(exc)], str(exc))

    handled: list[type[Exception]] = [_Unauthorized, ApiError, *statuses]
    for error_type in handled:
        app.add_exception_handler(error_type, _by_status)

    @app.exception_handler(IllegalActionError)
    async def _illegal(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, IllegalActionError)
        return _error(409, str(exc), state=exc.state, allowed=exc.allowed)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()
        ]
        return _error(422, "invalid request", problems=problems)

    @app.exception_handler(HTTPException)
    async def _http(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)  # no such path or method; a body that is not text
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(psycopg.OperationalError)
    async def _database(_r: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", exc)
        return _error(503, "the database is unavailable; try again")

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=exc)
        return _error(500, "internal error; it has been logged")


class _Unauthorized(Exception):  # noqa: N818 - mapped to HTTP 401 above
    pass
