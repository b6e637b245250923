#!/usr/bin/env python3
"""Drive kafka-python through the capture relay.

Usage: client_kafkapython.py BOOTSTRAP

Every client uses client_id `golden-kafkapython[-<variant>]`; capture.py select
uses that id to name the golden files. Small messages, few records.
"""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from golden_client import BS, CODECS, TIMEOUT, topic_names

CID = "golden-kafkapython"
T_PLAIN, T_IDEM, T_CODEC = topic_names("kp")


def produce(conf, topic, n, tag, partition=None):
    p = KafkaProducer(bootstrap_servers=BS, acks="all", linger_ms=20, **conf)
    futs = [p.send(topic, key=f"key-{i}".encode(), value=(f"{tag} value {i} " * 4).encode(),
                   headers=[("h", f"{i}".encode())], partition=partition) for i in range(n)]
    p.flush(TIMEOUT)
    for f in futs:
        f.get(TIMEOUT)
    p.close(TIMEOUT)


def read_back(client_id, topic, n):
    c = KafkaConsumer(bootstrap_servers=BS, client_id=client_id, group_id=None,
                      enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got, deadline = 0, time.time() + TIMEOUT
    while got < n and time.time() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got += len(recs)
    c.close()
    assert got == n, f"{client_id}: read {got}/{n} from {topic}"


def main():
    admin = KafkaAdminClient(bootstrap_servers=BS, client_id=CID)
    topics = [NewTopic(T_PLAIN, 3, 1), NewTopic(T_IDEM, 1, 1)] + [NewTopic(t, 1, 1) for t in T_CODEC.values()]
    admin.create_topics(topics)
    print("describe_cluster:", admin.describe_cluster(), file=sys.stderr)
    admin.list_topics()

    produce({"client_id": CID, "enable_idempotence": False}, T_PLAIN, 6, "plain")
    for codec in CODECS:
        produce({"client_id": f"{CID}-{codec}", "enable_idempotence": False, "compression_type": codec},
                T_CODEC[codec], 5, codec, partition=0)
    produce({"client_id": f"{CID}-idempotent", "enable_idempotence": True}, T_IDEM, 5, "idem", partition=0)
    admin.close()

    for codec in CODECS:
        read_back(f"{CID}-{codec}", T_CODEC[codec], 5)
    read_back(f"{CID}-idempotent", T_IDEM, 5)

    c = KafkaConsumer(T_PLAIN, bootstrap_servers=BS, client_id=CID, group_id="golden-kp-group",
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=6000, heartbeat_interval_ms=500)
    got, deadline = 0, time.time() + 30
    while got < 6 and time.time() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got += len(recs)
    assert got == 6, f"group consumer read {got}/6"
    end = time.time() + 2
    while time.time() < end:
        c.poll(timeout_ms=200)
    c.commit()
    print("end_offsets:", c.end_offsets([TopicPartition(T_PLAIN, p) for p in range(3)]), file=sys.stderr)
    c.close()

    legacy()
    print("kafka-python client done", file=sys.stderr)


def legacy():
    """The same flow with kafka-python pinned to Kafka 2.0 protocol versions
    (api_version=(2, 0, 0)): non-flexible encodings of Metadata, Produce, Fetch,
    FindCoordinator, the group APIs, ... (variant `legacy`)."""
    cid, topic, pin = f"{CID}-legacy", "golden-kp-legacy", {"api_version": (2, 0, 0)}
    admin = KafkaAdminClient(bootstrap_servers=BS, client_id=cid, **pin)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    produce({"client_id": cid, "enable_idempotence": False, **pin}, topic, 4, "legacy")
    c = KafkaConsumer(topic, bootstrap_servers=BS, client_id=cid, group_id="golden-kp-legacy-group",
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=6000, heartbeat_interval_ms=500, **pin)
    got, deadline = 0, time.time() + 30
    while got < 4 and time.time() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got += len(recs)
    assert got == 4, f"legacy group consumer read {got}/4"
    end = time.time() + 2
    while time.time() < end:
        c.poll(timeout_ms=200)
    c.commit()
    c.end_offsets([TopicPartition(topic, p) for p in range(2)])
    c.close()


if __name__ == "__main__":
    main()
