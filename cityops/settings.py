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
from wire.topics import PREFIX_MAX_CHARS, TOPIC_ROOT, check_prefix

DEFAULT_CONFIG_PATH = Path("config/cityops.toml")
#: Room for an MQTT packet's topic, header and properties beside its payload.
_PACKET_OVERHEAD_BYTES = 4096


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
        default="",
        pattern=r"^[A-Za-z0-9_-]*$",
        description=(
            "MQTT 5 shared-subscription group; empty (the default) subscribes without sharing. "
            "Mosquitto does not keep shared subscriptions across its restarts: what arrives "
            "before the workers subscribe again is lost (docs/operations.md)."
        ),
    )
    topic_filters: tuple[str, ...] = Field(
        default=(f"{TOPIC_ROOT}/#",),
        min_length=1,
        description=(
            "What this worker subscribes to, each under topic_prefix. Several workers without a "
            "shared group each take their own part, together all of cityops/v1/#."
        ),
    )
    topic_prefix: str = Field(
        default="",
        max_length=PREFIX_MAX_CHARS,
        description=(
            "Topics live under {topic_prefix}/cityops/v1/... (empty: cityops/v1/...): ingest "
            "subscribes and decodes, and the simulator publishes, under it."
        ),
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description=(
            "How long the broker keeps this worker's queued messages while it is offline; 0: no "
            "persistent session (the demo's), so the broker forgets the worker when it leaves."
        ),
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("topic_filters")
    @classmethod
    def _are_contract_filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic_filter in value:
            levels = topic_filter.split("/")
            well_formed = "#" not in levels[:-1] and all(
                level in {"+", "#"} or (level and not {"+", "#"} & set(level)) for level in levels
            )
            if not (topic_filter.startswith(f"{TOPIC_ROOT}/") and well_formed):
                msg = f"{topic_filter!r} is not an MQTT topic filter under {TOPIC_ROOT}/"
                raise ValueError(msg)
        return value

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

    @field_validator("session_expiry_s")
    @classmethod
    def _keeps_a_session_or_none(cls, value: int) -> int:
        if 0 < value < 60:
            msg = f"0 (no persistent session) or at least 60 s, got {value}"
            raise ValueError(msg)
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _is_topic_prefix(cls, value: str) -> str:
        return check_prefix(value)

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
    def is_persistent_session(self) -> bool:
        """Whether the broker keeps this client's session (and its messages) while it is away."""
        return self.session_expiry_s > 0

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
        description="Unacknowledged messages held at most (see receive_window).",
    )
    buffer_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of unacknowledged messages held at most (see receive_window).",
    )
    max_payload_bytes: int = Field(
        default=64 * 1024,
        ge=64,
        le=16 * 1024 * 1024,
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

    @property
    def max_packet_bytes(self) -> int:
        """The largest MQTT packet ingest takes (MQTT 5 Maximum Packet Size).

        A payload of max_payload_bytes with its topic and header (topics here are < 100 bytes).
        """
        return self.max_payload_bytes + _PACKET_OVERHEAD_BYTES

    @property
    def receive_window(self) -> int:
        """Unacknowledged messages the broker may send at once: the MQTT 5 Receive Maximum.

        The broker enforces it, so the receiver never has to stop reading (which would
        stop keep-alives too): at most this many messages of at most max_packet_bytes each are
        held, which bounds memory by count and by bytes.
        """
        return min(self.buffer_max_messages, self.buffer_max_bytes // self.max_packet_bytes)

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> IngestSettings:
        # The broker stops sending when the window is unacknowledged; a batch that cannot fill
        # before that would only ever flush on the timer.
        if self.receive_window < self.batch_max_rows:
            msg = (
                f"the receive window, min(buffer_max_messages, buffer_max_bytes // "
                f"(max_payload_bytes + {_PACKET_OVERHEAD_BYTES})) = {self.receive_window}, must "
                f"be at least batch_max_rows ({self.batch_max_rows}): raise buffer_max_bytes or "
                "buffer_max_messages, or lower max_payload_bytes or batch_max_rows"
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
