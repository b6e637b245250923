"""TLS from the proxy to Apache Kafka (`[upstream.tls]`): a broker with an SSL
listener (scripts/kafka start --ssl, a PEM certificate for 127.0.0.1 signed
by a CA made here with openssl).

- The CA that signed the broker's certificate in `ca`: /readyz is ready, a
  real client (confluent-kafka, plaintext to the proxy) produces and reads
  back through it, and the records are in the broker's log (read straight
  from its PLAINTEXT listener).
- Another CA in `ca`: the broker is refused: /readyz stays 503 with
  idemgate_upstream_up 0, a client through the proxy gets no metadata, and
  nothing is written.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bed import (ROOT, BedError, KafkaCluster, Proxy, _kv_lines, http, idemgate_bin, read_topic,
                 unique, wait_for)


def _openssl(*args: str, cwd: Path):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise BedError(f"openssl {' '.join(args)} failed (scripts/setup installs openssl):\n"
                       f"{out.stderr}")


def _make_ca(dir: Path, name: str):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=idemgate {name}",
             cwd=dir)


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory):
    """A one-node cluster with an SSL listener; (cluster, ssl bootstrap, pki dir)."""
    pki = tmp_path_factory.mktemp("pki")
    _make_ca(pki, "ca")
    _make_ca(pki, "other-ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
             "-out", "broker.csr", "-subj", "/CN=127.0.0.1", cwd=pki)
    (pki / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                             "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "broker.pem", "-extfile", "ext", cwd=pki)
    out = subprocess.run([str(ROOT / "scripts" / "kafka"), "start", "--heap", "384m",
                          "--ssl", f"{pki / 'broker.pem'},{pki / 'broker.key'}"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise BedError(f"scripts/kafka start --ssl failed:\n{out.stderr}")
    kv = _kv_lines(out.stdout)
    cluster = KafkaCluster(dir=Path(kv["dir"]), bootstrap=kv["bootstrap"],
                           brokers={1: kv["broker.1"]})
    yield cluster, kv["ssl_bootstrap"], pki
    cluster.stop()


def _tls(ca: Path) -> str:
    return f'[upstream.tls]\nca = "{ca}"\n'


def test_trusted_ca_serves_a_real_client_end_to_end(tls_kafka, proxies):
    from confluent_kafka import Producer

    cluster, ssl_bootstrap, pki = tls_kafka
    proxy = proxies(ssl_bootstrap, _tls(pki / "ca.pem"))  # waits for /readyz 200
    assert proxy.metric_sum("idemgate_upstream_up") == 1

    topic = unique("tls")
    cluster.create_topic(topic)
    p = Producer({"bootstrap.servers": proxy.bootstrap, "acks": "all", "client.id": "tls-e2e"})
    errors = []
    values = [f"tls-{i}" for i in range(500)] + ["END"]
    for v in values:
        p.produce(topic, value=v.encode(),
                  on_delivery=lambda err, _m: err is not None and errors.append(err))
    assert p.flush(60) == 0 and not errors, f"produce through the proxy: {errors[:3]}"

    has_end = lambda recs: any(m.value() == b"END" for m in recs)  # noqa: E731
    through = [m.value().decode() for m in read_topic(proxy.bootstrap, topic, has_end)]
    direct = [m.value().decode() for m in read_topic(cluster.bootstrap, topic, has_end)]
    assert through == values, "read back through the proxy over TLS"
    assert direct == values, "in the broker's log, read over its PLAINTEXT listener"
    proxy.assert_no_leaks()


def test_another_ca_is_refused(tls_kafka):
    from confluent_kafka.admin import AdminClient

    cluster, ssl_bootstrap, pki = tls_kafka
    proxy = Proxy(upstream=ssl_bootstrap, extra=_tls(pki / "other-ca.pem"))
    log = open(proxy.log_path, "ab")
    proxy.proc = subprocess.Popen([str(idemgate_bin()), "run", "--config", str(proxy.config_path)],
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        def probed_and_down():
            if proxy.proc.poll() is not None:
                raise BedError(f"idemgate exited:\n{proxy.log_tail()}")
            return proxy.metric_sum("idemgate_upstream_up") == 0
        wait_for("the upstream probe to fail (idemgate_upstream_up 0)", probed_and_down, 60)
        status, body = http("GET", f"{proxy.admin}/readyz")
        assert status == 503, f"/readyz with an untrusted broker: {status} {body}"

        # A client through the proxy learns nothing and writes nothing.
        admin = AdminClient({"bootstrap.servers": proxy.bootstrap, "socket.timeout.ms": 5000})
        with pytest.raises(Exception):
            admin.list_topics(timeout=8)
        status, body = http("GET", f"{proxy.admin}/readyz")
        assert status == 503, f"/readyz later: {status} {body}"
        log_text = proxy.log_path.read_text(errors="replace").lower()
        assert "certificate" in log_text or "unknownissuer" in log_text, (
            f"the log does not say why the broker was refused:\n{proxy.log_tail()}")
        proxy.assert_no_leaks()
    finally:
        proxy.stop()
