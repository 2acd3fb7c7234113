"""Settings: one TOML file plus ``CITYOPS_*`` environment overrides, parsed once at the edge.

Precedence, highest first: environment (``CITYOPS_DATABASE_URL``, ``CITYOPS_INGEST_BATCH_MAX_ROWS``,
...), the TOML file (``--config``, else ``$CITYOPS_CONFIG``, else ``./config/cityops.toml`` when it
exists), then the defaults below. Every section forbids unknown keys, so a typo is an error.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from devices.codes import CodeScheme

DEFAULT_CONFIG_PATH = Path("config/cityops.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
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


class MqttSettings(_Section):
    """The broker ingest subscribes to."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL, mqtt://[user:password@]host:port, or mqtts:// for TLS.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="MQTT version; auto tries 5 and falls back to 3.1.1."
    )
    client_id: str = Field(
        default="cityops-ingest-1",
        min_length=1,
        max_length=23,
        description="Stable per worker: the broker keeps this session's messages while it is down.",
    )
    shared_group: str = Field(
        default="cityops",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="MQTT 5 shared-subscription group; empty subscribes without sharing.",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long the broker keeps this worker's queued messages while it is offline.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _is_mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            msg = f"expected an mqtt:// or mqtts:// URL, got scheme {parts.scheme!r}"
            raise ValueError(msg)
        if not parts.hostname:
            msg = "the URL names no host"
            raise ValueError(msg)
        return value

    @property
    def _parts(self) -> SplitResult:
        return urlsplit(self.url)

    @property
    def host(self) -> str:
        """Broker host name."""
        return self._parts.hostname or ""

    @property
    def port(self) -> int:
        """Broker port, 1883 or 8883 when the URL names none."""
        return self._parts.port or (8883 if self.is_tls else 1883)

    @property
    def is_tls(self) -> bool:
        """Whether the URL asks for TLS (mqtts://)."""
        return self._parts.scheme == "mqtts"

    @property
    def username(self) -> str | None:
        """User name from the URL, if any."""
        return unquote(self._parts.username) if self._parts.username else None

    @property
    def password(self) -> str | None:
        """Password from the URL, if any."""
        return unquote(self._parts.password) if self._parts.password else None


class IngestSettings(_Section):
    """Batching, validation and backpressure of the ingest worker."""

    batch_max_rows: int = Field(
        default=5000, ge=1, le=100_000, description="Flush once this many messages are buffered."
    )
    flush_interval_s: float = Field(
        default=0.25, gt=0, le=60, description="Flush at least this often while messages wait."
    )
    buffer_max_messages: int = Field(
        default=20_000,
        ge=1,
        le=65_535,
        description=(
            "Unacknowledged messages held at most; also the MQTT 5 Receive Maximum, so the broker "
            "stops sending when the database stalls."
        ),
    )
    max_payload_bytes: int = Field(
        default=256 * 1024,
        ge=64,
        description="Larger is quarantined; the quarantine keeps payloads whole up to this size.",
    )
    max_future_s: float = Field(
        default=300.0, ge=0, description="Readings dated further ahead than this are quarantined."
    )
    auto_register: bool = Field(
        default=False, description="Register unknown devices instead of quarantining them."
    )
    last_seen_resolution_s: float = Field(
        default=10.0,
        ge=0,
        description="devices.last_seen is written when it moves by at least this much.",
    )
    registry_refresh_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the registry changes since the last read are read (only those).",
    )
    retry_max_s: float = Field(
        default=5.0, gt=0, description="Longest wait between retries while the database is down."
    )

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> IngestSettings:
        # The broker stops sending when buffer_max_messages are unacknowledged; a batch that
        # cannot fill before that would only ever flush on the timer.
        if self.buffer_max_messages < self.batch_max_rows:
            msg = (
                f"buffer_max_messages ({self.buffer_max_messages}) must be at least "
                f"batch_max_rows ({self.batch_max_rows})"
            )
            raise ValueError(msg)
        return self


class RegistrySettings(_Section):
    """The device registry and the component dictionary."""

    code_scheme: str = Field(
        default="6+2+2+6",
        description="How 16-digit component codes split: division+major+minor+serial widths.",
    )

    @field_validator("code_scheme")
    @classmethod
    def _is_scheme(cls, value: str) -> str:
        CodeScheme.parse(value)
        return value

    @property
    def scheme(self) -> CodeScheme:
        """The parsed code scheme."""
        return CodeScheme.parse(self.code_scheme)


class CasesSettings(_Section):
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
    api_pool_size: int = Field(
        default=24,
        ge=1,
        le=500,
        description="Database connections of the API; concurrent commits share the WAL flush.",
    )


class MetricsSettings(_Section):
    """The Prometheus endpoint."""

    host: str = Field(default="127.0.0.1")
    port: int = Field(default=9108, ge=0, le=65535, description="0 disables the endpoint.")


class Settings(BaseSettings):
    """All of cityops' settings."""

    model_config = SettingsConfigDict(
        env_prefix="CITYOPS_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
    )

    database: DatabaseSettings = DatabaseSettings()
    mqtt: MqttSettings = MqttSettings()
    ingest: IngestSettings = IngestSettings()
    registry: RegistrySettings = RegistrySettings()
    cases: CasesSettings = CasesSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the TOML file over defaults."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class SettingsError(Exception):
    """The settings file or environment is invalid; ``problems`` lists (key, value, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, object, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key} = {value!r}: {reason}" for key, value, reason in problems]
        super().__init__("invalid settings:\n" + "\n".join(lines))


def resolve_config_path(path: Path | None) -> Path | None:
    """The settings file in force: the given one, $CITYOPS_CONFIG, or ./config/cityops.toml."""
    if path is not None:
        return path
    if env_path := os.environ.get("CITYOPS_CONFIG"):
        return Path(env_path)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_settings(path: Path | None = None) -> Settings:
    """Parse the settings once; raise SettingsError naming every bad key, value and reason."""
    config_path = resolve_config_path(path)
    source = str(config_path) if config_path else "environment"
    if config_path is not None:
        try:
            tomllib.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(source, [("(file)", str(config_path), "no such file")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(source, [("(syntax)", None, str(exc))]) from None

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_path)

    try:
        return _FromFile()
    except ValidationError as exc:
        problems = [
            (".".join(str(part) for part in err["loc"]), err.get("input"), err["msg"])
            for err in exc.errors()
        ]
        raise SettingsError(source, problems) from None
