"""What each topic's own settings mean for dedup, against Apache Kafka 4.4:

- on a compacted topic, fetch dedup never hides a copy: compaction removes
  records from the middle of a log without moving its start, so a later copy
  may be the only one left (the log cleaner really compacts the topic here);
- tags never push a batch past the topic's own `max.message.bytes`.

The proxy asks the brokers each covered topic's `cleanup.policy` and
`max.message.bytes` (DescribeConfigs) the first time a rule meets it.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from bed import dedup_rule, read_topic, unique, wait_for

FETCH_RULE = """
[dedup]
window = "1h"
[[dedup.rules]]
topics = "fetchcfg-*"
key = "content"
direction = "fetch"
mode = "drop"
"""

# u1 goes v1 -> v2 -> v1: the third record's bytes are the first's.
HISTORY = [(b"u1", b"v1"), (b"u1", b"v2"), (b"u1", b"v1")]


def write(bootstrap: str, topic: str, records):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for k, v in records:
        p.produce(topic, key=k, value=v)
        p.flush(30)  # one batch each: the cleaner then sees separate records
    assert p.flush(30) == 0


def read_through(bootstrap: str, topic: str, end: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, key, value) a consumer of `bootstrap` gets, from the log start
    up to the record whose value is `end`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("sink"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, -2)])  # OFFSET_BEGINNING
        got = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.offset(), m.key(), m.value()))
            if m.value() == end:
                return got
        raise AssertionError(f"no end marker {end!r} from {topic} within 60 s; got {got}")
    finally:
        c.close()


def test_fetch_dedup_never_hides_a_copy_on_a_compacted_topic(kafka, proxies):
    proxy = proxies(kafka.bootstrap, FETCH_RULE)

    # On a delete-policy topic the rule is on: a replayed event is removed.
    plain = unique("fetchcfg-plain")
    kafka.create_topic(plain, partitions=1)
    write(kafka.bootstrap, plain, [(b"e1", b"event-1"), (b"e2", b"event-2"), (b"e1", b"event-1"),
                                   (b"end", b"end")])
    assert [v for _, _, v in read_through(proxy.bootstrap, plain, b"end")] == \
        [b"event-1", b"event-2", b"end"]

    compacted = unique("fetchcfg-compacted")
    kafka.create_topic(compacted, partitions=1, config={
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0", "delete.retention.ms": "100"})
    write(kafka.bootstrap, compacted, HISTORY + [(b"end", b"end-1")])
    # Before compaction: u1's whole history, the return to v1 included.
    seen = read_through(proxy.bootstrap, compacted, b"end-1")
    assert [v for _, _, v in seen] == [b"v1", b"v2", b"v1", b"end-1"], seen
    assert proxy.metric_sum("idemgate_dedup_fail_open_total", reason="compacted") >= 3

    # The cleaner compacts the rolled segment: only offset 2 is left of u1.
    time.sleep(0.3)
    write(kafka.bootstrap, compacted, [(b"roll", b"x")])

    def compacted_away():
        recs = read_topic(kafka.bootstrap, compacted,
                          until=lambda rs: any(r.value() == b"x" for r in rs), timeout=30)
        return [r.offset() for r in recs if r.key() == b"u1"] == [2]

    wait_for("the log cleaner to compact away u1's offsets 0 and 1", compacted_away, 120, interval=1)
    # A new sink reading through the proxy gets u1's only surviving record.
    after = read_through(proxy.bootstrap, compacted, b"x")
    assert (2, b"u1", b"v1") in after, f"u1's last record was hidden: {after}"
    proxy.assert_no_leaks()


def test_tags_never_push_a_batch_past_the_topics_own_limit(kafka, proxies):
    """A 64 KiB topic limit and batches sized just under it: each tag adds
    about 49 B per record, so tagged, the batches would be refused as too
    large. The proxy sends them untagged instead; every record arrives."""
    proxy = proxies(kafka.bootstrap, '[dedup]\nwindow = "1h"\n' + dedup_rule("limit-*"))
    topic = unique("limit-64k")
    kafka.create_topic(topic, partitions=1, config={"max.message.bytes": "65536"})
    errors = []
    p = Producer({"bootstrap.servers": proxy.bootstrap, "linger.ms": 200,
                  "batch.size": 60000, "message.max.bytes": 65536,
                  "compression.type": "none", "retries": 0})
    for i in range(2000):
        p.produce(topic, value=f"{i:08d}".encode() + b"." * 100,
                  on_delivery=lambda err, msg: err and errors.append(err))
        p.poll(0)
    p.produce(topic, value=b"end", on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(60) == 0
    assert not errors, f"{len(errors)} records refused, e.g. {errors[:3]}"
    recs = read_topic(kafka.bootstrap, topic, until=lambda rs: any(r.value() == b"end" for r in rs))
    assert len(recs) == 2001
    assert proxy.metric_sum("idemgate_batches_untagged_too_large_total") > 0, \
        "no batch came near the limit: the test sized nothing"
