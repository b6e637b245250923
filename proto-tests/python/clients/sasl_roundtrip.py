"""SASL/SCRAM through the proxy with the real clients.

Run by proto-tests/sasl.rs (not collected by pytest), once per client,
mechanism and password. One client, `--client`:

- `confluent`: confluent-kafka 2.16.1 (librdkafka 2.16.0, built with SCRAM);
- `kafka-python`: kafka-python 3.0.12.

`--expect ok`: creates a topic, produces N records with acks=all, reads
them back (assigned partition, no group), prints `<client>: produced N,
consumed N`, then `HOLD` with its connections still open and authenticated,
and waits for a line on stdin (the test reads /connections meanwhile) before
closing. Exits non-zero if any record is missing.

`--expect failure` (a wrong password): asks for metadata and must fail
within 20 s with what the broker answered; prints `<client>: error: <text>`
(kafka-python: how far the exchange went: it never sees Kafka's error), then `HOLD`
while the client keeps retrying, and waits for a line on stdin. Exits
non-zero if no error came.

Every client uses `--client-id`, so the test can find its connections.
"""

import argparse
import sys
import threading
import time
import uuid

N = 200


def hold():
    print("HOLD", flush=True)
    sys.stdin.readline()


def confluent_conf(a, **extra):
    conf = {"bootstrap.servers": a.bootstrap, "client.id": a.client_id,
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": a.mechanism,
            "sasl.username": a.user, "sasl.password": a.password,
            "socket.timeout.ms": 20000}
    conf.update(extra)
    return conf


def confluent_ok(a) -> bool:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = "sasl-ck-" + uuid.uuid4().hex[:8]
    admin = AdminClient(confluent_conf(a))
    for f in admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=20).values():
        f.result(20)
    p = Producer(confluent_conf(a, acks="all", **{"message.timeout.ms": 30000}))
    delivered = []
    for i in range(N):
        p.produce(topic, value=f"ck-{i}".encode(),
                  on_delivery=lambda err, _m: delivered.append(err is None))
    left = p.flush(30)
    c = Consumer(confluent_conf(a, **{"group.id": "sasl-" + topic, "enable.auto.commit": False,
                                       "auto.offset.reset": "earliest"}))
    c.assign([TopicPartition(topic, 0, 0)])
    got, start = set(), time.time()
    while len(got) < N and time.time() - start < 30:
        for m in c.consume(100, 1.0):
            if not m.error():
                got.add(m.value())
    produced = sum(delivered)
    print(f"confluent-kafka: produced {produced}, consumed {len(got)}", flush=True)
    hold()
    c.close()
    return left == 0 and produced == N and len(got) == N


def confluent_failure(a) -> bool:
    from confluent_kafka import Producer

    errors = []
    seen = threading.Event()

    def on_error(err):
        errors.append(err)
        seen.set()

    p = Producer(confluent_conf(a, error_cb=on_error))
    deadline = time.time() + 20
    while not seen.is_set() and time.time() < deadline:
        p.poll(0.2)
    if not errors:
        print("confluent-kafka: no error within 20 s", flush=True)
        return False
    err = errors[0]
    print(f"confluent-kafka: error: {err.name()}: {err.str()}", flush=True)
    # The client keeps reconnecting (and failing) in the background.
    hold()
    return err.name() == "_AUTHENTICATION"


def kp_conf(a):
    return dict(bootstrap_servers=a.bootstrap, client_id=a.client_id,
                security_protocol="SASL_PLAINTEXT", sasl_mechanism=a.mechanism,
                sasl_plain_username=a.user, sasl_plain_password=a.password,
                request_timeout_ms=20000)


def kafka_python_ok(a) -> bool:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    topic = "sasl-kp-" + uuid.uuid4().hex[:8]
    admin = KafkaAdminClient(**kp_conf(a))
    admin.create_topics([NewTopic(topic, 1, 1)], timeout_ms=20000)
    p = KafkaProducer(acks="all", **kp_conf(a))
    futures = [p.send(topic, f"kp-{i}".encode()) for i in range(N)]
    produced = sum(1 for f in futures if f.get(timeout=30))
    c = KafkaConsumer(enable_auto_commit=False, **kp_conf(a))
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    got, start = set(), time.time()
    while len(got) < N and time.time() - start < 30:
        for batch in c.poll(timeout_ms=500).values():
            got.update(m.value for m in batch)
    print(f"kafka-python: produced {produced}, consumed {len(got)}", flush=True)
    hold()
    c.close()
    p.close()
    admin.close()
    return produced == N and len(got) == N


def kafka_python_failure(a) -> bool:
    import logging

    import kafka.errors as Errors
    from kafka import KafkaConsumer
    from kafka.net.sasl import scram

    # Apache Kafka answers a wrong proof with SASL_AUTHENTICATION_FAILED and
    # a message, then closes the connection at once. kafka-python 3.0.12
    # drops bytes read together with the end of the stream (transport.py
    # `_sock_recv`), so it never sees that answer: it logs "socket
    # disconnected" right after sending its proof and retries until its
    # bootstrap timeout. What it can show: the broker's server-first came
    # back (the exchange reached the proof), and the broker then hung up.
    firsts, hangups = [], []
    original = scram.ScramClient.process_server_first_message

    def record(self, message):
        firsts.append(message)
        return original(self, message)

    scram.ScramClient.process_server_first_message = record

    class Keep(logging.Handler):
        def emit(self, record):
            if record.getMessage().endswith(": socket disconnected") and firsts:
                hangups.append(record.getMessage())

    logging.getLogger("kafka").addHandler(Keep(level=logging.ERROR))
    start = time.time()
    try:
        c = KafkaConsumer(bootstrap_timeout_ms=5000, **kp_conf(a))
        c.topics()
    except Errors.KafkaError as e:
        took = time.time() - start
        print(f"kafka-python: error: {type(e).__name__}: {e} (after {took:.1f} s); "
              f"server-first received {len(firsts)} times, "
              f"broker hung up after the proof {len(hangups)} times", flush=True)
        hold()
        return bool(firsts) and bool(hangups) and took < 20
    print("kafka-python: no error", flush=True)
    hold()
    return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=("confluent", "kafka-python"), required=True)
    ap.add_argument("--expect", choices=("ok", "failure"), required=True)
    for k in ("--bootstrap", "--mechanism", "--user", "--password", "--client-id"):
        ap.add_argument(k, required=True)
    a = ap.parse_args()
    run = {("confluent", "ok"): confluent_ok, ("confluent", "failure"): confluent_failure,
           ("kafka-python", "ok"): kafka_python_ok,
           ("kafka-python", "failure"): kafka_python_failure}[(a.client, a.expect)]
    return 0 if run(a) else 1


if __name__ == "__main__":
    sys.exit(main())
