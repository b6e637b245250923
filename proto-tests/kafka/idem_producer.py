"""An idempotent librdkafka producer as its own process, so a test can
SIGSTOP and SIGCONT it: values PREFIX-0 .. PREFIX-(COUNT-1) to partition 0,
then END. Batches are full (`batch.num.messages`, a long linger), so every
batch holds the same number of records. Prints one JSON line per delivery
report ({"event": "acked"|"send_failed", "value": ...}) and a final
{"event": "done", "left": N}.

    python idem_producer.py BOOTSTRAP TOPIC COUNT PREFIX BATCH
"""

import json
import sys
import time

from confluent_kafka import Producer


def main():
    bootstrap, topic, count, prefix, batch = sys.argv[1:6]
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        "batch.num.messages": int(batch),
        "linger.ms": 1000,
        "message.timeout.ms": 300000,
    })

    def report(err, msg):
        event = {"event": "acked" if err is None else "send_failed",
                 "value": msg.value().decode()}
        if err is not None:
            event["error"] = str(err)
        print(json.dumps(event), flush=True)

    for i in range(int(count)):
        p.produce(topic, value=f"{prefix}-{i}".encode(), partition=0, on_delivery=report)
        p.poll(0)
        time.sleep(0.001)
    p.produce(topic, value=b"END", partition=0, on_delivery=report)
    left = p.flush(300)
    print(json.dumps({"event": "done", "left": left}), flush=True)


if __name__ == "__main__":
    main()
