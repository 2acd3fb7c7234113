"""Registry imports through the CLI against a real database: all or nothing, errors by line."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cityops.cli import app


@pytest.fixture
def cli(database_url: str):
    runner = CliRunner()

    def invoke(*args: str, **env: str):
        return runner.invoke(
            app, list(args), env={"CITYOPS_DATABASE_URL": database_url, "CITYOPS_CONFIG": "", **env}
        )

    return invoke


@pytest.fixture
def units(conn: psycopg.Connection, tag: str) -> dict[str, str]:
    ids = {"water": f"{tag}-water", "gas": f"{tag}-gas"}
    conn.cursor().executemany(
        "insert into units (unit_id, name, level, kind) values (%s, %s, 'district', %s)",
        [(uid, f"{kind} company", kind) for kind, uid in ids.items()],
    )
    return ids


def serial(tag: str, n: int) -> str:
    return f"{int(tag, 16) % 10**5:05d}{n}"


def test_assets_csv_imports_with_code_parts_and_default_cover_category(
    cli, conn, tag, units, tmp_path: Path
) -> None:
    code = f"2101020101{serial(tag, 1)}"  # division 210102, major 01, minor 01 (water supply)
    gas = f"2101020111{serial(tag, 2)}"
    path = tmp_path / "assets.csv"
    path.write_text(
        "code,owner_unit_id,lat,lon,accuracy_class,name\n"
        f"{code},{units['water']},41.80,123.43,A,cover one\n"
        f"{gas},{units['gas']},41.81,123.44,,\n",
        encoding="utf-8",
    )
    result = cli("assets", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "2 assets (2 new, 0 updated)" in result.output
    assert conn.execute(
        "select division, major, minor, serial, category, owner_unit_id, "
        "accuracy_class from assets where code = %s",
        (code,),
    ).fetchone() == ("210102", "01", "01", serial(tag, 1), "water_supply", units["water"], "A")
    assert conn.execute("select category from assets where code = %s", (gas,)).fetchone() == (
        "gas",
    )
    shown = cli("assets", "show", code)
    assert shown.exit_code == 0
    assert "water company" in shown.output
    assert "cover one" in shown.output
    again = cli("assets", "import", str(path))
    assert "2 assets (0 new, 2 updated)" in again.output


def test_a_file_with_bad_rows_imports_nothing_and_names_each_line(
    cli, conn, tag, units, tmp_path: Path
) -> None:
    good = f"2101020101{serial(tag, 3)}"
    path = tmp_path / "assets.csv"
    path.write_text(
        "code,owner_unit_id,lat\n"
        f"{good},{units['water']},41.8\n"
        "12345,,\n"
        f"2101020101{serial(tag, 4)},no-such-unit,\n"
        f"2101020101{serial(tag, 5)},,95\n"
        f"2101029901{serial(tag, 6)},,\n"
        f"{good},,\n",
        encoding="utf-8",
    )
    result = cli("assets", "import", str(path))
    assert result.exit_code == 2
    out = result.output
    assert "line 3: code = '12345'" in out
    assert "line 4: owner_unit_id = 'no-such-unit': no such unit" in out
    assert "line 5: lat = '95'" in out
    assert "line 6: category is required" in out
    assert f"line 7: code '{good}' repeats line 2" in out
    assert "nothing imported" in out
    assert conn.execute("select count(*) from assets where code = %s", (good,)).fetchone() == (0,)


def test_newer_code_scheme_splits_codes_its_own_way(cli, conn, tag, tmp_path: Path) -> None:
    code = f"210102010{serial(tag, 7)}1"
    path = tmp_path / "assets.csv"
    path.write_text(f"code,category\n{code},manhole_cover\n", encoding="utf-8")
    result = cli("assets", "import", str(path), CITYOPS_REGISTRY_CODE_SCHEME="6+2+3+5")
    assert result.exit_code == 0, result.output
    assert conn.execute(
        "select division, major, minor, serial from assets where code = %s", (code,)
    ).fetchone() == ("210102", "01", code[8:11], code[11:])


def test_devices_geojson_needs_only_id_and_type(cli, conn, tag, tmp_path: Path) -> None:
    path = tmp_path / "devices.geojson"
    features = [
        {
            "type": "Feature",
            "geometry": None,
            "properties": {"device_id": f"{tag}-gw", "type": "gateway"},
        },
        {
            "type": "Feature",
            "geometry": None,
            "properties": {
                "device_id": f"{tag}-lt",
                "type": "light",
                "gateway_id": f"{tag}-gw",
                "firmware": "1.0.3",
            },
        },
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    result = cli("devices", "import", str(path))
    assert result.exit_code == 0, result.output
    assert conn.execute(
        "select type, gateway_id, firmware from devices where device_id = %s", (f"{tag}-lt",)
    ).fetchone() == ("light", f"{tag}-gw", "1.0.3")


def test_devices_file_with_unknown_type_or_gateway_is_refused_whole(
    cli, conn, tag, tmp_path: Path
) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(
        "device_id,type,gateway_id\n"
        f"{tag}-a,manhole,\n"
        f"{tag}-b,toaster,\n"
        f"{tag}-c,light,{tag}-nowhere\n",
        encoding="utf-8",
    )
    result = cli("devices", "import", str(path))
    assert result.exit_code == 2
    assert "line 3: type = 'toaster'" in result.output
    assert f"line 4: gateway_id = '{tag}-nowhere': no such gateway" in result.output
    assert conn.execute(
        "select count(*) from devices where device_id like %s", (f"{tag}-%",)
    ).fetchone() == (0,)
