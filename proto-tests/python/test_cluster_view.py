"""What the clients see of the cluster: broker addresses (Metadata,
DescribeCluster, FindCoordinator) and offsets (ListOffsets).

Through a proxy every address must be the proxy's (DESIGN invariant 7); run
directly against the broker, the broker's own address."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from e2e import REQUEST_TIMEOUT_S, ck_produce, deadline, kp_consume, kp_consumer, kp_produce, unique


def ck_admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "client.id": unique("pt-ck-admin")})


# ---------------------------------------------------------------- addresses

def test_kafka_python_describe_cluster_and_metadata(endpoints, admin, make_topic):
    make_topic(2)
    desc = admin.describe_cluster()  # DescribeCluster v1
    assert desc["cluster_id"], desc
    endpoints.assert_client_facing([(b["host"], b["port"]) for b in desc["brokers"]],
                                   "kafka-python describe_cluster")
    # the brokers kafka-python learned from Metadata (internal, kafka-python 3.0)
    cluster = admin._manager.cluster
    endpoints.assert_client_facing([(b.host, b.port) for b in cluster.brokers()],
                                   "kafka-python metadata brokers")


def test_confluent_describe_cluster_and_metadata(endpoints, make_topic):
    topic = make_topic(2)
    admin = ck_admin(endpoints.bootstrap)
    desc = admin.describe_cluster(request_timeout=REQUEST_TIMEOUT_S).result(timeout=REQUEST_TIMEOUT_S + 5)
    assert desc.cluster_id
    # librdkafka implements describe_cluster with a Metadata request
    endpoints.assert_client_facing([(n.host, n.port) for n in desc.nodes], "confluent describe_cluster")
    assert desc.controller is None or (desc.controller.host, desc.controller.port) in {
        (n.host, n.port) for n in desc.nodes}
    md = admin.list_topics(topic=topic, timeout=REQUEST_TIMEOUT_S)
    endpoints.assert_client_facing([(b.host, b.port) for b in md.brokers.values()], "confluent list_topics")
    assert set(md.topics[topic].partitions) == {0, 1}
    for p in md.topics[topic].partitions.values():
        assert p.leader in md.brokers, f"partition {p.id} leader {p.leader} is not a listed broker"


def test_group_coordinator_addresses(endpoints, make_topic):
    """FindCoordinator in both shapes: kafka-python 3 uses v6 (coordinator_keys),
    librdkafka 2.16 uses v2 (single key)."""
    topic = make_topic(1)
    kp_produce(endpoints.bootstrap, topic, range(10), enable_idempotence=False)

    group = unique("pt-coord-kp")
    consumer = kp_consumer(endpoints.bootstrap, topic, group_id=group)
    try:
        kp_consume(consumer, 10, 30, commit=True)
        coord = consumer._coordinator.coordinator_id
        assert coord is not None, "kafka-python found no coordinator"
        # kafka-python 3.0 keeps the FindCoordinator answer under a synthetic id
        node = consumer._client.cluster.broker_metadata(coord)
        assert node is not None, f"no address for coordinator {coord}"
        endpoints.assert_client_facing([(node.host, node.port)], "kafka-python FindCoordinator v6")
    finally:
        consumer.close()

    group = unique("pt-coord-ck")
    ck_group_commit(endpoints.bootstrap, topic, group)
    admin = ck_admin(endpoints.bootstrap)
    futs = admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT_S)
    desc = futs[group].result(timeout=REQUEST_TIMEOUT_S + 5)
    c = desc.coordinator
    endpoints.assert_client_facing([(c.host, c.port)], "confluent FindCoordinator (describe_consumer_groups)")


def ck_group_commit(bootstrap, topic, group):
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "session.timeout.ms": 6000})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    finally:
        c.close()


# ------------------------------------------------------------------ offsets

def produce_one_record_batches(bootstrap, topic, partitions, per_partition):
    """Each record in a batch of its own (linger 0, flush after each)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                  "enable.idempotence": False, "client.id": unique("pt-ck-single")})
    errors = []
    for i in range(per_partition):
        for part in range(partitions):
            p.produce(topic, value=f"r{i}".encode(), partition=part,
                      on_delivery=lambda err, msg: err and errors.append(err))
        assert p.flush(REQUEST_TIMEOUT_S) == 0
    assert not errors, errors


def test_list_offsets_equal_record_counts(endpoints, make_topic):
    """ListOffsets(latest) == records written, checked with both clients.

    tansu 0.6.0 answers ListOffsets(latest) with the base offset of the last
    batch + 1 (not the last offset + 1), so this test writes one record per
    batch, where both readings agree; Fetch's high watermark is right either
    way (see test_fetch_high_watermark_counts_every_record)."""
    from kafka import TopicPartition as KTP

    topic = make_topic(3)
    counts = {0: 7, 1: 7, 2: 7}
    produce_one_record_batches(endpoints.bootstrap, topic, 3, 7)

    admin = ck_admin(endpoints.bootstrap)
    for spec, want in ((OffsetSpec.latest(), counts), (OffsetSpec.earliest(), {0: 0, 1: 0, 2: 0})):
        res = admin.list_offsets({TopicPartition(topic, p): spec for p in range(3)},
                                 request_timeout=REQUEST_TIMEOUT_S)
        got = {tp.partition: f.result(timeout=REQUEST_TIMEOUT_S + 5).offset for tp, f in res.items()}
        assert got == want, f"confluent list_offsets {spec}: {got} != {want}"

    consumer = kp_consumer(endpoints.bootstrap, group_id=None)
    try:
        tps = [KTP(topic, p) for p in range(3)]
        assert {tp.partition: o for tp, o in consumer.end_offsets(tps).items()} == counts
        assert {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()} == {0: 0, 1: 0, 2: 0}
    finally:
        consumer.close()


def test_fetch_high_watermark_counts_every_record(endpoints, make_topic):
    """Multi-record batches: the Fetch high watermark seen by librdkafka after
    reading everything equals the count; through a proxy, ListOffsets gives
    the same answer as the broker does directly."""
    from confluent_kafka import Consumer

    topic = make_topic(1)
    written = ck_produce(endpoints.bootstrap, topic, range(500), partition=0, **{"linger.ms": 20})
    n = written.count
    c = Consumer({"bootstrap.servers": endpoints.bootstrap, "group.id": unique("pt-hw"),
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        seen = 0
        dl = deadline(30)
        while seen < n and dl.left():
            seen += sum(1 for m in c.consume(num_messages=500, timeout=0.5) if not m.error())
        assert seen == n
        dl = deadline(10)
        hw = None
        while dl.left():
            c.poll(0.2)
            _, hw = c.get_watermark_offsets(TopicPartition(topic, 0), cached=True)
            if hw == n:
                break
        assert hw == n, f"Fetch high watermark {hw} != {n} records"
    finally:
        c.close()

    if endpoints.through_proxy:
        via = {}
        for name, bs in (("proxy", endpoints.bootstrap), ("direct", endpoints.direct)):
            admin = ck_admin(bs)  # keep a reference: a dropped AdminClient never completes its futures
            res = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.latest()},
                                     request_timeout=REQUEST_TIMEOUT_S)
            via[name] = [f.result(timeout=REQUEST_TIMEOUT_S + 5) for f in res.values()][0].offset
        assert via["proxy"] == via["direct"], via
