"""MQTT 3.1.1: chosen by hand on Mosquitto, and by itself against a broker without MQTT 5."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from cityops.services import embedded_broker
from cityops.settings import MqttSettings
from ingest.worker import choose_protocol
from tests.integration.test_ingest import count
from tests.plugin import Publisher, register, wait_for


def test_mqtt_3_1_1_with_a_shared_subscription_lands_rows(
    conn, tag, mosquitto_url, make_settings, start_worker, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    settings = make_settings()
    settings = settings.model_copy(
        update={
            "mqtt": settings.mqtt.model_copy(
                update={"protocol": "3.1.1", "shared_group": f"g{tag}"}
            )
        }
    )
    running = start_worker(settings)
    publisher.publish_many(
        [
            (
                f"cityops/v1/manhole/{device}/telemetry",
                f'{{"ts": {1_764_000_000_000 + i}, "tilt_deg": 1}}',
            )
            for i in range(100)
        ]
    )
    wait_for(lambda: count(conn, "manhole_readings", device) == 100, what="100 rows over 3.1.1")
    assert running.metric("cityops_ingest_rows_total", kind="manhole", result="inserted") == 100


def test_a_broker_without_mqtt_5_is_spoken_to_in_3_1_1(
    conn, tag, tmp_path, make_settings, start_worker
) -> None:
    with embedded_broker(tmp_path / "amqtt") as url:
        assert choose_protocol(MqttSettings(url=url)) == mqtt.MQTTProtocolVersion.MQTTv311
        device = f"{tag}-lt"
        register(conn, {device: "light"})
        settings = make_settings()
        settings = settings.model_copy(
            update={"mqtt": settings.mqtt.model_copy(update={"url": url})}
        )
        start_worker(settings)
        publisher = Publisher(url, mqtt.MQTTProtocolVersion.MQTTv311)
        try:
            publisher.publish(f"cityops/v1/light/{device}/telemetry", '{"lamp_on": true}')
            wait_for(lambda: count(conn, "light_readings", device) == 1, what="row via amqtt")
        finally:
            publisher.close()
