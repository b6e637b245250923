"""The aiokafka test client of proto-tests/kafka/test_ecosystems.py: an
independent asyncio implementation of the Kafka protocol, driven through
idemgate and straight to the broker.

  python aiokafka_cli.py produce --bootstrap B --topic T --prefix P --count N [--codec C] [--marker M --partitions P] [--idempotent]
  python aiokafka_cli.py consume --bootstrap B --topic T --group G --end M --partitions P [--timeout S] [--max-partition-bytes B]

JSON lines on stdout: one object per delivered or consumed record, a
"brokers" line with the client's own view of the cluster, and a final "done"
line. Errors go to stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def brokers(client) -> None:
    """The brokers the client's own cluster metadata names (the producer
    keeps its AIOKafkaClient as `client`, the consumer as `_client`)."""
    kc = client.client if isinstance(client, AIOKafkaProducer) else client._client
    emit({"brokers": sorted(f"{b.host}:{b.port}" for b in kc.cluster.brokers())})


def record(prefix: str, i: int):
    """Record i of a run: odd ones keyed, even ones with a null key."""
    return (f"k{i}".encode() if i % 2 == 1 else None), f"{prefix}-{i:06d}".encode()


async def produce(a) -> None:
    p = AIOKafkaProducer(
        bootstrap_servers=a.bootstrap, acks="all", enable_idempotence=a.idempotent,
        compression_type=None if a.codec == "none" else a.codec,
        linger_ms=20, request_timeout_ms=30000)
    await p.start()
    try:
        futs = [await p.send(a.topic, key=k, value=v)
                for k, v in (record(a.prefix, i) for i in range(a.count))]
        metas = await asyncio.gather(*futs)
        out = [{"value": record(a.prefix, i)[1].decode(), "partition": m.partition, "offset": m.offset}
               for i, m in enumerate(metas)]
        if a.marker:  # one end marker per partition: "M-p0", "M-p1", ...
            for part in range(a.partitions):
                v = f"{a.marker}-p{part}"
                m = await p.send_and_wait(a.topic, value=v.encode(), partition=part)
                out.append({"value": v, "partition": m.partition, "offset": m.offset, "marker": True})
        for o in out:
            emit(o)
        brokers(p)
        emit({"done": len(out)})
    finally:
        await p.stop()


async def consume(a) -> None:
    c = AIOKafkaConsumer(
        a.topic, bootstrap_servers=a.bootstrap, group_id=a.group, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=500,
        **({"max_partition_fetch_bytes": a.max_partition_bytes, "fetch_max_bytes": a.max_partition_bytes}
           if a.max_partition_bytes else {}))
    await c.start()
    n = 0
    pending = {f"{a.end}-p{part}" for part in range(a.partitions)}  # end markers still to see
    try:
        async def loop():
            nonlocal n
            async for m in c:
                value = None if m.value is None else m.value.decode()
                emit({"partition": m.partition, "offset": m.offset,
                      "key": None if m.key is None else m.key.decode(), "value": value})
                n += 1
                pending.discard(value)
                if not pending:
                    return
        try:
            await asyncio.wait_for(loop(), a.timeout)
        except asyncio.TimeoutError:
            sys.stderr.write(f"aiokafka-cli: end markers {sorted(pending)} missing after {a.timeout:.0f} s ({n} records)\n")
            sys.exit(1)
        await c.commit()
        brokers(c)
        emit({"done": n})
    finally:
        await c.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("produce")
    pp.add_argument("--bootstrap", required=True)
    pp.add_argument("--topic", required=True)
    pp.add_argument("--prefix", required=True)
    pp.add_argument("--count", type=int, required=True)
    pp.add_argument("--codec", default="none", choices=["none", "gzip", "snappy", "lz4", "zstd"])
    pp.add_argument("--marker", default="")
    pp.add_argument("--idempotent", action="store_true")
    pp.add_argument("--partitions", type=int, default=1)
    cp = sub.add_parser("consume")
    cp.add_argument("--bootstrap", required=True)
    cp.add_argument("--topic", required=True)
    cp.add_argument("--group", required=True)
    cp.add_argument("--end", required=True)
    cp.add_argument("--partitions", type=int, default=1)
    cp.add_argument("--timeout", type=float, default=60.0)
    cp.add_argument("--max-partition-bytes", type=int, default=0)
    a = ap.parse_args()
    asyncio.run(produce(a) if a.cmd == "produce" else consume(a))


if __name__ == "__main__":
    main()
