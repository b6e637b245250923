"""Fetch-path dedup (README "Sinks read each record once") with read_committed
consumers and aborted transactions, against Apache Kafka 4.4 (tansu never
wrote aborted-transaction lists or control batches).

The log is written straight to the broker, around the proxy, by
confluent-kafka: committed transactions, a plain (non-transactional)
producer's copies, and aborted transactions, one of which holds records
that a later transaction commits (so an aborted copy sits below the first
committed one). A read_committed reader through a proxy with a
`direction = "fetch"` drop rule must get every committed record exactly
once, no aborted record, and reach the end marker; the same read straight
from the broker shows the duplicates (the scenario bites), and a
read_uncommitted one the aborted records (they were written).
"""

from __future__ import annotations

from collections import Counter

from bed import read_topic, unique

RULE = """
[[dedup.rules]]
topics = "txnfetch-*"
key = "content"
direction = "fetch"
mode = "drop"
"""


def _write_log(bootstrap: str, topic: str):
    from confluent_kafka import Producer

    def delivered(errors):
        def cb(err, _msg):
            if err is not None:
                errors.append(err)
        return cb

    errors: list = []
    tx = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique("txnfetch"),
                   "transaction.timeout.ms": 60000})
    tx.init_transactions(30)

    def transaction(values, commit: bool):
        tx.begin_transaction()
        for v in values:
            tx.produce(topic, value=v.encode(), on_delivery=delivered(errors))
        tx.flush(30)
        if commit:
            tx.commit_transaction(30)
        else:
            tx.abort_transaction(30)

    plain = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                      "enable.idempotence": False, "linger.ms": 5})

    def plain_send(values):
        for v in values:
            plain.produce(topic, value=v.encode(), on_delivery=delivered(errors))
        assert plain.flush(30) == 0, "plain producer did not finish"

    committed = [f"c-{i}" for i in range(50)]
    late = [f"late-{i}" for i in range(10)]
    transaction(committed, commit=True)                       # first copies
    plain_send(committed[:25])                                # plain copies
    # Aborted: records never committed, records committed only later (their
    # aborted copies sit below the first committed copy), copies of committed ones.
    transaction([f"a-{i}" for i in range(20)] + late + committed[30:35], commit=False)
    transaction(late + committed[25:], commit=True)           # transactional copies
    transaction([f"a-{i}" for i in range(20, 30)], commit=False)
    plain_send(["END"])                                       # last offset of the log
    assert not errors, f"delivery errors writing the log: {errors[:3]}"
    return committed + late + ["END"]


def _values(records) -> Counter:
    return Counter(m.value().decode() for m in records)


def test_read_committed_gets_each_committed_record_once_and_no_aborted_one(kafka, proxies):
    topic = unique("txnfetch")
    kafka.create_topic(topic, partitions=1)
    expected = _write_log(kafka.bootstrap, topic)
    has_end = lambda recs: any(m.value() == b"END" for m in recs)  # noqa: E731

    # Straight from the broker: the duplicates are there (committed twice),
    # Kafka hides the aborted records, and they were written.
    direct = _values(read_topic(kafka.bootstrap, topic, has_end, isolation="read_committed"))
    assert set(direct) == set(expected), f"direct read_committed: {sorted(direct)[:20]}"
    extra = sum(direct.values()) - len(expected)
    assert extra == 50, f"direct: {extra} extra copies, the log was written with 50"
    raw = _values(read_topic(kafka.bootstrap, topic, has_end, isolation="read_uncommitted"))
    assert sum(n for v, n in raw.items() if v.startswith("a-")) == 30, "aborted records missing"
    assert raw["late-0"] == 2, "the aborted copy of a later-committed record is in the log"

    proxy = proxies(kafka.bootstrap, RULE)
    for attempt in ("first read", "second read (a new reader from the start)"):
        got = _values(read_topic(proxy.bootstrap, topic, has_end, isolation="read_committed"))
        missing = [v for v in expected if got[v] == 0]
        twice = {v: n for v, n in got.items() if n > 1}
        aborted = [v for v in got if v not in expected]
        assert not missing, f"{attempt}: committed records lost through the proxy: {missing}"
        assert not aborted, f"{attempt}: aborted or unknown records delivered: {aborted}"
        assert not twice, f"{attempt}: duplicates the fetch rule should have removed: {twice}"

    dropped = proxy.metric_sum("idemgate_duplicates_dropped_total", direction="fetch", topic=topic)
    assert dropped >= 50, f"the proxy removed {dropped:.0f} copies, expected 50 per read"
    proxy.assert_no_leaks()
