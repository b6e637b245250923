"""Produce-path dedup with kafka-python 3.0.12: a Connect-shaped source task
writes, "crashes", and its successor replays; the broker must hold each record
exactly once, tagged with its idempotency key.

scripts/test runs the proxy with a `drop` rule for topics named "dedup-*"
(content keys); other tests' topics are not covered."""

from __future__ import annotations

import re

from kafka import KafkaConsumer, TopicPartition

from e2e import deadline, kp_produce, record_value, seq_of, unique

HEADER = "idempotency-key"


def end_markers(broker: str, topic: str, partitions: int) -> bytes:
    """Writes an end marker to each partition straight to the broker (never
    through the proxy) and returns its value: every record acknowledged
    before it sits at a lower offset."""
    from kafka import KafkaProducer

    marker = f"end-{unique('m')}".encode()
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", request_timeout_ms=30000)
    try:
        for p in range(partitions):
            producer.send(topic, key=b"end", value=marker, partition=p).get(timeout=60)
    finally:
        producer.close(timeout=30)
    return marker


def read_all(broker: str, topic: str, partitions: int, seconds: float = 60):
    """Every record of the topic from the start, read straight from the
    broker up to fresh end markers: [(partition, offset, seq, headers)]."""
    marker = end_markers(broker, topic, partitions)
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                             request_timeout_ms=30000)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        rows, dl, ended = [], deadline(seconds), set()
        while len(ended) < partitions:
            assert dl.left(), f"end markers not all read in {seconds} s: {len(rows)} rows, ended {ended}"
            for batch in consumer.poll(timeout_ms=500).values():
                for m in batch:
                    if m.key == b"end":
                        if m.value == marker:
                            ended.add(m.partition)
                        continue
                    rows.append((m.partition, m.offset, seq_of(m.value), m.headers))
        return rows
    finally:
        consumer.close()


def check_exactly_once(rows, seqs):
    got = sorted(seq for _, _, seq, _ in rows)
    assert got == sorted(seqs), (
        f"{len(got)} records for {len(set(seqs))} distinct: "
        f"missing {sorted(set(seqs) - set(got))[:10]}, surplus {len(got) - len(set(got))}")
    for _, _, seq, headers in rows:
        tags = [v for k, v in headers if k == HEADER]
        assert len(tags) == 1 and re.fullmatch(rb"[0-9a-f]{32}", tags[0]), f"seq {seq}: {headers}"
        assert [k for k, _ in headers][0] == "seq", "existing headers keep their place"


def test_replay_after_a_crash_reaches_the_broker_once(bootstrap, endpoints, make_topic):
    assert endpoints.through_proxy, "this test needs the proxy in front of the broker"
    topic = make_topic(3, prefix="dedup")
    task = dict(client_id="connector-producer-kp-orders-0", enable_idempotence=False,
                max_in_flight_requests_per_connection=1)
    kp_produce(bootstrap, topic, range(0, 300), **task)
    # The successor replays the last 120 and goes on.
    kp_produce(bootstrap, topic, range(180, 360), **task)
    rows = read_all(endpoints.direct, topic, 3)
    check_exactly_once(rows, range(360))


def test_idempotent_producer_replay_keeps_working(bootstrap, endpoints, make_topic):
    assert endpoints.through_proxy, "this test needs the proxy in front of the broker"
    topic = make_topic(3, prefix="dedup")
    kp_produce(bootstrap, topic, range(0, 200), enable_idempotence=True,
               client_id="connector-producer-kp-idem-0")
    # A new producer id replays 80 and writes 100 more; then it writes again
    # (the broker must accept the translated sequence after the drop).
    kp_produce(bootstrap, topic, range(120, 300), enable_idempotence=True,
               client_id="connector-producer-kp-idem-0")
    rows = read_all(endpoints.direct, topic, 3)
    check_exactly_once(rows, range(300))


def test_committed_transaction_teaches_the_window(bootstrap, endpoints, make_topic):
    """A transactional producer (Connect's exactly-once source) commits 0..100
    and aborts 100..150, through the proxy; its plain successor replays
    0..150 and writes 150..200. The committed records' replays are dropped,
    the aborted ones' are written (tansu shows aborted records to every
    consumer, ../shared/TESTBED.md: those appear twice)."""
    from kafka import KafkaProducer

    assert endpoints.through_proxy, "this test needs the proxy in front of the broker"
    topic = make_topic(3, prefix="dedup")
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"eos-{topic}",
                             client_id="connector-producer-kp-eos-0", acks="all",
                             enable_idempotence=True, request_timeout_ms=30000)
    try:
        producer.init_transactions()
        for seqs, commit in ((range(0, 100), True), (range(100, 150), False)):
            producer.begin_transaction()
            for seq in seqs:
                producer.send(topic, key=f"k{seq}".encode(), value=record_value(seq),
                              headers=[("seq", str(seq).encode())])
            producer.flush(timeout=60)
            if commit:
                producer.commit_transaction()
            else:
                producer.abort_transaction()
    finally:
        producer.close(timeout=30)
    kp_produce(bootstrap, topic, range(0, 200), client_id="connector-producer-kp-eos-0",
               enable_idempotence=False, max_in_flight_requests_per_connection=1)
    rows = read_all(endpoints.direct, topic, 3)
    copies = {}
    for _, _, seq, headers in rows:
        copies.setdefault(seq, []).append([v for k, v in headers if k == HEADER])
    for seq in range(200):
        tags = copies.get(seq, [])
        if seq < 100:
            assert tags == [[]], f"seq {seq}: the committed copy only, untagged: {tags}"
        elif seq < 150:
            assert sorted(map(len, tags)) == [0, 1], f"seq {seq}: aborted copy and the replay: {tags}"
        else:
            assert list(map(len, tags)) == [1], f"seq {seq}: written once, tagged: {tags}"
    assert len(rows) == 250
