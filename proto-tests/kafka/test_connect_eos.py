"""Connect 4.4's exactly-once source support (KIP-618) through idemgate to
Apache Kafka 4.4: workers with `exactly.once.source.support=enabled`, so each
source task writes with a transactional producer and commits its offsets in
the same transaction, through a proxy with a dedup drop rule on the topic.

A FileStreamSource (`exactly.once.support=required`: the connector must
declare it, or the task refuses to start) tails a file that grows while the
test runs; its transactions span `transaction.boundary.interval.ms`, so one
is nearly always open when the worker running the task is SIGKILLed. The
moved task's producer fences the old one, its open transaction is aborted
and the task resumes from the last committed offset.

Asserted: a read_committed reader straight to the broker sees every line
exactly once, in order, up to the marker; the proxy dropped nothing
(transactional batches pass byte for byte) and learned keys from commits;
and a read_uncommitted reader sees more records than that (the aborted
transaction's), so the kill really cut a transaction open.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bed import read_topic, unique, wait_for

MARKER = "END-OF-RUN"


class Writer(threading.Thread):
    """Appends numbered lines to `path` at about `rate` per second until stopped."""

    def __init__(self, path: Path, rate: int = 100):
        super().__init__(daemon=True)
        self.path, self.rate, self.n = path, rate, 0
        self.stopped = threading.Event()

    def run(self):
        with open(self.path, "a") as f:
            while not self.stopped.is_set():
                for _ in range(self.rate // 10):
                    self.n += 1
                    f.write(f"line-{self.n:06d}\n")
                f.flush()
                time.sleep(0.1)

    def stop(self) -> int:
        self.stopped.set()
        self.join(10)
        return self.n


def test_exactly_once_source_through_the_proxy(kafka, proxies, connect_clusters):
    topic = unique("eos")
    kafka.create_topic(topic, partitions=1)
    proxy = proxies(kafka.bootstrap, f"""
[[dedup.rules]]
topics = "{topic}"
key = "content"
mode = "drop"
""")
    connect = connect_clusters(proxy.bootstrap, workers=2, flush_ms=60000,
                               props={"exactly.once.source.support": "enabled"})
    src = Path(tempfile.mkdtemp(prefix="idemgate-eos.")) / "in.txt"
    src.touch()
    name = unique("eos-src")
    writer = Writer(src)
    writer.start()
    try:
        connect.create_connector(name, {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1",
            "file": str(src),
            "topic": topic,
            "exactly.once.support": "required",
            "transaction.boundary": "interval",
            "transaction.boundary.interval.ms": "4000",
        })
        first = wait_for(f"{name}'s task to run", lambda: connect.task_running(name), 120)
        # Some committed transactions first, then the kill with one open.
        read_topic(kafka.bootstrap, topic, isolation="read_committed", timeout=120,
                   until=lambda recs: len(recs) >= 500)
        victim = connect.worker_number(first)
        connect.kill(victim)
        survivor = next(n for n in connect.workers if n != victim)
        wait_for(f"{name}'s task on worker {survivor}",
                 lambda: (lambda w: w and connect.worker_number(w) == survivor)(
                     connect.task_running(name)), 180, interval=0.5)
        connect.restart(victim)
    except Exception:
        print(connect.log_tail(80))
        raise
    finally:
        n = writer.stop()
    with open(src, "a") as f:
        f.write(MARKER + "\n")

    def marker(recs):
        return recs and recs[-1].value() == MARKER.encode()
    committed = [m.value().decode() for m in read_topic(
        kafka.bootstrap, topic, isolation="read_committed", timeout=180, until=marker)]
    expected = [f"line-{i:06d}" for i in range(1, n + 1)] + [MARKER]
    twice = {v: c for v, c in Counter(committed).items() if c > 1}
    assert not twice, f"{len(twice)} lines committed more than once, e.g. {list(twice)[:3]}"
    missing = set(expected) - set(committed)
    assert not missing, f"{len(missing)} lines never committed, e.g. {sorted(missing)[:3]}"
    assert committed == expected

    everything = read_topic(kafka.bootstrap, topic, timeout=120, until=marker)
    data = [m for m in everything if m.value() is not None]
    aborted = len(data) - len(committed)
    assert aborted > 0, "no aborted records: the kill did not cut an open transaction"

    dropped = proxy.metric_sum("idemgate_duplicates_dropped_total")
    assert dropped == 0, f"the proxy dropped {dropped:.0f} transactional records"
    learned = proxy.metric_sum("idemgate_transaction_keys_learned_total")
    assert learned >= len(committed) - 1, f"only {learned:.0f} keys learned from commits"
    print(f"{len(committed) - 1} lines once each; {aborted} records of aborted transactions; "
          f"{learned:.0f} keys learned at commit")
