"""scripts/demo's show: Apache Kafka 4.4, idemgate in front of it, and two real
Kafka Connect 4.4 workers whose bootstrap.servers is the proxy. A
FileStreamSource task tails a file of orders; its worker is SIGKILLed a few
seconds after an offset commit, the task moves to the other worker and replays
from that commit, and the proxy drops the replays. The topic, read straight
from the broker, holds each order once.

Every process comes from the test bed's harness (proto-tests/kafka/bed.py);
see scripts/demo for the ports.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "proto-tests" / "kafka"))

from bed import ConnectCluster, KafkaCluster, Proxy, read_topic, wait_for  # noqa: E402

TOPIC = "orders"
CONNECTOR = "orders-source"
RATE = 100          # lines a second
FLUSH_MS = 10_000   # offset.flush.interval.ms: how far back a crash replays


class Orders(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.count = 0
        self.halt = threading.Event()

    @staticmethod
    def line(n: int) -> str:
        return f"order-{n:06d},customer-{n % 97:02d},{(n * 37) % 1000}.00"

    def run(self):
        with open(self.path, "a", buffering=1) as f:
            while not self.halt.is_set():
                f.write(self.line(self.count) + "\n")
                self.count += 1
                time.sleep(1 / RATE)
            f.write("end-of-demo\n")

    def finish(self) -> list[str]:
        self.halt.set()
        self.join(10)
        return [self.line(n) for n in range(self.count)] + ["end-of-demo"]


def wait_for_offset_commit(kafka: KafkaCluster, connect: ConnectCluster, timeout: float = 60):
    """Block until the workers commit a new source offset (read straight from
    the broker's copy of the Connect offsets topic)."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"demo-offsets-{time.time_ns()}",
                  "auto.offset.reset": "latest", "enable.auto.commit": False})
    try:
        c.subscribe([f"{connect.group}-offsets"])
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = c.poll(0.5)
            if msg is not None and not msg.error() and CONNECTOR.encode() in (msg.key() or b""):
                return
        raise SystemExit("demo: no source offset commit seen in 60 s")
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    work = Path(a.dir)
    kafka = proxy = connect = None
    try:
        print("demo: starting Apache Kafka 4.4 (KRaft, one node)...", flush=True)
        kafka = KafkaCluster.start(brokers=1)
        kafka.create_topic(TOPIC, partitions=1)
        proxy = Proxy(upstream=kafka.bootstrap, workdir=work / "proxy", port=19092, admin_port=9644,
                      broker_ports=(19093, 19099), extra=f"""
[dedup]
window = "1h"
[[dedup.rules]]
topics = "{TOPIC}"
key = "content"          # each order line is one event: its bytes name it
mode = "drop"
""").start()
        print(f"demo: idemgate on {proxy.bootstrap} in front of the broker {kafka.bootstrap}")
        print("demo: starting two Kafka Connect 4.4 workers with bootstrap.servers="
              f"{proxy.bootstrap}...", flush=True)
        connect = ConnectCluster.start(proxy.bootstrap, workers=2, flush_ms=FLUSH_MS, rebalance_delay_ms=3000,
                                       props={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1500"})
        source = work / "orders.csv"
        source.touch()
        orders = Orders(source)
        orders.start()
        connect.create_connector(CONNECTOR, {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1", "file": str(source), "topic": TOPIC})
        first = wait_for("the source task to run", lambda: connect.task_running(CONNECTOR), 60)
        victim = connect.worker_number(first)
        print(f"\nFileStreamSource '{CONNECTOR}' tails {source} ({RATE} orders/s) on worker {victim} ({first});")
        print(f"offsets are committed every {FLUSH_MS // 1000} s.")
        wait_for_offset_commit(kafka, connect)
        time.sleep(6)
        connect.kill(victim)
        print(f"\nworker {victim} SIGKILLed 6 s after its last offset commit: "
              "the orders it sent since then will be sent again.")
        moved = wait_for("the task to move", lambda: (w := connect.task_running(CONNECTOR))
                         and connect.worker_number(w) != victim and w, 90)
        print(f"the task moved to worker {connect.worker_number(moved)} ({moved}) and replayed from the commit.")
        connect.restart(victim)
        time.sleep(3)
        written = orders.finish()
        records = read_topic(kafka.bootstrap, TOPIC, timeout=120,
                             until=lambda rs: any(r.value() == b"end-of-demo" for r in rs))
        values = [r.value().decode() for r in records]

        from confluent_kafka.admin import AdminClient
        md = AdminClient({"bootstrap.servers": proxy.bootstrap}).list_topics(timeout=10)
        print(f"\nclients of {proxy.bootstrap} are told the brokers are at:")
        for b in md.brokers.values():
            print(f"  node {b.id}: {b.host}:{b.port}")
        m = proxy.metrics()
        dropped = proxy.metric_sum("idemgate_duplicates_dropped_total", topic=TOPIC)
        print(f"\nwhat the proxy saw ({proxy.admin}/metrics, /connectors):")
        print(f"  replays       {dropped:>6.0f} dropped before the broker (idemgate_duplicates_dropped_total)")
        print(f"  window        {m.get('idemgate_window_keys', 0):>6.0f} keys remembered")
        print(f"  address leaks {proxy.metric_sum('idemgate_address_leaks_total'):>6.0f}")
        lost = set(written) - set(values)
        copies = len(values) - len(set(values))
        in_order = values == written
        ok = not lost and copies == 0 and in_order and dropped > 0
        print(f"\nthe topic, read straight from the broker, holds {len(values)} records for "
              f"{len(written)} lines written: "
              + ("each exactly once, in file order" if ok else
                 f"{len(lost)} missing, {copies} extra copies, in order: {in_order}, replays dropped: {dropped:.0f}"))
        print("\ndemo: ok" if ok else "\ndemo: FAILED")
        if not ok or a.once:
            return 0 if ok else 1
        print(f"""
Everything keeps running:
  bootstrap.servers = {proxy.bootstrap}        (any Kafka client)
  Connect REST      = {connect.workers[1]}  {connect.workers[2]}
  metrics           = {proxy.admin}/metrics, {proxy.admin}/connectors
  logs              = {proxy.log_path}, {connect.dir}/worker-*.log
Append lines to {source} and watch them arrive once. Ctrl-C stops everything.""", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        return 0
    finally:
        if connect:
            connect.stop()
        if proxy:
            proxy.stop()
        if kafka:
            kafka.stop()


if __name__ == "__main__":
    sys.exit(main())
