"""The ``[registry]`` settings section."""

from __future__ import annotations

from pydantic import Field, field_validator

from devices.codes import CodeScheme
from sections import Section


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
