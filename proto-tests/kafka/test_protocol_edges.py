"""Protocol edges against Apache Kafka 4.4, in raw bytes: what the proxy
advertises is what it accepts, and the APIs it cannot read are either
passed through untouched or neither advertised nor let through.

- Kafka 4.4 advertises the KIP-1071 StreamsGroup APIs (StreamsGroupHeartbeat
  88, StreamsGroupDescribe 89); kafka-protocol 0.18, which the proxy reads
  headers with, does not know them. Their schemas name no broker address,
  so the proxy advertises them at the broker's versions (up to the ones
  checked, src/codec.rs RAW_APIS) and forwards them byte for byte: a Kafka
  Streams application runs through it with group.protocol=streams.
- Produce v13 (topic ids) is the broker's newest, the proxy advertises v12
  and closes a connection that sends v13, as Kafka 4.4 closes one whose
  version it does not enable.
- SaslHandshake is advertised from v1 (v0 is followed by unframed tokens).
"""

from __future__ import annotations

import json
import socket
import struct

from confluent_kafka import Producer

from bed import java_client, read_topic, unique

RULE = """
[dedup]
[[dedup.rules]]
topics = "*"
key = "content"
mode = "drop"
"""


def uvarint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def read_uvarint(buf: bytes, at: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        b = buf[at]
        at += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, at
        shift += 7


def connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
    return s


def send(s: socket.socket, body: bytes):
    s.sendall(struct.pack(">i", len(body)) + body)


def recv(s: socket.socket) -> bytes | None:
    """One response frame body, or None when the peer closed the connection."""
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">i", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return body


def header_v2(key: int, version: int, corr: int) -> bytes:
    client_id = b"protocol-edges"
    return struct.pack(">hhih", key, version, corr, len(client_id)) + client_id + b"\x00"


def api_versions(addr: str) -> dict[int, tuple[int, int]]:
    """The ranges an ApiVersions v3 answer advertises, by api key."""
    s = connect(addr)
    body = header_v2(18, 3, 1)
    for text in (b"protocol-edges", b"1"):
        body += uvarint(len(text) + 1) + text
    body += b"\x00"
    send(s, body)
    resp = recv(s)
    s.close()
    assert resp is not None
    (corr, error) = struct.unpack(">ih", resp[:6])
    assert (corr, error) == (1, 0), (corr, error)
    count, at = read_uvarint(resp, 6)
    ranges = {}
    for _ in range(count - 1):
        key, lo, hi = struct.unpack(">hhh", resp[at:at + 6])
        _, at = read_uvarint(resp, at + 6)  # tagged fields: none expected
        ranges[key] = (lo, hi)
    return ranges


def closed_without_answer(addr: str, body: bytes) -> bool:
    s = connect(addr)
    send(s, body)
    try:
        return recv(s) is None
    except (ConnectionResetError, socket.timeout):
        return True
    finally:
        s.close()


def produce_v13(corr: int, topic_ids: list[bytes]) -> bytes:
    body = header_v2(0, 13, corr)
    body += b"\x00" + struct.pack(">hi", -1, 1000)  # null transactional id, acks, timeout
    body += uvarint(len(topic_ids) + 1)
    for tid in topic_ids:
        body += tid + uvarint(1) + b"\x00"  # no partitions, tagged fields
    return body + b"\x00"


def answer(addr: str, body: bytes) -> bytes | None:
    s = connect(addr)
    send(s, body)
    try:
        return recv(s)
    finally:
        s.close()


def streams_group_describe(corr: int, groups: list[bytes]) -> bytes:
    """StreamsGroupDescribe v0 (header v2): group ids, no authorized operations."""
    body = header_v2(89, 0, corr) + uvarint(len(groups) + 1)
    for g in groups:
        body += uvarint(len(g) + 1) + g
    return body + b"\x00" + b"\x00"  # IncludeAuthorizedOperations, tagged fields


def test_streams_group_apis_are_advertised_and_pass_byte_for_byte(kafka, proxies):
    """It used to leave 88 and 89 out of ApiVersions and close a connection
    that sent one: a Kafka Streams application with group.protocol=streams
    could not run through the proxy."""
    proxy = proxies(kafka.bootstrap, RULE)
    broker = api_versions(kafka.bootstrap)
    ours = api_versions(proxy.bootstrap)

    # Kafka 4.4 has them (KIP-1071 is GA since 4.2); so does the proxy, at
    # the broker's versions up to the schemas checked (v1).
    assert 88 in broker and 89 in broker, sorted(broker)
    for key in (88, 89):
        assert ours.get(key) == (broker[key][0], min(broker[key][1], 1)), (key, broker, ours)
    # The broker's answer comes back byte for byte (the same request straight
    # to the broker is answered the same), an unknown group and an empty list.
    for groups in ([b"protocol-edges-no-such-group"], []):
        request = streams_group_describe(2, groups)
        direct = answer(kafka.bootstrap, request)
        through = answer(proxy.bootstrap, request)
        assert direct is not None and direct[:4] == struct.pack(">i", 2), direct
        assert through == direct, (through, direct)


def test_produce_v13_is_not_advertised_nor_accepted(kafka, proxies):
    proxy = proxies(kafka.bootstrap, RULE)
    broker = api_versions(kafka.bootstrap)
    ours = api_versions(proxy.bootstrap)

    # Produce: the broker speaks v13, the proxy offers v12 and refuses v13.
    assert broker[0][1] >= 13, broker[0]
    assert ours[0][1] == 12, ours[0]
    assert closed_without_answer(proxy.bootstrap, produce_v13(3, [b"\x01" * 16, b"\x02" * 16]))

    # SaslHandshake: from v1 through the proxy, whatever the broker offers.
    if 17 in broker:
        assert ours[17] == (max(1, broker[17][0]), broker[17][1]), (broker[17], ours[17])

    # The proxy still serves after each refusal.
    assert api_versions(proxy.bootstrap) == ours


def test_a_kafka_streams_application_runs_through_the_proxy_with_the_streams_protocol(kafka, proxies):
    """Kafka Streams 4.4 with group.protocol=streams (KIP-1071): its member
    joins with StreamsGroupHeartbeat and Admin describes the group with
    StreamsGroupDescribe, both through the proxy. With the APIs left out of
    ApiVersions the application could not start (the broker, it was told,
    does not support them)."""
    proxy = proxies(kafka.bootstrap, RULE)
    source, sink, app = unique("streams-in"), unique("streams-out"), unique("streams-app")
    kafka.create_topic(source, partitions=1)
    kafka.create_topic(sink, partitions=1)
    values = [f"v{i}" for i in range(200)] + ["end"]
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    for v in values:
        p.produce(source, value=v.encode())
    assert p.flush(30) == 0

    run = java_client("dev.idemgate.testclient.Main", "streams", "--bootstrap", proxy.bootstrap, "--input", source,
                      "--output", sink, "--application-id", app, "--until", "end",
                      "--group-protocol", "streams")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    group = next(e for e in events if e["event"] == "group")
    assert "error" not in group, group
    assert (group["group"], group["members"]) == (app, 1), group
    # The coordinator Admin found is the proxy, never the broker itself.
    assert group["coordinator"] != kafka.bootstrap, group
    assert group["coordinator"].rsplit(":", 1)[0] == proxy.bootstrap.rsplit(":", 1)[0], group

    # Every record went through the application once, in order.
    out = read_topic(kafka.bootstrap, sink, until=lambda rs: any(r.value() == b"END" for r in rs))
    assert [r.value().decode() for r in out] == [v.upper() for v in values]
