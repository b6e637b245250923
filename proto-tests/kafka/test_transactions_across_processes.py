"""Transactions (v1 and v2) whose EndTxn goes through another idemgate process
(audit A9), against Apache Kafka 4.4.

Transactions v1 (AddPartitionsToTxn, Produce <= v11, EndTxn <= v4: what
librdkafka and kafka-python speak) reuse one (producer id, epoch) for every
transaction. In a tier of proxy processes a client's coordinator connection
can move between them: a transaction's abort goes through process B, and the
next transaction commits through process A, which holds both transactions'
keys. A process that learned them all at that commit would drop later plain
replays of the ABORTED records, which are in no committed log: a loss.

The transaction is driven request by request with kafka-python's protocol
layer (its own transactional producer speaks v1, but sends everything over
one connection), so each request can go through the process a moved
connection would take. Every read is straight from the broker, read_committed,
up to an end marker.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from bed import BedError, read_topic, unique, wait_for

RULE = """
[dedup]
window = "1h"
[[dedup.rules]]
topics = "txn1-*"
key = "content"
mode = "drop"
"""

RETRIABLE = {14, 15, 16, 51}  # coordinator loading / unavailable / not coordinator; concurrent txns


class TxnV1:
    """One transactional id, its requests sent through the chosen proxy."""

    def __init__(self, bootstraps: dict[str, str], transactional_id: str):
        from kafka.net.compat import KafkaNetClient
        self.bootstraps = bootstraps
        self.clients = {name: KafkaNetClient(bootstrap_servers=b, client_id=f"txn1-{name}")
                        for name, b in bootstraps.items()}
        self.txn_id = transactional_id
        self.producer_id = -1
        self.epoch = -1
        self.sequence = 0

    def reconnect(self, via: str):
        """The client's connection through `via` is gone; a new one opens."""
        from kafka.net.compat import KafkaNetClient
        self.clients[via].close()
        self.clients[via] = KafkaNetClient(bootstrap_servers=self.bootstraps[via],
                                           client_id=f"txn1-{via}")

    def _call(self, via: str, request, error_of):
        client = self.clients[via]
        end = time.monotonic() + 60
        while True:
            node = client.least_loaded_node(bootstrap_fallback=True)
            response = client.send_and_receive(node, request)
            err = error_of(response)
            if err == 0:
                return response
            if err not in RETRIABLE or time.monotonic() > end:
                raise BedError(f"{type(request).__name__} through {via}: error {err}: {response}")
            time.sleep(0.2)

    def init(self, via: str):
        from kafka.protocol.metadata.find_coordinator import FindCoordinatorRequest
        from kafka.protocol.producer.transaction import InitProducerIdRequest
        self._call(via, FindCoordinatorRequest(key=self.txn_id, key_type=1,
                                               coordinator_keys=[self.txn_id]),
                   lambda r: r.coordinators[0].error_code if r.coordinators else r.error_code)
        r = self._call(via, InitProducerIdRequest(
            transactional_id=self.txn_id, transaction_timeout_ms=60000,
            producer_id=-1, producer_epoch=-1, max_version=3), lambda r: r.error_code)
        self.producer_id, self.epoch = r.producer_id, r.producer_epoch

    def add_partition(self, via: str, topic: str):
        from kafka.protocol.producer.transaction import AddPartitionsToTxnRequest
        topic_cls = AddPartitionsToTxnRequest.AddPartitionsToTxnTopic
        self._call(via, AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=self.txn_id,
            v3_and_below_producer_id=self.producer_id,
            v3_and_below_producer_epoch=self.epoch,
            v3_and_below_topics=[topic_cls(name=topic, partitions=[0])],
            max_version=3),
            lambda r: max((p.partition_error_code
                           for t in r.results_by_topic_v3_and_below
                           for p in t.results_by_partition), default=0))

    def produce(self, via: str, topic: str, values: list[bytes], version: int = 9):
        from kafka.protocol.producer.produce import ProduceRequest
        from kafka.record.default_records import DefaultRecordBatchBuilder
        b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1,
                                      producer_id=self.producer_id, producer_epoch=self.epoch,
                                      base_sequence=self.sequence, batch_size=1 << 20)
        now = int(time.time() * 1000)
        for i, v in enumerate(values):
            b.append(i, timestamp=now, key=None, value=v, headers=[])
        records = bytes(b.build())
        topic_data = ProduceRequest.TopicProduceData
        self._call(via, ProduceRequest(
            transactional_id=self.txn_id, acks=-1, timeout_ms=30000,
            topic_data=[topic_data(name=topic, partition_data=[
                topic_data.PartitionProduceData(index=0, records=records)])],
            min_version=version, max_version=version),
            lambda r: max(p.error_code for t in r.responses for p in t.partition_responses))
        self.sequence += len(values)

    def end(self, via: str, commit: bool, version: int = 3):
        from kafka.protocol.producer.transaction import EndTxnRequest
        r = self._call(via, EndTxnRequest(transactional_id=self.txn_id,
                                          producer_id=self.producer_id,
                                          producer_epoch=self.epoch, committed=commit,
                                          min_version=version, max_version=version),
                       lambda r: r.error_code)
        if version >= 5:
            # Transactions v2: every end bumps the epoch, sequences start over.
            self.producer_id, self.epoch, self.sequence = r.producer_id, r.producer_epoch, 0

    def close(self):
        for c in self.clients.values():
            c.close()


def replay(bootstrap: str, topic: str, groups: list[list[bytes]]):
    """A plain producer writes each group to partition 0, one group a flush."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for group in groups:
        for v in group:
            p.produce(topic, value=v, partition=0)
        assert p.flush(60) == 0, "the replay was not delivered"


def values(prefix: str, n: int = 50) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


def test_an_abort_through_another_process_never_lets_its_records_be_dropped(kafka, proxies):
    topic = unique("txn1-moved")
    kafka.create_topic(topic, partitions=1)
    a = proxies(kafka.bootstrap, RULE)
    b = proxies(kafka.bootstrap, RULE)
    txn = TxnV1({"a": a.bootstrap, "b": b.bootstrap}, unique("txn1"))
    aborted, moved, whole = values("aborted"), values("moved"), values("whole")
    try:
        txn.init("a")
        # T1: added and produced through A; its connection then moves to B,
        # where the abort goes.
        txn.add_partition("a", topic)
        txn.produce("a", topic, aborted)
        txn.reconnect("a")
        txn.end("b", commit=False)
        # T2: added through B, produced and committed through A (on A's new
        # connection). A holds T1's and T2's keys under one (producer, epoch).
        txn.add_partition("b", topic)
        txn.produce("a", topic, moved)
        txn.end("a", commit=True)
        # T3: all through A, on one connection: its keys are learned.
        txn.add_partition("a", topic)
        txn.produce("a", topic, whole)
        txn.end("a", commit=True)
    finally:
        txn.close()

    # A plain producer replays all three through A, each transaction's
    # values in batches of their own: librdkafka numbers a batch's records
    # from one base offset, so the proxy drops replays only from a batch
    # whose records that base numbers truly (README, "unnumbered").
    replay(a.bootstrap, topic, [aborted, moved, whole, [b"END"]])

    got = [m.value() for m in read_topic(kafka.bootstrap, topic, isolation="read_committed",
                                         until=lambda rs: any(m.value() == b"END" for m in rs))]
    missing = [v for v in aborted if v not in got]
    assert not missing, (f"{len(missing)} records of the aborted transaction were dropped as "
                         f"replays of records no committed log holds: {missing[:5]}")
    assert all(got.count(v) == 1 for v in aborted), "each aborted value once (the replay)"
    assert all(got.count(v) >= 1 for v in moved), "T2 committed"
    assert all(got.count(v) == 1 for v in whole), \
        "T3, seen whole by one process, taught its keys: its replays were dropped"
    assert a.metric_sum("idemgate_dedup_fail_open_total", reason="txn_unseen") == \
        len(aborted) + len(moved), "T1's and T2's keys were counted as not placed"


def test_transactions_v2_keys_count_at_their_own_epochs_end(kafka, proxies):
    """The same through transactions v2 (KIP-890: no AddPartitionsToTxn,
    Produce v12, EndTxn v5 bumping the epoch): T1 produced through A and
    aborted through B teaches nothing; T2, with the epoch the abort gave,
    produced and committed through A, is learned by A on whatever connection
    (its epoch is its own), so its replays through A are dropped."""
    topic = unique("txn1-v2")
    kafka.create_topic(topic, partitions=1)
    a = proxies(kafka.bootstrap, RULE)
    b = proxies(kafka.bootstrap, RULE)
    txn = TxnV1({"a": a.bootstrap, "b": b.bootstrap}, unique("txn2"))
    aborted, committed = values("v2-aborted"), values("v2-committed")
    try:
        txn.init("a")
        txn.produce("a", topic, aborted, version=12)
        txn.end("b", commit=False, version=5)
        txn.produce("a", topic, committed, version=12)
        txn.reconnect("a")
        txn.end("a", commit=True, version=5)
    finally:
        txn.close()
    replay(a.bootstrap, topic, [aborted, committed, [b"END"]])
    got = [m.value() for m in read_topic(kafka.bootstrap, topic, isolation="read_committed",
                                         until=lambda rs: any(m.value() == b"END" for m in rs))]
    assert all(got.count(v) == 1 for v in aborted), \
        "each aborted value once: the replay, never dropped"
    assert all(got.count(v) == 1 for v in committed), \
        "the committed transaction taught A its keys: replays dropped"
    assert a.metric_sum("idemgate_duplicates_dropped_total", topic=topic) == len(committed)


def test_a_v2_commit_through_another_replica_teaches_its_keys_through_the_shared_window(
        kafka, proxies):
    """Transactions v2 in a tier sharing the window: produced through A,
    committed through B. B publishes the end to the window's topic; A, which
    holds the transaction's keys, learns them as if the EndTxn had come its
    way, so a plain replay through A is dropped. Without the shared window
    A never hears of the commit and the replay is written again."""
    for shared in (False, True):
        topic = unique("txn1-v2-tier")
        kafka.create_topic(topic, partitions=1)
        rule = RULE
        if shared:
            rule += f'[dedup.shared]\ntopic = "{unique("_idemgate-window")}"\n' \
                    'partitions = 1\nreplication_factor = 1\n'
        a = proxies(kafka.bootstrap, rule)
        b = proxies(kafka.bootstrap, rule)
        txn = TxnV1({"a": a.bootstrap, "b": b.bootstrap}, unique("txn2"))
        committed = values(f"tier-{shared}")
        try:
            txn.init("a")
            txn.produce("a", topic, committed, version=12)
            txn.end("b", commit=True, version=5)
        finally:
            txn.close()
        if shared:
            wait_for("A learned the transaction B committed",
                     lambda: a.metric_sum("idemgate_transaction_keys_learned_total") >= len(committed),
                     30)
        replay(a.bootstrap, topic, [committed, [b"END"]])
        got = [m.value() for m in read_topic(kafka.bootstrap, topic, isolation="read_committed",
                                             until=lambda rs: any(m.value() == b"END" for m in rs))]
        copies = 1 if shared else 2
        assert all(got.count(v) == copies for v in committed), \
            f"shared={shared}: each committed value {copies}x, got {got.count(committed[0])}x"
        dropped = a.metric_sum("idemgate_duplicates_dropped_total", topic=topic)
        assert dropped == (len(committed) if shared else 0)
