"""The ``[registry]`` and ``[broker]`` settings sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from devices.codes import CodeScheme
from devices.credentials import DEFAULT_ITERATIONS
from sections import Section
from wire.mqtt import check_mqtt_url


class RegistrySettings(Section):
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


class BrokerSettings(Section):
    """Who may connect to the broker: the files ``cityops broker sync`` keeps, and the CA."""

    ca_dir: Path | None = Field(
        default=None,
        description="The deployment's CA (cityops pki init): device certificates and the CRL.",
    )
    password_file: Path | None = Field(
        default=None,
        description="Mosquitto's password_file of the devices' listeners (cityops broker sync).",
    )
    service_password_file: Path | None = Field(
        default=None,
        description=(
            "The services' listener's own password_file (per_listener_settings): a device's "
            "password opens no services' listener. Empty: the services' logins are in "
            "password_file too."
        ),
    )
    acl_file: Path | None = Field(
        default=None, description="Mosquitto's acl_file, written by cityops broker sync."
    )
    crl_file: Path | None = Field(
        default=None,
        description="The device listener's crlfile: revoked certificates (needs ca_dir).",
    )
    pid_file: Path | None = Field(
        default=None,
        description=(
            "Mosquitto's pid_file: a sync that changed a file sends the broker SIGHUP, which "
            "reloads the files and disconnects every client they no longer admit."
        ),
    )
    control_url: str | None = Field(
        default=None,
        description=(
            "mqtts://control:PASSWORD@host:port of the services' listener (verified against "
            "ca_dir's CA): the sync ends a revoked certificate's connection by taking over its "
            "client id (a reload does not end TLS sessions). Empty: they stay until they "
            "reconnect."
        ),
    )
    sync_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="broker sync --watch re-reads the registry this often (expiry), and at once "
        "on every change it is notified of.",
    )

    password_iterations: int = Field(
        default=DEFAULT_ITERATIONS,
        ge=1,
        le=1_000_000,
        description="PBKDF2 iterations of new passwords (32 random bytes each; docs/security.md).",
    )

    @field_validator("control_url")
    @classmethod
    def _is_control_url(cls, value: str | None) -> str | None:
        return value if value is None else check_mqtt_url(value)
