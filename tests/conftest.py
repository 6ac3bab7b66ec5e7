"""Shared fixtures. Real-runtime fixtures start real ZooKeeper JVMs on loopback; nothing is mocked."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from dimint.real.zk import ZooKeeperCluster

# CI machines are 2 cores and noisy: no hypothesis deadlines, bounded example counts.
settings.register_profile(
    "dimint", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100, derandomize=True
)
settings.load_profile("ci" if os.environ.get("CI") else "dimint")


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ZooKeeperCluster]:
    """One standalone ZooKeeper for the whole session; tests use distinct chroot paths."""
    with ZooKeeperCluster(size=1) as cluster:
        yield cluster


@pytest.fixture
def zookeeper_ensemble() -> Iterator[ZooKeeperCluster]:
    """A fresh 3-server ensemble on loopback ports (tests may kill its members)."""
    with ZooKeeperCluster(size=3) as cluster:
        yield cluster
