"""Fetch-path dedup with kafka-python 3.0.12: sink consumers read through the
proxy, duplicates are written straight to the broker (around the proxy), and
every logical record reaches each sink exactly once, at its first position.

These tests run their own idemgate (module fixture `fetch_proxy`) in front of
the broker at IDEMGATE_DIRECT_BOOTSTRAP, with a `direction = "fetch"` rule
for topics named "fetchdedup-*": scripts/test's shared proxy has no fetch
rule, and these tests read its /metrics. The binary is IDEMGATE_BIN, else
target/debug/idemgate (built by scripts/test's `cargo test`).

Record layout: kp_produce writes key k<seq>, value value-<seq>, header
seq=<seq>, so two writes of one seq are one logical record under the rule's
"content" key (topic + key + value + headers; never timestamp or partition).

Positions are checked with consumer.position(), not by waiting for silence:
a consumer whose position reached the log end has been given everything up
to it, so a surplus would already have shown, and a consumer stuck before an
all-duplicate batch shows as a position that never gets there.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from e2e import (REQUEST_TIMEOUT_S, deadline, kp_produce,
                 record_value, seq_of, unique)
from e2e import kp_consumer as sink_consumer  # every call names the Connect client id

sys.path.insert(0, str(Path(__file__).parent / "clients"))
from session_consumer import FetcherLog  # noqa: E402  (the script's own counter)

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "fetchdedup"

# Every codec kafka-python can write. zstd needs the `zstandard` module: the
# test venv has it (scripts/setup installs it); without it the zstd case
# fails on the import below rather than being skipped.
CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


# ------------------------------------------------------------------ the proxy

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class FetchProxy:
    def __init__(self, bootstrap: str, admin: str, log: Path, proc: subprocess.Popen):
        self.bootstrap = bootstrap
        self.admin = admin
        self.log = log
        self.proc = proc

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SERIES.match(line)
            if m:
                out[(m.group(1), frozenset(_LABEL.findall(m.group(2) or "")))] = float(m.group(3))
        return out

    def value(self, name: str, snapshot=None, **labels) -> float:
        """Sum of the series `name` whose labels include `labels` (0 if none)."""
        snapshot = snapshot if snapshot is not None else self.metrics()
        want = set(labels.items())
        return sum(v for (n, ls), v in snapshot.items() if n == name and want <= ls)

    def fetch_counts(self, connector: str, topic: str) -> tuple[int, int]:
        """(records, dropped) direction=fetch for a sink connector and topic."""
        snap = self.metrics()
        lab = dict(connector=connector, topic=topic, direction="fetch")
        return (int(self.value("idemgate_records_total", snap, **lab)),
                int(self.value("idemgate_duplicates_dropped_total", snap, **lab)))

    def fail_open(self) -> dict[str, int]:
        snap = self.metrics()
        return {dict(ls)["reason"]: int(v) for (n, ls), v in snap.items()
                if n == "idemgate_dedup_fail_open_total"}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"


@pytest.fixture(scope="module")
def fetch_proxy(endpoints, tmp_path_factory):
    dhost, dport = endpoints.direct_hp  # fails clearly if IDEMGATE_DIRECT_BOOTSTRAP is unset
    binary = Path(os.environ.get("IDEMGATE_BIN", "") or ROOT / "target" / "debug" / "idemgate")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no idemgate binary at {binary}: build it (`cargo build`, as scripts/test's "
                    "`cargo test` does) or point IDEMGATE_BIN at one", pytrace=False)
    work = tmp_path_factory.mktemp("fetch-proxy")
    proxy_port, admin_port, broker_port = _free_port(), _free_port(), _free_port()
    config = work / "idemgate.toml"
    config.write_text(f"""
[listen]
bootstrap = "127.0.0.1:{proxy_port}"
broker_ports = "{broker_port}-{broker_port}"
[upstream]
bootstrap = ["{dhost}:{dport}"]
[admin]
listen = "127.0.0.1:{admin_port}"
[store]
dir = "{work / 'store'}"
[diagnostics]
leak_check = true
[[dedup.rules]]
topics = "{PREFIX}-*"
key = "content"
mode = "drop"
direction = "fetch"
""")
    log = work / "idemgate.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(binary), "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=logf, start_new_session=True)
    proxy = FetchProxy(f"127.0.0.1:{proxy_port}", f"127.0.0.1:{admin_port}", log, proc)
    try:
        dl = deadline(20)
        while dl.left():
            if proc.poll() is not None:
                pytest.fail(f"idemgate exited with {proc.returncode}:\n{proxy.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"http://{proxy.admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"idemgate never ready:\n{proxy.log_tail()}", pytrace=False)
        yield proxy
        snap = proxy.metrics()
        leaks = proxy.value("idemgate_address_leaks_total", snap)
        assert leaks == 0, f"the proxy leaked upstream addresses {leaks} times"
        errors = {dict(ls)["side"]: v for (n, ls), v in snap.items() if n == "idemgate_connection_errors_total"}
        assert not any(errors.values()), f"connections closed on errors: {errors}\n{proxy.log_tail()}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# ------------------------------------------------------------------ helpers

def read_to(consumer: KafkaConsumer, ends: dict[TopicPartition, int], seconds: float = 30,
            rows: list | None = None) -> list[tuple[int, int, int]]:
    """Polls until the consumer's position reached `ends` on every partition:
    [(partition, offset, seq)] in delivery order."""
    rows = [] if rows is None else rows
    dl = deadline(seconds)
    positions = {}
    while dl.left():
        for records in consumer.poll(timeout_ms=200, max_records=500).values():
            rows.extend((r.partition, r.offset, seq_of(r.value)) for r in records)
        if set(ends) <= consumer.assignment():
            positions = {tp: consumer.position(tp, timeout_ms=5000) for tp in ends}
            if all(positions[tp] is not None and positions[tp] >= end for tp, end in ends.items()):
                return rows
    pytest.fail(f"positions {positions} never reached {ends} in {seconds}s "
                f"(assignment {consumer.assignment()}); {len(rows)} records read", pytrace=False)


def offsets_of(written) -> list[tuple[int, int]]:
    """[(offset, seq)] partition 0."""
    return written.by_partition[0]


def read_direct(direct: str, topic: str, end: int) -> list[int]:
    """The broker's partition 0 as it is (duplicates included): seqs by offset."""
    consumer = sink_consumer(direct, client_id=unique("pt-direct"))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return [seq for _, _, seq in read_to(consumer, {tp: end})]
    finally:
        consumer.close()


def assert_no_fail_open(proxy: FetchProxy, before: dict[str, int]):
    after = proxy.fail_open()
    grew = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert not grew, f"records forwarded unchecked (idemgate_dedup_fail_open_total): {grew}"


# ------------------------------------------------------------------ 1. codecs

@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c or "none")
def test_sink_reads_each_logical_record_once(codec, fetch_proxy, direct_bootstrap, make_topic):
    """0..50, then 30..70, then 10..30 written around the proxy: the log holds
    110 records for 70 logical ones, the last batch all duplicates. Every
    reader through the proxy gets offsets 0..49 and 70..89, once each: a
    Connect-shaped group, a second group, and a reader seeking back to the
    start (first positions re-read are delivered again)."""
    if codec == "zstd":
        import zstandard  # noqa: F401 - fail, never skip, if the venv lost it
    topic = make_topic(1, prefix=PREFIX)
    tp = TopicPartition(topic, 0)
    writes = [range(0, 50), range(30, 70), range(10, 30)]
    log = []
    for seqs in writes:
        log += offsets_of(kp_produce(direct_bootstrap, topic, seqs, partition=0, compression_type=codec))
    assert [o for o, _ in log] == list(range(110)), f"broker offsets: {log[:3]}..{log[-3:]}"
    assert read_direct(direct_bootstrap, topic, 110) == [s for r in writes for s in r], \
        "the broker itself holds every copy"

    want = [(0, off, seq) for off, seq in log if off < 50 or 70 <= off < 90]
    assert [s for _, _, s in want] == list(range(70))
    fail_open = fetch_proxy.fail_open()
    assert fetch_proxy.fetch_counts("pg-sink", topic) == (0, 0)

    # The sink's task 0, in its Connect group.
    consumer = sink_consumer(fetch_proxy.bootstrap, topic, group_id="connect-pg-sink",
                             client_id="connector-consumer-pg-sink-0")
    try:
        rows = read_to(consumer, {tp: 110}, seconds=40)
    finally:
        consumer.close(autocommit=False)
    assert rows == want, f"pg-sink got {len(rows)} records; first differences: " \
        f"{[r for r in rows if r not in want][:5]} unexpected, {[w for w in want if w not in rows][:5]} missing"
    assert fetch_proxy.fetch_counts("pg-sink", topic) == (110, 40), \
        "records in / duplicates dropped, direction=fetch, after the first read"

    # Another group (another sink task, say) sees the same first positions.
    consumer = sink_consumer(fetch_proxy.bootstrap, topic, group_id=unique("connect-pg-sink-b"),
                             client_id="connector-consumer-pg-sink-1")
    try:
        rows_b = read_to(consumer, {tp: 110}, seconds=40)
    finally:
        consumer.close(autocommit=False)
    assert rows_b == want, f"second group: {len(rows_b)} records, {sorted(set(rows_b) ^ set(want))[:10]} differ"

    # A reader going back to the start: the first positions, again.
    consumer = sink_consumer(fetch_proxy.bootstrap, client_id="connector-consumer-pg-sink-2")
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        rows_c = read_to(consumer, {tp: 110})
    finally:
        consumer.close()
    assert rows_c == want, f"re-read from the start: {len(rows_c)} records, {sorted(set(rows_c) ^ set(want))[:10]} differ"

    assert fetch_proxy.fetch_counts("pg-sink", topic) == (330, 120), \
        "three full reads of 110 records, 40 duplicates each"
    assert_no_fail_open(fetch_proxy, fail_open)


# ------------------------------------------------------------------ 2. livelock

def test_consumer_moves_past_an_all_duplicate_batch(fetch_proxy, direct_bootstrap, make_topic):
    """The log ends in batches whose every record is a duplicate (empty after
    the proxy): the consumer's position still reaches the end, and a record
    written afterwards is delivered to the same, still polling consumer."""
    topic = make_topic(1, prefix=PREFIX)
    tp = TopicPartition(topic, 0)
    kp_produce(direct_bootstrap, topic, range(0, 20), partition=0)
    kp_produce(direct_bootstrap, topic, range(10, 20), partition=0)   # offsets 20..29: all copies
    fail_open = fetch_proxy.fail_open()
    consumer = sink_consumer(fetch_proxy.bootstrap, topic, group_id=unique("connect-tail-sink"),
                             client_id="connector-consumer-tail-sink-0")
    try:
        rows = read_to(consumer, {tp: 30})
        assert rows == [(0, o, o) for o in range(20)]
        # More copies arrive while the consumer sits at the end of the log.
        kp_produce(direct_bootstrap, topic, range(0, 10), partition=0)  # offsets 30..39
        read_to(consumer, {tp: 40}, rows=rows)
        assert len(rows) == 20, f"copies delivered: {rows[20:]}"
        for _ in range(5):  # a few more empty fetches at the end
            rows.extend((r.partition, r.offset, seq_of(r.value))
                        for recs in consumer.poll(timeout_ms=100).values() for r in recs)
        assert consumer.position(tp) == 40
        w = kp_produce(direct_bootstrap, topic, [1000], partition=0)
        assert offsets_of(w) == [(40, 1000)]
        read_to(consumer, {tp: 41}, seconds=20, rows=rows)
    finally:
        consumer.close(autocommit=False)
    assert rows[20:] == [(0, 40, 1000)], f"after the all-duplicate batches: {rows[20:]}"
    assert fetch_proxy.fetch_counts("tail-sink", topic) == (41, 20)
    assert_no_fail_open(fetch_proxy, fail_open)


# ------------------------------------------------------- 3. fetch sessions, live

# The fetch count is what the test needs; the time it takes is not its
# business. A debug proxy on a loaded 2-core CI machine may take minutes to
# get there, so the limits below only bound a hang.
LIVE_FETCHES = 2000
LIVE_WRITE_LIMIT_S = 600


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_live_reading_over_thousands_of_fetches(fetch_proxy, direct_bootstrap, make_topic):
    """A sink reads a 3-partition topic while small batches keep arriving
    around the proxy, some of them copies of earlier records (in their
    original's partition), with fetch.max.wait 5 ms and
    max.partition.fetch.bytes 4 KiB (small responses): thousands of Fetch
    requests, each filtered. Every logical record arrives exactly once, in
    offset order, with no consumer error, no fetch-session error, no
    connection closed on an error by the proxy, and each record counted once
    in idemgate_records_total and each copy once in the dropped count.

    kafka-python asks for KIP-227 incremental sessions (epoch 0, then
    incremental fetches when the broker answers with a session id). tansu
    0.6.0 answers every Fetch with session_id 0, so against it each fetch is
    a full one; the test records which kind the broker gave (see the
    assertion message) and, against a broker that does create sessions,
    checks they are continued without error. proto-tests/fetch_sessions.rs
    gives kafka-python real sessions, from a session layer in front of tansu."""
    topic = make_topic(3, prefix=PREFIX)
    fail_open = fetch_proxy.fail_open()
    snap = fetch_proxy.metrics()
    fetches0 = fetch_proxy.value("idemgate_requests_total", snap, api="Fetch")
    errors0 = fetch_proxy.value("idemgate_connection_errors_total", snap)

    written: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    copies: list[tuple[int, int, int]] = []  # (seq, partition, first copy's partition) of each copy
    stop = threading.Event()
    writer_error: list[BaseException] = []

    def writer():
        rng = random.Random(7)
        producer = KafkaProducer(bootstrap_servers=direct_bootstrap, acks="all", linger_ms=0,
                                 client_id=unique("pt-around"), request_timeout_ms=REQUEST_TIMEOUT_S * 1000)
        first_partition: dict[int, int] = {}
        seq = 0
        try:
            while not stop.is_set():
                futures = []
                for _ in range(3):
                    futures.append((seq, producer.send(topic, key=f"k{seq}".encode(), value=record_value(seq),
                                                       headers=[("seq", str(seq).encode())])))
                    seq += 1
                if seq > 9 and rng.random() < 0.5:
                    old = rng.randrange(seq - 3)
                    # In the original's partition: a copy in another one is
                    # delivered (the proxy cannot see whether that partition
                    # still holds the first copy).
                    part = first_partition[old]
                    futures.append((old, producer.send(topic, key=f"k{old}".encode(), value=record_value(old),
                                                       headers=[("seq", str(old).encode())], partition=part)))
                producer.flush(timeout=30)
                for s, fut in futures:
                    md = fut.get(timeout=REQUEST_TIMEOUT_S)
                    written[md.partition].append((md.offset, s))
                    if s in first_partition:
                        copies.append((s, md.partition, first_partition[s]))
                    else:
                        first_partition[s] = md.partition
                time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            writer_error.append(e)
        finally:
            producer.close(timeout=REQUEST_TIMEOUT_S)

    fetcher_log = FetcherLog()
    kafka_log = logging.getLogger("kafka")
    fetch_logger = logging.getLogger("kafka.consumer.fetcher")
    old_level, old_propagate = fetch_logger.level, fetch_logger.propagate
    kafka_log.addHandler(fetcher_log)
    fetch_logger.setLevel(logging.DEBUG)
    fetch_logger.propagate = False  # thousands of debug lines: counted, not kept
    fetch_logger.addHandler(fetcher_log)

    rows: list[tuple[int, int, int]] = []
    # session_timeout_ms 15 s, not e2e's 6: the heartbeat thread shares the
    # GIL with this busy loop and the writer; on a loaded machine it can miss
    # a 6 s session, and the rebalance that follows logs a WARN and starts a
    # new fetch session, which the checks below would blame on the proxy.
    # tansu 0.6.0 sets no upper bound on a group's session timeout.
    consumer = sink_consumer(fetch_proxy.bootstrap, topic, group_id=unique("connect-live-sink"),
                             client_id="connector-consumer-live-sink-0", fetch_max_wait_ms=5,
                             max_partition_fetch_bytes=4096, session_timeout_ms=15000)
    thread = threading.Thread(target=writer, daemon=True)
    try:
        thread.start()
        dl = deadline(LIVE_WRITE_LIMIT_S)
        fetches, checked = 0, 0.0
        while dl.left() and not writer_error:
            for recs in consumer.poll(timeout_ms=100, max_records=200).values():
                rows.extend((r.partition, r.offset, seq_of(r.value)) for r in recs)
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                fetches = fetch_proxy.value("idemgate_requests_total", api="Fetch") - fetches0
                if fetches >= LIVE_FETCHES + 200:
                    break
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the writer did not stop"
        assert not writer_error, f"writer failed: {writer_error[0]!r}"
        assert fetches >= LIVE_FETCHES, f"only {fetches} Fetch requests in {LIVE_WRITE_LIMIT_S} s"
        ends = {TopicPartition(topic, p): v[-1][0] + 1 for p, v in written.items()}
        read_to(consumer, ends, seconds=120, rows=rows)
    finally:
        stop.set()
        # Detached first: closing cancels the fetch in flight ("Fetch to node
        # ... failed: Cancelled"), which is no error of the read.
        fetch_logger.removeHandler(fetcher_log)
        kafka_log.removeHandler(fetcher_log)
        fetch_logger.setLevel(old_level)
        fetch_logger.propagate = old_propagate
        consumer.close(autocommit=False)

    logical = {s for v in written.values() for _, s in v}
    print(f"live read: {fetches:.0f} Fetch requests, {len(logical)} logical records, {len(copies)} copies "
          f"({sum(1 for _, p, first in copies if p != first)} in another partition), "
          f"kafka-python fetch sessions {dict(fetcher_log.counts)}")
    got = collections.Counter(seq for _, _, seq in rows)
    twice = sorted(s for s, n in got.items() if n > 1)
    missing = sorted(logical - set(got))
    sessions = dict(fetcher_log.counts)
    assert not twice and not missing and set(got) == logical, (
        f"{len(logical)} logical records, {len(copies)} copies: {len(twice)} read twice (e.g. {twice[:5]}), "
        f"{len(missing)} missing (e.g. {missing[:5]}); fetch sessions {sessions}")
    for p in range(3):
        offs = [o for part, o, _ in rows if part == p]
        assert offs == sorted(offs), f"partition {p}: offsets out of order"
    assert not fetcher_log.bad, f"kafka-python complained: {fetcher_log.bad[:5]} (sessions {sessions})"
    if sessions.get("created"):
        assert sessions.get("continued", 0) > 0, f"sessions created but never continued: {sessions}"
    snap = fetch_proxy.metrics()
    assert fetch_proxy.value("idemgate_connection_errors_total", snap) == errors0, \
        "the proxy closed connections on errors during the run"
    records, dropped = fetch_proxy.fetch_counts("live-sink", topic)
    total = sum(len(v) for v in written.values())
    assert (records, dropped) == (total, len(copies)), (
        f"records/dropped {records}/{dropped}, written {total} with {len(copies)} copies; "
        f"{fetches} fetches, sessions {sessions}")
    assert_no_fail_open(fetch_proxy, fail_open)


# ------------------------------------------------------------------ 4. kill

def test_member_killed_before_committing(fetch_proxy, direct_bootstrap, make_topic):
    """Member A of connect-kill-sink reads everything (learning every first
    position), commits the first 20 records only, and dies. Member B resumes
    at offset 20 and gets every logical record from there, those A saw but
    never committed included; the later copies stay hidden."""
    topic = make_topic(1, prefix=PREFIX)
    tp = TopicPartition(topic, 0)
    kp_produce(direct_bootstrap, topic, range(0, 40), partition=0)    # offsets 0..39
    kp_produce(direct_bootstrap, topic, range(20, 40), partition=0)   # 40..59: copies
    kp_produce(direct_bootstrap, topic, range(40, 60), partition=0)   # 60..79
    fail_open = fetch_proxy.fail_open()
    group = "connect-kill-sink"

    a = sink_consumer(fetch_proxy.bootstrap, topic, group_id=group, client_id="connector-consumer-kill-sink-0")
    try:
        rows_a = read_to(a, {tp: 80}, seconds=40)
        assert rows_a == [(0, o, o) for o in range(40)] + [(0, 60 + i, 40 + i) for i in range(20)]
        a.commit({tp: OffsetAndMetadata(20, "", -1)})
        assert a.committed(tp) == 20
    finally:
        a.close(autocommit=False)  # killed: nothing more committed

    b = sink_consumer(fetch_proxy.bootstrap, topic, group_id=group, client_id="connector-consumer-kill-sink-0")
    try:
        rows_b = read_to(b, {tp: 80}, seconds=40)
    finally:
        b.close(autocommit=False)
    want = [(0, o, o) for o in range(20, 40)] + [(0, 60 + i, 40 + i) for i in range(20)]
    assert rows_b == want, (
        f"B from the committed offset: missing {sorted(set(want) - set(rows_b))[:10]}, "
        f"unexpected {sorted(set(rows_b) - set(want))[:10]}")
    # A: 80 records, 20 copies. B: the same 20 copies; its Fetch at offset 20
    # gets the whole batch holding offset 20 (the broker answers in batches,
    # the consumer skips what lies below its offset), so 60 to 80 records.
    records, dropped = fetch_proxy.fetch_counts("kill-sink", topic)
    assert dropped == 40 and 80 + 60 <= records <= 80 + 80, (records, dropped)
    assert_no_fail_open(fetch_proxy, fail_open)
