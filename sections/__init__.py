"""The base of every settings section: typed, unknown keys refused, values frozen.

Each package owns its section (``store.settings``, ``wire.mqtt``, ``ingest.settings``,
``devices.settings``, ``cases.settings``); the shell composes them into one ``Settings``.
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A settings section (``[database]``, ``[ingest]``, ...): a typo in a key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
