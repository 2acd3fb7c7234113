"""The dashboards and Grafana alert rules `cityops grafana build` writes: stable, valid for the
builder's schema, the committed files current, and the alert rules the Prometheus rules'.
(Their SQL runs against a simulated city in tests/integration/test_dashboards.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from typer.testing import CliRunner

from cityops import grafana
from cityops.cli import app
from wire.contract import READING_KINDS

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "config" / "grafana"
RULES = ROOT / "config" / "prometheus" / "alerts.yml"


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for sub in ("dashboards", "provisioning/alerting")
        for p in sorted((folder / sub).glob("*"))
    }


def test_building_twice_gives_the_same_bytes_and_the_committed_files_are_a_fresh_build(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    for out in ("a", "b"):
        done = runner.invoke(
            app, ["grafana", "build", "--out", str(tmp_path / out), "--rules", str(RULES)]
        )
        assert done.exit_code == 0, done.output
    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert first == second
    assert sorted(first) == sorted(
        [f"dashboards/{b.uid}.json" for b in grafana.DASHBOARDS]
        + ["provisioning/alerting/rules.yaml"]
    )
    # the hand-written notification policies live beside the generated rules
    committed = {
        k: v for k, v in files(COMMITTED).items() if k != "provisioning/alerting/notifications.yaml"
    }
    stale = sorted(k for k in first if committed.get(k) != first[k])
    assert not stale, f"run `cityops grafana build` and commit: {stale} differ"
    assert sorted(committed) == sorted(first)


def test_each_dashboard_reads_back_through_the_builder_s_schema_unchanged() -> None:
    plugins.register_default_plugins()
    for board in grafana.DASHBOARDS:
        text = grafana.dashboard_json(board)
        model = Dashboard.from_json(json.loads(text))
        assert JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n" == text, board.uid
        assert model.uid == board.uid
        panels = model.panels or []
        assert len(panels) == len(board.panels)
        assert sorted(p.id_val for p in panels) == list(range(1, len(panels) + 1))
        for panel in panels:
            grid = panel.grid_pos
            assert grid is not None
            assert grid.x >= 0
            assert grid.x + grid.w <= 24


def test_the_six_dashboards_operators_asked_for() -> None:
    titles = {b.uid: b.title for b in grafana.DASHBOARDS}
    assert titles == {
        "cityops-overview": "City overview",
        "cityops-covers": "Manhole covers",
        "cityops-roads": "Clean roads",
        "cityops-lighting": "Street lighting",
        "cityops-cases": "Cases and evaluation",
        "cityops-platform": "Platform health",
    }
    kinds = {b.uid: {p.kind for p in b.panels} for b in grafana.DASHBOARDS}
    for uid in ("cityops-overview", "cityops-covers", "cityops-roads"):
        assert "geomap" in kinds[uid]
    # the time series over readings read the hourly rollups, never the raw tables
    for board in grafana.DASHBOARDS:
        for title, query in grafana.sql_queries(board):
            assert not any(kind.table in query.sql for kind in READING_KINDS), (board.uid, title)


def test_the_grafana_alert_rules_are_the_prometheus_rules() -> None:
    prometheus_rules = yaml.safe_load(RULES.read_text())
    built = grafana.alert_rules(prometheus_rules)
    ours = {r["title"]: r for g in built["groups"] for r in g["rules"]}
    theirs = {r["alert"]: r for g in prometheus_rules["groups"] for r in g["rules"]}
    assert (
        sorted(ours)
        == sorted(theirs)
        == sorted(
            [
                "CityopsIngestStalled",
                "CityopsIngestLagHigh",
                "CityopsQuarantineSurge",
                "CityopsSceneBehind",
                "CityopsCriticalCasesOverdue",
                "CityopsOfflineSurge",
            ]
        )
    )
    for name, rule in ours.items():
        query, condition = rule["data"]
        assert query["datasourceUid"] == grafana.PROMETHEUS_UID
        assert query["model"]["expr"] == theirs[name]["expr"].strip()
        assert condition["model"]["expression"] == "is_number($A) || is_nan($A) || is_inf($A)"
        assert rule["condition"] == "B"
        assert rule["for"] == theirs[name]["for"]
        assert rule["labels"]["severity"] == theirs[name]["labels"]["severity"]
        assert rule["noDataState"] == "OK"
        assert "$value " not in json.dumps(rule["annotations"])
    assert (
        "{{ $values.A.Value | humanizeDuration }}"
        in ours["CityopsIngestLagHigh"]["annotations"]["summary"]
    )
    uids = [r["uid"] for r in ours.values()]
    assert len(set(uids)) == len(uids)
    assert "cityops-ingest-lag-high" in uids


def test_a_bad_rules_file_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "alerts.yml"
    bad.write_text("groups: [ {name: x, rules: [ {alert: X} ] }")
    done = CliRunner().invoke(
        app, ["grafana", "build", "--out", str(tmp_path / "out"), "--rules", str(bad)]
    )
    assert done.exit_code == 2
    assert done.output.startswith(f"error: {bad} is not a Prometheus rules file")
    assert len(done.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(
        app, ["grafana", "build", "--out", str(tmp_path / "out"), "--rules", str(tmp_path / "no")]
    )
    assert missing.exit_code == 2
    assert "No such file or directory" in missing.output


def test_render_expands_the_macros_and_variables_as_grafana_does() -> None:
    start = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    end = datetime(2026, 11, 2, 12, 30, 5, tzinfo=UTC)
    sql = (
        "select * from t where $__timeFilter(ts) and d = '$district' and n = '$night' "
        "and m between $__timeFrom()::date and $__timeTo()::date and x = '${district}x'"
    )
    assert grafana.render(
        sql, start=start, end=end, variables={"district": "d1", "night": "2026-11-01"}
    ) == (
        "select * from t where ts BETWEEN '2026-11-01T00:00:00Z' AND '2026-11-02T12:30:05Z' "
        "and d = 'd1' and n = '2026-11-01' and m between '2026-11-01T00:00:00Z'::date and "
        "'2026-11-02T12:30:05Z'::date and x = 'd1x'"
    )
