"""Fixtures for the Apache Kafka test bed (bed.py): one single-node Kafka 4.4
cluster for the whole session, a three-broker one on first use, and factories
for proxies and Connect clusters that are stopped after each test.

JVMs are heavy on 2 cores, so brokers start once per session (TESTBED.md);
each test uses its own topics, groups and Connect cluster names.
"""

from __future__ import annotations

import pytest

from bed import ConnectCluster, KafkaCluster, Proxy, central_tier


@pytest.fixture(scope="session")
def kafka():
    cluster = KafkaCluster.start(brokers=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kafka3():
    cluster = KafkaCluster.start(brokers=3)
    yield cluster
    cluster.stop()


@pytest.fixture
def proxies():
    """`proxies(upstream, extra_toml, **Proxy fields)` starts an idemgate; all
    are stopped after the test, and each one's leak check must read 0."""
    started: list[Proxy] = []

    def make(upstream: str, extra: str = "", **kw) -> Proxy:
        p = Proxy(upstream=upstream, extra=extra, **kw).start()
        started.append(p)
        return p

    yield make
    # Every proxy is stopped even when one's leak check fails.
    failures = []
    for p in started:
        try:
            if p.proc and p.proc.poll() is None:
                p.assert_no_leaks()
        except AssertionError as exc:
            failures.append(str(exc))
        finally:
            p.stop()
    assert not failures, "; ".join(failures)


@pytest.fixture
def tiers(proxies):
    """`tiers(upstream, extra_toml, replicas=2)` starts a central tier behind one
    address (bed.central_tier): (service, client bootstrap, [replicas]). The
    services close and the replicas stop after the test."""
    services = []

    def make(upstream: str, extra: str = "", replicas: int = 2):
        service, bootstrap, started = central_tier(proxies, upstream, extra, replicas)
        services.append(service)
        return service, bootstrap, started

    yield make
    for s in services:
        s.close()


@pytest.fixture
def connect_clusters():
    """`connect_clusters(bootstrap, **kw)` starts Connect workers (ConnectCluster.start);
    all are stopped after the test."""
    started: list[ConnectCluster] = []

    def make(bootstrap: str, **kw) -> ConnectCluster:
        c = ConnectCluster.start(bootstrap, **kw)
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()
