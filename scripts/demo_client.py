"""What scripts/demo shows: a Connect-shaped source producer and sink consumer
through idemgate, and what the proxy saw. Uses confluent-kafka (librdkafka)."""

import argparse
import sys
import time
import urllib.request

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
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
    topic, partitions, n = "orders", 3, 1000

    admin = AdminClient({"bootstrap.servers": a.proxy})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(15)
    md = admin.list_topics(timeout=10)
    print(f"\nbroker {a.broker} is behind the proxy {a.proxy}; clients are told the brokers are at:")
    for b in md.brokers.values():
        print(f"  node {b.id}: {b.host}:{b.port}")

    # Kafka Connect's source producer: its client id, acks=all, one request in flight.
    def source_task():
        return Producer({"bootstrap.servers": a.proxy, "client.id": "connector-producer-orders-0",
                         "acks": "all", "max.in.flight.requests.per.connection": 1,
                         "enable.idempotence": False, "linger.ms": 5})

    def record(i):
        return f"order-{i % 50}".encode(), f'{{"id": {i}, "amount": {i * 3}}}'.encode()

    p = source_task()
    for i in range(n):
        p.produce(topic, *record(i))
    left = p.flush(30)
    print(f"\nproduced {n - left}/{n} records to '{topic}' as connector-producer-orders-0")

    # The task crashes before its source offsets were committed: the restarted
    # task replays the last `replay` records, then goes on with new ones.
    replay, new = 300, 100
    p = source_task()
    for i in range(n - replay, n + new):
        p.produce(topic, *record(i))
    left += p.flush(30)
    print(f"the task restarted and replayed {replay} records, then wrote {new} new ones")
    n += new

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
    labels = f'connector="orders",topic="{topic}",direction="produce"'
    dropped = int(m.get(f"idemgate_duplicates_dropped_total{{{labels}}}", 0))
    print(f"  replays       {dropped:>6} dropped before the broker (idemgate_duplicates_dropped_total)")
    print(f"  window        {int(m.get('idemgate_window_keys', 0)):>6} keys remembered")
    # A recount of the whole topic: anything beyond n would be a duplicate the
    # sink wrote twice. assign() reads every partition from the beginning with
    # no group to join (a fresh group's first JoinGroup alone waits ~3 s on
    # tansu); group.id is only there because the client insists, nothing is
    # committed. Read until n records came, however slow the machine, then a
    # few seconds more so any extra copy still shows.
    c = Consumer({"bootstrap.servers": a.proxy, "group.id": "demo-recount",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    total, give_up = 0, time.monotonic() + 60
    while total < n and time.monotonic() < give_up:
        total += sum(1 for msg in c.consume(500, 0.5) if not msg.error())
    extra_until = time.monotonic() + 3
    while time.monotonic() < extra_until:
        total += sum(1 for msg in c.consume(500, 0.5) if not msg.error())
    c.close()
    verdict = "each exactly once" if total == n else ("copies got through" if total > n else "records missing")
    print(f"\nthe topic holds {total} records for {n} distinct ones: {verdict}")
    ok = (got == n and total == n and left == 0 and dropped == replay
          and m.get("idemgate_address_leaks_total", 1) == 0)
    print("\ndemo: ok" if ok else "\ndemo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
