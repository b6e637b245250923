#!/usr/bin/env python3
"""Drive confluent-kafka (librdkafka) through the capture relay.

Usage: client_librdkafka.py BOOTSTRAP

Every client uses client.id `golden-librdkafka[-<variant>]`; capture.py select
uses that id to name the golden files. Small messages, few records.
"""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from golden_client import BS, CODECS, TIMEOUT, topic_names

CID = "golden-librdkafka"
T_PLAIN, T_IDEM, T_CODEC = topic_names("rd")


def records(n, tag):
    # compressible values so the codecs actually compress
    return [(f"key-{i}".encode(), (f"{tag} value {i} " * 4).encode(), [("h", f"{i}".encode())]) for i in range(n)]


def produce(conf, topic, n, tag, partition=None):
    p = Producer({"bootstrap.servers": BS, "acks": "all", "linger.ms": 20, **conf})
    for k, v, h in records(n, tag):
        if partition is None:
            p.produce(topic, key=k, value=v, headers=h)
        else:
            p.produce(topic, key=k, value=v, headers=h, partition=partition)
    left = p.flush(TIMEOUT)
    assert left == 0, f"{left} records not delivered to {topic}"


def read_back(client_id, topic, n):
    c = Consumer({"bootstrap.servers": BS, "client.id": client_id, "group.id": f"{client_id}-reader",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.assign([TopicPartition(topic, 0, 0)])
    got, deadline = 0, time.time() + TIMEOUT
    while got < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    c.close()
    assert got == n, f"{client_id}: read {got}/{n} from {topic}"


def main():
    admin = AdminClient({"bootstrap.servers": BS, "client.id": CID})
    topics = [NewTopic(T_PLAIN, 3, 1), NewTopic(T_IDEM, 1, 1)] + [NewTopic(t, 1, 1) for t in T_CODEC.values()]
    for t, f in admin.create_topics(topics, operation_timeout=10).items():
        f.result(TIMEOUT)
    desc = admin.describe_cluster(request_timeout=TIMEOUT).result()
    print("describe_cluster:", desc.cluster_id, [(n.id, n.host, n.port) for n in desc.nodes], file=sys.stderr)
    admin.list_topics(timeout=TIMEOUT)

    # baseline producer: not idempotent, no compression
    produce({"client.id": CID, "enable.idempotence": False, "compression.type": "none"}, T_PLAIN, 6, "plain")
    for codec in CODECS:
        produce({"client.id": f"{CID}-{codec}", "enable.idempotence": False, "compression.type": codec},
                T_CODEC[codec], 5, codec, partition=0)
    produce({"client.id": f"{CID}-idempotent", "enable.idempotence": True}, T_IDEM, 5, "idem", partition=0)

    lo = admin.list_offsets({TopicPartition(T_PLAIN, p): OffsetSpec.latest() for p in range(3)},
                            request_timeout=TIMEOUT)
    print("list_offsets:", {tp.partition: f.result().offset for tp, f in lo.items()}, file=sys.stderr)

    # fetch variants: read each codec topic (and the idempotent one) back
    for codec in CODECS:
        read_back(f"{CID}-{codec}", T_CODEC[codec], 5)
    read_back(f"{CID}-idempotent", T_IDEM, 5)

    # group consumer: FindCoordinator, JoinGroup, SyncGroup, OffsetFetch, ListOffsets,
    # Fetch, Heartbeat, OffsetCommit, LeaveGroup
    c = Consumer({"bootstrap.servers": BS, "client.id": CID, "group.id": "golden-rd-group",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe([T_PLAIN])
    got, deadline = 0, time.time() + 30
    while got < 6 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    assert got == 6, f"group consumer read {got}/6"
    end = time.time() + 2  # let a few heartbeats go by
    while time.time() < end:
        c.poll(0.2)
    c.commit(asynchronous=False)
    c.close()
    print("librdkafka client done", file=sys.stderr)


if __name__ == "__main__":
    main()
