"""The ``[scenes]`` settings section: what each scene judges, and how often the engine runs."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, PositiveFloat, ValidationError, model_validator

from sections import Section

_WHERE = frozenset({"categories", "assets"})


class Tunable(Section):
    """Thresholds that a component category or a single component may set otherwise.

    ``categories`` by component category (major + minor code: "0103" storm water), ``assets`` by
    component code; a component's own settings win over its category's, which win over the
    defaults. Each override is checked as the whole section would be.
    """

    categories: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Thresholds that differ by component category ("0103": storm water).',
    )
    assets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Thresholds that differ for one component (by its code), over its category's.",
    )

    @model_validator(mode="after")
    def _overrides_are_thresholds(self) -> Self:
        known = set(type(self).model_fields) - _WHERE
        for where in sorted(_WHERE):
            for key, changes in getattr(self, where).items():
                unknown = sorted(set(changes) - known)
                if unknown:
                    msg = (
                        f"{where}.{key}: {', '.join(unknown)}: not a threshold here; "
                        f"known: {', '.join(sorted(known))}"
                    )
                    raise ValueError(msg)
                try:
                    self._with(changes)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    msg = f"{where}.{key}.{first['loc'][0]}: {first['msg']}"
                    raise ValueError(msg) from None
        return self

    def for_component(self, category: str | None, asset_code: str | None) -> Self:
        """The thresholds in force for a component (both None: a device without one)."""
        changes = {
            **self.categories.get(category or "", {}),
            **self.assets.get(asset_code or "", {}),
        }
        return self._with(changes) if changes else self

    def in_force(self) -> dict[str, Any]:
        """The thresholds themselves, without the overrides (a detection's evidence)."""
        return self.model_dump(exclude=set(_WHERE))

    def _with(self, changes: dict[str, Any]) -> Self:
        return type(self).model_validate({**self.in_force(), **changes})


class CoverThresholds(Tunable):
    """When a manhole cover's readings become a detection (DOMAIN.md, manhole-cover sensors)."""

    tilt_deg: float = Field(
        default=10.0, gt=0, lt=90, description="Tilt beyond this is a displaced cover."
    )
    open_tilt_deg: float = Field(
        default=80.0, gt=0, le=180, description="Tilt beyond this, or the open switch: open."
    )
    sustain_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "A tilt must last this long to count; shorter ones are passing wheels (about 1-2 s). "
            "Field systems often wait 30 s; the alarm-to-case budget is 30 s in all."
        ),
    )
    loose_spikes: int = Field(
        default=3, ge=2, le=100, description="Short tilts within loose_window_s: a loose cover."
    )
    loose_window_s: float = Field(default=1800.0, gt=0, le=86_400)
    water_cm: float = Field(
        default=100.0, gt=0, description="Water above this level under a cover: water rising."
    )


class HealthThresholds(Tunable):
    """When a device's own state becomes a detection, for every device type."""

    interval_s: dict[str, PositiveFloat] = Field(
        default={"manhole": 3600.0, "light": 300.0, "sweeper": 86_400.0, "gateway": 300.0},
        description=(
            "How often each device type is expected to send something (seconds): heartbeats, "
            "readings or status. Sweepers send only while they work (a night shift), so a day."
        ),
    )
    offline_factor: float = Field(
        default=1.5,
        gt=1,
        le=100,
        description="Offline once nothing came for this many expected intervals.",
    )
    battery_pct: float = Field(default=15.0, gt=0, lt=100, description="Battery below: low.")
    clock_skew_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "A device clock further than this from the readings that arrived around its own is "
            "skewed (ahead beyond ingest.max_future_s is quarantined before it)."
        ),
    )
    clock_skew_batches: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Consecutive batches showing the skew before it counts (a backlog's one).",
    )
    flood_window_s: float = Field(
        default=600.0, gt=0, le=86_400, description="The window flooding is counted in."
    )
    flood_interval_s: dict[str, PositiveFloat] = Field(
        default={"manhole": 300.0, "light": 60.0, "sweeper": 1.0, "gateway": 60.0},
        description=(
            "The shortest interval each device type sends at in normal work (seconds): a "
            "cover's fast readings while water rises, a sweeper's GPS fix."
        ),
    )
    flood_factor: float = Field(
        default=10.0,
        gt=1,
        description="Flooding: more messages in the window than this many times that rate.",
    )
    flood_min_messages: int = Field(
        default=60,
        ge=1,
        description="and at least this many (an alarm and its repeats are no flood).",
    )

    def interval_s_of(self, device_type: str) -> float:
        """The expected interval of ``device_type`` (an hour for a type not listed)."""
        return self.interval_s.get(device_type, 3600.0)


class ScenesSettings(Section):
    """The scene engine."""

    interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often each partition runs without a wake-up."
    )
    lookback_s: float = Field(
        default=7200.0,
        gt=0,
        le=7 * 86_400,
        description="Readings before a batch's first one that a scene reads again with it.",
    )
    verify_s: float = Field(
        default=600.0,
        ge=0,
        le=7 * 86_400,
        description=(
            "A disposed case of a category with sensor verification closes itself once its "
            "sensor has read normal this long after the disposal."
        ),
    )
    covers: CoverThresholds = CoverThresholds()
    health: HealthThresholds = HealthThresholds()
