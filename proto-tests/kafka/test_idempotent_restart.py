"""Idempotent producers never lose a record across a proxy crash (audit A1).

The hazard: an idempotent batch the proxy forwarded whole is appended by
the broker, but its answer dies with the proxy (SIGKILL). Meanwhile another
producer writes the same content through the restarted proxy, so the window
learns it. When the first producer resends its batch, a proxy that trims it
as a replay shifts the producer's sequence numbers: the broker then takes
the producer's NEXT batch for a duplicate of one it holds, answers success,
and writes nothing. The producer was told the records are written; they are
not.

Here the broker really holds the batches and the producer really hears
nothing: a follower of a replication-factor-3 partition is SIGSTOPped, so
the leader appends the producer's acks=all batches but cannot answer them;
the producer is SIGSTOPped, the proxy SIGKILLed, the follower resumed, the
proxy restarted on its store, a second producer writes the same values, and
only then does the first producer resume and resend. Every record the first
producer was told is written must be in the log, read straight from the
brokers. Run for librdkafka (full batches of 50, so a shifted batch would
match a cached one exactly) and for the Java client with its defaults.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from bed import BedError, read_topic, unique, wait_for
from test_java_client import Run as JavaRun

HERE = Path(__file__).resolve().parent

RULE = """
[dedup]
window = "1h"
[[dedup.rules]]
topics = "idem-*"
key = "content"
mode = "drop"
"""

COUNT = 4000


class RdkafkaRun:
    """idem_producer.py in its own process: its JSON events."""

    def __init__(self, bootstrap: str, topic: str, prefix: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "idem_producer.py"), bootstrap, topic, str(COUNT),
             prefix, "50"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                with self.lock:
                    self.events.append(json.loads(line))

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]

    def wait(self, timeout: float):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            raise BedError(f"the librdkafka producer did not finish in {timeout:.0f} s") from exc
        time.sleep(0)  # the reader thread drains the pipe at EOF
        wait_for("the producer's last event", lambda: self.of("done"), 10)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def describe(self) -> str:
        return f"send_failed: {self.of('send_failed')[:5]}\nstderr:\n{self.stderr[-2000:]}"


def java_producer(bootstrap: str, topic: str, prefix: str):
    run = JavaRun("idem-restart", ["produce", "--bootstrap", bootstrap, "--topic", topic,
                                   "--count", str(COUNT), "--prefix", prefix, "--pause-ms", "1",
                                   "--partitions", "1", "--marker", "END"])

    def wait(timeout: float):
        run.wait(timeout)
    return run, wait


def broker_pid(kafka3, node_id: int) -> int:
    return int((kafka3.dir / f"broker-{node_id}.pid").read_text().strip())


def partition0(kafka3, topic: str):
    md = kafka3.admin().list_topics(topic, timeout=15)
    return md.topics[topic].partitions[0]


@pytest.mark.parametrize("client", ["librdkafka", "java"])
def test_a_resend_after_a_proxy_crash_never_costs_the_next_batch(kafka3, proxies, client):
    topic = unique("idem-restart")
    kafka3.create_topic(topic, partitions=1, replication=3)
    p0 = partition0(kafka3, topic)
    follower = next(r for r in p0.replicas if r != p0.leader)
    proxy = proxies(kafka3.bootstrap, RULE)
    prefix = "p"
    if client == "librdkafka":
        prod = RdkafkaRun(proxy.bootstrap, topic, prefix)
        finish = prod.wait
    else:
        prod, finish = java_producer(proxy.bootstrap, topic, prefix)
    follower_pid = broker_pid(kafka3, follower)
    stopped = []
    try:
        wait_for("500 records acknowledged",
                 lambda: prod.proc.poll() is not None or len(prod.of("acked")) >= 500, 120)
        assert prod.proc.poll() is None, f"the producer ended early\n{prod.describe()}"

        # The follower stops: the leader appends the producer's batches but
        # cannot answer acks=all. Wait until the acknowledgements stop.
        os.kill(follower_pid, signal.SIGSTOP)
        stopped.append(follower_pid)

        def stalled():
            n = len(prod.of("acked"))
            time.sleep(1.0)
            return len(prod.of("acked")) == n
        wait_for("acknowledgements stalled behind the stopped follower", stalled, 20)
        acked_before = {e["value"] for e in prod.of("acked")}

        # The producer freezes with its requests in flight; the proxy dies
        # with their answers; the follower catches up, so the leader commits
        # the batches no one will hear about.
        os.kill(prod.proc.pid, signal.SIGSTOP)
        stopped.append(prod.proc.pid)
        proxy.sigkill()
        os.kill(follower_pid, signal.SIGCONT)
        stopped.remove(follower_pid)
        proxy.start()

        # Another producer writes the same values through the restarted proxy.
        first_unacked = min(i for i in range(COUNT) if f"{prefix}-{i}" not in acked_before)
        other = Producer({"bootstrap.servers": proxy.bootstrap, "acks": "all", "linger.ms": 5})
        for i in range(first_unacked, min(COUNT, first_unacked + 1500)):
            other.produce(topic, value=f"{prefix}-{i}".encode(), partition=0)
        assert other.flush(60) == 0, "the second producer's records were not all delivered"

        # The first producer resumes, resends what was in flight, goes on.
        os.kill(prod.proc.pid, signal.SIGCONT)
        stopped.remove(prod.proc.pid)
        finish(300)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        prod.kill()

    assert not prod.of("send_failed"), prod.describe()
    acked = [e["value"] for e in prod.of("acked")]
    assert "END" in acked and len(set(acked)) == COUNT + 1, \
        f"the producer was told {len(set(acked))} of {COUNT + 1} records written"
    log = {m.value().decode() for m in read_topic(
        kafka3.bootstrap, topic, until=lambda rs: any(m.value() == b"END" for m in rs),
        timeout=120)}
    lost = [v for v in acked if v not in log]
    assert not lost, (f"{len(lost)} records the producer was told are written are not in the "
                      f"log, e.g. {lost[:10]}")
    # The scenario bit: the resends carried values the window had learned
    # from the second producer, and the proxy wrote them rather than trim.
    assert proxy.metric_sum("idemgate_dedup_fail_open_total", reason="sequence_unknown") > 0, \
        "no resend met a learned value: the scenario did not happen"
