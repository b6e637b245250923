"""confluent-kafka 2.16.1 (librdkafka 2.16.0) end to end."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from e2e import Consumed, assert_exactly, ck_consume, ck_consumer, ck_produce, kp_consume, kp_consumer, kp_read_from_start, deadline, unique

N_BULK = 10_000


@pytest.mark.slow
def test_idempotent_produce_10k_consume_in_group(bootstrap, make_topic):
    topic = make_topic(3)
    written = ck_produce(bootstrap, topic, range(N_BULK), **{"enable.idempotence": True})
    assert written.count == N_BULK
    consumer = ck_consumer(bootstrap, unique("pt-ck-group"))
    try:
        consumer.subscribe([topic])
        consumed = ck_consume(consumer, N_BULK, 90, commit=True)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=15)
    finally:
        consumer.close()
    assert_exactly(written, consumed)
    ends = written.end_offsets()
    assert {tp.partition: tp.offset for tp in committed} == {p: ends.get(p, -1001) for p in range(3)}


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_librdkafka_codec_read_by_kafka_python(bootstrap, make_topic, codec):
    """Batches compressed by librdkafka, decoded by kafka-python."""
    topic = make_topic(1)
    n = 500
    written = ck_produce(bootstrap, topic, range(n), partition=0,
                         **{"compression.type": codec, "linger.ms": 20, "enable.idempotence": False})
    consumed = kp_read_from_start(bootstrap, topic, 1, n, 60)
    assert_exactly(written, consumed)


def test_consumer_group_two_clients_share_partitions(bootstrap, make_topic):
    """Two librdkafka members in one group split the partitions and together
    read every record exactly once.

    The group settles while the topic is still empty: if one member's
    JoinGroup missed the first generation, the other would read everything,
    and after the rebalance the newcomer would start its partitions again from
    the earliest offset (nothing is committed here), a duplicate the proxy
    never made. Only once each member holds its own share of the 3 partitions
    are the records written."""
    topic = make_topic(3)
    n = 900
    group = unique("pt-ck-two")
    a = ck_consumer(bootstrap, group)
    b = ck_consumer(bootstrap, group)
    try:
        a.subscribe([topic])
        b.subscribe([topic])
        early = Consumed()
        shares: tuple[set, set] = (set(), set())
        dl = deadline(60)
        while dl.left():
            for c in (a, b):
                for m in c.consume(num_messages=200, timeout=0.2):
                    if not m.error():
                        early.add(m.partition(), m.offset(), m.value())
            shares = tuple({tp.partition for tp in c.assignment() if tp.topic == topic} for c in (a, b))
            if shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == {0, 1, 2}:
                break
        else:
            pytest.fail(f"the group never split the 3 partitions between both members in 60 s: "
                        f"a {sorted(shares[0])}, b {sorted(shares[1])}")
        assert early.count == 0, f"records from an empty topic: {early.all_seqs()[:5]}"

        written = ck_produce(bootstrap, topic, range(n))
        got = [Consumed(), Consumed()]
        dl = deadline(60)
        while got[0].count + got[1].count < n and dl.left():
            for c, into in zip((a, b), got):
                for m in c.consume(num_messages=200, timeout=0.2):
                    if m.error():
                        continue
                    into.add(m.partition(), m.offset(), m.value())
        both = Consumed()
        for into in got:
            for p, rows in into.by_partition.items():
                both.by_partition[p].extend(rows)
        assert_exactly(written, both)
        for who, into, share in zip("ab", got, shares):
            assert set(into.by_partition) <= share, (
                f"member {who} read partitions {sorted(into.by_partition)} outside its share {sorted(share)}")
    finally:
        a.close()
        b.close()
