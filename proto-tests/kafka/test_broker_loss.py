"""Broker loss and leader moves on the three-broker Apache Kafka cluster,
under a producer streaming through a dedup (drop) proxy.

A Connect-shaped producer (confluent-kafka: acks=all, no idempotence, one
request in flight, small batches) streams unique records to a 3-partition,
replication-3 topic through the proxy while:
1. the broker leading partition 0 is SIGKILLed, the stream goes on on the
   new leaders, and the broker is restarted;
2. a preferred-leader election moves leadership back to it.
Then the last records the client was told are written are replayed through
the proxy (a task restarting from an older offset commit): the proxy drops
them, or lets pass (counted, fail_open reason "unnumbered") the ones no base
offset can number in their batch: librdkafka numbers records from any base.

Read straight from the brokers, to end markers on every partition:
- every record the client was told is written is in the log (no loss);
- duplicates only from the documented retries: at most two copies of a
  record, and no more of them than the records one in-flight request per
  partition can hold at each disruption (a request whose answer the killed
  leader never sent, retried by the client);
- no copy of a replayed record was added but the ones the proxy counted as
  let pass (unnumbered);
- the proxy serves a listener for every broker (before and after the loss)
  and never hands out a broker's own address (leak check);
- the same replay straight to the brokers does add a copy of each record.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter

from bed import BedError, read_topic, unique, wait_for

BATCH = 20        # batch.num.messages: bounds what one request carries
PARTITIONS = 3
RULE = """
[[dedup.rules]]
topics = "loss-*"
key = "content"
mode = "drop"
"""


def _producer_conf(bootstrap: str, client_id: str, stats=None) -> dict:
    conf = {"bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all",
            "enable.idempotence": False, "max.in.flight.requests.per.connection": 1,
            "batch.num.messages": BATCH, "linger.ms": 5, "message.timeout.ms": 120000,
            "request.timeout.ms": 15000, "retry.backoff.ms": 200}
    if os.environ.get("RDKAFKA_DEBUG"):  # e.g. "msg,protocol": why a client retried
        conf["debug"] = os.environ["RDKAFKA_DEBUG"]
    if stats is not None:
        conf["statistics.interval.ms"] = 1000
        conf["stats_cb"] = stats
    return conf


def _replay(bootstrap: str, client_id: str, topic: str, values: list[str], end: str, what: str) -> set[bytes]:
    """One producer sends `values`, then the end marker `{end}-{partition}` to
    every partition, and each delivery succeeds; returns the end markers."""
    from confluent_kafka import Producer

    errors = []
    p = Producer(_producer_conf(bootstrap, client_id))
    for v in values:
        p.produce(topic, value=v.encode(), on_delivery=lambda e, _m: e and errors.append(e))
    for part in range(PARTITIONS):
        p.produce(topic, value=f"{end}-{part}".encode(), partition=part,
                  on_delivery=lambda e, _m: e and errors.append(e))
    assert p.flush(60) == 0 and not errors, f"{what}: {errors[:3]}"
    return {f"{end}-{i}".encode() for i in range(PARTITIONS)}


class Streamer(threading.Thread):
    """Produces v-0, v-1, ... through the proxy until stopped; keeps which
    ones the client was told are written and which failed."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.topic = topic
        self.acked: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.sent = 0
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        from confluent_kafka import Producer
        self.producer = Producer(_producer_conf(bootstrap, "connector-producer-loss-0"))

    def _cb(self, err, msg):
        with self.lock:
            if err is None:
                self.acked.append(msg.value().decode())
            else:
                self.failed.append((msg.value().decode(), str(err)))

    def run(self):
        try:
            while not self.stop_flag.is_set():
                try:
                    self.producer.produce(self.topic, value=f"v-{self.sent}".encode(),
                                          on_delivery=self._cb)
                    self.sent += 1
                except BufferError:
                    self.producer.poll(0.1)
                    continue
                self.producer.poll(0)
                if self.sent % 10 == 0:
                    time.sleep(0.02)  # a steady stream (< 500/s), not a flood
            left = self.producer.flush(150)
            if left:
                raise BedError(f"{left} records still undelivered after 150 s")
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def n_acked(self) -> int:
        with self.lock:
            return len(self.acked)

    def finish(self):
        self.stop_flag.set()
        self.join(200)
        assert not self.is_alive(), "the producer did not finish"
        if self.error:
            raise self.error


def _md(cluster, topic):
    return cluster.admin().list_topics(topic, timeout=10).topics[topic].partitions


def _proxy_brokers_serve(proxy):
    """Metadata through the proxy names 3 brokers, each a listening proxy port."""
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": proxy.bootstrap}).list_topics(timeout=15)
    addrs = sorted(f"{b.host}:{b.port}" for b in md.brokers.values())
    assert len(addrs) == 3, f"the proxy's Metadata names {addrs}"
    for a in addrs:
        host, port = a.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    return addrs


def test_leader_loss_and_leader_moves_lose_nothing_acknowledged(kafka3, proxies):
    from confluent_kafka import Producer, TopicPartition, ElectionType

    topic = unique("loss")
    kafka3.create_topic(topic, partitions=PARTITIONS, replication=3)
    proxy = proxies(kafka3.bootstrap, RULE)
    upstream = set(kafka3.brokers.values())
    addrs = _proxy_brokers_serve(proxy)
    assert not upstream & set(addrs), f"broker addresses handed out: {addrs}"

    stream = Streamer(proxy.bootstrap, topic)
    stream.start()
    killed = None
    try:
        wait_for("300 records acknowledged", lambda: stream.n_acked() >= 300, 90)

        # 1. The leader of partition 0 is lost.
        killed = _md(kafka3, topic)[0].leader
        kafka3.kill(killed)
        at_kill = stream.n_acked()
        wait_for(f"a new leader for {topic}-0",
                 lambda: _md(kafka3, topic)[0].leader not in (killed, -1), 60)
        wait_for("300 more records acknowledged after the loss",
                 lambda: stream.n_acked() >= at_kill + 300, 120)
        kafka3.restart(killed)
        killed = None
        wait_for("the restarted broker back in every ISR",
                 lambda: all(len(p.isrs) == 3 for p in _md(kafka3, topic).values()), 90)

        # 2. Leadership moves back (preferred-leader election).
        parts = _md(kafka3, topic)
        moved = [p for p, m in parts.items() if m.leader != m.replicas[0]]
        assert moved, "the loss moved no leader: nothing to move back"
        admin = kafka3.admin()  # kept alive until its future is done
        result = admin.elect_leaders(
            ElectionType.PREFERRED, [TopicPartition(topic, p) for p in moved]).result(30)
        assert not [e for e in result.values() if e is not None], f"election: {result}"
        wait_for("every partition led by its preferred replica",
                 lambda: all(m.leader == m.replicas[0] for m in _md(kafka3, topic).values()), 60)
        at_move = stream.n_acked()
        wait_for("300 more records acknowledged after the leader moves",
                 lambda: stream.n_acked() >= at_move + 300, 120)
    finally:
        stream.finish() if stream.is_alive() else None
        if killed is not None:
            kafka3.restart(killed)
    acked, failed = list(stream.acked), list(stream.failed)
    assert len(acked) >= 900 and not stream.error

    # 3. A task restarting from an older offset commit replays what was written.
    replayed = acked[-200:]
    ends = _replay(proxy.bootstrap, "connector-producer-loss-0", topic, replayed, "END",
                   "replay through the proxy")
    seen, scanned = set(), [0]

    def all_ends(recs):  # called on every poll: look only at the new records
        seen.update(m.value() for m in recs[scanned[0]:] if m.value() in ends)
        scanned[0] = len(recs)
        return seen == ends

    records = read_topic(kafka3.bootstrap, topic, all_ends, timeout=120)
    log = Counter(m.value().decode() for m in records)
    where: dict[str, list[str]] = {}  # value -> "partition@offset (timestamp)" of each copy
    for m in records:
        where.setdefault(m.value().decode(), []).append(
            f"{m.partition()}@{m.offset()} ({m.timestamp()[1]})")

    lost = [v for v in acked if log[v] == 0]
    assert not lost, f"{len(lost)} records the client was told are written are missing: {lost[:10]}"
    copies = {v: n for v, n in log.items() if n > 1}
    unnumbered = proxy.metric_sum("idemgate_dedup_fail_open_total", reason="unnumbered")
    # Two copies at most from the stream (one retry of an unanswered request);
    # a third only for a record that was retried at a disruption AND whose
    # replay the proxy let pass, counted, because no base offset numbers its
    # batch (below). Seen in 1 of 4 runs: v-7600..v-7609 three times.
    thrice = {v for v, n in copies.items() if n > 2}
    assert all(copies[v] == 3 for v in thrice), f"more than three copies: {copies}"
    assert thrice <= set(replayed), "three copies of records never replayed: " + "; ".join(
        f"{v}: {where[v]}" for v in sorted(thrice - set(replayed)))
    assert len(thrice) <= unnumbered, f"{len(thrice)} records thrice, {unnumbered} replays let pass unnumbered"
    # One in-flight request per partition can be unanswered at each disruption
    # (the loss; the moves answer NOT_LEADER, nothing written): its retry
    # writes it again.
    # A replay the proxy let pass because no base offset numbers its batch
    # (null-key records land in other partitions the second time, and
    # librdkafka numbers records from any base, -1 included) is a copy too,
    # and counted.
    bound = BATCH * PARTITIONS * 2 + unnumbered
    assert len(copies) <= bound, f"{len(copies)} duplicated records, > {bound}: {sorted(copies)[:20]}"
    dropped = proxy.metric_sum("idemgate_duplicates_dropped_total", topic=topic)
    assert dropped + unnumbered >= len(replayed), \
        f"the proxy dropped {dropped:.0f} and let {unnumbered:.0f} pass of {len(replayed)} replays"
    # Two copies of a replayed record exist only if the stream's own retry made them.
    print(f"acked {len(acked)}, failed {len(failed)}, duplicated {len(copies)}, "
          f"replays dropped {dropped:.0f}, passed unnumbered {unnumbered:.0f}")

    after = _proxy_brokers_serve(proxy)
    assert after == addrs, f"broker listeners changed: {addrs} -> {after}"
    assert any(k.startswith("idemgate_broker_listeners_missing") for k in proxy.metrics())
    assert proxy.metric_sum("idemgate_broker_listeners_missing") == 0
    proxy.assert_no_leaks()

    # The same replay straight to the brokers writes a copy of each: the
    # scenario bites without the proxy.
    ends = _replay(kafka3.bootstrap, "direct-replay", topic, replayed, "END2", "direct replay")
    seen.clear()
    scanned[0] = 0
    again = Counter(m.value().decode() for m in read_topic(kafka3.bootstrap, topic, all_ends,
                                                           timeout=120))
    extra = sum(again[v] - log[v] for v in set(replayed))
    assert extra == len(replayed), f"the direct replay added {extra} copies, not {len(replayed)}"
