"""A FileStreamSink on the real Connect 4.4 runtime reading through idemgate's
fetch-direction dedup from Apache Kafka 4.4.

Copies are written straight to the broker, around the proxy (a producer that
replays part of what it sent, as a source without the proxy would), then a
marker. One sink reads the topic through the proxy with a `direction =
"fetch"` rule: its output file holds every record once, in order, and ends
on the marker. The same sink on workers straight to the broker writes the
copies (asserted > 0), so the test bites.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from bed import dedup_rule, unique, wait_for

N = 2000
REPLAYED = range(800, 1400)  # sent twice: 600 copies
MARKER = "END-OF-RUN"


def produce_with_copies(bootstrap: str, topic: str) -> list[str]:
    """Writes N distinct values, then a replay of REPLAYED, then the marker,
    straight to the broker. Returns what the log holds, in order."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    values = [f"record-{i:05d}" for i in range(N)]
    log = values + [values[i] for i in REPLAYED] + [MARKER]
    errors = []
    for v in log:
        p.produce(topic, v.encode(), on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(60) == 0 and not errors, f"producing straight to the broker: {errors[:3]}"
    return log


def sink_output(connect_clusters, bootstrap: str, topic: str,
                isolation: str = "read_uncommitted") -> list[str]:
    """A FileStreamSink on one worker whose bootstrap is `bootstrap`; the
    lines of its file once it ends on the marker."""
    out = Path(tempfile.mkdtemp(prefix="idemgate-sink.")) / "out.txt"
    connect = connect_clusters(bootstrap, workers=1, flush_ms=1000)
    name = unique("sink")
    connect.create_connector(name, {
        "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "file": str(out),
        "consumer.override.auto.offset.reset": "earliest",
        "consumer.override.isolation.level": isolation,
    })

    def ended():
        connect.task_running(name)  # raises if the task FAILED
        return out.exists() and out.read_text().endswith(MARKER + "\n")
    try:
        wait_for(f"{name}'s file to end on {MARKER}", ended, 180, interval=0.5)
    except Exception:
        print(connect.log_tail(60))
        raise
    return out.read_text().splitlines()


def test_sink_reads_each_record_once_through_fetch_dedup(kafka, proxies, connect_clusters):
    topic = unique("sink-in")
    kafka.create_topic(topic, partitions=1)
    log = produce_with_copies(kafka.bootstrap, topic)
    distinct = list(dict.fromkeys(log))

    proxy = proxies(kafka.bootstrap, dedup_rule(topic, 'direction = "fetch"'))
    lines = sink_output(connect_clusters, proxy.bootstrap, topic)
    twice = {v: n for v, n in Counter(lines).items() if n > 1}
    assert not twice, f"{len(twice)} records written more than once through the proxy"
    assert lines == distinct, "through the proxy the file is not every record once, in log order"
    removed = proxy.metric_sum("idemgate_duplicates_dropped_total", direction="fetch")
    assert removed >= len(REPLAYED), f"the proxy removed {removed:.0f} copies from Fetch responses"

    # The same sink straight to the broker writes the copies.
    direct = sink_output(connect_clusters, kafka.bootstrap, topic)
    assert direct == log
    copies = len(direct) - len(set(direct))
    assert copies > 0 and copies == len(REPLAYED)
    print(f"direct: {copies} copies in the file; through idemgate: {removed:.0f} removed")


def produce_with_transactions(bootstrap: str, topic: str) -> tuple[list[str], list[str]]:
    """Straight to the broker: plain records, a committed transaction of
    copies, an aborted transaction of records written for real only later,
    those records, copies of half of them, the marker. Returns (what a
    read_committed reader gets, the distinct committed values in order)."""
    from confluent_kafka import Producer
    plain = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique("copier")})
    txn.init_transactions(30)

    def send(p, values):
        for v in values:
            p.produce(topic, v.encode())
            p.poll(0)
        assert p.flush(60) == 0

    first = [f"record-{i:05d}" for i in range(1000)]
    late = [f"late-{i:05d}" for i in range(200)]
    send(plain, first)
    txn.begin_transaction()
    send(txn, first[500:800])
    txn.commit_transaction(30)
    txn.begin_transaction()
    send(txn, late)  # aborted: these are never committed here
    txn.abort_transaction(30)
    send(plain, late + late[100:] + [MARKER])
    committed = first + first[500:800] + late + late[100:] + [MARKER]
    return committed, first + late + [MARKER]


def test_read_committed_sink_through_fetch_dedup(kafka, proxies, connect_clusters):
    """Apache Kafka's real read_committed answers (last stable offset, aborted
    transactions list): an aborted transaction's records are skipped by the
    sink and teach the proxy nothing, so the same values committed later are
    delivered; committed copies, transactional or not, are removed."""
    topic = unique("sink-txn")
    kafka.create_topic(topic, partitions=1)
    committed, distinct = produce_with_transactions(kafka.bootstrap, topic)
    proxy = proxies(kafka.bootstrap, dedup_rule(topic, 'direction = "fetch"'))
    lines = sink_output(connect_clusters, proxy.bootstrap, topic, isolation="read_committed")
    lost = set(distinct) - set(lines)
    assert not lost, f"{len(lost)} committed records never reached the sink, e.g. {sorted(lost)[:3]}"
    assert lines == distinct, "through the proxy the file is not every committed record once"
    removed = proxy.metric_sum("idemgate_duplicates_dropped_total", direction="fetch")
    assert removed >= 400, f"the proxy removed {removed:.0f} copies from Fetch responses"

    direct = sink_output(connect_clusters, kafka.bootstrap, topic, isolation="read_committed")
    assert direct == committed
    copies = len(direct) - len(set(direct))
    assert copies == 400
    print(f"read_committed direct: {copies} copies in the file; through idemgate: none")
