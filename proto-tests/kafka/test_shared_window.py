"""One window for every idemgate process in front of a cluster (`[dedup.shared]`),
against Apache Kafka 4.4.

Each process publishes the keys the broker acknowledged through it to the
window's topic and learns the others' from it:
- a replay through another process (a moved Connect task, a producer that
  reconnects to another replica) is dropped there; the same replay through a
  process with its own window only adds a copy of every record (the scenario
  bites without the shared window);
- a process started with an empty store rebuilds its window from the topic
  before it says it is ready, and drops the replay too;
- the proxy creates the topic with cleanup.policy=delete and retention.ms =
  dedup.window + retention_margin;
- a central tier of two replicas: a producer whose replica is SIGKILLed
  mid-stream goes on through the other, nothing acknowledged is lost, and
  the survivor drops replays of what went through the dead one;
- the window topic lost and back: nothing lost, keys published late;
- sidecars: two Connect 4.4 workers, each behind its own idemgate (its own
  store), a FileStreamSource task moved by SIGKILLing its worker three
  times: with the shared window every line is in the topic once; with each
  sidecar's own window, the moved task's replays are extra copies.

Reads end on markers, straight from the broker.
"""

from __future__ import annotations

from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource

from bed import dedup_rule, http, log_counts, produce_acked, shared_window_rule, unique, wait_for
from test_connect_replay import crash_and_replay

N = 300


def _learned(proxy) -> float:
    return proxy.metric_sum("idemgate_shared_window_keys_learned_total")


def test_a_replay_through_another_process_is_dropped_there(kafka, proxies):
    window_topic = unique("_idemgate-window")
    topic = unique("shw")
    kafka.create_topic(topic, partitions=1, replication=1)  # see below
    a = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    b = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    values = [f"{topic}-v-{i}" for i in range(N)]

    produce_acked(a.bootstrap, topic, values, "END-1")

    # The task moved: it replays through B at once, B's first Produce on the
    # connection waiting until B has read the window's topic to its end.
    produce_acked(b.bootstrap, topic, values, "END-2")
    lag = b.metric_sum("idemgate_shared_window_lag_milliseconds")
    print(f"B learned {_learned(b):.0f} keys; last segment's lag {lag:.0f} ms")
    assert b.metric_sum("idemgate_shared_window_catch_ups_total") >= 1
    log = log_counts(kafka.bootstrap, topic, "END-2")
    assert all(log[v] == 1 for v in values), \
        f"copies through B: {sorted((v, n) for v, n in log.items() if n != 1)[:10]}"
    assert b.metric_sum("idemgate_duplicates_dropped_total", topic=topic) == N

    # The topic the proxy made: delete policy, retention = window + margin.
    admin = kafka.admin()
    res = ConfigResource(ConfigResource.Type.TOPIC, window_topic)
    configs = admin.describe_configs([res])[res].result(30)
    assert configs["cleanup.policy"].value == "delete"
    assert configs["retention.ms"].value == str((3600 + 1800) * 1000)
    assert configs["segment.ms"].value == str(1800 * 1000), "segments must roll within the margin"

    # Without the shared window, the same replay through a process of its own
    # writes every record again.
    c = proxies(kafka.bootstrap, shared_window_rule(window_topic, shared=False))
    produce_acked(c.bootstrap, topic, values, "END-3")
    log = log_counts(kafka.bootstrap, topic, "END-3")
    assert all(log[v] == 2 for v in values), "the replay through a lone process was not written"
    assert c.metric_sum("idemgate_duplicates_dropped_total", topic=topic) == 0


def test_a_process_with_an_empty_store_rebuilds_its_window_from_the_topic(kafka, proxies):
    window_topic = unique("_idemgate-window")
    topic = unique("shw")
    # One partition: a null-key replay lands where its first copy is, so the
    # proxy can number what it answers (librdkafka numbers from any base).
    kafka.create_topic(topic, partitions=1, replication=1)
    a = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    values = [f"{topic}-v-{i}" for i in range(N)]
    produce_acked(a.bootstrap, topic, values, "END-1")
    wait_for("A published its keys",
             lambda: a.metric_sum("idemgate_shared_window_published_total") > 0, 30)
    a.stop()

    # A rescheduled pod: a new process, an empty store. Ready means caught up.
    d = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    assert d.metric_sum("idemgate_shared_window_caught_up") == 1
    assert _learned(d) >= N, f"D learned {_learned(d):.0f} of {N} keys before it was ready"
    produce_acked(d.bootstrap, topic, values, "END-2")
    log = log_counts(kafka.bootstrap, topic, "END-2")
    assert all(log[v] == 1 for v in values), \
        f"copies through D: {sorted((v, n) for v, n in log.items() if n != 1)[:10]}"
    assert d.metric_sum("idemgate_duplicates_dropped_total", topic=topic) == N


def test_keys_acknowledged_during_a_graceful_stop_reach_the_peers(kafka, proxies):
    """SIGTERM lets in-flight requests finish; what the broker acknowledges
    then is published before the process ends, so a replay through a peer
    started afterwards is dropped there."""
    window_topic = unique("_idemgate-window")
    topic = unique("shw")
    kafka.create_topic(topic, partitions=1, replication=1)
    a = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    # A paused connector's Produce is held, until the stop lets it go.
    status, _ = http("POST", f"{a.admin}/connectors/shw/pause")
    assert status == 200
    values = [f"{topic}-v-{i}" for i in range(N)]
    errors, acked = [], []
    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "enable.idempotence": False,
                  "linger.ms": 500, "client.id": "connector-producer-shw-0"})
    for v in values:
        p.produce(topic, value=v.encode(),
                  on_delivery=lambda e, m: errors.append(e) if e else acked.append(m.offset()))
    p.poll(0)
    wait_for("A holds the Produce", lambda: a.metric_sum("idemgate_requests_held") >= 1, 30)
    a.stop()
    assert p.flush(30) == 0 and not errors, f"through A: {errors[:3]}"
    assert len(acked) == N

    b = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    assert _learned(b) >= N, f"B learned {_learned(b):.0f} of the {N} keys A acknowledged last"
    produce_acked(b.bootstrap, topic, values, "END-2")
    log = log_counts(kafka.bootstrap, topic, "END-2")
    assert all(log[v] == 1 for v in values), \
        f"copies through B: {sorted((v, n) for v, n in log.items() if n != 1)[:10]}"
    assert "queue published on shutdown" in a.log_tail(200), a.log_tail(30)


def _sidecars(kafka, proxies, shared: bool):
    """Two sidecars, one per worker; with `shared`, one window topic."""
    extra = '[dedup]\nwindow = "1h"\n' + dedup_rule("lines-*")
    if shared:
        extra += f'[dedup.shared]\ntopic = "{unique("_idemgate-window")}"\nreplication_factor = 1\n'
    return [proxies(kafka.bootstrap, extra) for _ in range(2)]


def test_sidecars_sharing_the_window_drop_a_moved_tasks_replays(kafka, proxies, connect_clusters,
                                                                tmp_path):
    # Each sidecar with its own window: the task that moved replays through
    # the other worker's sidecar, which never saw its lines.
    alone = _sidecars(kafka, proxies, shared=False)
    written, values, _ = crash_and_replay(
        connect_clusters, kafka.bootstrap, kafka, tmp_path, unique("alone"),
        worker_bootstrap={1: alone[0].bootstrap, 2: alone[1].bootstrap})
    assert set(values) == set(written), "the run with separate windows lost lines"
    extra = len(values) - len(set(values))
    print(f"sidecars with their own windows: {len(written)} lines, {extra} extra copies")
    assert extra > 0, ("three worker crashes behind separate sidecars left no extra copies: "
                       "the moved task never replayed through the other sidecar")

    a, b = _sidecars(kafka, proxies, shared=True)
    written, values, topic = crash_and_replay(
        connect_clusters, kafka.bootstrap, kafka, tmp_path, unique("shared"),
        worker_bootstrap={1: a.bootstrap, 2: b.bootstrap})
    dropped = sum(p.metric_sum("idemgate_duplicates_dropped_total", topic=topic) for p in (a, b))
    learned = [p.metric_sum("idemgate_shared_window_keys_learned_total") for p in (a, b)]
    print(f"sidecars sharing the window: {len(written)} lines, {len(values)} records, "
          f"{dropped:.0f} replays dropped, keys learned from the other {learned}")
    missing = sorted(set(written) - set(values))
    assert not missing, f"{len(missing)} lines never reached the topic, e.g. {missing[:5]}"
    copies = len(values) - len(set(values))
    assert copies == 0, f"{copies} extra copies went through the sidecars"
    assert values == written, "the topic's lines are not in file order"
    assert dropped > 0 and all(n > 0 for n in learned), "no replay met a key from the other sidecar"


def test_the_window_topic_lost_then_back_loses_nothing_and_publishes_late(kafka3, proxies):
    """The window topic's only replica goes away (three brokers, the data
    topic replicated on all): Produce goes on, each process serves with what
    it knows and says `ready, degraded`, and what it learned meanwhile is
    published once the topic is back."""
    window_topic = unique("_idemgate-window")
    topic = unique("shw")
    kafka3.create_topic(topic, partitions=1, replication=3)
    kafka3.create_topic(window_topic, partitions=1, replication=1)
    rule = shared_window_rule(window_topic).replace("replication_factor = 1\n", "")
    a = proxies(kafka3.bootstrap, rule)
    b = proxies(kafka3.bootstrap, rule)
    first = [f"{topic}-first-{i}" for i in range(N)]
    second = [f"{topic}-second-{i}" for i in range(N)]
    produce_acked(a.bootstrap, topic, first, "END-1")
    wait_for(f"B learned A's first {N} keys", lambda: _learned(b) >= N, 60)

    md = kafka3.admin().list_topics(window_topic, timeout=10).topics[window_topic]
    gone = md.partitions[0].leader
    kafka3.kill(gone)
    try:
        # Acknowledged while the window topic is away: known to A only.
        produce_acked(a.bootstrap, topic, second, "END-2")
        wait_for("A says degraded: the window topic is unreachable",
                 lambda: "degraded" in str(http("GET", f"{a.admin}/readyz")[1]), 90)
        status, text = http("GET", f"{a.admin}/readyz")
        assert status == 200, f"A must stay ready (fail open): {status} {text}"
        # B still drops what it learned before.
        produce_acked(b.bootstrap, topic, first, "END-3")
    finally:
        kafka3.restart(gone)
    log = log_counts(kafka3.bootstrap, topic, "END-3")
    assert all(log[v] == 1 for v in first + second), \
        f"lost or copied: {sorted((v, n) for v, n in log.items() if n != 1 and 'END' not in v)[:10]}"

    # Back: A's segments from the outage reach B, and B drops their replays.
    wait_for("B learned A's keys from the outage", lambda: _learned(b) >= 2 * N, 120)
    produce_acked(b.bootstrap, topic, second, "END-4")
    log = log_counts(kafka3.bootstrap, topic, "END-4")
    assert all(log[v] == 1 for v in second), "a replay of keys published late passed"
    assert a.metric_sum("idemgate_shared_window_publish_failures_total") == 0


def test_a_producer_failing_over_to_the_other_replica_loses_nothing(kafka, proxies):
    """A central tier of two replicas sharing the window; a Connect-shaped
    producer (acks=all, one request in flight) bootstraps from both, and the
    replica carrying its traffic is SIGKILLed mid-stream: the producer goes on
    through the other one. Nothing it was told is written is missing; the only
    copies are the retries of what was in flight at the kill; and a replay of
    what went through the dead replica is dropped by the survivor."""
    from test_broker_loss import BATCH, Streamer

    window_topic = unique("_idemgate-window")
    topic = unique("shw")
    kafka.create_topic(topic, partitions=1, replication=1)
    a = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    b = proxies(kafka.bootstrap, shared_window_rule(window_topic))
    stream = Streamer(f"{a.bootstrap},{b.bootstrap}", topic)
    stream.start()
    try:
        wait_for("300 records acknowledged", lambda: stream.n_acked() >= 300, 90)
        # librdkafka took its first metadata from either: the victim is the
        # replica its Produce went through.
        through_a = a.metric_sum("idemgate_requests_total", api="Produce")
        through_b = b.metric_sum("idemgate_requests_total", api="Produce")
        victim, survivor = (a, b) if through_a >= through_b else (b, a)
        victim.sigkill()
        at_kill = stream.n_acked()
        wait_for("300 more records acknowledged through the survivor",
                 lambda: stream.n_acked() >= at_kill + 300, 120)
    finally:
        stream.finish()
    acked = list(stream.acked)
    assert survivor.metric_sum("idemgate_requests_total", api="Produce") > 0

    # What went through the dead replica long before it died, replayed
    # through the survivor: dropped there.
    early = acked[:200]
    produce_acked(survivor.bootstrap, topic, early, "END")
    log = log_counts(kafka.bootstrap, topic, "END")
    lost = [v for v in acked if log[v] == 0]
    assert not lost, f"{len(lost)} acknowledged records missing, e.g. {lost[:5]}"
    copies = {v: n for v, n in log.items() if n > 1}
    # One request in flight at the kill: its retry through the survivor may
    # write it again (the dead replica never published it).
    assert len(copies) <= BATCH, f"{len(copies)} records copied: {sorted(copies)[:10]}"
    assert not set(copies) & set(early), "a replay the survivor knew of was written again"
    assert survivor.metric_sum("idemgate_duplicates_dropped_total", topic=topic) >= len(early)
