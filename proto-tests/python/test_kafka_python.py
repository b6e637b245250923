"""kafka-python 3.0.12 end to end: produce, consume in a group with commits,
rejoin from committed offsets, idempotent producer, codecs."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from e2e import Consumed, assert_exactly, kp_consume, kp_consumer, kp_produce, kp_read_from_start, unique

N_BULK = 10_000


@pytest.mark.slow
def test_produce_10k_consume_in_group_with_commits(bootstrap, make_topic):
    topic = make_topic(3)
    written = kp_produce(bootstrap, topic, range(N_BULK), enable_idempotence=False)
    assert written.count == N_BULK
    assert sorted(written.by_partition) == [0, 1, 2], "keys should spread over all 3 partitions"
    for p, recs in written.by_partition.items():
        offs = [o for o, _ in recs]
        assert offs == list(range(len(offs))), f"partition {p}: acked offsets not contiguous from 0"

    group = unique("pt-kp-group")
    consumer = kp_consumer(bootstrap, topic, group_id=group)
    try:
        consumed = kp_consume(consumer, N_BULK, 90, commit=True)
        assert_exactly(written, consumed)
        # the group's committed offsets are the end of every partition
        for p, end in written.end_offsets().items():
            assert consumer.committed(TopicPartition(topic, p)) == end, f"partition {p}"
    finally:
        consumer.close()


def test_group_rejoin_resumes_from_committed_offsets(bootstrap, make_topic):
    topic = make_topic(3)
    n = 600
    written = kp_produce(bootstrap, topic, range(n), enable_idempotence=False)
    group = unique("pt-kp-rejoin")

    # first member: read some, commit exactly what it processed, leave
    first = kp_consumer(bootstrap, topic, group_id=group)
    try:
        part1 = kp_consume(first, n, 60, commit=False, stop_at=150)
        assert part1.count >= 150, f"first member got only {part1.count} records"
        commit = {TopicPartition(topic, p): OffsetAndMetadata(recs[-1][0] + 1, "", -1)
                  for p, recs in part1.by_partition.items()}
        first.commit(commit)
        committed = {tp.partition: om.offset for tp, om in commit.items()}
    finally:
        first.close()

    # second member in the same group: starts exactly at the committed offsets
    second = kp_consumer(bootstrap, topic, group_id=group)
    try:
        part2 = kp_consume(second, n - part1.count, 60, commit=True)
    finally:
        second.close()
    for p, recs in part2.by_partition.items():
        assert recs[0][0] == committed.get(p, 0), (
            f"partition {p}: resumed at {recs[0][0]}, committed {committed.get(p, 0)}")
    both = Consumed()
    for part in (part1, part2):
        for p, recs in part.by_partition.items():
            both.by_partition[p].extend(recs)
    assert_exactly(written, both)


def test_idempotent_producer(bootstrap, make_topic):
    topic = make_topic(3)
    n = 2000
    written = kp_produce(bootstrap, topic, range(n), enable_idempotence=True, acks="all",
                         max_in_flight_requests_per_connection=5)
    assert written.count == n
    consumed = kp_read_from_start(bootstrap, topic, 3, n, 60)
    assert_exactly(written, consumed)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_roundtrip(bootstrap, make_topic, codec):
    topic = make_topic(1)
    n = 300
    written = kp_produce(bootstrap, topic, range(n), compression_type=codec, enable_idempotence=False,
                         linger_ms=20, batch_size=16384)
    consumed = kp_read_from_start(bootstrap, topic, 1, n, 60)
    assert_exactly(written, consumed)
