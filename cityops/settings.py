"""Settings: one TOML file plus ``CITYOPS_*`` environment overrides, parsed once at the edge.

Precedence, highest first: environment (``CITYOPS_DATABASE_URL``, ``CITYOPS_INGEST_BATCH_MAX_ROWS``,
...), the TOML file (``--config``, else ``$CITYOPS_CONFIG``, else ``./config/cityops.toml`` when it
exists), then the defaults below. Every section forbids unknown keys, so a typo is an error.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import (
    Field,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cases.settings import CasesSettings
from devices.settings import BrokerSettings, RegistrySettings
from ingest.settings import IngestSettings
from scenes.settings import ScenesSettings
from sections import Section
from store.settings import DatabaseSettings
from wire.mqtt import MqttSettings

DEFAULT_CONFIG_PATH = Path("config/cityops.toml")


class MetricsSettings(Section):
    """The Prometheus endpoint."""

    host: str = Field(default="127.0.0.1")
    port: int = Field(
        default=9108, ge=0, le=65535, description="cityops ingest's port; 0 disables it."
    )
    scenes_port: int = Field(
        default=9109, ge=0, le=65535, description="cityops scenes run's port; 0 disables it."
    )


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
    broker: BrokerSettings = BrokerSettings()
    cases: CasesSettings = CasesSettings()
    scenes: ScenesSettings = ScenesSettings()
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
