"""Context switches of one idemgate process per Produce request.

    .cache/venv/bin/python scripts/wakeups.py --bin target/release/idemgate \
        [--mode drop|none] [--records 100000] [--rate 20000]

Starts tansu (.cache/bin/tansu) and idemgate (--bin) in front of it, with one
dedup rule in --mode on every topic (`none`: no rule, pass-through), warms up
with 5,000 records, then produces --records records of 512 B at --rate
records/s (confluent-kafka: acks=all, linger.ms=5, 3 partitions) and prints,
per thread of the proxy, the voluntary and involuntary context switches
(/proc/PID/task/*/status) per Produce request (idemgate_requests_total from
/metrics), and the proxy's CPU per GB. A measurement for docs/performance.md,
never a test: the counts move with the machine's load, compare binaries in
one sitting.
"""
import argparse
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

from confluent_kafka import Producer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mode", default="drop", choices=["drop", "observe", "none"])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=20_000)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="wakeups-")
    broker = free_port()
    tansu = subprocess.Popen(
        [f"{ROOT}/.cache/bin/tansu", "broker",
         "--listener-url", f"tcp://127.0.0.1:{broker}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{broker}",
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = None
    try:
        time.sleep(1.5)
        port, admin, node_port = free_port(), free_port(), free_port()
        config = (
            f'[listen]\nbootstrap = "127.0.0.1:{port}"\n'
            f'broker_ports = "{node_port}-{node_port}"\n'
            f'[upstream]\nbootstrap = ["127.0.0.1:{broker}"]\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[store]\ndir = "{tmp}/store"\n[log]\nlevel = "error"\n')
        if a.mode != "none":
            config += f'[dedup]\n[[dedup.rules]]\ntopics = "*"\nmode = "{a.mode}"\n'
        with open(f"{tmp}/wakeups.toml", "w") as f:
            f.write(config)
        proxy = subprocess.Popen([a.bin, "run", "--config", f"{tmp}/wakeups.toml"])
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        time.sleep(0.5)
        run(a, proxy, port, admin)
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait()
        tansu.terminate()
        tansu.wait()


def produce_requests(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith('idemgate_requests_total{api="Produce"}'):
            return float(line.split()[-1])
    return 0.0


def threads(pid):
    """{tid: (name, voluntary, involuntary)} and the process's CPU seconds."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            status = open(f"/proc/{pid}/task/{tid}/status").read().splitlines()
        except FileNotFoundError:
            continue
        fields = dict(l.split(":\t", 1) for l in status if ":\t" in l)
        out[tid] = (name, int(fields["voluntary_ctxt_switches"]),
                    int(fields["nonvoluntary_ctxt_switches"]))
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return out, cpu


def run(a, proxy, port, admin):
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "acks": "all",
                         "linger.ms": 5, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000})
    filler = b"x" * 512

    def send(n, tag, rate):
        start = time.time()
        for i in range(n):
            value = (f"{tag}-{i:09d}-".encode() + filler)[:512]
            while True:
                try:
                    producer.produce("bench", value=value, partition=i % 3)
                    break
                except BufferError:
                    producer.poll(0.01)
            if i % 500 == 0:
                producer.poll(0)
                ahead = start + i / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(60)
        return time.time() - start

    send(5_000, "warm", a.rate)
    requests0 = produce_requests(admin)
    before, cpu0 = threads(proxy.pid)
    wall = send(a.records, "measured", a.rate)
    after, cpu1 = threads(proxy.pid)
    requests = max(produce_requests(admin) - requests0, 1)
    gb = a.records * 512 / 1e9
    print(f"{os.path.basename(a.bin)} mode={a.mode}: {a.records} records at {a.rate:.0f}/s "
          f"in {wall:.1f} s, {requests:.0f} Produce requests "
          f"({a.records / requests:.0f} records each), proxy CPU {cpu1 - cpu0:.2f} s "
          f"({(cpu1 - cpu0) / gb:.2f} s/GB)")
    rows = {}
    for tid, (name, vol, invol) in after.items():
        _, vol0, invol0 = before.get(tid, (name, 0, 0))
        row = rows.setdefault(name, [0, 0, 0])
        row[0] += vol - vol0
        row[1] += invol - invol0
        row[2] += 1
    total = [0, 0]
    for name, (vol, invol, n) in sorted(rows.items(), key=lambda r: -r[1][0]):
        total[0] += vol
        total[1] += invol
        print(f"  {name:18s} ({n} threads)  voluntary {vol / requests:5.2f}/request  "
              f"involuntary {invol / requests:5.2f}/request")
    print(f"  all threads         voluntary {total[0] / requests:5.2f}/request  "
          f"involuntary {total[1] / requests:5.2f}/request")


if __name__ == "__main__":
    main()
