"""A Kafka Connect sink task's consumer, kafka-python 3.0.12, reading through
the proxy while records keep arriving.

Run by proto-tests/fetch_sessions.rs (not collected by pytest). kafka-python
asks for KIP-227 incremental fetch sessions by default (Fetch v7-12, epoch 0,
then incremental fetches once the broker answers with a session id); this
script keeps that default and counts what its fetcher logged about the
sessions. Small fetches (fetch_max_wait_ms 5, max_partition_fetch_bytes 4 KiB)
make thousands of them.

It polls until the test writes the log's end offsets on stdin, one line
"partition:offset partition:offset ...", and then until its position reached
them (a position past a batch the proxy emptied counts: the consumer moved on).
Then it prints one JSON object on stdout: the records it got, as
[partition, offset, seq] in delivery order; the fetch-session outcomes; the
complaints kafka-python logged; and whether it timed out (exit 1 if so).
"""

import argparse
import collections
import json
import logging
import sys
import threading
import time

from kafka import KafkaConsumer, TopicPartition


class FetcherLog(logging.Handler):
    """Counts kafka-python's fetch-session outcomes and keeps its complaints."""

    KINDS = {
        "created": "created a new incremental fetch session",
        "continued": "sent an incremental fetch response for session",
        "closed": "sent an incremental fetch response closing session",
        "full_no_session": "sent a full fetch response with",
    }
    BAD = ("unable to process the fetch request", "invalid full fetch response",
           "invalid incremental fetch response", "Fetch to node", "Unable to find fetch session")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.counts = collections.Counter()
        self.bad = []

    def emit(self, record):
        msg = record.getMessage()
        for kind, text in self.KINDS.items():
            if text in msg:
                self.counts[kind] += 1
        if record.levelno >= logging.WARNING or any(b in msg for b in self.BAD):
            self.bad.append(f"{record.levelname} {record.name}: {msg}")


def seq_of(value: bytes) -> int:
    assert value.startswith(b"value-"), value
    return int(value[6:])


def read_ends(into: dict, ready: threading.Event):
    line = sys.stdin.readline()
    for item in line.split():
        p, end = item.split(":")
        into[int(p)] = int(end)
    ready.set()


def main() -> int:
    ap = argparse.ArgumentParser()
    for k in ("--bootstrap", "--topic", "--group", "--client-id"):
        ap.add_argument(k, required=True)
    # A bound against a hang, not a speed: the caller passes its own.
    ap.add_argument("--seconds", type=float, default=720)
    a = ap.parse_args()

    fetcher_log = FetcherLog()
    kafka_log = logging.getLogger("kafka")
    fetch_logger = logging.getLogger("kafka.consumer.fetcher")
    kafka_log.addHandler(fetcher_log)
    kafka_log.setLevel(logging.INFO)
    fetch_logger.setLevel(logging.DEBUG)
    fetch_logger.propagate = False  # thousands of debug lines: counted, not kept
    fetch_logger.addHandler(fetcher_log)

    ends, ready = {}, threading.Event()
    threading.Thread(target=read_ends, args=(ends, ready), daemon=True).start()

    # session_timeout_ms 15 s, not 6: kafka-python heartbeats from a Python
    # thread, which a busy fetch loop on a loaded machine can starve of the GIL
    # for seconds; a missed session means a rebalance, a WARN and a new fetch
    # session, which the test would take for the proxy breaking the session.
    # tansu 0.6.0 sets no upper bound on a group's session timeout.
    consumer = KafkaConsumer(
        a.topic, bootstrap_servers=a.bootstrap, group_id=a.group, client_id=a.client_id,
        auto_offset_reset="earliest", enable_auto_commit=False,
        session_timeout_ms=15000, heartbeat_interval_ms=1000, request_timeout_ms=30000,
        fetch_max_wait_ms=5, max_partition_fetch_bytes=4096)
    rows = []
    timed_out = True
    stop = time.monotonic() + a.seconds
    try:
        while time.monotonic() < stop:
            for records in consumer.poll(timeout_ms=100, max_records=200).values():
                rows.extend((r.partition, r.offset, seq_of(r.value)) for r in records)
            if ready.is_set():
                tps = {TopicPartition(a.topic, p): end for p, end in ends.items()}
                if set(tps) <= consumer.assignment() and all(
                        (consumer.position(tp, timeout_ms=5000) or 0) >= end for tp, end in tps.items()):
                    timed_out = False
                    break
    finally:
        # Detached first: closing cancels the fetch in flight ("Fetch to node
        # ... failed: Cancelled"), which is no error of the read.
        fetch_logger.removeHandler(fetcher_log)
        kafka_log.removeHandler(fetcher_log)
        consumer.close(autocommit=False)
    print(json.dumps({"rows": rows, "sessions": dict(fetcher_log.counts), "bad": fetcher_log.bad,
                      "timed_out": timed_out}))
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
