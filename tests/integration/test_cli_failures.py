"""Every command, run as a user runs it: no password in its output or logs, failures in one line.

The URLs carry a password (PostgreSQL with trust authentication and Mosquitto with anonymous
access accept and ignore it), so a command that prints or logs a URL, an error or a traceback
with the URL in it would show it here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.plugin import ROOT, create_database, drop_database

PASSWORD = "pw-Zq7-never-shown"  # the secret the test looks for


def with_password(url: str, user: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{PASSWORD}@{parts.hostname}:{parts.port}").geturl()


@pytest.fixture
def env(database_url: str, broker_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CITYOPS_DATABASE_URL": with_password(database_url, "postgres"),
        "CITYOPS_MQTT_URL": with_password(broker_url, "ingest"),
        "CITYOPS_METRICS_PORT": "0",
        "CITYOPS_CASES_CATALOG": str(ROOT / "config" / "categories.toml"),
        "COLUMNS": "200",
    }


def cityops(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityops", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_command_shows_a_password_from_its_urls(env: dict[str, str], tmp_path: Path) -> None:
    city = tmp_path / "city"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("device_id,type\nmh-1,toaster\n")
    commands = [  # (arguments, exit code)
        (("config", "check"), 0),
        (("migrate",), 0),
        (("sim", "city", "--out", str(city), "--seed", "7", "--covers", "20", "--lamps", "40"), 0),
        (("city", "import", str(city)), 0),
        (("devices", "import", str(bad_csv)), 2),
        (("assets", "show", "0000000000000000"), 2),
        (("sim", "run", "--city", str(city), "--duration", "2", "--rate", "2000"), 0),
        (("sim", "abuse", "--city", str(city), "--count", "1"), 0),
        (("cases", "list"), 0),
        (("cases", "escalate"), 0),
        (("cases", "evaluate", "--month", "2026-11"), 0),
        (("scenes", "detections", "--all"), 0),
        (("scenes", "ack", "999999999999", "--by", "night-shift"), 2),
        (("units", "token", "no-such-unit"), 2),
        (("contract",), 0),
    ]
    for args, code in commands:
        done = cityops(env, *args, cwd=tmp_path)
        shown = done.stdout + done.stderr
        assert (done.returncode, args) == (code, args), shown
        assert PASSWORD not in shown, args
        assert "Traceback" not in shown, (args, shown)
    ingest = subprocess.Popen(
        [sys.executable, "-m", "cityops", "ingest"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert ingest.stderr is not None
    seen = []
    for line in ingest.stderr:
        seen.append(line)
        if "subscribed to" in line:
            break
    ingest.send_signal(signal.SIGTERM)
    _, rest = ingest.communicate(timeout=60)
    log = "".join(seen) + rest
    assert "connected to mqtt://ingest:***@" in log
    assert PASSWORD not in log
    assert ingest.returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("migrate",), "cannot connect to the database server at postgresql://postgres:***@"),
        (("assets", "show", "1"), "cannot connect to the database at postgresql://postgres:***@"),
        (("cases", "list"), "cannot connect to the database at postgresql://postgres:***@"),
        (("units", "token", "u1"), "cannot connect to the database at postgresql://postgres:***@"),
        (("sim", "abuse", "--city", "."), "cannot reach the MQTT broker at mqtt://ingest:***@"),
    ],
)
def test_an_unreachable_service_ends_in_one_line_with_the_cause_and_exit_2(
    env: dict[str, str], tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    closed = "127.0.0.1:9"  # discard: nothing listens there
    env = {
        **env,
        "CITYOPS_DATABASE_URL": f"postgresql://postgres:{PASSWORD}@{closed}/cityops",
        "CITYOPS_MQTT_URL": f"mqtt://ingest:{PASSWORD}@{closed}",
    }
    done = cityops(env, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert PASSWORD not in done.stderr


def test_the_scenes_service_on_a_database_without_the_schema_says_to_migrate(
    env: dict[str, str], server_url: str, tmp_path: Path
) -> None:
    empty = create_database(server_url)  # not migrated
    try:
        env = {**env, "CITYOPS_DATABASE_URL": with_password(empty, "postgres")}
        done = cityops(env, "scenes", "run", cwd=tmp_path)
    finally:
        drop_database(server_url, empty)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip().splitlines()[-1].startswith("error: the schema is missing (relation ")
    )
    assert "run `cityops migrate` first" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Task was destroyed" not in done.stderr  # the other tasks ended cleanly
    assert PASSWORD not in done.stderr


def test_debug_shows_the_traceback(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "CITYOPS_DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:9/x"}
    done = cityops(env, "--debug", "units", "token", "u1", cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_config_check_shows_no_password_in_the_values_it_refuses(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "CITYOPS_MQTT_URL": f"http://ingest:{PASSWORD}@127.0.0.1:1883"}
    done = cityops(env, "config", "check", cwd=tmp_path)
    assert done.returncode == 2
    assert "mqtt.url = 'http://ingest:***@127.0.0.1:1883'" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_identity_commands_refuse_in_one_line_and_show_secrets_only_where_asked(
    env: dict[str, str], tmp_path: Path
) -> None:
    city = tmp_path / "city"
    passwords, rotated = tmp_path / "passwords.csv", tmp_path / "rotated.csv"
    for args in (
        ("sim", "city", "--out", str(city), "--seed", "8", "--covers", "20", "--lamps", "40"),
        ("city", "import", str(city)),
    ):
        assert cityops(env, *args, cwd=tmp_path).returncode == 0
    devices = str(city / "devices.csv")
    first = (city / "devices.csv").read_text().splitlines()[1].split(",")[0]
    refusals = [  # (arguments, what the one line says)
        (("devices", "credentials", "issue", "no-such-device"), "not registered: no-such-device"),
        (
            ("devices", "credentials", "issue", first, "--kind", "certificate", "--out", "c"),
            "certificates need broker.ca_dir",
        ),
        (("devices", "credentials", "rotate", first), "no live password credential to rotate"),
        (("devices", "credentials", "revoke", "no-such-device"), "no credential was ever issued"),
        (("devices", "credentials", "issue", "--kind", "key", first), "--kind 'key'"),
        (("devices", "retire", "no-such-device"), "not registered: no-such-device"),
        (("broker", "sync"), "set broker.password_file and broker.acl_file"),
        (("broker", "account", "x", "--role", "root"), "--role 'root'"),
        (("pki", "init"), "give --dir, or set broker.ca_dir"),
        (("units", "revoke", "no-such-unit"), "no unit 'no-such-unit'"),
    ]
    for args, expected in refusals:
        done = cityops(env, *args, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert (done.returncode, len(lines)) == (2, 1), (args, done.stdout + done.stderr)
        assert lines[0].startswith("error: ")
        assert expected in lines[0], (args, lines[0])
        assert PASSWORD not in done.stdout + done.stderr

    def credentials(action: str, out: Path) -> subprocess.CompletedProcess[str]:
        """``devices credentials ACTION`` for every device of the city, secrets into ``out``."""
        return cityops(
            env,
            "devices",
            "credentials",
            action,
            "--from",
            devices,
            "--out",
            str(out),
            cwd=tmp_path,
        )

    # written to the file only, which only its owner may read
    issued = credentials("issue", passwords)
    assert issued.returncode == 0, issued.stderr
    secrets = [line.split(",")[1] for line in passwords.read_text().splitlines()[1:]]
    assert len(secrets) == len((city / "devices.csv").read_text().splitlines()) - 1
    assert all(secret not in issued.stdout + issued.stderr for secret in secrets)
    assert passwords.stat().st_mode & 0o777 == 0o600
    again = cityops(env, "devices", "credentials", "issue", "--from", devices, cwd=tmp_path)
    assert again.returncode == 2
    assert "already have a password credential" in again.stderr
    assert "nothing issued" in again.stderr
    rotate = credentials("rotate", rotated)
    assert rotate.returncode == 0, rotate.stderr
    assert set(secrets).isdisjoint(line.split(",")[1] for line in rotated.read_text().splitlines())
    # an open broker takes the logins too: the same fleet, a connection per device
    fleet = cityops(
        env,
        "sim",
        "run",
        "--city",
        str(city),
        "--credentials",
        str(rotated),
        "--duration",
        "2",
        cwd=tmp_path,
    )
    assert fleet.returncode == 0, fleet.stderr
    assert PASSWORD not in fleet.stdout + fleet.stderr
    revoked = cityops(env, "devices", "credentials", "revoke", "--from", devices, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"{len(secrets)} credentials revoked")
    # the city's device ids are other tests' cities' too (sweepers' above all): issuing again
    # lets them speak, as before this test
    restored = credentials("issue", rotated)
    assert restored.returncode == 0, restored.stderr
