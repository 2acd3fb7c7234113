"""The reference deployment (deploy/compose.yaml) hangs together: what it mounts exists, each
service gets the settings its configuration asks for, the broker keeps cityops.conf's
guarantees, the ingest workers split every topic once, and Grafana's provisioning names the
datasources the dashboards use. (No container runtime here: docs/deploy.md says how it was run.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cityops import grafana
from wire.contract import TELEMETRY_KINDS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def directives(path: Path) -> dict[str, str]:
    """A Mosquitto configuration's settings, by name (comments and blank lines out)."""
    lines = [line.split(None, 1) for line in path.read_text().splitlines()]
    return {words[0]: words[1] for words in lines if words and not words[0].startswith("#")}


def test_the_deployment_s_broker_keeps_every_setting_of_cityops_conf() -> None:
    ours = directives(DEPLOY / "mosquitto.conf")
    theirs = directives(ROOT / "config" / "mosquitto" / "cityops.conf")
    assert ours.pop("listener") == "1883"  # every interface of the container
    assert theirs.pop("listener") == "1883 127.0.0.1"
    assert ours.pop("persistence_location") == "/mosquitto/data/"
    assert ours == theirs


def test_every_file_the_services_mount_exists_and_every_image_is_pinned() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
        image = service.get("image", "")
        assert ":" in image, name
        assert not image.endswith(":latest"), name
    assert (DEPLOY / SERVICES["migrate"]["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_the_ingest_workers_have_their_own_client_ids_and_split_every_device_type_once() -> None:
    workers = {n: s for n, s in SERVICES.items() if s.get("command") == ["ingest"]}
    assert len(workers) == 2
    ids = [s["environment"]["CITYOPS_MQTT_CLIENT_ID"] for s in workers.values()]
    assert len(set(ids)) == len(ids)
    filters = [
        f
        for s in workers.values()
        for f in json.loads(s["environment"]["CITYOPS_MQTT_TOPIC_FILTERS"])
    ]
    # every telemetry type and the gateways' batches
    assert sorted(filters) == sorted(f"cityops/v1/{t}/#" for t in [*TELEMETRY_KINDS, "gateway"])
    # Prometheus scrapes each of them, and finds the scenes and API processes by name
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus" / "compose.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["cityops_ingest"]["static_configs"][0]["targets"] == [f"{n}:9108" for n in workers]
    assert jobs["cityops_scenes"]["dns_sd_configs"][0]["names"] == ["scenes"]
    assert jobs["cityops_api"]["dns_sd_configs"][0]["names"] == ["api"]
    for service in ("scenes", "api"):
        assert service in SERVICES
        assert SERVICES[service]["environment"]["CITYOPS_METRICS_HOST"] == "0.0.0.0"


def test_grafana_gets_every_variable_its_provisioning_names_and_the_dashboards_uids() -> None:
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    wanted = {
        name
        for path in provisioning.rglob("*.yaml")
        for name in re.findall(r"\$\{(\w+)\}", path.read_text())
    }
    assert wanted  # the datasources' host, user, password...
    assert wanted <= set(SERVICES["grafana"]["environment"])
    datasources = yaml.safe_load((provisioning / "datasources" / "cityops.yaml").read_text())
    uids = {d["uid"]: d["type"] for d in datasources["datasources"]}
    assert uids == {
        grafana.POSTGRES_UID: "grafana-postgresql-datasource",
        grafana.PROMETHEUS_UID: "prometheus",
    }
    mounted = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"])
    provider = yaml.safe_load((provisioning / "dashboards" / "cityops.yaml").read_text())
    assert mounted["../config/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert provider["providers"][0]["folder"] == grafana.FOLDER
