"""Clients from the other ecosystems through idemgate to Apache Kafka 4.4.

Three independent implementations of the Kafka protocol, none of them
librdkafka or the Java client: kafkajs (JavaScript), aiokafka (Python
asyncio) and franz-go (Go). Each runs as a small CLI under
proto-tests/clients/ (installed by scripts/setup) that prints JSON lines, and
each scenario runs twice in the same test, through a proxy and straight to
the broker, so the assertion that passes through the proxy is shown to fail
without it:

- replay: the same values produced again by a new producer, with every codec
  the client supports, through a `[[dedup.rules]]` drop rule; the topic read
  straight from the broker holds each value once (direct: twice), and every
  offset a delivery report names holds that value;
- group: every record once through the proxy, and neither the proxy's leak
  counter nor the client's own Metadata view shows a broker address (direct:
  it does);
- fetch dedup: copies written straight to the broker, read through a
  fetch-direction rule: each record once per partition (direct: the copies).

Every read ends on an end marker (one per partition); every client run is
bounded.

What the clients do differently (measured here, codec none, 200 records):
- null keys: kafkajs and aiokafka place them elsewhere on a second run
  (kafkajs: none of 100 in the same partition; aiokafka: at random), franz-go's
  sticky partitioner did so too without idempotence but not with it; so most
  replayed batches hold replays no base offset can number, and go whole;
- delivery reports: every client numbers a batch's records from the
  partition's base offset, aiokafka (and librdkafka) even from -1, so the
  proxy removes only replays that one base offset numbers truly and forwards
  the rest (fail_open reason "unnumbered"); kafkajs gives the partition's -1
  (this CLI maps it to -1 per record), franz-go -1 per record;
- batches fetch dedup empties: an empty batch (Kafka's compaction recipe)
  moves aiokafka and franz-go on, but kafkajs 2.2.4 resolves no offset for a
  batch with no records and fetched it again ~2,000 times a second; the proxy
  sends a one-record COMMIT control batch at the batch's last offset instead,
  which every consumer skips and moves past (test_consumers_move_past_emptied_batches);
- codecs: kafkajs ships none and gzip; snappy and lz4 come from
  kafkajs-snappy and kafkajs-lz4, zstd from a few lines over zstd-napi
  (kafkajs' own @kafkajs/zstd needs cppzst, which does not compile against
  Node 20); aiokafka's codecs are cramjam's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from bed import CACHE, ROOT, dedup_rule, read_topic, unique

CLIENTS_DIR = ROOT / "proto-tests" / "clients"
N = 200          # records per run
PARTITIONS = 3


class CopiesRemovedAgain(AssertionError):
    """The proxy removed more copies than the log holds: the consumer fetched
    the same (emptied) batches again."""


class EndMarkersMissing(AssertionError):
    """A consumer gave up before it saw every partition's end marker."""


@dataclass(frozen=True)
class Client:
    name: str
    argv: tuple[str, ...]
    codecs: tuple[str, ...]
    needs: Path  # what scripts/setup installs for it

    def run(self, *args: str, timeout: float = 120.0) -> list[dict]:
        if not self.needs.exists():
            pytest.fail(f"{self.name} is not installed ({self.needs} is missing): run scripts/setup")
        out = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            kind = EndMarkersMissing if "end markers" in out.stderr and "missing after" in out.stderr \
                else AssertionError
            raise kind(f"{self.name} {args[0]} exited {out.returncode}:\n"
                                 f"{out.stderr[-4000:]}\nstdout tail:\n{out.stdout[-2000:]}")
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def produce(self, bootstrap: str, topic: str, prefix: str, codec: str, marker: str,
                idempotent: bool = False, partitions: int = PARTITIONS) -> list[dict]:
        lines = self.run("produce", "--bootstrap", bootstrap, "--topic", topic, "--prefix", prefix,
                         "--count", str(N), "--codec", codec, "--marker", marker,
                         "--partitions", str(partitions),
                         *(["--idempotent"] if idempotent else []))
        assert lines[-1] == {"done": N + partitions}, lines[-3:]
        return [r for r in lines if "value" in r]

    def consume(self, bootstrap: str, topic: str, end: str, timeout: float = 90.0,
                max_partition_bytes: int = 0, partitions: int = PARTITIONS) -> tuple[list[dict], list[str]]:
        lines = self.run("consume", "--bootstrap", bootstrap, "--topic", topic,
                         "--group", unique("eco-group"), "--end", end,
                         "--partitions", str(partitions), "--timeout", str(timeout),
                         *(["--max-partition-bytes", str(max_partition_bytes)] if max_partition_bytes else []),
                         timeout=timeout + 60)
        records = [r for r in lines if "value" in r]
        brokers = next(r["brokers"] for r in lines if "brokers" in r)
        assert "done" in lines[-1]
        return records, brokers


CLIENTS = {
    "kafkajs": Client(
        "kafkajs", ("node", str(CLIENTS_DIR / "js" / "cli.js")),
        # zstd: kafkajs' own @kafkajs/zstd does not build on Node 20 (native
        # cppzst 2.0.6); the CLI's codec uses zstd-napi instead.
        ("none", "gzip", "snappy", "lz4", "zstd"),
        CLIENTS_DIR / "js" / "node_modules" / "kafkajs" / "package.json"),
    "aiokafka": Client(
        "aiokafka", (sys.executable, str(CLIENTS_DIR / "python" / "aiokafka_cli.py")),
        ("none", "gzip", "snappy", "lz4", "zstd"),
        Path(sys.executable)),
    "franz-go": Client(
        "franz-go", (str(CACHE / "bin" / "franzcli"),),
        ("none", "gzip", "snappy", "lz4", "zstd"),
        CACHE / "bin" / "franzcli"),
}


def create_topic(kafka, name: str, partitions: int = PARTITIONS) -> None:
    """bed.KafkaCluster.create_topic lets its AdminClient go before the
    future resolves (librdkafka then fails it with _DESTROY); keep it alive."""
    from confluent_kafka.admin import NewTopic
    admin = kafka.admin()
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def values(prefix: str) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(N)]


def markers(marker: str, partitions: int = PARTITIONS) -> list[str]:
    """The end markers a run writes: one per partition."""
    return [f"{marker}-p{p}" for p in range(partitions)]


def topic_counts(bootstrap: str, topic: str, marker: str, partitions: int = PARTITIONS):
    """Value -> copies, and (partition, offset) -> value, of `topic` read
    straight from the broker up to every partition's `marker`."""
    want = {m.encode() for m in markers(marker, partitions)}
    msgs = read_topic(bootstrap, topic, until=lambda rs: want <= {m.value() for m in rs})
    by_pos = {(m.partition(), m.offset()): m.value().decode() for m in msgs}
    return Counter(by_pos.values()), by_pos


def check_reports(client: str, reports: list[dict], by_pos: dict) -> list[str]:
    """Every delivery report that names an offset must name one that holds
    the value it reports. Returns the wrong ones, described."""
    wrong = []
    for r in reports:
        if r["offset"] < 0:
            continue  # "no offset" (a dropped replay whose first copy is not provable)
        got = by_pos.get((r["partition"], r["offset"]))
        if got != r["value"]:
            wrong.append(f"{client} reported {r['value']} at {r['partition']}/{r['offset']}, "
                         f"which holds {got}")
    return wrong


# Every client numbers a batch's records from the partition's base offset,
# librdkafka and aiokafka even from -1 ("no offset"). A replayed record whose
# first copy is elsewhere (null-key records go to another partition the
# second time) can't be numbered within its batch, so the proxy forwards that
# batch whole (a duplicate, counted as fail_open{reason="unnumbered"}) and
# removes only replays one base offset numbers truly.
REPLAY_CASES = [pytest.param(c, codec, idem, id=f"{c}-{codec}{'-idempotent' if idem else ''}")
                for c, client in CLIENTS.items() for codec in client.codecs for idem in (False, True)]


# Clients that report -1 for every record of a partition answered with base
# offset -1 (the proxy knows them by their KIP-511 name); every other client
# is never answered -1 for more than one record.
REPORTS_NO_OFFSET = {"franz-go", "kafka-python"}


@pytest.mark.parametrize("client,codec,idempotent", REPLAY_CASES)
def test_replay_dropped(kafka, proxies, client, codec, idempotent):
    """A new producer sends the same values again: through a drop rule the
    topic holds each value once (or twice where the proxy let a replay pass
    rather than give a wrong offset); straight to the broker it holds copies."""
    cl = CLIENTS[client]

    def produce(bootstrap, topic, prefix, marker):
        return cl.produce(bootstrap, topic, prefix, codec, marker, idempotent)

    replay_case(kafka, proxies, client, produce)


def python_record(prefix: str, i: int):
    """Record i of a run, as the CLIs write it: odd ones keyed, even ones with
    a null key (which a client places in any partition)."""
    return (f"k{i}".encode() if i % 2 == 1 else None), f"{prefix}-{i:06d}"


def produce_librdkafka(bootstrap, topic, prefix, marker):
    from confluent_kafka import Producer
    reports = []

    def report(err, msg):
        assert err is None, err
        reports.append({"value": msg.value().decode(), "partition": msg.partition(),
                        "offset": msg.offset()})

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                  "enable.idempotence": False})
    for i in range(N):
        k, v = python_record(prefix, i)
        p.produce(topic, key=k, value=v.encode(), on_delivery=report)
    assert p.flush(60) == 0
    for part in range(PARTITIONS):
        p.produce(topic, value=f"{marker}-p{part}".encode(), partition=part, on_delivery=report)
    assert p.flush(60) == 0
    return reports


def produce_kafka_python(bootstrap, topic, prefix, marker):
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futs = []
        for i in range(N):
            k, v = python_record(prefix, i)
            futs.append((v, p.send(topic, key=k, value=v.encode())))
        for part in range(PARTITIONS):
            v = f"{marker}-p{part}"
            futs.append((v, p.send(topic, value=v.encode(), partition=part)))
        out = []
        for v, f in futs:
            md = f.get(timeout=60)
            out.append({"value": v, "partition": md.partition, "offset": md.offset})
        return out
    finally:
        p.close()


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_replay_dropped_python_clients(kafka, proxies, client):
    """The same with librdkafka (confluent-kafka) and kafka-python, in process."""
    produce = produce_librdkafka if client == "librdkafka" else produce_kafka_python
    replay_case(kafka, proxies, client, produce)


def send_librdkafka(bootstrap, topic, vals, idempotent, reports):
    from confluent_kafka import Producer

    def report(err, msg):
        assert err is None, err
        offset = msg.offset()  # None: no offset
        reports.append({"value": msg.value().decode(), "partition": msg.partition(),
                        "offset": -1 if offset is None else offset})

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200, "acks": "all",
                  "enable.idempotence": idempotent})
    for v in vals:
        p.produce(topic, value=v.encode(), partition=0, on_delivery=report)
    assert p.flush(60) == 0


def send_aiokafka(bootstrap, topic, vals, idempotent, reports):
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def run():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=200,
                             enable_idempotence=idempotent, request_timeout_ms=30000)
        await p.start()
        try:
            futs = [await p.send(topic, value=v.encode(), partition=0) for v in vals]
            for v, m in zip(vals, await asyncio.gather(*futs)):
                reports.append({"value": v, "partition": m.partition, "offset": m.offset})
        finally:
            await p.stop()

    asyncio.run(run())


def send_kafkajs(bootstrap, topic, vals, idempotent, reports, tmp_path):
    """kafkajs answers a send with one base offset per partition; the CLI
    numbers the records from it, as an application would."""
    path = tmp_path / f"values-{len(vals)}-{unique('v')}"
    path.write_text("\n".join(vals) + "\n")
    lines = CLIENTS["kafkajs"].run("produce", "--bootstrap", bootstrap, "--topic", topic,
                                   "--values", str(path), *(["--idempotent"] if idempotent else []))
    assert lines[-1] == {"done": len(vals)}, lines[-3:]
    reports.extend({"value": r["value"], "partition": r["partition"], "offset": r["offset"]}
                   for r in lines if "value" in r)


@pytest.mark.parametrize("client,idempotent", [
    pytest.param(c, i, id=f"{c}{'-idempotent' if i else ''}")
    for c in ("librdkafka", "aiokafka", "kafkajs") for i in (False, True)])
def test_a_replayed_prefix_written_apart_from_its_first_copies_is_never_misnumbered(
        kafka, proxies, client, idempotent, tmp_path):
    """librdkafka and aiokafka number a batch's records from the base offset
    they are answered, even -1 (kafkajs answers the base, which an
    application numbers from). A new producer replays 20 records and adds 5
    in one batch; another writer appended a record after the first copies,
    so the 5 cannot land right after them and no base offset numbers the
    batch truly. Before, the proxy cut the 20, the broker wrote the 5 apart,
    and the client was answered -1 and numbered the 25 records -1, 0, 1, ...
    (24 wrong reports). Now a producer that can resend the batch whole is
    answered a retriable "written, not acknowledged" and its retry goes whole;
    an idempotent one (whose retry would get the same cut) never has its
    prefix cut where the proxy saw a record written after the first copies.
    Every delivery report names the offset that holds its value."""
    send = {"librdkafka": send_librdkafka, "aiokafka": send_aiokafka,
            "kafkajs": lambda *a: send_kafkajs(*a, tmp_path)}[client]
    topic = unique(f"eco-apart-{client}")
    create_topic(kafka, topic, partitions=1)
    proxy = proxies(kafka.bootstrap, dedup_rule(topic))
    first = [f"{topic}-a-{i}" for i in range(20)]
    new = [f"{topic}-c-{i}" for i in range(5)]
    reports = []
    send(proxy.bootstrap, topic, first, idempotent, [])
    # The writer between: straight to the broker, unseen by the proxy, for a
    # producer whose retry can go whole; through the proxy for an idempotent
    # one, whose retry would get the same cut (the proxy bets only where it
    # saw nothing written after the first copies: the open residual).
    send(proxy.bootstrap if idempotent else kafka.bootstrap, topic, [f"{topic}-between"],
         idempotent, [])
    send(proxy.bootstrap, topic, first + new, idempotent, reports)
    send(proxy.bootstrap, topic, [f"{topic}-END"], idempotent, [])

    msgs = read_topic(kafka.bootstrap, topic,
                      until=lambda rs: any(m.value() == f"{topic}-END".encode() for m in rs))
    by_pos = {(m.partition(), m.offset()): m.value().decode() for m in msgs}
    counts = Counter(by_pos.values())
    assert all(counts[v] >= 1 for v in first + new), "a value is missing"
    assert len(reports) == len(first + new)
    wrong = check_reports(client, reports, by_pos)
    assert not wrong, f"{len(wrong)} wrong delivery reports, e.g. {wrong[:5]}"
    assert all(r["offset"] >= 0 for r in reports), "every record was told its offset"
    unnumbered = proxy.metric_sum("idemgate_dedup_fail_open_total", reason="unnumbered")
    # The retry of the lost bet goes whole: all 25 are copies by then. An
    # idempotent producer's 20 replays go with the 5 from the start (no bet).
    assert unnumbered == (len(first) if idempotent else len(first + new)), unnumbered


def replay_case(kafka, proxies, client, produce):
    prefix = unique(f"eco-{client}")
    via, direct = f"{prefix}-via", f"{prefix}-direct"
    for t in (via, direct):
        create_topic(kafka, t)
    proxy = proxies(kafka.bootstrap, dedup_rule(via))

    reports = {}
    for topic, bootstrap in ((via, proxy.bootstrap), (direct, kafka.bootstrap)):
        first = produce(bootstrap, topic, prefix, f"END1-{prefix}")
        again = produce(bootstrap, topic, prefix, f"END2-{prefix}")
        assert len(first) == len(again) == N + PARTITIONS
        reports[topic] = first + again

    counts, by_pos = topic_counts(kafka.bootstrap, via, f"END2-{prefix}")
    dcounts, dby_pos = topic_counts(kafka.bootstrap, direct, f"END2-{prefix}")

    # Without the proxy the replay is in the topic: the scenario bites.
    direct_extra = sum(dcounts[v] - 1 for v in values(prefix))
    assert direct_extra == N, f"direct: expected {N} extra copies, got {direct_extra}"
    # Through it, nothing lost, each value once unless the proxy said it let
    # the replay pass (unnumbered), both end markers there.
    removed = proxy.metric_sum("idemgate_duplicates_dropped_total", direction="produce")
    passed = proxy.metric_sum("idemgate_dedup_fail_open_total", reason="unnumbered")
    print(f"{client}: {removed:.0f} replays removed, {passed:.0f} passed (unnumbered)")
    assert removed + passed == N, (removed, passed)
    if client in REPORTS_NO_OFFSET:
        assert passed == 0, "a client that reports -1 per record gets every replay removed"
    assert all(counts[v] >= 1 for v in values(prefix)), "a value is missing through the proxy"
    extra = sum(counts[v] - 1 for v in values(prefix))
    assert extra == passed, f"{extra} copies through the proxy, {passed:.0f} said to pass"
    assert all(counts[m] == 1 for m in markers(f"END1-{prefix}") + markers(f"END2-{prefix}"))

    # Delivery reports: an offset the client was told must hold its value.
    # Straight to the broker they always must; through the proxy a dropped
    # replay may be reported as -1 ("no offset"), never at a wrong offset.
    assert not check_reports(client, reports[direct], dby_pos), "wrong reports without the proxy"
    wrong = check_reports(client, reports[via], by_pos)
    assert not wrong, f"{len(wrong)} wrong delivery reports through the proxy, e.g. {wrong[:5]}"
    # A client that numbers from -1 is told -1 for no written record: every
    # record but the removed replays has its true offset.
    exact = sum(1 for r in reports[via] if r["offset"] >= 0)
    assert exact > 0
    if client not in REPORTS_NO_OFFSET:
        assert exact >= len(reports[via]) - removed, (exact, len(reports[via]), removed)


def proxy_ports(proxy) -> set[int]:
    cfg = proxy.config_path.read_text()
    lo, hi = (int(x) for x in cfg.split('broker_ports = "')[1].split('"')[0].split("-"))
    return {proxy.port, *range(lo, hi + 1)}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_group_through_proxy(kafka, proxies, client):
    """A consumer group reads every record once through the proxy and never
    learns a broker's address; straight to the broker it names the broker."""
    cl = CLIENTS[client]
    prefix = unique(f"eco-{client}")
    topic = f"{prefix}-group"
    create_topic(kafka, topic)
    proxy = proxies(kafka.bootstrap)
    cl.produce(proxy.bootstrap, topic, prefix, "none", f"END-{prefix}")

    records, brokers = cl.consume(proxy.bootstrap, topic, f"END-{prefix}")
    got = Counter(r["value"] for r in records)
    assert sorted(got) == sorted(values(prefix) + markers(f"END-{prefix}"))
    assert set(got.values()) == {1}, f"copies: {[(v, n) for v, n in got.items() if n > 1][:5]}"
    assert brokers, "the client named no broker"
    ports = proxy_ports(proxy)
    assert all(b.startswith("127.0.0.1:") and int(b.rsplit(":", 1)[1]) in ports for b in brokers), \
        f"{client} sees brokers {brokers}, not the proxy's ports"
    upstream = set(kafka.brokers.values())
    assert not upstream & set(brokers)
    proxy.assert_no_leaks()

    # Straight to the broker the same check sees the broker's own address.
    _, direct_brokers = cl.consume(kafka.bootstrap, topic, f"END-{prefix}")
    assert set(direct_brokers) == upstream, direct_brokers


def fetch_case_params():
    out = []
    for c, client in CLIENTS.items():
        for codec in ("none", client.codecs[-1]):
            out.append(pytest.param(c, codec, id=f"{c}-{codec}"))
    return out


@pytest.mark.parametrize("client,codec", fetch_case_params())
def test_fetch_dedup(kafka, proxies, client, codec):
    """Copies written straight to the broker, read through a fetch rule: each
    record once in each partition that holds it; read directly: the copies."""
    fetch_dedup(kafka, proxies, client, codec)


SMALL_FETCH = 1024  # bytes per partition: less than one batch of a run


def small_fetch_params():
    return [pytest.param(c, id=c) for c in CLIENTS]


@pytest.mark.parametrize("client", small_fetch_params())
def test_fetch_dedup_small_fetches(kafka, proxies, client):
    """The same on one partition (every copy then sits behind its first, so
    the second run's batch is emptied whole) with Fetches capped below one
    batch, so a Fetch carries nothing but the batch the proxy emptied: the
    consumer must move past it and reach the end marker. Straight to the
    broker the same caps read everything, so a hang is the proxy's doing."""
    fetch_dedup(kafka, proxies, client, "none", max_partition_bytes=SMALL_FETCH, timeout=30,
                partitions=1)


def fetch_dedup(kafka, proxies, client, codec, max_partition_bytes=0, timeout=90.0,
                partitions=PARTITIONS):
    cl = CLIENTS[client]
    prefix = unique(f"eco-{client}")
    topic = f"{prefix}-fetch"
    create_topic(kafka, topic, partitions)
    end = f"END2-{prefix}"
    cl.produce(kafka.bootstrap, topic, prefix, codec, f"END1-{prefix}", partitions=partitions)
    cl.produce(kafka.bootstrap, topic, prefix, codec, end, partitions=partitions)
    counts, by_pos = topic_counts(kafka.bootstrap, topic, end, partitions)
    assert sum(counts[v] - 1 for v in values(prefix)) == N  # the copies are in the log
    # A copy in another partition than its first is delivered (README): the
    # expected count of each value is the number of partitions holding it.
    parts = defaultdict(set)
    for (p, _), v in by_pos.items():
        parts[v].add(p)
    expected = {v: len(ps) for v, ps in parts.items()}
    assert sum(expected.values()) < sum(counts.values()), "no copy shares a partition with its first"

    # Straight to the broker first: the consumer reads every copy.
    direct, _ = cl.consume(kafka.bootstrap, topic, end, timeout, max_partition_bytes, partitions)
    assert Counter(r["value"] for r in direct) == counts, "direct read differs from the log"

    proxy = proxies(kafka.bootstrap, dedup_rule(topic, 'direction = "fetch"'))
    records, _ = cl.consume(proxy.bootstrap, topic, end, timeout, max_partition_bytes, partitions)
    got = Counter(r["value"] for r in records)
    assert got == expected, (f"through the proxy: {sum(got.values())} records, expected "
                             f"{sum(expected.values())}; differing: "
                             f"{[(v, got[v], expected.get(v)) for v in set(got) | set(expected) if got[v] != expected.get(v)][:5]}")
    # Every delivered record sits where the broker has it.
    assert all(by_pos[(r["partition"], r["offset"])] == r["value"] for r in records)
    # Each copy removed once: more means the consumer fetched emptied batches again.
    removed = proxy.metric_sum("idemgate_duplicates_dropped_total", direction="fetch")
    copies = sum(counts.values()) - sum(expected.values())
    if removed > copies:
        raise CopiesRemovedAgain(f"{client}: the proxy removed {removed:.0f} copies, the log holds "
                                 f"{copies} in the partitions of their first copies")
    assert removed == copies


# === batches the fetch filter empties ========================================

FETCH_CLIENTS = [*CLIENTS, "librdkafka", "kafka-python", "java"]
IDLE_WINDOW = 3.0   # seconds the consumer sits behind an emptied batch
IDLE_FETCHES = 40   # Fetch requests it may send meanwhile (500 ms long polls: ~6)


class Consumer:
    """One consumer of a single-partition topic through `bootstrap`, in the
    background, until it has seen `end`; `cap` bytes per Fetch (0: default)."""

    def __init__(self, client: str, bootstrap: str, topic: str, end: str, cap: int = 0,
                 timeout: float = 60.0):
        self.client, self.values, self.error = client, [], None
        group = unique("eco-empty")
        if client in CLIENTS:
            cl = CLIENTS[client]
            # the CLIs read up to "<end>-p<partition>"
            argv = [*cl.argv, "consume", "--bootstrap", bootstrap, "--topic", topic, "--group", group,
                    "--end", end.rsplit("-p0", 1)[0], "--partitions", "1", "--timeout", str(timeout),
                    *(["--max-partition-bytes", str(cap)] if cap else [])]
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.thread = None
        elif client == "java":
            from test_java_client import Run
            self.proc = None
            self.run = Run("java-empty", ["consume", "--bootstrap", bootstrap, "--topic", topic,
                                          "--group", group, "--until", end,
                                          "--timeout-ms", str(int(timeout * 1000))])
            self.thread = None
        else:
            import threading
            self.proc = None
            target = self._librdkafka if client == "librdkafka" else self._kafka_python

            def run():
                try:
                    target(bootstrap, topic, group, end, cap, timeout)
                except Exception as e:  # reported by wait()
                    self.error = f"{client}: {e!r}"
            self.thread = threading.Thread(target=run, daemon=True)
            self.thread.start()

    def _librdkafka(self, bootstrap, topic, group, end, cap, timeout):
        import time
        from confluent_kafka import Consumer as RdConsumer
        c = RdConsumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                        "enable.auto.commit": False, "fetch.wait.max.ms": 500,
                        **({"max.partition.fetch.bytes": cap} if cap else {})})
        try:
            c.subscribe([topic])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                self.values.append(m.value().decode())
                if self.values[-1] == end:
                    return
            self.error = f"librdkafka: {end} missing after {timeout:.0f} s"
        finally:
            c.close()

    def _kafka_python(self, bootstrap, topic, group, end, cap, timeout):
        import time
        from kafka import KafkaConsumer
        c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                          enable_auto_commit=False, fetch_max_wait_ms=500,
                          **({"max_partition_fetch_bytes": cap, "fetch_max_bytes": cap} if cap else {}))
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=200).values():
                    for m in recs:
                        self.values.append(m.value.decode())
                        if self.values[-1] == end:
                            return
            self.error = f"kafka-python: {end} missing after {timeout:.0f} s"
        finally:
            c.close()

    def wait(self, timeout: float = 120.0) -> list[str]:
        if self.proc is not None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            if self.proc.returncode != 0:
                raise EndMarkersMissing(f"{self.client} exited {self.proc.returncode}: {err[-3000:]}")
            lines = [json.loads(line) for line in out.splitlines() if line.strip()]
            return [r["value"] for r in lines if "value" in r]
        if self.thread is None:
            self.run.wait(timeout)
            return [e["value"] for e in self.run.of("record")]
        self.thread.join(timeout)
        if self.thread.is_alive() or self.error:
            raise EndMarkersMissing(self.error or f"{self.client}: still reading after {timeout:.0f} s")
        return list(self.values)


def produce_direct(bootstrap: str, topic: str, vals: list[str]) -> None:
    """One batch of `vals` into partition 0, straight to the broker."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1000, "batch.num.messages": 100000})
    for v in vals:
        p.produce(topic, value=v.encode(), partition=0)
    assert p.flush(30) == 0


@pytest.mark.parametrize("client", FETCH_CLIENTS)
def test_consumers_move_past_emptied_batches(kafka, proxies, client):
    """A batch the fetch filter empties whole must not hold a consumer: behind
    one it idles in long polls (kafkajs, given an empty batch, fetched it again
    ~2,000 times a second), and a fresh consumer reading with Fetches capped
    below a batch moves across an emptied batch and then a partly emptied one
    to the end marker, each record once."""
    prefix = unique(f"eco-empty-{client}")
    topic = f"{prefix}-t"
    create_topic(kafka, topic, 1)
    first = [f"{prefix}-{i:04d}" for i in range(100)]
    produce_direct(kafka.bootstrap, topic, [*first, f"END1-{prefix}-p0"])
    produce_direct(kafka.bootstrap, topic, first)  # all copies: emptied whole
    proxy = proxies(kafka.bootstrap, dedup_rule(topic, 'direction = "fetch"'))

    end = f"END2-{prefix}-p0"
    behind = Consumer(client, proxy.bootstrap, topic, end)
    try:
        # It has fetched the emptied batch once its copies were removed.
        wait_metric(proxy, "idemgate_duplicates_dropped_total", len(first), direction="fetch")
        before = proxy.metric_sum("idemgate_requests_total", api="Fetch")
        import time
        time.sleep(IDLE_WINDOW)
        idle = proxy.metric_sum("idemgate_requests_total", api="Fetch") - before
        assert idle <= IDLE_FETCHES, f"{client} sent {idle:.0f} Fetches in {IDLE_WINDOW} s behind an emptied batch"
        # A partly emptied batch (copies at its front and its end), then the end.
        new = [f"{prefix}-new-{i:04d}" for i in range(50)]
        produce_direct(kafka.bootstrap, topic, [*first[:25], *new, *first[25:50]])
        produce_direct(kafka.bootstrap, topic, [end])
        got = behind.wait()
    finally:
        if behind.proc is not None and behind.proc.poll() is None:
            behind.proc.kill()
    expected = Counter([*first, f"END1-{prefix}-p0", *new, end])
    assert Counter(got) == expected, f"{client}: {sorted((Counter(got) - expected).items())[:5]} extra, " \
                                     f"{sorted((expected - Counter(got)).items())[:5]} missing"

    # From the start with Fetches smaller than a batch: across the emptied
    # batch, then the partly emptied one.
    fresh = Consumer(client, proxy.bootstrap, topic, end, cap=SMALL_FETCH).wait()
    assert Counter(fresh) == expected, f"{client} capped: {len(fresh)} records"


def wait_metric(proxy, name: str, want: float, timeout: float = 60.0, **labels) -> None:
    import time
    deadline = time.monotonic() + timeout
    while proxy.metric_sum(name, **labels) < want:
        if time.monotonic() > deadline:
            raise EndMarkersMissing(f"{name}{labels} stayed at {proxy.metric_sum(name, **labels)} < {want}")
        time.sleep(0.1)
