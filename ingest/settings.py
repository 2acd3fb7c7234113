"""The ``[ingest]`` settings section: batching, validation limits, backpressure."""

from __future__ import annotations

from pydantic import Field, model_validator

from sections import Section

#: Room for an MQTT packet's topic, header and properties beside its payload.
_PACKET_OVERHEAD_BYTES = 4096


class IngestSettings(Section):
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
