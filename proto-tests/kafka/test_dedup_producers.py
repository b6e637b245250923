"""Produce-path dedup for every kind of producer, against Apache Kafka 4.4,
whose idempotent-sequence and transaction checks are strict (tansu's are
lenient): plain, idempotent and transactional librdkafka producers replay
through a drop rule, and each run is compared with the same run straight to
the broker. Plus a produce quota, checked by its mechanism (throttle answers
the client hears and the proxy counts), never by a rate.

The log is always read straight from the broker, up to an end marker.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Producer

from bed import read_topic, unique

RULE = """
[dedup]
window = "1h"
[[dedup.rules]]
topics = "dedup-*"
key = "content"
mode = "drop"
"""

PARTITIONS = 3


def value(i: int) -> bytes:
    return f"event-{i:06d}".encode()


class Reports:
    """Delivery reports: what the client was told, per value."""

    def __init__(self):
        self.ok: dict[bytes, tuple[int, int]] = {}
        self.errors: list[str] = []

    def __call__(self, err, msg):
        if err is not None:
            self.errors.append(f"{msg.value()!r}: {err}")
        else:
            self.ok[msg.value()] = (msg.partition(), msg.offset())


def produce(bootstrap: str, topic: str, values, reports: Reports, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all", **conf})
    for v in values:
        # Keyed, so a value's partition is the same in every run and every batch
        # mixes replays with new records in one partition.
        p.produce(topic, key=v[-2:], value=v, on_delivery=reports)
        p.poll(0)
    assert p.flush(60) == 0, "records left undelivered after 60 s"
    return p


def run(kafka, bootstrap: str, idempotent: bool):
    """A task writes events 0-299, crashes, and its successor (a new producer,
    so a new producer id) replays 200-299 and goes on to 799. Returns the
    values the log holds, and the successor's delivery reports."""
    topic = unique("dedup-kind")
    kafka.create_topic(topic, partitions=PARTITIONS)
    conf = {"enable.idempotence": idempotent}
    first, successor = Reports(), Reports()
    produce(bootstrap, topic, [value(i) for i in range(300)], first, **conf)
    produce(bootstrap, topic, [value(i) for i in range(200, 800)] + [b"end"], successor, **conf)
    assert not first.errors and not successor.errors, first.errors + successor.errors
    records = read_topic(kafka.bootstrap, topic, until=lambda rs: any(r.value() == b"end" for r in rs))
    return topic, records, successor


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
def test_a_successor_producer_replaying_is_held_to_once_with_kafka_checking_sequences(
        kafka, proxies, idempotent):
    _, direct, _ = run(kafka, kafka.bootstrap, idempotent)
    direct_values = [r.value() for r in direct]
    assert len(direct_values) - len(set(direct_values)) == 100, \
        "straight to the broker the successor's 100 replays are in the log twice"

    proxy = proxies(kafka.bootstrap, RULE)
    topic, records, successor = run(kafka, proxy.bootstrap, idempotent)
    values = [r.value() for r in records]
    want = {value(i) for i in range(800)} | {b"end"}
    assert set(values) == want, f"missing: {sorted(want - set(values))[:10]}"
    assert len(values) == len(want), f"{len(values) - len(want)} extra copies through the proxy"
    assert proxy.metric_sum("idemgate_duplicates_dropped_total", topic=topic) == 100

    # What each record's delivery report said must be where it is in the log:
    # a client is never told a wrong offset (-1, "unknown", is allowed).
    where = {r.value(): (r.partition(), r.offset()) for r in records}
    wrong = [(v, told, where[v]) for v, told in successor.ok.items()
             if told[1] >= 0 and told != where[v]]
    assert not wrong, f"{len(wrong)} delivery reports name the wrong offset, e.g. {wrong[:3]}"
    exact = sum(1 for v, told in successor.ok.items() if told == where[v])
    assert exact > 0, "no delivery report named its record's offset"


def test_transactional_records_pass_and_only_committed_ones_teach_the_window(kafka, proxies):
    """A transactional producer commits 0-99 and aborts 100-149; a plain
    producer then replays 0-149. Committed records were learned at EndTxn, so
    their replays are dropped; the aborted ones taught nothing, so the
    replay of 100-149 is written. A read_committed reader sees 0-149 once."""

    def scenario(bootstrap: str):
        topic = unique("dedup-txn")
        kafka.create_topic(topic, partitions=PARTITIONS)
        p = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique("txn"),
                      "linger.ms": 20})
        p.init_transactions(30)
        p.begin_transaction()
        for i in range(100):
            p.produce(topic, key=value(i)[-2:], value=value(i))
        p.commit_transaction(30)
        p.begin_transaction()
        for i in range(100, 150):
            p.produce(topic, key=value(i)[-2:], value=value(i))
        p.flush(30)
        p.abort_transaction(30)
        # The committed records replayed in a flush of their own: a batch of
        # their replays followed by new records could never be numbered
        # truly (the commit marker sits after the first copies), so it
        # would go whole to librdkafka, which numbers records from any base.
        replay = Reports()
        produce(bootstrap, topic, [value(i) for i in range(100)], replay)
        produce(bootstrap, topic, [value(i) for i in range(100, 150)] + [b"end"], replay)
        assert not replay.errors, replay.errors
        recs = read_topic(kafka.bootstrap, topic, isolation="read_committed",
                          until=lambda rs: any(r.value() == b"end" for r in rs))
        return topic, [r.value() for r in recs]

    _, direct = scenario(kafka.bootstrap)
    assert len(direct) - len(set(direct)) == 100, "straight to the broker the committed 100 are there twice"

    proxy = proxies(kafka.bootstrap, RULE)
    topic, values = scenario(proxy.bootstrap)
    want = {value(i) for i in range(150)} | {b"end"}
    assert set(values) == want, f"missing: {sorted(want - set(values))[:10]}"
    assert len(values) == len(want), f"{len(values) - len(want)} extra copies through the proxy"
    assert proxy.metric_sum("idemgate_transactions_total", outcome="committed") >= 1
    assert proxy.metric_sum("idemgate_transactions_total", outcome="aborted") >= 1


def test_a_produce_quota_throttles_the_client_through_kafka_and_loses_nothing(kafka, proxies):
    """The mechanism, not a rate: past its quota the client hears
    throttle_time_ms and the proxy counts throttled responses, every record
    is delivered, and a client straight to the broker hears none."""
    connector = unique("quota").replace("-", "")

    def scenario(bootstrap: str):
        topic = unique("quota-topic")
        kafka.create_topic(topic, partitions=1)
        throttles = []
        reports = Reports()
        p = Producer({"bootstrap.servers": bootstrap, "client.id": f"connector-producer-{connector}-0",
                      "linger.ms": 5, "batch.size": 65536,
                      "throttle_cb": lambda ev: throttles.append(ev.throttle_time)})
        payload = b"x" * 1000
        for i in range(2048):
            p.produce(topic, value=payload[:-6] + f"{i:06d}".encode(), on_delivery=reports)
            p.poll(0)
        p.produce(topic, value=b"end", on_delivery=reports)
        assert p.flush(120) == 0
        p.poll(1)  # serve the last throttle callbacks
        assert not reports.errors, reports.errors[:5]
        recs = read_topic(kafka.bootstrap, topic, until=lambda rs: any(r.value() == b"end" for r in rs))
        assert len(recs) == 2049 and len({r.value() for r in recs}) == 2049
        return throttles

    assert not [t for t in scenario(kafka.bootstrap) if t > 0], "the broker itself throttled"
    proxy = proxies(kafka.bootstrap, f"""
[[quotas]]
connector = "{connector}"
produce_bytes_per_sec = 262144
""")
    heard = [t for t in scenario(proxy.bootstrap) if t > 0]
    assert heard, "the client never heard throttle_time_ms from the proxy"
    assert proxy.metric_sum("idemgate_throttled_responses_total", connector=connector) > 0
    assert proxy.metric_sum("idemgate_throttle_seconds_total", connector=connector) > 0


def test_kafka_error_codes_reach_the_client_unchanged(kafka, proxies):
    """A Produce Kafka refuses (a record over the topic's max.message.bytes)
    gets Kafka's own error through the proxy, and nothing is learned from it."""
    proxy = proxies(kafka.bootstrap, RULE)
    topic = unique("dedup-small")
    kafka.create_topic(topic, partitions=1, config={"max.message.bytes": "2048"})
    reports = Reports()
    p = Producer({"bootstrap.servers": proxy.bootstrap, "message.max.bytes": 100000,
                  "batch.size": 100000, "linger.ms": 0})
    p.produce(topic, value=b"y" * 4000, on_delivery=lambda err, msg: reports.errors.append(err))
    p.flush(30)
    assert len(reports.errors) == 1 and reports.errors[0] is not None
    assert reports.errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, reports.errors[0]
