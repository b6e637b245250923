"""An idempotent producer that moves to another replica of a central tier
keeps a sequence the broker accepts (issue 16, item 3), against Apache Kafka
4.4 and the Java client 4.4 with its defaults (enable.idempotence=true,
acks=all).

When a replica removes replayed records from an idempotent producer's batch,
it renumbers the later sequences (broker_base = s - delta, see
src/idempotency/sequences.rs). The producer here writes a stream that
interleaves replays of acknowledged values with new values, so replica A
trims its batches and its delta grows. Mid-stream A's answers stop reaching
the producer (the broker appended batches it never hears of), A is
SIGKILLed, and the tier's address (bed.ServiceAddress, a stand-in for a
Kubernetes Service: both replicas advertise the same broker addresses) moves
to replica B, which shares A's window through `[dedup.shared]`. The same
producer (same producer id, epoch and sequences) resends and goes on through
B. If B forwards the client's sequences as they are, the broker expects
s - delta and answers OUT_OF_ORDER_SEQUENCE_NUMBER. Java's idempotent
producer does not fail those sends: it retries them under a bumped epoch
(KIP-360), so the broker's refusal shows in the client's log (its
TransactionManager logs every producer id and epoch it takes), and the
producer has lost the broker's duplicate protection for what was in flight.

Asserted, for the move and for the control run where the connections die
the same way but the producer comes back to A:
- every record the client was told is written is in the log (read straight
  from the broker, up to an end marker), every new value exactly once;
  a replayed value is written again only where a replica counted a fail-open;
- the producer saw no send error (each one is printed), the broker never
  answered it OUT_OF_ORDER_SEQUENCE_NUMBER, and its epoch never changed;
- A dropped replays before the move, and B dropped replays after it.

The transactional variant moves a Java transactional producer (transactions
v2) from A to B in the middle of a transaction, its EndTxn through B: every
committed record once even after a replay (a transaction's keys count at its
commit, wherever its records went through), no aborted record visible to a
read_committed reader, no error.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest

from bed import log_counts, produce_acked, shared_window_rule, unique, wait_for
from test_java_client import Run as JavaRun

# Values the first producer writes: the acknowledged keys the stream replays.
N_OLD = 600
# New values in the stream, one after each replay.
N_NEW = 600
# The replica dies once this many records of the stream are acknowledged,
KILL_AFTER = 300
# and after the broker appended this many of its Produce requests whose
# answers never reached the producer.
LOST_ANSWERS = 3
END = "END"


def _dropped(proxy, topic: str) -> float:
    return proxy.metric_sum("idemgate_duplicates_dropped_total", topic=topic)


def _fail_open(proxy) -> float:
    return proxy.metric_sum("idemgate_dedup_fail_open_total")


def _stream(name: str, bootstrap: str, topic: str, *flags: str) -> JavaRun:
    """The Java client's steered producer (`stream`), sending as told on stdin."""
    return JavaRun(name, ["stream", "--bootstrap", bootstrap, "--topic", topic, "--pause-ms", "3",
                          *flags], stdin=subprocess.PIPE)


def _tell(producer: JavaRun, *commands: str):
    producer.proc.stdin.write("".join(f"{c}\n" for c in commands))
    producer.proc.stdin.flush()


def _sends(values) -> list[str]:
    return [f"send {v}" for v in values]


def _wait_events(producer: JavaRun, kind: str, n: int, what: str, timeout: float = 120):
    """Until the producer printed `n` events `kind` (it must not end first)."""
    wait_for(what, lambda: producer.proc.poll() is not None or len(producer.of(kind)) >= n, timeout)
    assert producer.proc.poll() is None, f"the producer ended early\n{producer.describe()}"


def _answers_die(service):
    """The replica's answers die on the way back until the broker appended
    batches the producer never hears of (and will resend)."""
    service.mute()
    wait_for(f"{LOST_ANSWERS} Produce answers lost on the way back",
             lambda: service.produce_answers_lost >= LOST_ANSWERS, 60)


def _send_errors(producer: JavaRun) -> list[dict]:
    """Every failed send or step, printed."""
    failed = producer.of("send_failed") + producer.of("step_failed")
    print(f"send errors: {len(failed)}; by error: {dict(Counter(e['error'] for e in failed))}")
    for e in failed[:10]:
        print(f"  {e}")
    return failed


@pytest.mark.parametrize("move", [True, False], ids=["moves", "stays"])
def test_an_idempotent_producer_moving_replicas_keeps_its_sequence(kafka, tiers, move):
    window_topic = unique("_idemgate-window")
    topic = unique("xr")
    kafka.create_topic(topic, partitions=1, replication=1)
    service, bootstrap, (a, b) = tiers(kafka.bootstrap,
                                        shared_window_rule(window_topic, topics="xr-*"))

    old = [f"{topic}-old-{i}" for i in range(N_OLD)]
    produce_acked(bootstrap, topic, old, "OLD-END")
    wait_for(f"B learned the {N_OLD} acknowledged keys through the window's topic",
             lambda: b.metric_sum("idemgate_shared_window_keys_learned_total") >= N_OLD, 60)

    # replay, new, replay, new, ... then the end marker (a new value too).
    new = [f"{topic}-new-{i}" for i in range(N_NEW)]
    stream = [v for pair in zip(old, new) for v in pair] + [END]
    producer = _stream("across-replicas", bootstrap, topic, "--client-id", "connector-producer-xr-0")
    try:
        _tell(producer, *_sends(stream), "flush")
        _wait_events(producer, "acked", KILL_AFTER,
                     f"{KILL_AFTER} records of the stream acknowledged through A")
        a_dropped = _dropped(a, topic)
        # The scenario bites: A removed replays from the producer's batches,
        # so its sequence translation has a delta > 0.
        assert a_dropped > 0, "A dropped no replay from the stream: nothing to translate"
        # The pod's answers die first: batches A trimmed and the broker
        # appended, the producer never hears of, and resends.
        _answers_die(service)
        if move:
            a_fail_open = _fail_open(a)  # the producer waits on its unanswered requests
            a.sigkill()
            service.switch(b.host)
            print(f"A SIGKILLed after {len(producer.of('acked'))} acknowledgements "
                  f"({a_dropped:.0f} replays dropped by A, {service.produce_answers_lost} answers "
                  f"lost); the address moved to B")
        else:
            service.switch(a.host)  # the connections die, the producer comes back to A
        wait_for("the stream flushed", lambda: producer.of("flushed")
                 or producer.proc.poll() is not None, 240)
        producer.proc.stdin.close()
        producer.wait(60)
    finally:
        producer.kill()

    failed = _send_errors(producer)
    if not move:
        a_fail_open = _fail_open(a)
    # Java's idempotent producer retries an OUT_OF_ORDER_SEQUENCE_NUMBER
    # answer under a bumped epoch (KIP-360) instead of failing the send:
    # its log is where the broker's refusal shows.
    log_lines = producer.log_text().splitlines()
    out_of_order = [ln for ln in log_lines if "OUT_OF_ORDER_SEQUENCE_NUMBER" in ln]
    epochs = [m.groups() for ln in log_lines
              if (m := re.search(r"ProducerId set to (\d+) with epoch (\d+)", ln))]
    print(f"OUT_OF_ORDER_SEQUENCE_NUMBER answers: {len(out_of_order)}; "
          f"producer (id, epoch) taken: {epochs}")
    for ln in out_of_order[:5]:
        print(f"  {ln[:300]}")
    through_b = service.connections.get(b.host, 0)
    b_dropped = _dropped(b, topic)
    b_fail_open = _fail_open(b)
    print(f"replays dropped: A {a_dropped:.0f} (before the move), B {b_dropped:.0f}; "
          f"fail-open: A {a_fail_open:.0f}, B {b_fail_open:.0f}; connections to B {through_b}")

    acked = [e["value"] for e in producer.of("acked")]
    # The read ends on a marker written straight to the broker once the
    # producer is done, whatever it managed to write.
    produce_acked(kafka.bootstrap, topic, [], "READ-END")
    log = log_counts(kafka.bootstrap, topic, "READ-END")
    lost = [v for v in acked + old if log[v] == 0]
    assert not lost, (f"{len(lost)} records the producers were told are written are not in the "
                      f"log, e.g. {lost[:10]}")
    new_copies = {v: log[v] for v in new + [END] if log[v] > 1}
    assert not new_copies, f"new values written more than once: {sorted(new_copies.items())[:10]}"
    old_copies = sum(log[v] - 1 for v in old if log[v] > 1)
    assert old_copies <= a_fail_open + b_fail_open, \
        f"{old_copies} replays written again, {a_fail_open + b_fail_open:.0f} counted fail-open"

    assert not failed, f"the idempotent producer saw {len(failed)} send errors, e.g. {failed[:3]}"
    assert not out_of_order, (
        f"the broker answered the producer OUT_OF_ORDER_SEQUENCE_NUMBER {len(out_of_order)} times "
        f"(the client retried under a bumped epoch; (id, epoch) taken: {epochs}), "
        f"e.g. {out_of_order[0][:300]}")
    assert len(epochs) == 1, f"the producer's epoch changed: (id, epoch) taken {epochs}"
    missing = [v for v in new + [END] if log[v] == 0]
    assert not missing, f"{len(missing)} new values never written, e.g. {missing[:10]}"
    if move:
        assert through_b > 0, "the producer never connected to B"
        assert b_dropped > 0, "B dropped no replay after the move"


# Records of each transaction in the transactional run.
N_TXN = 300


def test_a_transactional_producer_moving_replicas_mid_transaction(kafka, tiers):
    """Transactions v2 (Produce v12, EndTxn v5) from one Java producer: T1
    wholly through A and committed; T2's records through A, A's last answers
    lost and A SIGKILLed, the rest of T2 and its EndTxn (commit) through B;
    T3 through B, its records on the broker, then aborted; T4 through B,
    committed. Then a Connect-shaped producer replays every committed value
    through the tier. Read read_committed straight from the broker: every
    committed record once (its replay dropped: the keys of a transaction
    that moved count at its commit like any other's), no aborted record, no
    send or transaction error."""
    window_topic = unique("_idemgate-window")
    topic = unique("xt")
    kafka.create_topic(topic, partitions=1, replication=1)
    service, bootstrap, (a, b) = tiers(kafka.bootstrap,
                                        shared_window_rule(window_topic, topics="xt-*"))
    t1, t2, t3, t4 = ([f"{topic}-{name}-{i}" for i in range(N_TXN)]
                      for name in ("t1", "t2", "aborted", "t4"))
    producer = _stream("txn-across-replicas", bootstrap, topic,
                       "--transactional-id", unique("xt-txn"))
    try:
        _tell(producer, "begin", *_sends(t1), "commit")
        _wait_events(producer, "committed", 1, "T1 committed through A")
        wait_for("B learned T1's keys through the window's topic",
                 lambda: b.metric_sum("idemgate_shared_window_keys_learned_total") >= N_TXN, 60)

        _tell(producer, "begin", *_sends(t2))
        _wait_events(producer, "acked", N_TXN + N_TXN // 3, "a third of T2 acknowledged through A")
        _answers_die(service)
        a.sigkill()
        service.switch(b.host)
        print(f"A SIGKILLed in T2 after {len(producer.of('acked')) - N_TXN} of its records were "
              f"acknowledged, {service.produce_answers_lost} answers lost; the address moved to B")
        _tell(producer, "commit")
        _wait_events(producer, "committed", 2, "T2 committed through B")

        _tell(producer, "begin", *_sends(t3), "flush", "abort")
        _wait_events(producer, "aborted", 1, "T3 aborted through B")
        _tell(producer, "begin", *_sends(t4), "commit")
        _wait_events(producer, "committed", 3, "T4 committed through B")
        producer.proc.stdin.close()
        producer.wait(60)
    finally:
        producer.kill()

    failed = _send_errors(producer)
    apis = producer.sent_apis()
    assert apis[("PRODUCE", 12)] > 0 and apis[("END_TXN", 5)] > 0, f"not transactions v2: {apis}"
    assert service.connections.get(b.host, 0) > 0, "the producer never connected to B"

    committed = {"T1": t1, "T2 (moved)": t2, "T4": t4}
    # One transaction's values a flush: a replay batch is answered locally
    # only if its first copies sit at consecutive offsets (no commit marker
    # between them).
    for i, values in enumerate(committed.values()):
        produce_acked(bootstrap, topic, values, END if i == len(committed) - 1 else f"R{i}")
    b_dropped = _dropped(b, topic)
    log = log_counts(kafka.bootstrap, topic, END, isolation="read_committed")
    print(f"B dropped {b_dropped:.0f} replays; fail-open on B: "
          f"{ {k: v for k, v in b.metrics().items() if 'fail_open' in k and v} }")

    lost = {name: [v for v in vs if log[v] == 0] for name, vs in committed.items()}
    assert not any(lost.values()), f"committed records missing: {lost}"
    visible = [v for v in t3 if log[v]]
    assert not visible, f"{len(visible)} aborted records visible read_committed, e.g. {visible[:5]}"
    assert not failed, f"the transactional producer saw {len(failed)} errors, e.g. {failed[:3]}"
    copies = {name: sum(log[v] > 1 for v in vs) for name, vs in committed.items()}
    assert not any(copies.values()), (
        f"committed records written again by their replay (records with copies, by transaction): "
        f"{copies}; T2's records went through A and B, its EndTxn through B")
