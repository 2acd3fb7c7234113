"""MQTT 3.1.1: chosen by hand on Mosquitto, and by itself against a broker without MQTT 5;
persistent sessions or none, in both versions."""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
import pytest

from cityops.services import embedded_broker
from tests.integration.test_ingest import count
from tests.plugin import Publisher, register, session_present, wait_for
from wire.mqtt import BrokerUnavailableError, MqttSettings, choose_protocol


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
        assert choose_protocol(MqttSettings(url=url)) == (
            mqtt.MQTTProtocolVersion.MQTTv311,
            "fallback",
        )
        device = f"{tag}-lt"
        register(conn, {device: "light"})
        settings = make_settings()
        settings = settings.model_copy(
            update={"mqtt": settings.mqtt.model_copy(update={"url": url})}
        )
        running = start_worker(settings)
        assert (
            running.metric("cityops_ingest_mqtt_protocol_info", version="3.1.1", chosen="fallback")
            == 1
        )
        publisher = Publisher(url, mqtt.MQTTProtocolVersion.MQTTv311)
        try:
            publisher.publish(f"cityops/v1/light/{device}/telemetry", '{"lamp_on": true}')
            wait_for(lambda: count(conn, "light_readings", device) == 1, what="row via amqtt")
        finally:
            publisher.close()


def test_a_broker_that_does_not_answer_is_unavailable_not_old() -> None:
    """Silence is no refusal: no fallback to 3.1.1 (and no unshared subscription) on a timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []
        acceptor = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
        acceptor.start()
        port = server.getsockname()[1]
        settings = MqttSettings(url=f"mqtt://127.0.0.1:{port}", connect_timeout_s=0.5)
        with pytest.raises(BrokerUnavailableError, match=r"did not answer within 0\.5 s"):
            choose_protocol(settings)
        acceptor.join()
        for peer in accepted:
            peer.close()


def test_mqtt_5_is_negotiated_with_mosquitto(mosquitto_url: str) -> None:
    assert choose_protocol(MqttSettings(url=mosquitto_url)) == (
        mqtt.MQTTProtocolVersion.MQTTv5,
        "negotiated",
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize(("session_expiry_s", "is_kept"), [(0, False), (3600, True)])
def test_a_worker_leaves_a_session_behind_only_when_it_keeps_one(
    mosquitto_url, make_settings, start_worker, protocol: str, session_expiry_s: int, is_kept: bool
) -> None:
    settings = make_settings()
    mqtt_settings = settings.mqtt.model_copy(
        update={"protocol": protocol, "session_expiry_s": session_expiry_s}
    )
    running = start_worker(settings.model_copy(update={"mqtt": mqtt_settings}))
    running.close()
    assert session_present(mosquitto_url, mqtt_settings.client_id) is is_kept
