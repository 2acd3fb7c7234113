"""The ``[scenes]`` settings section: what each scene judges, and how often the engine runs."""

from __future__ import annotations

from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PositiveFloat, ValidationError, field_validator, model_validator

from scenes.sky import Plan
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


class LightingThresholds(Tunable):
    """When a street lamp's readings become a detection (DOMAIN.md, street lighting)."""

    plan: str = Field(
        default="default",
        description=(
            "The switching plan (a key of [scenes.lighting_plans]) of lamps whose component "
            "and cabinet name none (property 'plan')."
        ),
    )
    switch_grace_s: float = Field(
        default=900.0,
        ge=0,
        le=7200,
        description="Around a planned switching time either state is right for this long.",
    )
    sustain_s: float = Field(
        default=600.0,
        ge=0,
        le=86_400,
        description="A wrong state must last this long to count (two reports at 5 min).",
    )
    hold_s: float = Field(
        default=900.0,
        gt=0,
        le=86_400,
        description="A reading tells the lamp's state for at most this long after it.",
    )
    lit_ratio: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Lit: drawing more than this share of rated power (else: the relay state).",
    )
    degraded_ratio: float = Field(
        default=0.7,
        gt=0,
        lt=1,
        description="Degraded: lit below this share of rated power at its dimming level.",
    )
    power_factor_min: float = Field(
        default=0.85, gt=0, lt=1, description="Lit with a power factor below this: low."
    )
    voltage_min_v: float = Field(default=198.0, gt=0, description="Supply below: under voltage.")
    voltage_max_v: float = Field(default=242.0, gt=0, description="Supply above: over voltage.")
    supply_min_v: float = Field(
        default=50.0,
        ge=0,
        description="Below this there is no supply at all (a dark cabinet), not under voltage.",
    )
    group_share: float = Field(
        default=0.8,
        gt=0.5,
        le=1,
        description=(
            "This share of a cabinet's (or circuit's) lamps dark when they should be lit: "
            "one cabinet (circuit) outage instead of lamp cases."
        ),
    )
    group_min_lamps: int = Field(
        default=3, ge=2, description="Cabinets and circuits with fewer lamps are not correlated."
    )

    @model_validator(mode="after")
    def _voltages_in_order(self) -> Self:
        if not self.supply_min_v < self.voltage_min_v < self.voltage_max_v:
            msg = "supply_min_v < voltage_min_v < voltage_max_v must hold"
            raise ValueError(msg)
        return self


class RoadsThresholds(Tunable):
    """When sweeper tracks make a road segment swept, and what is a finding (DOMAIN.md)."""

    tolerance_m: float = Field(
        default=20.0, gt=0, le=200, description="A fix farther from every segment matches none."
    )
    heading_tol_deg: float = Field(
        default=45.0, gt=0, le=90, description="A fix's heading this far from a segment's: not it."
    )
    noise_m: float = Field(default=5.0, gt=0, le=100, description="The GPS noise (1 sigma).")
    max_gap_s: float = Field(
        default=30.0, gt=0, le=3600, description="A longer gap between fixes covers nothing."
    )
    max_gap_speed_kmh: float = Field(
        default=18.0, gt=0, description="A gap implying a faster move covers nothing."
    )
    speed_margin_kmh: float = Field(
        default=0.5, ge=0, description="A pass may exceed the segment's limit by this (GPS)."
    )
    pass_share: float = Field(
        default=0.8, gt=0, le=1, description="A pass covers at least this share of its segment."
    )
    min_coverage: float = Field(
        default=0.9, gt=0, le=1, description="Covered below this share after the window: skipped."
    )
    gps_gap_s: float = Field(
        default=60.0, gt=0, description="A sweeper silent this long on its shift: a GPS gap."
    )
    shift_break_s: float = Field(
        default=1800.0, gt=0, description="A longer silence is the shift's end, not a gap."
    )
    settle_s: float = Field(
        default=600.0, ge=0, le=86_400, description="A night is judged this long after its windows."
    )


class AnomalyThresholds(Tunable):
    """When a model's score becomes an anomalous_behaviour detection (docs/models.md)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Score devices with their type's active model (`cityops models activate`); a "
            "component category or a component may opt out."
        ),
    )
    threshold: float = Field(
        default=0.0,
        ge=0,
        description=(
            "A window scoring this or more is anomalous; 0: the model's own threshold, "
            "chosen when it was trained (`cityops models show`)."
        ),
    )


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
    timezone: str = Field(
        default="Asia/Shanghai",
        description="The city's time zone (IANA): local nights and dimming schedules.",
    )
    covers: CoverThresholds = CoverThresholds()
    health: HealthThresholds = HealthThresholds()
    lighting: LightingThresholds = LightingThresholds()
    roads: RoadsThresholds = RoadsThresholds()
    anomalies: AnomalyThresholds = AnomalyThresholds()
    anomaly_interval_s: float = Field(
        default=3600.0,
        gt=0,
        le=86_400,
        description=(
            "How often the models score the devices' latest windows, apart from the rule "
            "scenes (whose alarms never wait for it)."
        ),
    )
    anomaly_backfill_h: int = Field(
        default=48,
        ge=1,
        le=24 * 90,
        description="Hours of windows scored at most when a device was not scored for long.",
    )
    lighting_plans: dict[str, Plan] = Field(
        default={"default": Plan()},
        description="Switching plans by name; a lamp's comes from its component or cabinet.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            msg = f"{value!r} is not an IANA time zone (Asia/Shanghai, Europe/Oslo, ...)"
            raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _plans_known(self) -> Self:
        named = {self.lighting.plan, *(o["plan"] for o in self._lighting_overrides())}
        unknown = sorted(named - set(self.lighting_plans))
        if unknown:
            msg = (
                f"lighting plan {', '.join(unknown)} is not in [scenes.lighting_plans] "
                f"(known: {', '.join(sorted(self.lighting_plans))})"
            )
            raise ValueError(msg)
        return self

    def _lighting_overrides(self) -> list[dict[str, Any]]:
        lighting = self.lighting
        return [
            o for o in (*lighting.categories.values(), *lighting.assets.values()) if "plan" in o
        ]

    @property
    def zone(self) -> ZoneInfo:
        """The city's time zone."""
        return ZoneInfo(self.timezone)
