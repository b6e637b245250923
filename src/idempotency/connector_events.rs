//! The connector presets (`config::Preset`) on the events those connectors
//! really emit. Each fixture's shape comes from the connector's own source,
//! cited next to it; every test asks one question: are two distinct events
//! two keys, and is a replay (the same event processed again: a new `ts_ms`,
//! a new Kafka timestamp) the same key?

use proptest::prelude::*;

use super::key::tests::{derive_all, record};
use super::key::Derived;
use crate::config::{Fallback, KeyStrategy, Preset};
use crate::records::Record;

fn keys(preset: Preset, topic: &str, events: &[Record]) -> Vec<Derived> {
    let (key, fallback) = preset.expand();
    derive_all(&key, fallback, topic, events)
}

/// Every event made a key of its own, none equal to another's.
fn all_distinct(derived: &[Derived]) {
    for (i, a) in derived.iter().enumerate() {
        assert!(matches!(a, Derived::Made { .. }), "event {i}: {a:?}");
        for (j, b) in derived.iter().enumerate().skip(i + 1) {
            assert_ne!(a, b, "events {i} and {j} share a key");
        }
    }
}

// === Debezium Postgres ===
//
// Envelope fields `before`, `after`, `source`, `op` (c, u, d, r, t), `ts_ms`:
// debezium/debezium `debezium-core/.../data/Envelope.java` (FieldName). The
// `source` block: `PostgresSourceInfoStructMaker.java` (version, connector,
// name, ts_ms, snapshot, db, sequence, schema, table, txId, lsn, xmin). The
// record key is the table's primary key (`{"id":…}` with the JSON converter);
// a table without one has a null key. A delete is followed by a tombstone:
// the same key, a null value (`tombstones.on.delete`, default true).
// Snapshot: the connector reads the position once and emits every row as a
// READ (`op = "r"`) carrying it ("How the PostgreSQL connector performs
// database snapshots"); `source.snapshot` is "first", "true" … "last".
// Incremental snapshots (signals) emit READs with `snapshot = "incremental"`
// at the stream's current position, interleaved with streamed changes.

fn pg_value(id: u32, op: &str, lsn: u64, snapshot: &str, ts_ms: u64) -> String {
    let row = format!(r#"{{"id":{id},"qty":{}}}"#, id * 10);
    let (before, after) = match op {
        "d" => (row.as_str(), "null"),
        _ => ("null", row.as_str()),
    };
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"version":"3.6.1.Final","connector":"postgresql","name":"pg","ts_ms":{ts_ms},"snapshot":"{snapshot}","db":"shop","sequence":"[null,\"{lsn}\"]","schema":"public","table":"items","txId":771,"lsn":{lsn},"xmin":null}},"op":"{op}","ts_ms":{ts_ms},"transaction":null}}"#
    )
}

fn pg(id: u32, op: &str, lsn: u64, snapshot: &str, ts_ms: u64) -> Record {
    let key = format!(r#"{{"id":{id}}}"#);
    let value = pg_value(id, op, lsn, snapshot, ts_ms);
    record(Some(key.as_bytes()), Some(value.as_bytes()), &[])
}

fn tombstone(id: u32) -> Record {
    record(Some(format!(r#"{{"id":{id}}}"#).as_bytes()), None, &[])
}

#[test]
fn debezium_postgres_snapshot_reads_sharing_one_position_are_all_kept() {
    // One snapshot: one lsn and one txId for every row.
    let snapshot: Vec<Record> = (1..=5)
        .map(|id| {
            let mark = match id {
                1 => "first",
                5 => "last",
                _ => "true",
            };
            pg(id, "r", 23_881_640, mark, 1_000)
        })
        .collect();
    all_distinct(&keys(
        Preset::DebeziumPostgres,
        "pg.public.items",
        &snapshot,
    ));
    // The snapshot replayed after a crash (processed anew: other ts_ms) is
    // the same events.
    let replay: Vec<Record> = (1..=5)
        .map(|id| pg(id, "r", 23_881_640, "true", 9_000))
        .collect();
    let first = keys(Preset::DebeziumPostgres, "pg.public.items", &snapshot);
    assert_eq!(
        first,
        keys(Preset::DebeziumPostgres, "pg.public.items", &replay)
    );
}

#[test]
fn debezium_postgres_streaming_changes_and_tombstones() {
    let events = [
        pg(1, "c", 100, "false", 1),
        pg(1, "u", 140, "false", 2),
        pg(1, "u", 180, "false", 3), // the same row again, at a later position
        pg(2, "c", 180, "false", 3), // another row in the same transaction
        pg(1, "d", 220, "false", 4),
        pg(1, "c", 260, "false", 5), // deleted, then inserted again
    ];
    let derived = keys(Preset::DebeziumPostgres, "pg.public.items", &events);
    all_distinct(&derived);
    // Replayed: the same keys.
    let again = [pg(1, "u", 140, "false", 99)];
    assert_eq!(
        keys(Preset::DebeziumPostgres, "pg.public.items", &again)[0],
        derived[1]
    );
    // Tombstones carry no position: they pass, never keyed, so a row deleted
    // twice keeps both tombstones.
    let t = keys(
        Preset::DebeziumPostgres,
        "pg.public.items",
        &[tombstone(1), tombstone(1)],
    );
    assert_eq!(t, [Derived::Pass, Derived::Pass]);
}

#[test]
fn debezium_postgres_incremental_snapshot_reads_beside_the_stream() {
    // An incremental snapshot chunk: READs at the stream's position, and a
    // streamed update of one of those rows at that same position.
    let events = [
        pg(7, "r", 500, "incremental", 1),
        pg(8, "r", 500, "incremental", 1),
        pg(7, "u", 500, "false", 1),
    ];
    all_distinct(&keys(Preset::DebeziumPostgres, "pg.public.items", &events));
}

#[test]
fn debezium_in_the_json_converters_schema_envelope() {
    // `value.converter.schemas.enable=true` (the JsonConverter default)
    // wraps the event: {"schema": …, "payload": …} (apache/kafka
    // `JsonConverter.java`, envelope fields "schema" and "payload").
    let wrap = |id: u32, op: &str, lsn: u64| {
        let key = format!(r#"{{"schema":{{"type":"struct"}},"payload":{{"id":{id}}}}}"#);
        let value = format!(
            r#"{{"schema":{{"type":"struct","name":"pg.public.items.Envelope"}},"payload":{}}}"#,
            pg_value(id, op, lsn, "true", 1)
        );
        record(Some(key.as_bytes()), Some(value.as_bytes()), &[])
    };
    let derived = keys(
        Preset::DebeziumPostgres,
        "pg.public.items",
        &[wrap(1, "r", 9), wrap(2, "r", 9), wrap(1, "u", 12)],
    );
    all_distinct(&derived);
}

#[test]
fn debezium_tables_without_a_primary_key_pass() {
    // No primary key: a null record key (Debezium's documented behaviour);
    // two identical inserts are two events, and nothing names them apart.
    let value = pg_value(1, "c", 100, "false", 1);
    let keyless = record(None, Some(value.as_bytes()), &[]);
    assert_eq!(
        keys(
            Preset::DebeziumPostgres,
            "pg.public.log",
            &[keyless.clone(), keyless]
        ),
        [Derived::Pass, Derived::Pass]
    );
}

// === Debezium MySQL ===
//
// `source` block: debezium/debezium `MySqlSourceInfoStructMaker.java` /
// `BinlogSourceInfoStructMaker.java` (version, connector, name, ts_ms,
// snapshot, db, sequence, table, server_id, gtid, file, pos, row, thread,
// query); `SourceInfo.BINLOG_ROW_IN_EVENT_OFFSET_KEY = "row"` is the row's
// index inside one binlog rows event (one statement touching many rows is
// one event at one `pos`). A snapshot's READs carry the binlog position read
// when the snapshot began, `row` 0.

fn mysql(id: u32, op: &str, file: &str, pos: u64, row: u32, snapshot: &str) -> Record {
    let key = format!(r#"{{"id":{id}}}"#);
    let value = format!(
        r#"{{"before":null,"after":{{"id":{id}}},"source":{{"version":"3.6.1.Final","connector":"mysql","name":"my","ts_ms":0,"snapshot":"{snapshot}","db":"shop","sequence":null,"table":"items","server_id":223344,"gtid":null,"file":"{file}","pos":{pos},"row":{row},"thread":null,"query":null}},"op":"{op}","ts_ms":1}}"#
    );
    record(Some(key.as_bytes()), Some(value.as_bytes()), &[])
}

#[test]
fn debezium_mysql_snapshot_and_multi_row_binlog_events() {
    let events = [
        // The snapshot: one position for every row.
        mysql(1, "r", "mysql-bin.000003", 154, 0, "first"),
        mysql(2, "r", "mysql-bin.000003", 154, 0, "true"),
        mysql(3, "r", "mysql-bin.000003", 154, 0, "last"),
        // One UPDATE statement touching three rows: one event, rows 0..2.
        mysql(1, "u", "mysql-bin.000003", 480, 0, "false"),
        mysql(2, "u", "mysql-bin.000003", 480, 1, "false"),
        mysql(3, "u", "mysql-bin.000003", 480, 2, "false"),
        // Row 1 updated again by the next statement.
        mysql(1, "u", "mysql-bin.000003", 731, 0, "false"),
        // The same offset in the next binlog file.
        mysql(1, "u", "mysql-bin.000004", 731, 0, "false"),
    ];
    let derived = keys(Preset::DebeziumMysql, "my.shop.items", &events);
    all_distinct(&derived);
    assert_eq!(
        keys(Preset::DebeziumMysql, "my.shop.items", &[tombstone(1)]),
        [Derived::Pass]
    );
    // The Postgres preset on MySQL events finds no lsn: they pass, never dropped.
    assert_eq!(
        keys(Preset::DebeziumPostgres, "my.shop.items", &events[..1]),
        [Derived::Pass]
    );
}

// === JDBC source (confluentinc/kafka-connect-jdbc) ===
//
// `TimestampIncrementingCriteria.java`: incrementing mode selects
// `WHERE inc > ?` (new rows only, each once); timestamp+incrementing selects
// `ts < ? AND ((ts = ? AND inc > ?) OR ts > ?)`, so a row comes again only
// when it was updated (a new timestamp). The record key is null unless an SMT
// sets one; the value is the whole row (`DataConverter.convertRecord`).
// So the row's bytes, timestamp column included, name the event.

fn jdbc(id: u32, status: &str, modified: u64) -> Record {
    let value = format!(r#"{{"id":{id},"status":"{status}","modified":{modified}}}"#);
    record(None, Some(value.as_bytes()), &[])
}

#[test]
fn jdbc_rows_are_events_by_their_id_and_timestamp() {
    let events = [
        jdbc(22, "NEW", 1234),
        jdbc(23, "NEW", 1234),
        jdbc(22, "PAID", 1235), // an update: a new timestamp
        jdbc(22, "NEW", 1236),  // back to an earlier state: still a new timestamp
    ];
    let derived = keys(Preset::Jdbc, "jdbc.orders", &events);
    all_distinct(&derived);
    // Re-read after a crash from the last committed offset: the same rows.
    assert_eq!(
        keys(Preset::Jdbc, "jdbc.orders", &[jdbc(23, "NEW", 1234)])[0],
        derived[1]
    );
}

// === Line sources ===
//
// apache/kafka `FileStreamSourceTask.java`: one record per line, value the
// line, key null, the file position only in the source offset. Records
// carry nothing but the line, so two identical lines are one key: the
// preset's note says so, and the README says to drop only where lines are
// unique.

#[test]
fn lines_are_their_bytes_and_identical_lines_share_a_key() {
    let line = |s: &str| record(None, Some(s.as_bytes()), &[]);
    let derived = keys(
        Preset::Lines,
        "lines",
        &[
            line("12:00:01 order 1"),
            line("12:00:02 order 2"),
            line("OK"),
            line("OK"),
        ],
    );
    all_distinct(&derived[..3]);
    assert_eq!(
        derived[2], derived[3],
        "the documented limit of line sources"
    );
}

proptest! {
    /// Debezium Postgres: two events get one key exactly when they are the
    /// same (row, op, position), whatever else differs.
    #[test]
    fn debezium_postgres_key_is_row_op_and_position(
        a in (0u32..4, 0usize..4, 0u64..4, 0u64..1000),
        b in (0u32..4, 0usize..4, 0u64..4, 0u64..1000),
    ) {
        const OPS: [&str; 4] = ["c", "u", "d", "r"];
        let ev = |(id, op, lsn, ts): (u32, usize, u64, u64)| pg(id, OPS[op], lsn, "false", ts);
        let k = keys(Preset::DebeziumPostgres, "pg.t", &[ev(a), ev(b)]);
        let same = (a.0, a.1, a.2) == (b.0, b.1, b.2);
        prop_assert_eq!(k[0] == k[1], same);
    }
}

#[test]
fn presets_expand_to_what_the_readme_says() {
    assert_eq!(
        Preset::DebeziumPostgres.expand(),
        (
            KeyStrategy::All(vec![
                KeyStrategy::RecordKey,
                KeyStrategy::Json(vec!["/op".into(), "/source/lsn".into()])
            ]),
            Fallback::Pass
        )
    );
    assert_eq!(
        Preset::Jdbc.expand(),
        (KeyStrategy::Content, Fallback::Content)
    );
}
