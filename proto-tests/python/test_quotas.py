"""Quotas with kafka-python: a connector with a 1 MiB/s produce quota pushing
6 MiB as fast as it can is throttled and never counted past what its bucket
allows over the test's own elapsed time (a slow machine only lowers it),
with no delivery error and no record lost. Its rate is the bench's
(docs/performance.md).

scripts/test starts the proxy with this quota (connector "pyquota"):

    [[quotas]]
    connector = "pyquota"
    produce_bytes_per_sec = 1048576

and IDEMGATE_ADMIN pointing at its admin listener; this test fails (never
skips) without them."""

from __future__ import annotations

import os
import time
import urllib.request

import pytest

from e2e import REQUEST_TIMEOUT_S, deadline, kp_consumer

MIB = 1 << 20
VALUE = 8 * 1024
QUOTA = MIB


def metric(admin: str, series: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def test_a_produce_quota_shapes_kafka_python(bootstrap, make_topic):
    from kafka import KafkaProducer

    admin = os.environ.get("IDEMGATE_ADMIN", "").strip()
    if not admin:
        pytest.fail("IDEMGATE_ADMIN is not set: the proxy's admin host:port (scripts/test sets it), "
                    "with a [[quotas]] rule for connector \"pyquota\" at 1 MiB/s", pytrace=False)
    topic = make_topic(1)
    n = 6 * MIB // VALUE
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="connector-producer-pyquota-0",
                             acks="all", linger_ms=5, batch_size=64 * 1024,
                             request_timeout_ms=REQUEST_TIMEOUT_S * 1000 * 2)
    acked: list[float] = []
    errors: list[BaseException] = []
    value = b"p" * VALUE
    started = time.monotonic()
    for i in range(n):
        f = producer.send(topic, key=str(i).encode(), value=value)
        f.add_callback(lambda _md: acked.append(time.monotonic()))
        f.add_errback(errors.append)
    producer.flush(timeout=120)
    producer.close()
    assert errors == []
    assert len(acked) == n

    elapsed = time.monotonic() - started

    # Counted by the proxy: at most the burst, the rate over the run, and the
    # one 64 KiB request charged whole when read with the bucket out of debt.
    counted = metric(admin, 'idemgate_client_bytes_total{connector="pyquota",tenant="",direction="produce"}')
    bound = QUOTA + QUOTA * elapsed + 70_000
    print(f"kafka-python: {counted:.0f} B counted in {elapsed:.1f} s, the quota allows {bound:.0f}")
    assert n * VALUE <= counted <= bound, f"{counted:.0f} B counted, the quota allows {bound:.0f}"
    throttle = metric(admin, 'idemgate_throttle_seconds_total{connector="pyquota",tenant=""}')
    assert throttle > 0, "never throttled"

    consumer = kp_consumer(bootstrap, topic, group_id=None)
    keys: list[int] = []
    try:
        dl = deadline(60)
        while len(keys) < n and dl.left():
            for records in consumer.poll(timeout_ms=500, max_records=500).values():
                keys.extend(int(r.key) for r in records)
    finally:
        consumer.close()
    assert sorted(keys) == list(range(n)), f"read back {len(keys)} records of {n}: each key once"
