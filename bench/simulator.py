"""How fast one simulator process publishes, and the largest city it generates in a minute.

1. Publishing: a simulated run's messages are published flat out to a private Mosquitto (from
   config/mosquitto/cityops.conf) at QoS 1 and at QoS 0, with `simulator.publish.publish`; in
   the same run a bare paho client publishes the same pre-encoded messages in a plain loop, the
   ceiling for one Python process. Also reported: how fast the messages are generated.
2. City size: cities of doubling size (covers, half as many lamps) are generated and written as
   bundles until one takes longer than --budget-s; the largest within the budget is reported.

Usage: python bench/simulator.py [--messages 100000] [--budget-s 60]
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityops.services import start_mosquitto  # noqa: E402
from simulator.city import CitySpec, generate, write_bundle  # noqa: E402
from simulator.fleet import Publication, RunOptions, simulate  # noqa: E402
from simulator.publish import PublishOptions, publish  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from wire.mqtt import MqttSettings  # noqa: E402

START = 1_764_086_100.0  # 2025-11-25 23:55 in Shenyang: lamps on, sweepers start at midnight


def messages(n: int) -> tuple[list[Publication], float]:
    """At least n messages of a city's night, and how many were generated per second."""
    spec = CitySpec(seed=1, districts=2, covers=20_000, lamps=4_000, sweepers_per_district=4)
    city = generate(spec)
    began = time.perf_counter()
    run = simulate(city, Scenario(), RunOptions(start=START, duration_s=3 * 3600, seed=1))
    rate = len(run.publications) / (time.perf_counter() - began)
    if len(run.publications) < n:
        msg = f"the run has only {len(run.publications)} messages"
        raise SystemExit(msg)
    return run.publications[:n], rate


def bare(url: str, pubs: list[Publication], qos: int) -> float:
    s = MqttSettings(url=url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(400)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(s.host, s.port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    began = time.perf_counter()
    info = None
    window: deque[mqtt.MQTTMessageInfo] = deque()
    for p in pubs:
        info = client.publish(p.topic, p.payload, qos=qos)
        if qos:  # paho's message ids are 16-bit: keep the unconfirmed window below that
            window.append(info)
            if len(window) > 1_000:
                window.popleft().wait_for_publish(120)
    assert info is not None
    info.wait_for_publish(120)
    elapsed = time.perf_counter() - began
    client.disconnect()
    client.loop_stop()
    return len(pubs) / elapsed


def simulator(url: str, pubs: list[Publication], qos: int) -> float:
    report = publish(pubs, PublishOptions(url=url, qos=1 if qos else 0, speed=0), threading.Event())
    return report.rate


def largest_city(budget_s: float, cap_covers: int) -> dict[str, object]:
    covers, best = 12_500, None
    tried = []
    with tempfile.TemporaryDirectory() as tmp:
        while covers <= cap_covers:
            spec = CitySpec(
                seed=1, districts=max(1, covers // 10_000), covers=covers, lamps=covers // 2
            )
            began = time.perf_counter()
            counts = write_bundle(generate(spec), Path(tmp) / f"c{covers}")
            seconds = time.perf_counter() - began
            tried.append({"covers": covers, "lamps": covers // 2, "seconds": round(seconds, 1)})
            print(
                f"city with {covers:,} covers, {covers // 2:,} lamps, {counts['devices']:,} "
                f"devices: {seconds:.1f} s",
                flush=True,
            )
            if seconds > budget_s:
                break
            best = tried[-1]
            covers *= 2
    return {"largest_within_budget": best, "tried": tried}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--cap-covers", type=int, default=800_000)
    args = parser.parse_args()

    pubs, generated_per_s = messages(args.messages)
    print(f"generated messages at {generated_per_s:,.0f}/s", flush=True)
    results: dict[str, object] = {"generated_msgs_per_s": round(generated_per_s)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_mosquitto(ROOT / "config/mosquitto/cityops.conf", Path(tmp)) as url,
    ):
        for qos in (1, 0):
            ceiling = bare(url, pubs, qos)
            ours = simulator(url, pubs, qos)
            results[f"qos{qos}"] = {
                "simulator_msgs_per_s": round(ours),
                "bare_paho_msgs_per_s": round(ceiling),
                "ratio": round(ours / ceiling, 3),
            }
            print(
                f"QoS {qos}: simulator {ours:,.0f} msgs/s, bare paho {ceiling:,.0f} msgs/s "
                f"({ours / ceiling:.2f} x)",
                flush=True,
            )
    results["city"] = largest_city(args.budget_s, args.cap_covers)
    print(json.dumps({"bench": "simulator", "messages": len(pubs), **results}))


if __name__ == "__main__":
    main()
