"""Bench: the tier-wide produce rate of one connector against its quota, with
its producers spread over two idemgate replicas (`[quota.shared]`), against
Apache Kafka 4.4 (bed.py). A measurement, never an assertion; run by
`scripts/bench-quota --tier`, recorded in docs/performance.md.

Shapes, in one run and on one broker:
- one replica, one producer: the quota as a single process enforces it;
- two replicas with [quota.shared], one producer through each;
- two replicas without it, one producer through each (each replica enforces
  the quota on its own: the tier lets through up to twice the quota).

Each producer (librdkafka, Connect's client id shape, 8 KiB values, 64 KiB
batches, acks=all) pushes as fast as the proxy lets it for --seconds. The
rate is what the proxies counted (request bytes, what the quota charges),
summed over the replicas, from --skip seconds in (past the burst and the
first reports) to the end.

    .cache/venv/bin/python proto-tests/kafka/bench_quota_tier.py [--quota-mib 1] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

from confluent_kafka import Producer

from bed import KafkaCluster, Proxy, unique
from test_quota_tier import tier_config

CONNECTOR = "tierbench"


def push(bootstrap: str, task: int, topic: str, stop: threading.Event, acked: list):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 65536, "queue.buffering.max.kbytes": 2048,
                  "client.id": f"connector-producer-{CONNECTOR}-{task}",
                  "message.timeout.ms": 300000})
    value = b"v" * 8192

    def done(err, msg):
        if err is None:
            acked[task] += len(msg.value())

    while not stop.is_set():
        try:
            p.produce(topic, value=value, on_delivery=done)
            p.poll(0)
        except BufferError:
            p.poll(0.05)
    p.purge()
    p.flush(10)


def counted(proxies) -> float:
    return sum(px.metric_sum("idemgate_client_bytes_total", connector=CONNECTOR, direction="produce")
               for px in proxies)


def run(kafka, quota: int, replicas: int, shared: bool, seconds: float, skip: float,
        report_every: str) -> dict:
    topic = unique("tierbench")
    kafka.create_topic(topic, partitions=1, replication=1)
    quota_topic = unique("_idemgate-quota") if shared else None
    proxies = [Proxy(upstream=kafka.bootstrap, extra=tier_config(CONNECTOR, quota, quota_topic, report_every)).start()
               for _ in range(replicas)]
    try:
        if shared:
            deadline = time.monotonic() + 30
            while any(px.metric_sum("idemgate_quota_shared_peers") < replicas - 1 for px in proxies):
                if time.monotonic() > deadline:
                    raise RuntimeError("replicas never saw each other")
                time.sleep(0.2)
        stop = threading.Event()
        acked = [0] * replicas
        threads = [threading.Thread(target=push, args=(px.bootstrap, i, topic, stop, acked))
                   for i, px in enumerate(proxies)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(skip)
        c0, t0 = counted(proxies), time.monotonic()
        time.sleep(max(0.0, seconds - skip))
        c1, t1 = counted(proxies), time.monotonic()
        stop.set()
        for t in threads:
            t.join(60)
        rate = (c1 - c0) / (t1 - t0)
        return {
            "shape": f"{replicas} replica(s), " + ("[quota.shared]" if shared else "each on its own"),
            "quota_bytes_per_sec": quota,
            "tier_rate_bytes_per_sec": round(rate),
            "ratio": round(rate / quota, 3),
            "throttled": sum(px.metric_sum("idemgate_throttled_responses_total", connector=CONNECTOR)
                             for px in proxies),
            "acked_value_bytes": sum(acked),
            "seconds": round(time.monotonic() - start, 1),
            "report_every": report_every if shared else None,
        }
    finally:
        for px in proxies:
            px.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quota-mib", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--skip", type=float, default=5.0)
    ap.add_argument("--report-every", default="1s")
    ap.add_argument("--json", help="also write each row as a JSON line to this file")
    args = ap.parse_args()
    quota = int(args.quota_mib * 1024 * 1024)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"idemgate {os.environ.get('IDEMGATE_BIN', 'target/debug/idemgate')}")
    kafka = KafkaCluster.start(brokers=1)
    rows = []
    try:
        for replicas, shared in ((1, False), (2, True), (2, False)):
            row = run(kafka, quota, replicas, shared, args.seconds, args.skip, args.report_every)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        kafka.stop()
    print()
    print("| shape | quota | tier rate (counted, after the first "
          f"{args.skip:.0f} s) | /quota | throttles |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['quota_bytes_per_sec'] / 1048576:.2f} MiB/s | "
              f"{r['tier_rate_bytes_per_sec'] / 1048576:.3f} MiB/s | {r['ratio']:.3f} | {r['throttled']:.0f} |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
