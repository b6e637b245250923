"""Debezium 3.6.1's Postgres source on the real Connect 4.4 runtime, through
idemgate with the Debezium rule config/sidecar.toml ships, to Apache Kafka 4.4.

A table of ROWS rows is snapshotted (every event `op=r`), then inserts,
updates and deletes are streamed; the worker running the task is SIGKILLed
after a batch of changes reached the topic but before Connect committed
their offsets (offset.flush.interval.ms = FLUSH_MS), so the task, moved to
the other worker, streams them again from its last committed LSN. The killed
worker is then started again, more changes follow, and the run ends on a
marker row.

An event's identity is Debezium's own: the row's primary key (the record
key), the operation (`op`) and the WAL position it was read at
(`source.lsn`). Snapshot events all share one position (the snapshot's), so
the key tells them apart; a replay repeats all three.

Asserted through the proxy: the topic holds exactly the events the SQL made
(as a multiset of (id, op): nothing lost, nothing twice), the snapshot
intact (every row once), each (id, op, lsn) once, and every delete followed
by its tombstone (a row deleted, inserted again and deleted again keeps both
tombstones). The same run straight to the broker must show replayed events
(> 0), so the test bites.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter

from bed import ROOT, read_topic, unique, wait_for
from pg import Postgres

ROWS = 3000
FLUSH_MS = 30000


def shipped_debezium_rule() -> str:
    """The `[[dedup.rules]]` entry config/sidecar.toml ships for Debezium
    (topics "pg.*"), as TOML: the test runs what users get."""
    cfg = tomllib.loads((ROOT / "config" / "sidecar.toml").read_text())
    rule = next(r for r in cfg["dedup"]["rules"] if r["topics"] == "pg.*")
    lines = ["[[dedup.rules]]"]
    for k, v in rule.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def parse(msg):
    """(id, op, lsn) of a change event; (id, None, None) for a tombstone."""
    key = json.loads(msg.key())
    if msg.value() is None:
        return key["id"], None, None
    v = json.loads(msg.value())
    row = v["after"] if v["after"] is not None else v["before"]
    assert row["id"] == key["id"], (key, v)
    return key["id"], v["op"], v["source"]["lsn"]


def committed_streaming(connect, name) -> bool:
    """Connect committed an offset past the snapshot (a streamed LSN)."""
    status, body = connect.rest("GET", f"/connectors/{name}/offsets")
    if status != 200:
        return False
    for o in body.get("offsets", []):
        off = o.get("offset") or {}
        if "lsn_proc" in off and not off.get("snapshot"):
            return True
    return False


def run(kafka, connect_clusters, bootstrap: str):
    """One full scenario with Connect's bootstrap at `bootstrap`. Returns the
    topic's records and the (id, op) multiset the SQL made."""
    tag = unique("t").replace("-", "_")
    table = f"items_{tag}"
    topic = f"pg.public.{table}"
    name = f"dbz-{tag}".replace("_", "-")
    kafka.create_topic(topic, partitions=1)
    expected = Counter()
    pg = Postgres.start()
    connect = None
    try:
        pg.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);"
               f"INSERT INTO {table} SELECT g, 'row ' || g, 0 FROM generate_series(1, {ROWS}) g;")
        expected.update((i, "r") for i in range(1, ROWS + 1))
        connect = connect_clusters(bootstrap, workers=2, flush_ms=FLUSH_MS)
        connect.create_connector(name, {
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "database.hostname": "127.0.0.1",
            "database.port": str(pg.port),
            "database.user": "postgres",
            "database.password": "unused",
            "database.dbname": "postgres",
            "topic.prefix": "pg",
            "plugin.name": "pgoutput",
            "slot.name": f"slot_{tag}",
            "publication.name": f"pub_{tag}",
            "publication.autocreate.mode": "filtered",
            "table.include.list": f"public.{table}",
            "snapshot.mode": "initial",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",
        })
        wait_for(f"{name}'s task to run", lambda: connect.task_running(name), 120)

        def arrived(pred):
            """An `until` for read_topic, looking at each record once (it is
            called after every record)."""
            seen = [0, False]

            def until(recs):
                for m in recs[seen[0]:]:
                    seen[1] = seen[1] or (m.value() is not None and pred(parse(m)))
                seen[0] = len(recs)
                return seen[1]
            return until

        def count_at_least(n, pred):
            seen = [0, 0]

            def until(recs):
                seen[1] += sum(1 for m in recs[seen[0]:] if pred(m))
                seen[0] = len(recs)
                return seen[1] >= n
            return until

        # The snapshot, then a first streamed batch whose offset Connect commits.
        read_topic(kafka.bootstrap, topic, until=lambda recs: len(recs) >= ROWS, timeout=240)
        pg.sql(f"UPDATE {table} SET qty = 1 WHERE id <= 200;")
        expected.update((i, "u") for i in range(1, 201))
        wait_for("an offset commit past the snapshot", lambda: committed_streaming(connect, name),
                 FLUSH_MS / 1000 * 3 + 30, interval=0.5)

        # Changes that reach the topic, then the task's worker dies before
        # their offsets are committed: the moved task streams them again.
        pg.sql(f"INSERT INTO {table} SELECT g, 'new ' || g, 0 FROM generate_series({ROWS + 1}, {ROWS + 300}) g;"
               f"UPDATE {table} SET qty = qty + 10, name = name || '!' WHERE id BETWEEN 201 AND 500;"
               f"DELETE FROM {table} WHERE id BETWEEN 501 AND 600;"
               f"DELETE FROM {table} WHERE id = 7;"
               f"INSERT INTO {table} VALUES (7, 'row 7 again', 0);"
               f"DELETE FROM {table} WHERE id = 7;")
        expected.update((i, "c") for i in range(ROWS + 1, ROWS + 301))
        expected.update((i, "u") for i in range(201, 501))
        expected.update((i, "d") for i in range(501, 601))
        expected.update({(7, "d"): 2, (7, "c"): 1})
        read_topic(kafka.bootstrap, topic, timeout=120,
                   until=count_at_least(102, lambda m: m.value() is None))
        victim = connect.worker_number(connect.task_running(name))
        connect.kill(victim)
        survivor = next(n for n in connect.workers if n != victim)
        moved_to = wait_for(f"{name}'s task to run on worker {survivor}",
                            lambda: (lambda w: w if w and connect.worker_number(w) == survivor else None)(
                                connect.task_running(name)), 180, interval=0.5)
        assert moved_to
        connect.restart(victim)

        # More changes after the move, and the marker that ends the read.
        pg.sql(f"UPDATE {table} SET qty = 99 WHERE id BETWEEN 1 AND 50;"
               f"DELETE FROM {table} WHERE id BETWEEN {ROWS + 1} AND {ROWS + 20};"
               f"INSERT INTO {table} VALUES (-1, 'END', 0);")
        expected.update((i, "u") for i in range(1, 51) if i != 7)  # 7 is deleted
        expected.update((i, "d") for i in range(ROWS + 1, ROWS + 21))
        expected[(-1, "c")] += 1
        records = read_topic(kafka.bootstrap, topic, timeout=180,
                             until=arrived(lambda e: e[0] == -1 and e[1] == "c"))
        return records, expected
    except Exception:
        if connect:
            print(connect.log_tail(60))
        raise
    finally:
        pg.stop()


def tally(records):
    events = [parse(m) for m in records]
    changes = [e for e in events if e[1] is not None]
    by_id_op = Counter((i, op) for i, op, _ in changes)
    by_identity = Counter(changes)
    # A tombstone belongs to the delete before it (one partition: in order).
    last_delete = {}
    tombstones = Counter()
    for i, op, lsn in events:
        if op == "d":
            last_delete[i] = lsn
        elif op is None:
            assert i in last_delete, f"a tombstone for id {i} with no delete before it"
            tombstones[(i, last_delete[i])] += 1
    return by_id_op, by_identity, tombstones


def test_debezium_snapshot_and_stream_exactly_once(kafka, proxies, connect_clusters):
    proxy = proxies(kafka.bootstrap, "[dedup]\nwindow = \"1h\"\n" + shipped_debezium_rule())
    records, expected = run(kafka, connect_clusters, proxy.bootstrap)
    by_id_op, by_identity, tombstones = tally(records)

    # Why a position alone is no event identity: the whole snapshot shares one.
    assert len({lsn for (_, op, lsn) in by_identity if op == "r"}) == 1
    snapshot = [k for k in by_id_op if k[1] == "r"]
    assert len(snapshot) == ROWS and all(by_id_op[k] == 1 for k in snapshot), (
        f"the snapshot arrived as {sum(by_id_op[k] for k in snapshot)} events over "
        f"{len(snapshot)} rows, not {ROWS} rows once each")
    lost = expected - by_id_op
    twice = by_id_op - expected
    assert not lost, f"{sum(lost.values())} events lost through the proxy, e.g. {list(lost)[:5]}"
    assert not twice, f"{sum(twice.values())} events twice through the proxy, e.g. {list(twice)[:5]}"
    assert all(n == 1 for n in by_identity.values())
    deletes = [(i, lsn) for (i, op, lsn) in by_identity if op == "d"]
    assert all(tombstones[d] >= 1 for d in deletes), "a delete lost its tombstone"
    assert len({lsn for (i, lsn) in deletes if i == 7}) == 2, "row 7's two deletes"
    dropped = proxy.metric_sum("idemgate_duplicates_dropped_total")
    assert dropped > 0, "the proxy dropped nothing: the run did not replay"
    print(f"through idemgate: {dropped:.0f} replays dropped")

    # The same run straight to the broker: the moved task's replays land.
    direct, expected = run(kafka, connect_clusters, kafka.bootstrap)
    d_by_id_op, d_identity, _ = tally(direct)
    extra = sum(d_by_id_op.values()) - sum(expected.values())
    assert not expected - d_by_id_op, "the direct run lost events"
    assert extra > 0, "the direct run replayed nothing: the kill came too late to bite"
    print(f"direct: {extra} replayed change events")

