"""Produce and consume through a TLS listener with the real clients.

Run by proto-tests/tls.rs (not collected by pytest): confluent-kafka
(librdkafka) and kafka-python each produce 200 records to a topic of their
own over SSL, with a client certificate, and read them back. Prints one line
per client; exits non-zero if any record is missing.
"""

import argparse
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer

N = 200


def confluent(a) -> bool:
    ssl = {"security.protocol": "SSL", "ssl.ca.location": a.ca,
           "ssl.certificate.location": a.cert, "ssl.key.location": a.key,
           "bootstrap.servers": a.bootstrap}
    topic = "tls-ck-" + uuid.uuid4().hex[:8]
    admin = AdminClient(ssl)
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(20)
    p = Producer({**ssl, "acks": "all"})
    for i in range(N):
        p.produce(topic, value=f"ck-{i}".encode())
    left = p.flush(30)
    c = Consumer({**ssl, "group.id": "g-" + topic, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000})
    c.subscribe([topic])
    got, start = set(), time.time()
    while len(got) < N and time.time() - start < 60:
        for m in c.consume(100, 1.0):
            if not m.error():
                got.add(m.value())
    c.close()
    print(f"confluent-kafka: produced {N - left}, consumed {len(got)}")
    return left == 0 and len(got) == N


def kafka_python(a) -> bool:
    ssl = dict(bootstrap_servers=a.bootstrap, security_protocol="SSL", ssl_cafile=a.ca,
               ssl_certfile=a.cert, ssl_keyfile=a.key, request_timeout_ms=20000)
    topic = "tls-kp-" + uuid.uuid4().hex[:8]
    p = KafkaProducer(acks="all", **ssl)
    futures = [p.send(topic, f"kp-{i}".encode()) for i in range(N)]
    produced = sum(1 for f in futures if f.get(timeout=30))
    p.close()
    # An explicit poll loop, as confluent() has: consumer_timeout_ms would end
    # the read after a quiet spell, and the first one holds the TLS handshakes
    # and the group join, which a loaded machine can stretch past any such
    # spell. The deadline only bounds a hang.
    c = KafkaConsumer(topic, group_id="g-" + topic, auto_offset_reset="earliest",
                      session_timeout_ms=6000, **ssl)
    got, start = set(), time.time()
    while len(got) < N and time.time() - start < 60:
        for records in c.poll(timeout_ms=1000).values():
            got.update(r.value for r in records)
    c.close()
    print(f"kafka-python: produced {produced}, consumed {len(got)}")
    return produced == N and len(got) == N


def main() -> int:
    ap = argparse.ArgumentParser()
    for k in ("--bootstrap", "--ca", "--cert", "--key"):
        ap.add_argument(k, required=True)
    a = ap.parse_args()
    ok = confluent(a)
    ok = kafka_python(a) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
