"""The ``[database]`` settings section."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from sections import Section


class DatabaseSettings(Section):
    """Where readings, the registry and cases live."""

    url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/cityops",
        description="PostgreSQL URL, postgresql://user[:password]@host:port/database.",
    )
    retention_days: int = Field(
        default=400,
        ge=1,
        le=36500,
        description="Readings older than this are dropped, by the day (TimescaleDB) or the week.",
    )
    compress_after_days: int = Field(
        default=7, ge=1, le=3650, description="TimescaleDB path: compress chunks older than this."
    )
    timescaledb: Literal["auto", "required", "off"] = Field(
        default="auto",
        description=(
            "auto: TimescaleDB when the server has it loaded, plain tables when it is not "
            "installed (installed but not preloaded is an error); required: TimescaleDB or "
            "fail; off: plain PostgreSQL tables."
        ),
    )

    @field_validator("url")
    @classmethod
    def _is_postgres_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("postgresql", "postgres"):
            msg = f"expected a postgresql:// URL, got scheme {scheme!r}"
            raise ValueError(msg)
        return value
