"""The ``[cases]`` settings section: the catalog and the case API."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from sections import Section


class CasesSettings(Section):
    """The case system and its HTTP API."""

    catalog: Path = Field(
        default=Path("config/categories.toml"), description="The problem catalog (TOML)."
    )
    api_host: str = Field(default="127.0.0.1")
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_workers: int = Field(
        default=2, ge=1, le=64, description="API server processes sharing the port."
    )
    escalate_every_s: float = Field(
        default=60.0, gt=0, le=3600, description="How often the API escalates overdue cases."
    )
    evaluate_every_s: float = Field(
        default=3600.0,
        gt=0,
        le=86400,
        description="How often the API stores the last and the current month's evaluation.",
    )
    api_pool_size: int = Field(
        default=24,
        ge=1,
        le=500,
        description="Database connections of the API; concurrent commits share the WAL flush.",
    )
