"""What scripts/demo shows: a Connect-shaped source producer and sink consumer
through idemgate, and what the proxy saw. Uses confluent-kafka (librdkafka)."""

import argparse
import sys
import time
import urllib.request

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def metrics(admin: str) -> dict:
    text = urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--admin", required=True)
    a = ap.parse_args()
    topic, n = "orders", 1000

    admin = AdminClient({"bootstrap.servers": a.proxy})
    for f in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        f.result(15)
    md = admin.list_topics(timeout=10)
    print(f"\nbroker {a.broker} is behind the proxy {a.proxy}; clients are told the brokers are at:")
    for b in md.brokers.values():
        print(f"  node {b.id}: {b.host}:{b.port}")

    # Kafka Connect's source producer: its client id, acks=all, one request in flight.
    p = Producer({"bootstrap.servers": a.proxy, "client.id": "connector-producer-orders-0",
                  "acks": "all", "max.in.flight.requests.per.connection": 1, "enable.idempotence": False})
    for i in range(n):
        p.produce(topic, key=f"order-{i % 50}".encode(), value=f'{{"id": {i}, "amount": {i * 3}}}'.encode())
    left = p.flush(30)
    print(f"\nproduced {n - left}/{n} records to '{topic}' as connector-producer-orders-0")

    # A sink task's consumer: group connect-<connector>.
    c = Consumer({"bootstrap.servers": a.proxy, "client.id": "connector-consumer-pg-sink-0",
                  "group.id": "connect-pg-sink", "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, "enable.auto.commit": False})
    c.subscribe([topic])
    got, start = 0, time.time()
    while got < n and time.time() - start < 60:
        for m in c.consume(500, 1.0):
            if not m.error():
                got += 1
    c.commit(asynchronous=False)
    c.close()
    print(f"consumed {got}/{n} records in group connect-pg-sink and committed")

    m = metrics(a.admin)
    print(f"\nwhat the proxy saw ({a.admin}/metrics):")
    for api in ["Produce", "Fetch", "Metadata", "JoinGroup", "OffsetCommit"]:
        key = f'idemgate_requests_total{{api="{api}"}}'
        print(f"  {api:<13} {int(m.get(key, 0)):>6} requests")
    print(f"  connections   {int(m.get('idemgate_connections_total', 0)):>6} accepted")
    print(f"  address leaks {int(m.get('idemgate_address_leaks_total', 0)):>6} (every broker address clients saw was the proxy's)")
    ok = got == n and left == 0 and m.get("idemgate_address_leaks_total", 1) == 0
    print("\ndemo: ok" if ok else "\ndemo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
