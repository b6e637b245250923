"""confluent-kafka 2.16.1 (librdkafka 2.16.0) end to end."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from e2e import Consumed, assert_exactly, ck_consume, ck_consumer, ck_produce, kp_consume, kp_consumer, deadline, unique

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
    from kafka import TopicPartition as KTP

    topic = make_topic(1)
    n = 500
    written = ck_produce(bootstrap, topic, range(n), partition=0,
                         **{"compression.type": codec, "linger.ms": 20, "enable.idempotence": False})
    consumer = kp_consumer(bootstrap, group_id=None)
    try:
        consumer.assign([KTP(topic, 0)])
        consumer.seek_to_beginning()
        consumed = kp_consume(consumer, n, 60, commit=False)
    finally:
        consumer.close()
    assert_exactly(written, consumed)


def test_consumer_group_two_clients_share_partitions(bootstrap, make_topic):
    """Two librdkafka members in one group split the partitions and together
    read every record exactly once."""
    topic = make_topic(3)
    n = 900
    written = ck_produce(bootstrap, topic, range(n))
    group = unique("pt-ck-two")
    a = ck_consumer(bootstrap, group)
    b = ck_consumer(bootstrap, group)
    try:
        a.subscribe([topic])
        b.subscribe([topic])
        got = Consumed()
        dl = deadline(60)
        while got.count < n and dl.left():
            for c in (a, b):
                for m in c.consume(num_messages=200, timeout=0.2):
                    if m.error():
                        continue
                    got.add(m.partition(), m.offset(), m.value())
        assert_exactly(written, got)
    finally:
        a.close()
        b.close()
