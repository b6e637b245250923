"""Quotas across the tier (`[quota.shared]`), against Apache Kafka 4.4.

Two replicas in front of one cluster; one connector's producers (Connect's
client ids, `connector-producer-<name>-<task>`) spread over both:
- each replica's counted usage includes the other's, to the byte, and each
  throttles its own producer at the tier's total, where the same load with
  each replica on its own is throttled by neither (the scenario bites);
- a replica SIGKILLed stops being counted by the other within peer_expiry;
- a connector paused through one replica's admin API holds its produce on
  the other, is read back by a replica started later, and resume releases it.

Mechanism only (counters, throttle decisions, held requests): the tier-wide
rate against the quota is measured by scripts/bench-quota.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer

from bed import http, unique, wait_for

QUOTA = 200 * 1024  # produce bytes per second, for the tier
PEER_EXPIRY = 2.0
REPORT_EVERY = 0.5
# Each producer sends 70% of the quota: within it alone, 140% together.
MESSAGE = 14 * 1024
PERIOD = 0.1
LOAD_SECONDS = 8.0


def tier_config(connector: str, quota: int, quota_topic: str | None,
                report_every: str = "1s", peer_expiry: str = "3s") -> str:
    """A produce quota on `connector`; with `quota_topic`, for the tier."""
    text = f"""
[quota]
max_hold = "20s"
[[quotas]]
connector = "{connector}"
produce_bytes_per_sec = {quota}
"""
    if quota_topic:
        text += f"""
[quota.shared]
topic = "{quota_topic}"
replication_factor = 1
report_every = "{report_every}"
peer_expiry = "{peer_expiry}"
"""
    return text


def _config(quota_topic: str | None) -> str:
    return tier_config("tq", QUOTA, quota_topic, f"{int(REPORT_EVERY * 1000)}ms",
                       f"{int(PEER_EXPIRY * 1000)}ms")


def _producer(bootstrap: str, task: int) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                     "client.id": f"connector-producer-tq-{task}",
                     "request.timeout.ms": 40000, "delivery.timeout.ms": 120000})


def _paced(bootstrap: str, task: int, topic: str, errors: list):
    """MESSAGE bytes every PERIOD for LOAD_SECONDS; never catches up after a
    late tick, so it never sends faster than 70% of the quota."""
    p = _producer(bootstrap, task)
    end = time.monotonic() + LOAD_SECONDS
    value = b"x" * MESSAGE
    while time.monotonic() < end:
        tick = time.monotonic()
        p.produce(topic, value=value, on_delivery=lambda e, _m: e and errors.append(e))
        p.poll(0)
        time.sleep(max(0.0, PERIOD - (time.monotonic() - tick)))
    assert p.flush(120) == 0, f"undelivered through {bootstrap}"


def _load(kafka, a, b, topic: str):
    """Both producers at once, one through each replica."""
    errors: list = []
    threads = [threading.Thread(target=_paced, args=(px.bootstrap, i, topic, errors))
               for i, px in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors[:3]


def _own(px) -> float:
    return px.metric_sum("idemgate_client_bytes_total", connector="tq", direction="produce")


def _peer(px) -> float:
    return px.metric_sum("idemgate_quota_peer_usage_total", connector="tq", kind="produce")


def _throttled(px) -> float:
    return px.metric_sum("idemgate_throttled_responses_total", connector="tq")


def _paused(px) -> bool:
    status, body = http("GET", f"{px.admin}/quotas")
    assert status == 200, body
    return "tq" in body["paused"]


def test_a_connector_spread_over_two_replicas_is_throttled_at_the_tier_total(kafka, proxies):
    topic = unique("tq")
    kafka.create_topic(topic, partitions=1, replication=1)

    # Each replica on its own: 70% of the quota through each, never throttled.
    lone = [proxies(kafka.bootstrap, _config(None)) for _ in range(2)]
    _load(kafka, *lone, topic)
    assert all(_own(px) >= 0.5 * QUOTA * LOAD_SECONDS for px in lone), [_own(px) for px in lone]
    assert [_throttled(px) for px in lone] == [0, 0], "70% of the quota alone is throttled"
    assert [_peer(px) for px in lone] == [0, 0]

    # The tier: the same load, each replica counting the other's.
    quota_topic = unique("_idemgate-quota")
    a = proxies(kafka.bootstrap, _config(quota_topic))
    b = proxies(kafka.bootstrap, _config(quota_topic))
    wait_for("each replica counting the other", lambda: all(
        px.metric_sum("idemgate_quota_shared_peers") == 1 for px in (a, b)), 30)
    _load(kafka, a, b, topic)
    rates = {n: px.metric_sum("idemgate_quota_tier_rate", connector="tq", kind="produce")
             for n, px in (("a", a), ("b", b))}
    # Every byte one replica charged reaches the other's buckets, exactly.
    wait_for("each replica's peer usage = the other's own", lambda: _peer(a) == _own(b) and _peer(b) == _own(a),
             10 * REPORT_EVERY + 10)
    print(f"own a={_own(a):.0f} b={_own(b):.0f}; throttled a={_throttled(a):.0f} "
          f"b={_throttled(b):.0f}; tier rate at the end {rates}")
    assert _own(a) > 0 and _own(b) > 0
    # The tier's total (140% of the quota) throttled both replicas.
    assert _throttled(a) > 0 and _throttled(b) > 0, \
        f"throttled a={_throttled(a)} b={_throttled(b)}"
    for px in (a, b):
        assert px.metric_sum("idemgate_quota_shared_connected") == 1
        assert px.metric_sum("idemgate_quota_shared_publish_failures_total") == 0
        assert px.metric_sum("idemgate_quota_shared_reports_read_total") > 0

    # A replica killed stops being counted within peer_expiry.
    b.sigkill()
    killed = time.monotonic()
    wait_for("A no longer counting B", lambda: a.metric_sum("idemgate_quota_shared_peers") == 0,
             PEER_EXPIRY + REPORT_EVERY + 5)
    print(f"B dropped out of A's count {time.monotonic() - killed:.1f} s after the kill")
    assert a.metric_sum("idemgate_quota_tier_rate", connector="tq", kind="produce") == 0


def test_a_pause_through_one_replica_holds_produce_on_the_other(kafka, proxies):
    topic = unique("tq")
    kafka.create_topic(topic, partitions=1, replication=1)
    quota_topic = unique("_idemgate-quota")
    a = proxies(kafka.bootstrap, _config(quota_topic))
    b = proxies(kafka.bootstrap, _config(quota_topic))

    p = _producer(b.bootstrap, 0)
    delivered: list = []
    p.produce(topic, value=b"before", on_delivery=lambda e, m: delivered.append(e))
    assert p.flush(30) == 0 and delivered == [None]

    status, body = http("POST", f"{a.admin}/connectors/tq/pause")
    assert status == 200 and body["tier"] is True, body
    wait_for("B paused by A's pause", lambda: _paused(b), 15)

    # B holds the connector's produce while the pause stands.
    p.produce(topic, value=b"while-paused", on_delivery=lambda e, m: delivered.append(e))
    p.poll(0)
    wait_for("B holding the produce", lambda: b.metric_sum("idemgate_requests_held", connector="tq") >= 1, 10)
    assert len(delivered) == 1, "delivered while paused"

    # A replica started later reads the pause back from the topic.
    c = proxies(kafka.bootstrap, _config(quota_topic))
    wait_for("C read the pause back", lambda: _paused(c), 15)

    status, body = http("POST", f"{a.admin}/connectors/tq/resume")
    assert status == 200, body
    wait_for("B and C resumed", lambda: not _paused(b) and not _paused(c), 15)
    assert p.flush(30) == 0 and delivered == [None, None], delivered
    assert b.metric_sum("idemgate_requests_held", connector="tq") == 0


def test_with_the_quota_topic_unreachable_a_replica_enforces_alone_and_says_degraded(kafka, proxies, tmp_path):
    # Credentials the broker's plaintext listener refuses: the quota
    # topic's client cannot connect, whatever else works.
    password = tmp_path / "pw"
    password.write_text("nope\n")
    sasl = f"""
[quota.shared.sasl]
mechanism = "PLAIN"
username = "idemgate"
password_file = "{password}"
"""
    topic = unique("tq")
    kafka.create_topic(topic, partitions=1, replication=1)
    a = proxies(kafka.bootstrap, _config(unique("_idemgate-quota")) + sasl)
    wait_for("the quota topic refused", lambda: "quota topic unreachable" in a.log_tail(200), 30)
    status, text = http("GET", f"{a.admin}/readyz")
    assert status == 200 and "quota topic is unreachable" in text, text
    assert a.metric_sum("idemgate_quota_shared_enabled") == 1
    assert a.metric_sum("idemgate_quota_shared_connected") == 0

    # The quota still holds, on this replica's own usage: 3 × the burst at
    # once is throttled, and every record goes through.
    p = _producer(a.bootstrap, 0)
    errors: list = []
    for _ in range(3 * QUOTA // MESSAGE):
        p.produce(topic, value=b"x" * MESSAGE, on_delivery=lambda e, _m: e and errors.append(e))
    assert p.flush(60) == 0 and not errors, errors[:3]
    assert _throttled(a) > 0
    assert _peer(a) == 0

    # A pause applies here, and waits for the topic to reach the others.
    status, body = http("POST", f"{a.admin}/connectors/tq/pause")
    assert status == 200 and body["tier"] is True and _paused(a), body
