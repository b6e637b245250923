"""Helpers shared by the end-to-end tests: bounded waits, unique names, and
produce/consume loops for kafka-python and confluent-kafka that record exactly
what was written where, so tests can compare sets and per-partition order."""

from __future__ import annotations

import collections
import time
import uuid

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
REQUEST_TIMEOUT_S = 15


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Deadline:
    """A bounded wait: `while dl.left(): ...`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> bool:
        return time.monotonic() < self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


def deadline(seconds: float) -> Deadline:
    return Deadline(seconds)


def record_value(seq: int) -> bytes:
    return f"value-{seq:08d}".encode()


def seq_of(value: bytes) -> int:
    assert value.startswith(b"value-"), value
    return int(value[6:])


class Written:
    """What the broker acknowledged: partition -> [(offset, seq)] in offset order."""

    def __init__(self):
        self.by_partition: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)

    def add(self, partition: int, offset: int, seq: int):
        self.by_partition[partition].append((offset, seq))

    def finish(self) -> "Written":
        for p in self.by_partition:
            self.by_partition[p].sort()
        return self

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.by_partition.values())

    def seqs(self, partition: int) -> list[int]:
        return [s for _, s in self.by_partition[partition]]

    def end_offsets(self) -> dict[int, int]:
        return {p: v[-1][0] + 1 for p, v in self.by_partition.items() if v}


class Consumed:
    """What a consumer got: partition -> [(offset, seq)] in delivery order."""

    def __init__(self):
        self.by_partition: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)

    def add(self, partition: int, offset: int, value: bytes):
        self.by_partition[partition].append((offset, seq_of(value)))

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.by_partition.values())

    def seqs(self, partition: int) -> list[int]:
        return [s for _, s in self.by_partition[partition]]

    def all_seqs(self) -> list[int]:
        return [s for v in self.by_partition.values() for _, s in v]


def assert_exactly(written: Written, consumed: Consumed):
    """Same records, no duplicates, and per partition the broker's order."""
    got = consumed.all_seqs()
    dups = [s for s, n in collections.Counter(got).items() if n > 1]
    assert not dups, f"{len(dups)} duplicated records, e.g. {dups[:5]}"
    want = {s for p in written.by_partition for s in written.seqs(p)}
    missing = want - set(got)
    extra = set(got) - want
    assert not missing and not extra, (
        f"missing {len(missing)} (e.g. {sorted(missing)[:5]}), unexpected {len(extra)} (e.g. {sorted(extra)[:5]})")
    for p in written.by_partition:
        assert consumed.seqs(p) == written.seqs(p), f"partition {p}: order differs from the produce order"
        offs = [o for o, _ in consumed.by_partition[p]]
        assert offs == sorted(offs), f"partition {p}: offsets not increasing"


# ---------------------------------------------------------------- kafka-python

def kp_produce(bootstrap: str, topic: str, seqs, *, partition=None, **conf) -> Written:
    from kafka import KafkaProducer

    conf.setdefault("acks", "all")
    conf.setdefault("linger_ms", 5)
    conf.setdefault("client_id", unique("pt-kp-producer"))
    conf.setdefault("request_timeout_ms", REQUEST_TIMEOUT_S * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, **conf)
    try:
        futures = [(seq, producer.send(topic, key=f"k{seq}".encode(), value=record_value(seq),
                                       headers=[("seq", str(seq).encode())], partition=partition))
                   for seq in seqs]
        producer.flush(timeout=60)
        written = Written()
        for seq, fut in futures:
            md = fut.get(timeout=REQUEST_TIMEOUT_S)
            written.add(md.partition, md.offset, seq)
        return written.finish()
    finally:
        producer.close(timeout=REQUEST_TIMEOUT_S)


def kp_consumer(bootstrap: str, *topics, group_id=None, **conf):
    from kafka import KafkaConsumer

    conf.setdefault("client_id", unique("pt-kp-consumer"))
    conf.setdefault("auto_offset_reset", "earliest")
    conf.setdefault("enable_auto_commit", False)
    conf.setdefault("session_timeout_ms", SESSION_TIMEOUT_MS)
    conf.setdefault("heartbeat_interval_ms", HEARTBEAT_INTERVAL_MS)
    conf.setdefault("request_timeout_ms", 30000)
    return KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group_id, **conf)


def kp_consume(consumer, want: int, seconds: float, *, commit: bool, consumed: Consumed | None = None,
               stop_at: int | None = None) -> Consumed:
    """Poll until `want` records (or `stop_at`, to stop early) or the deadline;
    commit after every non-empty poll if asked."""
    consumed = consumed or Consumed()
    limit = stop_at if stop_at is not None else want
    dl = deadline(seconds)
    while consumed.count < limit and dl.left():
        batch = consumer.poll(timeout_ms=500, max_records=500)
        for records in batch.values():
            for r in records:
                consumed.add(r.partition, r.offset, r.value)
        if batch and commit:
            consumer.commit()
    return consumed


def kp_read_from_start(bootstrap: str, topic: str, partitions: int, want: int, seconds: float) -> Consumed:
    """kafka-python, in no group, reads `want` records of `topic`'s first
    `partitions` partitions from their start ([`kp_consume`], no commits)."""
    from kafka import TopicPartition

    consumer = kp_consumer(bootstrap, group_id=None)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        return kp_consume(consumer, want, seconds, commit=False)
    finally:
        consumer.close()


# ------------------------------------------------------------ confluent-kafka

def ck_produce(bootstrap: str, topic: str, seqs, *, partition=None, **conf) -> Written:
    from confluent_kafka import Producer

    cfg = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
           "client.id": unique("pt-ck-producer"), "message.timeout.ms": 60000}
    cfg.update(conf)
    producer = Producer(cfg)
    written = Written()
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            written.add(msg.partition(), msg.offset(), seq_of(msg.value()))

    for seq in seqs:
        kwargs = {"key": f"k{seq}".encode(), "value": record_value(seq),
                  "headers": [("seq", str(seq).encode())], "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0, f"{left} records still undelivered after 60 s"
    assert not errors, f"delivery errors: {errors[:5]}"
    return written.finish()


def ck_consumer(bootstrap: str, group_id: str, **conf):
    from confluent_kafka import Consumer

    cfg = {"bootstrap.servers": bootstrap, "group.id": group_id,
           "client.id": unique("pt-ck-consumer"), "auto.offset.reset": "earliest",
           "enable.auto.commit": False, "session.timeout.ms": SESSION_TIMEOUT_MS,
           "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS}
    cfg.update(conf)
    return Consumer(cfg)


def ck_consume(consumer, want: int, seconds: float, *, commit: bool) -> Consumed:
    consumed = Consumed()
    dl = deadline(seconds)
    while consumed.count < want and dl.left():
        msgs = consumer.consume(num_messages=500, timeout=0.5)
        good = []
        for m in msgs:
            if m.error():
                # partition EOF and the like are informational; others are real
                if m.error().code() != -191:  # _PARTITION_EOF
                    raise AssertionError(f"consumer error: {m.error()}")
                continue
            good.append(m)
            consumed.add(m.partition(), m.offset(), m.value())
        if good and commit:
            consumer.commit(asynchronous=False)
    return consumed
