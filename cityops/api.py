"""The case API as configured: uvicorn's app factory (``cityops api``)."""

from __future__ import annotations

from fastapi import FastAPI

from cases.api import create_app
from cases.catalog import load_catalog
from cityops.settings import load_settings


def app_from_settings() -> FastAPI:
    """The API as configured (settings file and CITYOPS_* environment)."""
    settings = load_settings()
    catalog = load_catalog(settings.cases.catalog)
    return create_app(
        settings.database.url,
        catalog,
        pool_size=settings.cases.api_pool_size,
        escalate_every_s=settings.cases.escalate_every_s,
    )
