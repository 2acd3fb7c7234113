"""Settings: the shipped file equals the defaults; errors name key, value and reason."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cityops.cli import app
from cityops.settings import Settings, SettingsError, load_settings
from scenes.settings import CoverThresholds, HealthThresholds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CITYOPS_"):
            monkeypatch.delenv(name)


def test_shipped_config_file_lists_every_default() -> None:
    text = (ROOT / "config/cityops.toml").read_text()
    shipped = tomllib.loads(text)
    defaults = {
        section: Settings.model_fields[section].default.model_dump(mode="json")
        for section in Settings.model_fields
    }
    # TOML has no null: a key whose default is "not set" is listed commented out
    unset = {key for keys in defaults.values() for key, value in keys.items() if value is None}
    assert unset
    assert unset <= set(re.findall(r"(?m)^# (\w+) = ", text))
    set_defaults = {
        section: {k: v for k, v in keys.items() if v is not None}
        for section, keys in defaults.items()
    }
    assert shipped == set_defaults


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOPS_DATABASE_URL", "postgresql://u@db.example:5433/city")
    monkeypatch.setenv("CITYOPS_MQTT_URL", "mqtts://dev:s%40cret@broker.example")
    monkeypatch.setenv("CITYOPS_INGEST_BATCH_MAX_ROWS", "1234")
    settings = load_settings(ROOT / "config/cityops.toml")
    assert settings.database.url == "postgresql://u@db.example:5433/city"
    assert settings.ingest.batch_max_rows == 1234
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.is_tls) == (
        "broker.example",
        8883,
        True,
    )
    assert (settings.mqtt.username, settings.mqtt.password) == ("dev", "s@cret")


def test_every_bad_key_is_reported_with_its_value_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[database]\nurl = "mysql://x"\n[ingest]\nbatch_max_rows = 0\n'
        'flush_interval = 1\n[registry]\ncode_scheme = "6+2+2"\n'
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    problems = {key: (value, reason) for key, value, reason in caught.value.problems}
    assert problems["database.url"][0] == "mysql://x"
    assert "postgresql://" in problems["database.url"][1]
    assert problems["ingest.batch_max_rows"][0] == 0
    assert "greater than or equal to 1" in problems["ingest.batch_max_rows"][1]
    assert "ingest.flush_interval" in problems  # a typo, not silently ignored
    assert "four widths summing to 16" in problems["registry.code_scheme"][1]


def test_config_check_prints_file_key_value_reason_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[mqtt]\nkeepalive_s = 1\n")
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: mqtt.keepalive_s = 1: Input should be greater than or equal to 5" in (
        result.output
    )
    good = CliRunner().invoke(app, ["config", "check", str(ROOT / "config/cityops.toml")])
    assert good.exit_code == 0
    assert good.output.strip().endswith(": ok")


def test_syntax_error_and_missing_file_are_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[database\n")
    with pytest.raises(SettingsError, match="syntax"):
        load_settings(broken)
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_receive_window_must_hold_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text("[ingest]\nbatch_max_rows = 5000\nbuffer_max_messages = 1000\n")
    with pytest.raises(SettingsError, match=r"receive window.* = 1000, must be at least"):
        load_settings(path)


def test_receive_window_is_bounded_by_bytes_too(tmp_path: Path) -> None:
    path = tmp_path / "bytes.toml"
    path.write_text(
        "[ingest]\nbatch_max_rows = 100\nbuffer_max_messages = 20000\n"
        "buffer_max_bytes = 10485760\nmax_payload_bytes = 61440\n"
    )
    # 10 MiB of packets of 60 KiB payload + 4 KiB topic and header: 160 messages, not 20,000.
    assert load_settings(path).ingest.receive_window == 160
    path.write_text("[ingest]\nbatch_max_rows = 200\nbuffer_max_bytes = 10485760\n")
    with pytest.raises(SettingsError, match=r"= 150, must be at least batch_max_rows \(200\)"):
        load_settings(path)


def test_a_session_is_kept_for_a_minute_at_least_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_text("[mqtt]\nsession_expiry_s = 30\n")
    with pytest.raises(
        SettingsError, match=r"0 \(no persistent session\) or at least 60 s, got 30"
    ):
        load_settings(path)
    path.write_text("[mqtt]\nsession_expiry_s = 0\n")
    assert not load_settings(path).mqtt.is_persistent_session
    assert load_settings(ROOT / "config/cityops.toml").mqtt.is_persistent_session


@pytest.mark.parametrize(
    "topic_filter",
    [
        "cityops/v2/#",
        "$share/g/cityops/v1/#",
        "cityops/v1/#/telemetry",
        "cityops/v1/man#",
        "cityops/v1/",
    ],
)
def test_a_topic_filter_outside_the_contract_or_malformed_is_refused(
    tmp_path: Path, topic_filter: str
) -> None:
    path = tmp_path / "filters.toml"
    path.write_text(f'[mqtt]\ntopic_filters = ["cityops/v1/light/#", "{topic_filter}"]\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    [(key, value, reason)] = caught.value.problems
    assert (key, value) == ("mqtt.topic_filters", ["cityops/v1/light/#", topic_filter])
    assert f"{topic_filter!r} is not an MQTT topic filter under cityops/v1/" in reason


def test_a_partition_of_the_topic_space_is_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CITYOPS_MQTT_TOPIC_FILTERS", '["cityops/v1/light/#", "cityops/v1/+/+/status"]'
    )
    settings = load_settings(ROOT / "config/cityops.toml")
    assert settings.mqtt.topic_filters == ("cityops/v1/light/#", "cityops/v1/+/+/status")


def test_a_threshold_set_by_category_and_by_component_wins_in_that_order() -> None:
    covers = CoverThresholds(
        tilt_deg=10,
        categories={"0103": {"tilt_deg": 20, "water_cm": 60}},
        assets={"2101020103000001": {"tilt_deg": 30}},
    )
    storm = covers.for_component("0103", "2101020103000002")
    assert (storm.tilt_deg, storm.water_cm, storm.sustain_s) == (20, 60, 5)
    own = covers.for_component("0103", "2101020103000001")
    assert (own.tilt_deg, own.water_cm) == (30, 60)
    assert covers.for_component("0101", None) is covers  # nothing set otherwise
    assert "categories" not in own.in_force()
    assert own.in_force()["tilt_deg"] == 30


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"tilt": 20}, "categories.0103: tilt: not a threshold here"),
        ({"tilt_deg": 95}, "categories.0103.tilt_deg: Input should be less than 90"),
    ],
)
def test_an_override_is_checked_as_the_section_is(override: dict, reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        CoverThresholds(categories={"0103": override})
    with pytest.raises(ValidationError, match="flood_min_readings"):
        HealthThresholds(assets={"2101020103000001": {"flood_min_readings": 0}})
