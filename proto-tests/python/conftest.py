"""Fixtures for the real-client end-to-end tests.

Environment:
  IDEMGATE_BOOTSTRAP         host:port the clients bootstrap from (the proxy).
                             Required: every test FAILS (never skips) without it.
  IDEMGATE_DIRECT_BOOTSTRAP  host:port of the broker itself, used to compare
                             what the proxy shows with what the broker says.
                             Required by the tests that compare.
  IDEMGATE_ADVERTISED_HOST   host the proxy writes into broker addresses
                             (default: the host of IDEMGATE_BOOTSTRAP).

Pointing both at the broker (e.g. scripts/tansu start --port 9092;
IDEMGATE_BOOTSTRAP=IDEMGATE_DIRECT_BOOTSTRAP=127.0.0.1:9092) runs the same
tests without a proxy; address checks then expect the broker's own address.

Every wait is bounded (see `deadline`), topic and group names are unique per
test (uuid), and consumers use session_timeout_ms=6000 (tansu's first
JoinGroup waits about half the session timeout).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest

from e2e import REQUEST_TIMEOUT_S, deadline, unique


def _hostport(value: str, var: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        pytest.fail(f"{var}={value!r} is not host:port", pytrace=False)
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str                    # what clients use (the proxy)
    direct: str | None                # the broker itself, if given
    advertised_host: str              # host expected in broker addresses

    @property
    def bootstrap_hp(self) -> tuple[str, int]:
        return _hostport(self.bootstrap, "IDEMGATE_BOOTSTRAP")

    @property
    def direct_hp(self) -> tuple[str, int]:
        if self.direct is None:
            pytest.fail("IDEMGATE_DIRECT_BOOTSTRAP is not set: this test compares the proxy "
                        "with the broker it fronts; set it to the broker's host:port", pytrace=False)
        return _hostport(self.direct, "IDEMGATE_DIRECT_BOOTSTRAP")

    @property
    def through_proxy(self) -> bool:
        """True when the clients' bootstrap is not the broker itself.
        Fails the test if IDEMGATE_DIRECT_BOOTSTRAP is unset."""
        return self.bootstrap_hp != self.direct_hp

    def assert_client_facing(self, addrs, what: str):
        """Every broker address a client was given must point at the proxy
        (advertised host, not the broker's port) when going through one, and
        at the broker itself when not."""
        addrs = sorted(set(addrs))
        assert addrs, f"{what}: no broker addresses at all"
        if self.through_proxy:
            dhost, dport = self.direct_hp
            for host, port in addrs:
                assert host == self.advertised_host, (
                    f"{what}: broker address {host}:{port} does not use the proxy's advertised "
                    f"host {self.advertised_host} (all: {addrs})")
                assert (host, port) != (dhost, dport) and port != dport, (
                    f"{what}: broker address {host}:{port} leaks the upstream broker "
                    f"{self.direct} (all: {addrs})")
        else:
            assert self.bootstrap_hp in addrs or any(p == self.bootstrap_hp[1] for _, p in addrs), (
                f"{what}: direct run, expected the broker's own address {self.bootstrap} in {addrs}")


@pytest.fixture(scope="session")
def endpoints() -> Endpoints:
    bootstrap = os.environ.get("IDEMGATE_BOOTSTRAP", "").strip()
    if not bootstrap:
        pytest.fail(
            "IDEMGATE_BOOTSTRAP is not set. These end-to-end tests need a Kafka bootstrap "
            "address: the idemgate proxy (or, to check the tests themselves, a broker: "
            "`scripts/tansu start --port 9092` then IDEMGATE_BOOTSTRAP=127.0.0.1:9092 "
            "IDEMGATE_DIRECT_BOOTSTRAP=127.0.0.1:9092).", pytrace=False)
    _hostport(bootstrap, "IDEMGATE_BOOTSTRAP")
    direct = os.environ.get("IDEMGATE_DIRECT_BOOTSTRAP", "").strip() or None
    if direct:
        _hostport(direct, "IDEMGATE_DIRECT_BOOTSTRAP")
    adv = os.environ.get("IDEMGATE_ADVERTISED_HOST", "").strip() or _hostport(bootstrap, "")[0]
    return Endpoints(bootstrap=bootstrap, direct=direct, advertised_host=adv)


@pytest.fixture(scope="session")
def bootstrap(endpoints) -> str:
    return endpoints.bootstrap


@pytest.fixture(scope="session")
def direct_bootstrap(endpoints) -> str:
    endpoints.direct_hp  # fails with a clear message if unset
    return endpoints.direct


@pytest.fixture
def admin(bootstrap):
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=unique("pt-admin"),
                              request_timeout_ms=REQUEST_TIMEOUT_S * 1000)
    yield client
    client.close()


@pytest.fixture
def make_topic(admin):
    """make_topic(partitions=3, prefix=...) -> a new, unique topic name.
    Topics are deleted (best effort) when the test ends."""
    from kafka.admin import NewTopic

    created = []

    def _make(partitions: int = 3, prefix: str = "pt") -> str:
        name = unique(prefix)
        admin.create_topics([NewTopic(name, partitions, 1)], timeout_ms=REQUEST_TIMEOUT_S * 1000)
        created.append(name)
        wait_for_partitions(admin, name, partitions)
        return name

    yield _make
    if created:
        try:
            admin.delete_topics(created, timeout_ms=REQUEST_TIMEOUT_S * 1000, raise_errors=False)
        except Exception:  # noqa: BLE001 - cleanup must not mask the test result
            pass


def wait_for_partitions(admin, topic: str, partitions: int, seconds: float = 15):
    dl = deadline(seconds)
    last = None
    while dl.left():
        try:
            md = admin.describe_topics([topic])
            if md and md[0].get("error_code", 0) == 0 and len(md[0].get("partitions", [])) == partitions:
                return
            last = md
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.2)
    pytest.fail(f"topic {topic} did not show {partitions} partitions within {seconds}s: {last!r}")
