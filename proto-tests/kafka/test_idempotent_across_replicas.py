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
    producer = JavaRun("across-replicas", ["stream", "--bootstrap", bootstrap, "--topic", topic,
                                           "--pause-ms", "3", "--client-id", "connector-producer-xr-0"],
                       stdin=subprocess.PIPE)
    try:
        producer.proc.stdin.write("".join(f"send {v}\n" for v in stream) + "flush\n")
        producer.proc.stdin.flush()
        wait_for(f"{KILL_AFTER} records of the stream acknowledged through A",
                 lambda: producer.proc.poll() is not None
                 or len(producer.of("acked")) >= KILL_AFTER, 120)
        assert producer.proc.poll() is None, f"the producer ended early\n{producer.describe()}"
        a_dropped = _dropped(a, topic)
        a_fail_open = _fail_open(a)
        # The scenario bites: A removed replays from the producer's batches,
        # so its sequence translation has a delta > 0.
        assert a_dropped > 0, "A dropped no replay from the stream: nothing to translate"
        # The pod's answers die first: batches A trimmed and the broker
        # appended, the producer never hears of, and resends.
        service.mute()
        wait_for(f"{LOST_ANSWERS} Produce answers lost on the way back",
                 lambda: service.produce_answers_lost >= LOST_ANSWERS, 60)
        if move:
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

    failed = producer.of("send_failed") + producer.of("step_failed")
    errors = Counter(e["error"] for e in failed)
    print(f"send errors: {len(failed)}; by error: {dict(errors)}")
    for e in failed[:10]:
        print(f"  {e}")
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
    log = log_counts(kafka.bootstrap, topic, END)
    lost = [v for v in acked + old if log[v] == 0]
    assert not lost, (f"{len(lost)} records the producers were told are written are not in the "
                      f"log, e.g. {lost[:10]}")
    new_copies = {v: log[v] for v in new + [END] if log[v] > 1}
    assert not new_copies, f"new values written more than once: {sorted(new_copies.items())[:10]}"
    old_copies = sum(log[v] - 1 for v in old if log[v] > 1)
    assert old_copies <= a_fail_open + b_fail_open, \
        f"{old_copies} replays written again, {a_fail_open + b_fail_open:.0f} counted fail-open"

    assert not failed, (f"the idempotent producer saw {len(failed)} send errors "
                        f"{dict(errors)}, e.g. {failed[:3]}")
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
