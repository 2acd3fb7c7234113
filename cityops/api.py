"""The API ``cityops api`` serves: the case API with the scenes' endpoints (uvicorn's factory)."""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI

from cases.api import RouteInstaller, create_app
from cases.catalog import Catalog, load_catalog
from cityops.settings import load_settings
from scenes.api import install_routes as scenes_routes

#: The endpoints other packages add to the case API: the dictionary and the detections.
ROUTES: Final[tuple[RouteInstaller, ...]] = (scenes_routes,)


def build_app(database_url: str, catalog: Catalog, **options: Any) -> FastAPI:
    """The case API with every package's endpoints (``options``: as ``create_app`` takes)."""
    return create_app(database_url, catalog, routes=ROUTES, **options)


def app_from_settings() -> FastAPI:
    """The API as configured (settings file and CITYOPS_* environment)."""
    settings = load_settings()
    catalog = load_catalog(settings.cases.catalog)
    return build_app(
        settings.database.url,
        catalog,
        pool_size=settings.cases.api_pool_size,
        escalate_every_s=settings.cases.escalate_every_s,
        evaluate_every_s=settings.cases.evaluate_every_s,
    )
