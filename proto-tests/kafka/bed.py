"""The Apache Kafka test bed: Kafka 4.4 brokers, Kafka Connect 4.4 workers, the
idemgate binary and the Java test client, each a real process on 127.0.0.1.

Every piece is started by the project's own scripts (scripts/kafka,
scripts/connect) or binaries (target/debug/idemgate), installed by
scripts/setup. Nothing here skips: a missing piece fails the test and says
how to get it.

Every wait is bounded and ends on an event (a REST status, a metric, a marker
record in a topic), never on a quiet interval.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS", CACHE / "kafka" / "libs"))
# IDEMGATE_JVM_CLIENT: classes compiled from a changed client (javac -d DIR),
# for trying a new mode before scripts/setup compiles it into .cache.
JVM_CLIENT = Path(os.environ.get("IDEMGATE_JVM_CLIENT", CACHE / "jvm-client" / "classes"))
LOG4J = ROOT / "proto-tests" / "jvm" / "log4j2.properties"


class BedError(AssertionError):
    """A piece of the test bed failed to start or answer: the test fails."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def dedup_rule(topics: str, *more: str) -> str:
    """One `[[dedup.rules]]` of the proxy's config: a record on `topics` whose
    content the proxy saw acknowledged before is dropped; `more` are further
    lines of the rule (`direction = "fetch"`...)."""
    lines = [f'topics = "{topics}"', 'key = "content"', 'mode = "drop"', *more]
    return "\n[[dedup.rules]]\n" + "\n".join(lines) + "\n"


def wait_for(what: str, cond, timeout: float, interval: float = 0.2):
    """Poll `cond()` until it returns a truthy value; fail after `timeout` s."""
    end = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the last one is reported
            last_exc = exc
        if time.monotonic() >= end:
            raise BedError(f"timed out after {timeout:.0f} s waiting for {what}"
                           + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def _free_on(port: int, hosts) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(hosts=("127.0.0.1",)) -> int:
    """A port free on every one of `hosts` (loopback addresses)."""
    if tuple(hosts) == ("127.0.0.1",):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    lo, _ = free_port_block(1, hosts)
    return lo


def free_port_block(n: int, hosts=("127.0.0.1",)) -> tuple[int, int]:
    """n consecutive ports free on every one of `hosts`, below Linux's
    ephemeral range (32768+), where outgoing connections take their local ports."""
    for _ in range(500):
        lo = random.randrange(20000, 32000 - n)
        if all(_free_on(p, hosts) for p in range(lo, lo + n)):
            return lo, lo + n - 1
    raise BedError(f"no {n} consecutive free ports in 20000-32000 on {', '.join(hosts)}")


def _kv_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _script(name: str, *args, timeout: float, **kw) -> subprocess.CompletedProcess:
    """Runs scripts/`name` with `args`."""
    return subprocess.run([str(ROOT / "scripts" / name), *map(str, args)], timeout=timeout, **kw)


def _start(name: str, *args, timeout: float) -> dict[str, str]:
    """`scripts/<name> start ARGS`: the `key=value` lines it prints; BedError if it fails."""
    out = _script(name, "start", *args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise BedError(f"scripts/{name} start failed:\n{out.stderr}")
    return _kv_lines(out.stdout)


def http(method: str, url: str, body=None, timeout: float = 15.0, token: str | None = None):
    """(status, parsed JSON or text) of one HTTP call."""
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


# === Apache Kafka =============================================================

@dataclass
class KafkaCluster:
    """A KRaft cluster started by scripts/kafka: node ids 1..n."""

    dir: Path
    bootstrap: str
    brokers: dict[int, str]

    @classmethod
    def start(cls, brokers: int = 1, heap: str = "512m") -> "KafkaCluster":
        if not (KAFKA_LIBS / "kafka_2.13-4.4.0.jar").exists():
            raise BedError(f"no Apache Kafka 4.4.0 in {KAFKA_LIBS}: run scripts/setup")
        kv = _start("kafka", "--brokers", brokers, "--heap", heap, timeout=120)
        return cls(dir=Path(kv["dir"]), bootstrap=kv["bootstrap"],
                   brokers={i: kv[f"broker.{i}"] for i in range(1, brokers + 1)})

    def stop(self):
        _script("kafka", "stop", self.dir, timeout=120)

    def kill(self, node_id: int):
        _script("kafka", "kill", self.dir, node_id, check=True, timeout=30)

    def restart(self, node_id: int):
        _script("kafka", "restart", self.dir, node_id, check=True, timeout=120,
                stdout=subprocess.DEVNULL)

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for f in sorted(self.dir.glob("broker-*.log")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {f}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- admin, straight to the brokers --
    def admin(self):
        from confluent_kafka.admin import AdminClient
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 4})

    def create_topic(self, name: str, partitions: int = 1, replication: int | None = None,
                     config: dict | None = None):
        from confluent_kafka.admin import NewTopic
        rf = replication if replication is not None else min(3, len(self.brokers))
        admin = self.admin()  # kept alive until the result: its futures die with it
        fut = admin.create_topics([NewTopic(name, partitions, rf, config=config or {})])
        fut[name].result(30)


# === idemgate =================================================================

def idemgate_bin() -> Path:
    path = Path(os.environ.get("IDEMGATE_BIN", ROOT / "target" / "debug" / "idemgate"))
    if not path.exists():
        raise BedError(f"no idemgate binary at {path}: run `cargo build` (scripts/test does)")
    return path


# Broker ports each proxy gets: node ids up to 20 keep port start + node_id.
BROKER_PORTS = 21


@dataclass
class Proxy:
    """The idemgate binary in front of `upstream`, with its own ports and store.

    `extra` is TOML appended to the generated config (rules, quotas, ...).
    Every proxy runs with the address-leak check on; `assert_no_leaks()` reads it.
    `host` is the address its bootstrap and broker listeners bind;
    `advertised_host` the one it writes into broker addresses (`host` unless
    given): replicas of a central tier bind their own and advertise a shared
    one (see ServiceAddress). The admin listener is always on 127.0.0.1.
    """

    upstream: str
    extra: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="idemgate-proxy.")))
    bootstrap: str = ""
    admin: str = ""
    proc: subprocess.Popen | None = None
    # Fixed ports (scripts/demo); 0 and None pick free ones.
    port: int = 0
    admin_port: int = 0
    broker_ports: tuple[int, int] | None = None
    host: str = "127.0.0.1"
    advertised_host: str | None = None

    def __post_init__(self):
        self.port = self.port or free_port((self.host,))
        self.admin_port = self.admin_port or free_port()
        lo, hi = self.broker_ports or free_port_block(BROKER_PORTS, (self.host,))
        self.broker_ports = (lo, hi)
        self.bootstrap = f"{self.host}:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        upstream = ", ".join(f'"{a}"' for a in self.upstream.split(","))
        self.config_path = self.workdir / "idemgate.toml"
        self.config_path.write_text(f"""\
[listen]
bootstrap = "{self.bootstrap}"
advertised_host = "{self.advertised_host or self.host}"
broker_ports = "{lo}-{hi}"
[upstream]
bootstrap = [{upstream}]
[admin]
listen = "127.0.0.1:{self.admin_port}"
[store]
dir = "{self.workdir / 'store'}"
[diagnostics]
leak_check = true
{self.extra}
""")
        self.log_path = self.workdir / "idemgate.log"

    def start(self) -> "Proxy":
        check = subprocess.run([str(idemgate_bin()), "check", "--config", str(self.config_path)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise BedError(f"idemgate check refused the test's config:\n{check.stdout}{check.stderr}")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(idemgate_bin()), "run", "--config", str(self.config_path)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        def ready():
            if self.proc.poll() is not None:
                raise BedError(f"idemgate exited with {self.proc.returncode}:\n{self.log_tail()}")
            status, _ = http("GET", f"{self.admin}/readyz", timeout=2)
            return status == 200
        wait_for("idemgate /readyz", ready, 60)
        return self

    def sigkill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def metrics(self) -> dict[str, float]:
        """Every sample on /metrics: 'name{labels}' -> value (labels as printed)."""
        status, text = http("GET", f"{self.admin}/metrics")
        if status != 200:
            raise BedError(f"/metrics answered {status}")
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def metric_sum(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def assert_no_leaks(self):
        leaks = self.metric_sum("idemgate_address_leaks_total")
        assert leaks == 0, f"the proxy handed out upstream broker addresses {leaks:.0f} times"


# === a central tier behind one address ========================================

class ServiceAddress:
    """A stand-in for a Kubernetes Service in front of a central tier: it
    listens on `host` (127.0.0.1) at every one of `ports` and forwards each new
    connection to the same port on the current target (a replica's own
    loopback address, 127.0.0.2, 127.0.0.3...). Every replica advertises
    `host`, so the client's metadata names the same brokers whichever replica
    answers, as it would with a Service name.

    `switch(to)` sends new connections to another target and closes the
    existing ones, as a dead pod's connections die with it. `mute()` first
    makes the pod's answers die before they reach the clients while their
    requests still go through: what the broker appended then, the client
    never hears of, and resends. The forwarder reads Kafka's frames for that
    (a size, then the request header's api_key and correlation_id), and
    counts in `produce_answers_lost` the Produce answers it swallowed.
    `connections[target]` counts the connections forwarded to each target.
    """

    def __init__(self, ports, target: str, host: str = "127.0.0.1"):
        self.host = host
        self.target = target
        self.connections: dict[str, int] = {}
        self.produce_answers_lost = 0
        self._muted = False
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._listeners = []
        for port in ports:
            ls = socket.create_server((host, port))
            ls.setblocking(False)
            self._sel.register(ls, selectors.EVENT_READ, port)
            self._listeners.append(ls)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"service-{host}")
        self._thread.start()

    def address(self, port: int) -> str:
        return f"{self.host}:{port}"

    def mute(self):
        """From now on, no answer on the open connections reaches its client."""
        with self._lock:
            self._muted = True

    def switch(self, to: str):
        """New connections go to `to` (and are heard); the open ones are closed."""
        with self._lock:
            self.target = to
            self._muted = False
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for ls in self._listeners:
            self._sel.unregister(ls)
            ls.close()
        self._sel.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)

    def _accept_loop(self):
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                try:
                    client, _ = key.fileobj.accept()
                except OSError:
                    continue
                client.setblocking(True)
                with self._lock:
                    target = self.target
                try:
                    upstream = socket.create_connection((target, key.data), timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()  # the target is gone: as a refused connection
                    continue
                for sock in (client, upstream):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._forward(client, upstream, target)

    def _forward(self, client: socket.socket, upstream: socket.socket, target: str):
        pair = (client, upstream)
        with self._lock:
            self._pairs.add(pair)
            self.connections[target] = self.connections.get(target, 0) + 1
        produce_ids: set[int] = set()  # correlation ids of this connection's Produce requests

        def request(frame: bytes) -> bool:
            if int.from_bytes(frame[4:6], "big") == 0:  # api_key 0: Produce
                produce_ids.add(int.from_bytes(frame[8:12], "big"))
            return True

        def answer(frame: bytes) -> bool:
            with self._lock:
                if self._muted and int.from_bytes(frame[4:8], "big") in produce_ids:
                    self.produce_answers_lost += 1
                return not self._muted

        for src, dst, on_frame in ((client, upstream, request), (upstream, client, answer)):
            threading.Thread(target=self._pump, args=(pair, src, dst, on_frame), daemon=True).start()

    def _pump(self, pair, src: socket.socket, dst: socket.socket, on_frame):
        """Passes the frames from `src` to `dst` that `on_frame` lets through."""
        frames = _Frames()
        try:
            while data := src.recv(65536):
                for frame in frames.feed(data):
                    if on_frame(frame):
                        dst.sendall(frame)
        except OSError:
            pass
        finally:
            self._close(pair)

    def _close(self, pair):
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class _Frames:
    """Kafka frames out of a byte stream: a 4-byte big-endian size, then that
    many bytes."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            end = 4 + int.from_bytes(self.buf[:4], "big")
            if len(self.buf) < end:
                break
            out.append(bytes(self.buf[:end]))
            del self.buf[:end]
        return out


def central_tier(make_proxy, upstream: str, extra: str = "", replicas: int = 2):
    """`replicas` idemgate processes on 127.0.0.2, 127.0.0.3, ... with the same
    bootstrap and broker ports, each advertising 127.0.0.1, behind one
    ServiceAddress on 127.0.0.1 that starts on the first. `make_proxy(upstream,
    extra, **Proxy fields)` starts one (the `proxies` fixture). Returns
    (service, bootstrap for clients, [proxies]); the caller closes the service."""
    hosts = [f"127.0.0.{i + 2}" for i in range(replicas)]
    every = ("127.0.0.1", *hosts)
    lo, hi = free_port_block(BROKER_PORTS + 1, every)
    port, broker_ports = lo, (lo + 1, hi)
    started = [make_proxy(upstream, extra, host=h, advertised_host="127.0.0.1", port=port,
                          broker_ports=broker_ports) for h in hosts]
    service = ServiceAddress(range(lo, hi + 1), target=hosts[0])
    return service, service.address(port), started


# === Kafka Connect ============================================================

@dataclass
class ConnectCluster:
    """Distributed Connect workers started by scripts/connect; workers 1..n."""

    dir: Path
    group: str
    workers: dict[int, str]

    @classmethod
    def start(cls, bootstrap: str, workers: int = 2, flush_ms: int = 60000,
              rebalance_delay_ms: int = 5000, props: dict | None = None,
              worker_bootstrap: dict[int, str] | None = None) -> "ConnectCluster":
        """`worker_bootstrap`: worker number -> its own bootstrap.servers (a
        sidecar proxy); the others use `bootstrap`."""
        args = ["--bootstrap", bootstrap, "--workers", workers, "--flush-ms", flush_ms,
                "--rebalance-delay-ms", rebalance_delay_ms]
        for k, v in (props or {}).items():
            args += ["--prop", f"{k}={v}"]
        for n, b in (worker_bootstrap or {}).items():
            args += ["--worker-bootstrap", f"{n}={b}"]
        kv = _start("connect", *args, timeout=180)
        return cls(dir=Path(kv["dir"]), group=kv["group"],
                   workers={i: kv[f"worker.{i}"] for i in range(1, workers + 1)})

    def stop(self):
        _script("connect", "stop", self.dir, timeout=120)

    def kill(self, n: int):
        _script("connect", "kill", self.dir, n, check=True, timeout=30)

    def restart(self, n: int):
        _script("connect", "restart", self.dir, n, check=True, timeout=180,
                stdout=subprocess.DEVNULL)

    def alive(self, n: int) -> bool:
        try:
            os.kill(int((self.dir / f"worker-{n}.pid").read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    def any_url(self) -> str:
        for n, url in self.workers.items():
            if self.alive(n):
                return url
        raise BedError("no Connect worker is alive")

    def rest(self, method: str, path: str, body=None):
        return http(method, self.any_url() + path, body)

    def create_connector(self, name: str, config: dict):
        status, body = self.rest("PUT", f"/connectors/{name}/config", config)
        if status not in (200, 201):
            raise BedError(f"creating connector {name}: {status} {body}")

    def status(self, name: str) -> dict | None:
        status, body = self.rest("GET", f"/connectors/{name}/status")
        return body if status == 200 else None

    def task_running(self, name: str, task: int = 0) -> str | None:
        """worker_id (host:port) running task `task` of connector `name`, once RUNNING."""
        st = self.status(name)
        if not st:
            return None
        for t in st.get("tasks", []):
            if t["id"] == task and t["state"] == "RUNNING":
                return t["worker_id"]
            if t["id"] == task and t["state"] == "FAILED":
                raise BedError(f"task {name}-{task} FAILED: {t.get('trace', '')[:2000]}")
        return None

    def worker_number(self, worker_id: str) -> int:
        for n, url in self.workers.items():
            if url.endswith("//" + worker_id) or url.rsplit("/", 1)[-1] == worker_id:
                return n
        raise BedError(f"no worker of this cluster is {worker_id} ({self.workers})")

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for f in sorted(self.dir.glob("worker-*.log")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {f}\n" + "\n".join(lines))
        return "\n".join(parts)


# === reading a topic straight from the broker =================================

def read_topic(bootstrap: str, topic: str, until, timeout: float = 90.0,
               isolation: str = "read_uncommitted") -> list:
    """Every record of `topic` (all partitions, from the start), read straight
    from `bootstrap` with confluent-kafka and no group, until `until(records)`
    holds (a marker arrived) and every partition is read up to the high
    watermark (or last stable offset) it had then. Returns confluent-kafka
    Messages in (partition, offset) order."""
    from confluent_kafka import Consumer, TopicPartition, KafkaException
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": isolation, "enable.partition.eof": True})
    try:
        md = c.list_topics(topic, timeout=15)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise BedError(f"topic {topic} not found on {bootstrap}")
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        records = []
        end = time.monotonic() + timeout
        target = None  # partition -> offset to reach, fixed once `until` holds
        pos = {p: 0 for p in parts}
        while True:
            if target is None and until(records):
                target = {}
                for p in parts:
                    lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                    target[p] = hi
            if target is not None and all(pos[p] >= target[p] for p in parts):
                break
            if time.monotonic() > end:
                raise BedError(f"reading {topic}: {len(records)} records after {timeout:.0f} s, "
                               f"the end marker {'arrived' if target else 'never arrived'}")
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == msg.error()._PARTITION_EOF:
                    # The end of the partition, past any transaction markers
                    # (control records take offsets but are never delivered).
                    pos[msg.partition()] = max(pos[msg.partition()], msg.offset())
                    continue
                raise KafkaException(msg.error())
            records.append(msg)
            pos[msg.partition()] = msg.offset() + 1
        records.sort(key=lambda m: (m.partition(), m.offset()))
        return records
    finally:
        c.close()


def shared_window_rule(window_topic: str, shared: bool = True, topics: str = "shw-*") -> str:
    """The proxy's dedup config: a one-hour window, replays on `topics` dropped,
    and with `shared` the window's log in `window_topic` (`[dedup.shared]`)."""
    rule = f"""
[dedup]
window = "1h"
[[dedup.rules]]
topics = "{topics}"
key = "content"
mode = "drop"
"""
    if shared:
        rule += f"""
[dedup.shared]
topic = "{window_topic}"
partitions = 2
replication_factor = 1
retention_margin = "30m"
"""
    return rule


def produce_acked(bootstrap: str, topic: str, values, marker: str):
    """Writes `values`, then (after they are acknowledged) `marker`, acks=all,
    one in flight (Connect's settings). The marker goes in a batch of its own:
    librdkafka numbers a batch's records from one base offset, so the proxy
    removes replays only from batches that are replays whole (README,
    "unnumbered")."""
    from confluent_kafka import Producer
    errors = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                  "max.in.flight.requests.per.connection": 1, "linger.ms": 5,
                  "client.id": "connector-producer-shw-0"})
    for v in values:
        p.produce(topic, value=v.encode(), on_delivery=lambda e, _m: e and errors.append(e))
    assert p.flush(60) == 0 and not errors, f"produce through {bootstrap}: {errors[:3]}"
    p.produce(topic, value=marker.encode(), on_delivery=lambda e, _m: e and errors.append(e))
    assert p.flush(60) == 0 and not errors, f"produce through {bootstrap}: {errors[:3]}"


def log_counts(bootstrap: str, topic: str, marker: str,
               isolation: str = "read_uncommitted") -> Counter:
    records = read_topic(bootstrap, topic, lambda recs: any(m.value() == marker.encode() for m in recs),
                         isolation=isolation)
    return Counter(m.value().decode() for m in records)


# === the Java test client =====================================================

def java_client(*args: str, timeout: float = 180.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run proto-tests/jvm/client (compiled by scripts/setup) with `args`."""
    if not JVM_CLIENT.exists():
        raise BedError(f"the Java test client is not compiled in {JVM_CLIENT}: run scripts/setup")
    java = shutil.which("java")
    argv = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{JVM_CLIENT}:{KAFKA_LIBS}/*", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
