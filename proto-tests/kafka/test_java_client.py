"""The Java client as users run it (kafka-clients 4.4, default settings),
through idemgate to Apache Kafka 4.4: the idempotent producer across replays
and codecs, a proxy SIGKILL mid-stream, transactions v2 (KIP-890), the
KIP-848 consumer with two members, a KIP-932 share consumer.

The client is proto-tests/jvm/client (dev.idemgate.testclient.Main), compiled
by scripts/setup; it prints JSON lines and exits non-zero on any error. Its
own log (one file per run) must stay clean: no ERROR line and no WARN line
outside BENIGN_WARN. NetworkClient logs at DEBUG in it, so the test sees every
address the client connected to and every request version it sent; neither
may ever be a broker's own address, and the proxy's leak check must read 0.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest

from bed import JVM_CLIENT, KAFKA_LIBS, LOG4J, BedError, dedup_rule, read_topic, unique, wait_for

MAIN = "dev.idemgate.testclient.Main"
LOGS = Path(tempfile.mkdtemp(prefix="idemgate-javaclient."))

# WARN lines of the Java client that are not about the proxy, by pattern.
BENIGN_WARN: list[str] = []
# After the proxy is SIGKILLed, and only in that test: the client says it
# lost its connections, as it does for a broker that goes away.
PROXY_GONE_WARN = [
    r"Connection to node -?\d+ \(.*\) could not be established\. Node may not be available\.",
    r"Connection to node -?\d+ \(.*\) terminated during authentication",
    r"Received invalid metadata error in produce request on partition .* due to "
    r"org\.apache\.kafka\.common\.errors\.NetworkException",
    r"Got error produce response with correlation id \d+ on topic-partition .*, retrying "
    r".* Error: NETWORK_EXCEPTION",
    r"Bootstrap broker .* disconnected",
]

# When a partition's leader moves (and only in that test).
SHARE_MOVE_WARN = [
    r"Received invalid metadata error in produce request on partition .* due to "
    r"org\.apache\.kafka\.common\.errors\.NotLeaderOrFollowerException",
    r"Got error produce response .* Error: NOT_LEADER_OR_FOLLOWER",
]


class Run:
    """One Java client process: its JSON events, its log, its exit code."""

    def __init__(self, name: str, args: list[str], stdin=subprocess.DEVNULL):
        self.name = name
        self.log = LOGS / f"{unique(name)}.log"
        java = shutil.which("java")
        if not JVM_CLIENT.exists():
            raise BedError(f"the Java test client is not compiled in {JVM_CLIENT}: run scripts/setup")
        self.argv = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1",
                     f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.file={self.log}",
                     "-cp", f"{JVM_CLIENT}:{KAFKA_LIBS}/*", MAIN, *args]
        self.events: list[dict] = []
        self.stderr = ""
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=stdin, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "unparsed", "line": line}
            with self.lock:
                self.events.append(ev)

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]

    def wait(self, timeout: float = 180.0) -> "Run":
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise BedError(f"{self.name} did not finish in {timeout:.0f} s\n{self.describe()}")
        self._reader.join(10)
        self._err.join(10)
        if self.proc.returncode != 0:
            raise BedError(f"{self.name} exited with {self.proc.returncode}\n{self.describe()}")
        return self

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def describe(self) -> str:
        errors = self.of("error") + self.of("send_failed")[:5]
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        problems = [ln for ln in log.splitlines() if " WARN " in ln or " ERROR " in ln][-20:]
        return (f"errors: {errors}\nstderr tail:\n{self.stderr[-2000:]}\n"
                f"log {self.log} WARN/ERROR tail:\n" + "\n".join(problems))

    # -- what the client's log says --
    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_problems(self, benign: list[str] = ()) -> list[str]:
        pats = [re.compile(p) for p in [*BENIGN_WARN, *benign]]
        out = []
        for line in self.log_text().splitlines():
            if " ERROR " in line or (" WARN " in line and not any(p.search(line) for p in pats)):
                out.append(line)
        return out

    def connected(self) -> set[str]:
        """host:port of every connection the client opened."""
        return set(re.findall(r"Initiating connection to node (\S+:\d+) \(id:", self.log_text()))

    def sent_apis(self) -> Counter:
        """(API, version) -> how often the log shows a request header with it."""
        return Counter((api, int(v)) for api, v in
                       re.findall(r"apiKey=(\w+), apiVersion=(\d+)", self.log_text()))

    def nodes(self) -> set[str]:
        out = set()
        for e in self.of("nodes"):
            out.update(e["nodes"])
        return out


def java(name: str, *args: str, timeout: float = 180.0) -> Run:
    return Run(name, list(args)).wait(timeout)


def proxy_addresses(proxy) -> tuple[str, int, int]:
    """(host, first, last) of every address the proxy hands out."""
    m = re.search(r'broker_ports = "(\d+)-(\d+)"', proxy.config_path.read_text())
    return "127.0.0.1", int(m.group(1)), int(m.group(2))


def assert_sees_only_proxy(run: Run, proxy, kafka, benign: list[str] = ()):
    """The client connected only to the proxy, its cluster view holds only
    proxy addresses, and its log is clean."""
    host, lo, hi = proxy_addresses(proxy)
    allowed = {proxy.bootstrap} | {f"{host}:{p}" for p in range(lo, hi + 1)}
    brokers = set(kafka.bootstrap.split(",")) | set(kafka.brokers.values())
    connected, nodes = run.connected(), run.nodes()
    assert connected, f"{run.name}: no connection on record in {run.log} (is NetworkClient at DEBUG?)"
    assert not (connected | nodes) & brokers, (
        f"{run.name} learnt a broker's own address: connected {connected}, cluster view {nodes}")
    assert connected <= allowed and nodes <= allowed, (
        f"{run.name}: addresses not the proxy's: {(connected | nodes) - allowed}")
    problems = run.log_problems(benign)
    assert not problems, f"{run.name}'s log has ERROR/WARN lines:\n" + "\n".join(problems[:20])
    proxy.assert_no_leaks()


def values_of(records) -> list[str]:
    return [m.value().decode() for m in records]


# === the idempotent producer (defaults) across replays, every codec ===========

N_REPLAY = 150


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_producer_replays_dropped_each_codec(kafka, proxies, codec):
    """The Java producer with its defaults (idempotence, acks=all, 5 in
    flight) writes N values; a second producer instance (a new producer id)
    writes the same N again, as a restarted Connect task would. Through a
    content drop rule the topic holds each value once; the same two runs
    straight to the broker leave every value twice."""
    expected = [f"v-{i}" for i in range(N_REPLAY)]

    direct_topic = unique(f"jdirect-{codec}")
    kafka.create_topic(direct_topic)
    for run in range(2):
        java(f"direct-{codec}-{run}", "produce", "--bootstrap", kafka.bootstrap, "--topic", direct_topic,
             "--count", str(N_REPLAY), "--compression", codec)
    direct = Counter(values_of(read_topic(kafka.bootstrap, direct_topic, until=lambda r: True)))
    assert sum(direct.values()) - len(direct) == N_REPLAY, "the replay lands in full without the proxy"

    topic = unique(f"jreplay-{codec}")
    kafka.create_topic(topic)
    proxy = proxies(kafka.bootstrap, dedup_rule(topic))
    runs = []
    for run in range(2):
        r = java(f"proxied-{codec}-{run}", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
                 "--count", str(N_REPLAY), "--compression", codec)
        assert r.of("done")[0]["acked"] == N_REPLAY, "every record acknowledged, the replay too"
        runs.append(r)
    log = read_topic(kafka.bootstrap, topic, until=lambda r: True)
    got = values_of(log)
    dupes = {v: c for v, c in Counter(got).items() if c > 1}
    assert not dupes, f"{sum(dupes.values()) - len(dupes)} copies through the proxy: {list(dupes)[:5]}"
    assert sorted(got) == sorted(expected), f"missing: {sorted(set(expected) - set(got))[:10]}"
    assert proxy.metric_sum("idemgate_duplicates_dropped_total", direction="produce") == N_REPLAY
    # Delivery reports: a replay whose first copy is in another partition
    # (the sticky partitioner places null keys anywhere) is reported -1, as
    # Java reports every record of a partition answered -1; every offset
    # reported holds its value; the first run's records all have theirs.
    at = {(m.partition(), m.offset()): m.value().decode() for m in log}
    for i, r in enumerate(runs):
        acked = r.of("acked")
        wrong = [a for a in acked if a["offset"] >= 0 and at.get((a["partition"], a["offset"])) != a["value"]]
        assert not wrong, f"run {i}: {len(wrong)} reports name another record's offset: {wrong[:5]}"
        if i == 0:
            assert all(a["offset"] >= 0 for a in acked)
    for r in runs:
        assert r.sent_apis()[("PRODUCE", 12)] > 0, f"Produce v12 expected: {r.sent_apis()}"
        assert_sees_only_proxy(r, proxy, kafka)


# === the proxy SIGKILLed while the producer produces ==========================

def test_proxy_sigkill_mid_produce_loses_nothing(kafka, proxies):
    """The proxy dies (SIGKILL) while the Java producer is sending and comes
    back on the same ports and store: every record the producer was told is
    written is in the log."""
    topic = unique("jkill")
    kafka.create_topic(topic)
    proxy = proxies(kafka.bootstrap, dedup_rule(topic))
    count = 3000
    prod = Run("kill-producer", ["produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
                                 "--count", str(count), "--pause-ms", "2", "--marker", "END"])
    try:
        wait_for("300 acknowledgements before the kill",
                 lambda: prod.proc.poll() is not None or len(prod.of("acked")) >= 300, 120)
        assert prod.proc.poll() is None, f"the producer ended before the kill\n{prod.describe()}"
        before = len(prod.of("acked"))
        proxy.sigkill()
        proxy.start()
        prod.wait(240)
    finally:
        prod.kill()
    acked = [e["value"] for e in prod.of("acked")]
    assert before < count, "the kill came mid-stream"
    assert re.search(r"Node -?\d+ disconnected", prod.log_text()), "the producer saw the proxy go"
    cancelled = len(re.findall(r"Cancelled in-flight PRODUCE request", prod.log_text()))
    assert len(acked) == count + 1 and len(set(acked)) == count + 1, (
        f"the producer was told {len(acked)} of {count + 1} written")
    got = Counter(values_of(read_topic(kafka.bootstrap, topic, until=lambda r: any(
        m.value() == b"END" for m in r))))
    lost = [v for v in acked if v not in got]
    assert not lost, f"{len(lost)} acknowledged records are not in the log: {lost[:10]}"
    extra = sum(got.values()) - len(got)
    print(f"acked before the kill: {before}; Produce requests in flight at the kill: {cancelled}; "
          f"extra copies in the log: {extra}")
    assert_sees_only_proxy(prod, proxy, kafka, benign=PROXY_GONE_WARN)


# === transactions v2 (KIP-890) ================================================

def test_transactions_v2_commit_and_abort(kafka, proxies):
    """Transactional producers (Kafka 4.4: transactions v2, Produce v12 adds
    partitions implicitly, EndTxn v5) commit, abort and commit again through
    the proxy; a read_committed KIP-848 consumer through the proxy sees every
    committed record once and no aborted one."""
    topic = unique("jtxn")
    kafka.create_topic(topic, partitions=2)
    proxy = proxies(kafka.bootstrap, dedup_rule(topic))

    md = java("txn-features", "metadata", "--bootstrap", proxy.bootstrap, "--topic", topic)
    features = md.of("features")[0]["finalized"]
    assert features.get("transaction.version") == 2, f"transactions v2 not finalized: {features}"
    assert_sees_only_proxy(md, proxy, kafka)

    txn = unique("jtxn-id")
    first = java("txn-commit-1", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
                 "--count", "100", "--prefix", "c1", "--transactional-id", txn)
    aborted = java("txn-abort", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
                   "--count", "100", "--prefix", "a", "--transactional-id", txn, "--abort")
    second = java("txn-commit-2", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
                  "--count", "100", "--prefix", "c2", "--transactional-id", txn,
                  "--partitions", "2", "--marker", "END")
    assert first.of("committed") and aborted.of("aborted") and second.of("committed")
    for r in (first, aborted, second):
        apis = r.sent_apis()
        assert apis[("PRODUCE", 12)] > 0 and apis[("END_TXN", 5)] > 0, f"not transactions v2: {apis}"
        assert not any(api == "ADD_PARTITIONS_TO_TXN" for api, _ in apis), (
            f"transactions v2 adds partitions with Produce, not AddPartitionsToTxn: {apis}")
        assert_sees_only_proxy(r, proxy, kafka)

    committed = [f"c1-{i}" for i in range(100)] + [f"c2-{i}" for i in range(100)] + ["END", "END"]
    consumer = java("txn-consumer", "consume", "--bootstrap", proxy.bootstrap, "--topic", topic,
                    "--group", unique("jtxn-g"), "--group-protocol", "consumer",
                    "--isolation", "read_committed", "--until", "END")
    seen = [e["value"] for e in consumer.of("record")]
    assert not [v for v in seen if v.startswith("a-")], "an aborted record reached read_committed"
    assert sorted(seen) == sorted(committed), (
        f"committed records: missing {sorted(set(committed) - set(seen))[:10]}, "
        f"extra {[v for v, c in Counter(seen).items() if c > 1][:10]}")
    assert_sees_only_proxy(consumer, proxy, kafka)
    # The broker agrees: the aborted records are in the log, marked aborted.
    raw = values_of(read_topic(kafka.bootstrap, topic, until=lambda r: True))
    assert sum(v.startswith("a-") for v in raw) == 100, "the aborted transaction reached the broker"


# === the KIP-848 consumer, two members =========================================

def test_kip848_group_rebalances_with_two_members(kafka, proxies):
    """Two `group.protocol=consumer` members of one group through the proxy:
    the first owns all four partitions, the second joins and the broker's
    assignor moves half of them; together they read every record once."""
    topic = unique("j848")
    parts = 4
    kafka.create_topic(topic, partitions=parts)
    proxy = proxies(kafka.bootstrap)
    group = unique("j848-g")
    args = ["consume", "--bootstrap", proxy.bootstrap, "--topic", topic, "--group", group,
            "--group-protocol", "consumer", "--until", "END", "--timeout-ms", "150000"]

    def owned(run):
        ev = run.of("owned")
        return set(ev[-1]["partitions"]) if ev else set()

    a = Run("848-a", args)
    b = None
    try:
        wait_for("member A owns all partitions",
                 lambda: a.proc.poll() is not None or owned(a) == set(range(parts)), 90)
        assert a.proc.poll() is None, a.describe()
        b = Run("848-b", args)
        wait_for("the assignor splits the partitions between A and B",
                 lambda: (a.proc.poll() is not None or b.proc.poll() is not None
                          or (owned(a) and owned(b) and not owned(a) & owned(b)
                              and owned(a) | owned(b) == set(range(parts)))), 120)
        assert a.proc.poll() is None and b.proc.poll() is None, a.describe() + b.describe()
        java("848-producer", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
             "--count", "200", "--partitions", str(parts), "--marker", "END")
        a.wait(180)
        b.wait(180)
    finally:
        a.kill()
        if b:
            b.kill()
    seen = [e["value"] for r in (a, b) for e in r.of("record")]
    want = [f"v-{i}" for i in range(200)] + ["END"] * parts
    assert sorted(seen) == sorted(want), (
        f"missing {sorted(set(want) - set(seen))[:10]}; "
        f"twice {[v for v, c in Counter(seen).items() if c > 1 and v != 'END'][:10]}")
    assert a.of("record") and b.of("record"), "both members read"
    for r in (a, b):
        assert any(api == "CONSUMER_GROUP_HEARTBEAT" for api, _ in r.sent_apis()), r.sent_apis()
        assert not any(api in ("JOIN_GROUP", "SYNC_GROUP") for api, _ in r.sent_apis())
        assert_sees_only_proxy(r, proxy, kafka)
    md = java("848-metadata", "metadata", "--bootstrap", proxy.bootstrap, "--topic", topic,
              "--group", group)
    assert_sees_only_proxy(md, proxy, kafka)


# === a KIP-932 share consumer ================================================

def test_share_consumer(kafka, proxies):
    """A share-group consumer (KafkaShareConsumer: ShareGroupHeartbeat,
    ShareFetch, ShareAcknowledge) reads a topic through the proxy."""
    topic = unique("jshare")
    kafka.create_topic(topic)
    proxy = proxies(kafka.bootstrap)
    prod = java("share-producer", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
                "--count", "200", "--marker", "END")
    share = java("share-consumer", "share", "--bootstrap", proxy.bootstrap, "--topic", topic,
                 "--group", unique("jshare-g"), "--until", "END")
    seen = [e["value"] for e in share.of("record")]
    want = [f"v-{i}" for i in range(200)] + ["END"]
    assert sorted(seen) == sorted(want), f"missing {sorted(set(want) - set(seen))[:10]}"
    apis = {api for api, _ in share.sent_apis()}
    assert {"SHARE_GROUP_HEARTBEAT", "SHARE_FETCH"} <= apis, apis
    for r in (prod, share):
        assert_sees_only_proxy(r, proxy, kafka)


def test_share_consumer_follows_a_moved_leader(kafka3, proxies):
    """KIP-932 through the proxy when a partition's leader moves while its old
    leader stays up: the old leader answers ShareFetch/ShareAcknowledge with
    NOT_LEADER_OR_FOLLOWER and the new leader's endpoint (`node_endpoints`).
    Unrewritten, that endpoint takes the share consumer straight to the
    broker (the leak check counts it); rewritten, the consumer stays on the
    proxy and reads every record once."""
    from confluent_kafka.admin import AdminClient
    topic = unique("jshare-move")
    kafka3.create_topic(topic, partitions=1, replication=2)
    md = AdminClient({"bootstrap.servers": kafka3.bootstrap}).list_topics(topic, timeout=15)
    part = md.topics[topic].partitions[0]
    old_leader = part.leader
    new_leader = next(r for r in part.replicas if r != old_leader)
    proxy = proxies(kafka3.bootstrap)
    share = Run("share-move", ["share", "--bootstrap", proxy.bootstrap, "--topic", topic,
                               "--group", unique("jshare-move-g"), "--until", "END",
                               "--timeout-ms", "150000"])
    try:
        java("share-move-producer-1", "produce", "--bootstrap", proxy.bootstrap, "--topic", topic,
             "--count", "100", "--prefix", "before")
        wait_for("the share consumer reads the first 100",
                 lambda: share.proc.poll() is not None or len(share.of("record")) >= 100, 120)
        assert share.proc.poll() is None, share.describe()
        moved = java("move-leader", "move-leader", "--bootstrap", kafka3.bootstrap, "--topic", topic,
                     "--partition", "0", "--replicas", f"{new_leader},{old_leader}")
        assert moved.of("leader")[0]["leader"] == new_leader, moved.events
        prod = java("share-move-producer-2", "produce", "--bootstrap", proxy.bootstrap,
                    "--topic", topic, "--count", "100", "--prefix", "after", "--marker", "END")
        share.wait(180)
    finally:
        share.kill()
    seen = [e["value"] for e in share.of("record")]
    want = [f"before-{i}" for i in range(100)] + [f"after-{i}" for i in range(100)] + ["END"]
    assert sorted(set(seen)) == sorted(want), f"missing {sorted(set(want) - set(seen))[:10]}"
    # The scenario happened: a Share* answer said NOT_LEADER_OR_FOLLOWER
    # (6) and carried the new leader's endpoint.
    told = [ln for ln in share.log_text().splitlines()
            if re.search(r"Received SHARE_(FETCH|ACKNOWLEDGE) response", ln)
            and "errorCode=6" in ln and re.search(r"nodeEndpoints=\[NodeEndpoint", ln)]
    assert told, "no ShareFetch/ShareAcknowledge answer named a new leader: the move came too late"
    assert_sees_only_proxy(share, proxy, kafka3, benign=SHARE_MOVE_WARN)
    assert_sees_only_proxy(prod, proxy, kafka3, benign=SHARE_MOVE_WARN)
