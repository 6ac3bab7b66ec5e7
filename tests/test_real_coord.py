"""The kazoo adapter against a real ZooKeeper: results, errors, versions, watches, sessions.

What this proves: ``KazooCoordClient`` answers the five ``Coord*`` effects with the sim's field meanings
and error kinds, arms one-shot data, existence and child watches as the sim does, reports session
state, and that a process killed with SIGKILL loses its ephemeral node once its session expires.
How: each test drives one or more clients the way a host loop does -- ``execute`` then wait on the
queue that ``deliver`` feeds -- against the shared standalone server, under its own unique path.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dimint.core.effects import (
    CoordCreate,
    CoordDelete,
    CoordErrorKind,
    CoordList,
    CoordRead,
    CoordResult,
    CoordSet,
    Input,
    SessionState,
    SessionStateChanged,
    WatchFired,
    WatchKind,
)
from dimint.real.coord import KazooCoordClient

pytestmark = pytest.mark.real

SESSION_TIMEOUT_MS = 4000
WAIT_S = 15.0


class Driver:
    """A client plus its inbox, with bounded waits for the next matching input."""

    def __init__(self, hosts: str) -> None:
        self.inbox: queue.Queue[Input] = queue.Queue()
        self.client = KazooCoordClient(hosts, SESSION_TIMEOUT_MS, self.inbox.put)
        self._next_request_id = 0
        self._skipped: list[Input] = []

    def wait_for(self, predicate, timeout_s: float = WAIT_S) -> Input:
        for index, item in enumerate(self._skipped):
            if predicate(item):
                return self._skipped.pop(index)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching input within {timeout_s}s; skipped {self._skipped}")
            try:
                item = self.inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(item):
                return item
            self._skipped.append(item)

    def connected(self) -> SessionStateChanged:
        event = self.wait_for(
            lambda i: isinstance(i, SessionStateChanged) and i.state is SessionState.CONNECTED
        )
        assert isinstance(event, SessionStateChanged)
        return event

    def run(self, make_effect) -> CoordResult:
        """Execute ``make_effect(request_id)`` and wait for its result."""
        self._next_request_id += 1
        request_id = self._next_request_id
        self.client.execute(make_effect(request_id))
        result = self.wait_for(lambda i: isinstance(i, CoordResult) and i.request_id == request_id)
        assert isinstance(result, CoordResult)
        return result

    def watch(self, path: str, timeout_s: float = WAIT_S) -> WatchFired:
        event = self.wait_for(lambda i: isinstance(i, WatchFired) and i.path == path, timeout_s)
        assert isinstance(event, WatchFired)
        return event

    def no_watch(self, path: str, wait_s: float = 1.0) -> None:
        with pytest.raises(AssertionError, match="no matching input"):
            self.watch(path, wait_s)


@contextmanager
def drivers(hosts: str, count: int) -> Iterator[list[Driver]]:
    started = [Driver(hosts) for _ in range(count)]
    try:
        for driver in started:
            driver.client.start()
        for driver in started:
            driver.connected()
        yield started
    finally:
        for driver in started:
            driver.client.stop()


@pytest.fixture
def base() -> str:
    return f"/test-real-coord/{uuid.uuid4().hex}"


def test_connected_on_start_with_a_session_id(zookeeper) -> None:
    with drivers(zookeeper.hosts, 1) as [a]:
        assert a.client.connected
        assert a.client.session_id != 0


def test_create_read_set_delete_list_and_versions(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 1) as [a]:
        created = a.run(lambda r: CoordCreate(r, f"{base}/map", b"v0"))
        assert (created.error, created.path, created.version) == (None, f"{base}/map", 0)
        read = a.run(lambda r: CoordRead(r, f"{base}/map"))
        assert (read.error, read.data, read.version) == (None, b"v0", 0)
        written = a.run(lambda r: CoordSet(r, f"{base}/map", b"v1", expected_version=0))
        assert (written.error, written.version) == (None, 1)
        stale = a.run(lambda r: CoordSet(r, f"{base}/map", b"v2", expected_version=0))
        assert stale.error is CoordErrorKind.BAD_VERSION
        assert a.run(lambda r: CoordRead(r, f"{base}/map")).data == b"v1"
        assert a.run(lambda r: CoordCreate(r, f"{base}/map", b"")).error is CoordErrorKind.NODE_EXISTS
        assert a.run(lambda r: CoordRead(r, f"{base}/nothing")).error is CoordErrorKind.NO_NODE
        assert a.run(lambda r: CoordSet(r, f"{base}/nothing", b"", 0)).error is CoordErrorKind.NO_NODE
        orphan = a.run(lambda r: CoordCreate(r, f"{base}/no/parent", b"", make_parents=False))
        assert orphan.error is CoordErrorKind.NO_NODE
        a.run(lambda r: CoordCreate(r, f"{base}/map/b"))
        a.run(lambda r: CoordCreate(r, f"{base}/map/a"))
        listed = a.run(lambda r: CoordList(r, f"{base}/map"))
        assert (listed.error, listed.children, listed.version) == (None, ("a", "b"), 1)
        assert a.run(lambda r: CoordDelete(r, f"{base}/map")).error is CoordErrorKind.NOT_EMPTY
        assert a.run(lambda r: CoordDelete(r, f"{base}/map/a", 5)).error is CoordErrorKind.BAD_VERSION
        assert a.run(lambda r: CoordDelete(r, f"{base}/map/a", 0)).error is None
        assert a.run(lambda r: CoordDelete(r, f"{base}/map/a")).error is CoordErrorKind.NO_NODE


def test_sequential_nodes_report_their_names(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 1) as [a]:
        first = a.run(lambda r: CoordCreate(r, f"{base}/q/n-", sequential=True))
        second = a.run(lambda r: CoordCreate(r, f"{base}/q/n-", sequential=True))
        assert first.error is None and second.error is None
        assert first.path == f"{base}/q/n-0000000000"
        assert second.path == f"{base}/q/n-0000000001"
        assert a.run(lambda r: CoordList(r, f"{base}/q")).children == ("n-0000000000", "n-0000000001")


def test_ephemeral_vanishes_when_its_owner_stops(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 2) as [a, b]:
        assert a.run(lambda r: CoordCreate(r, f"{base}/member", ephemeral=True)).error is None
        assert b.run(lambda r: CoordRead(r, f"{base}/member", watch=True)).error is None
        a.client.stop()
        assert b.watch(f"{base}/member") == WatchFired(f"{base}/member", WatchKind.DELETED)
        assert b.run(lambda r: CoordRead(r, f"{base}/member")).error is CoordErrorKind.NO_NODE


_EPHEMERAL_OWNER = """
import sys, time
from kazoo.client import KazooClient
client = KazooClient(hosts=sys.argv[1], timeout=float(sys.argv[3]))
client.start(timeout=15)
client.create(sys.argv[2], b"", ephemeral=True, makepath=True)
print("ready", flush=True)
time.sleep(600)
"""


def test_ephemeral_of_a_killed_process_vanishes_after_its_session_timeout(zookeeper, base) -> None:
    path = f"{base}/member"
    owner = subprocess.Popen(
        [sys.executable, "-c", _EPHEMERAL_OWNER, zookeeper.hosts, path, str(SESSION_TIMEOUT_MS / 1000)],
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == b"ready"
        with drivers(zookeeper.hosts, 1) as [b]:
            assert b.run(lambda r: CoordRead(r, path, watch=True)).error is None
            killed_at = time.monotonic()
            os.kill(owner.pid, signal.SIGKILL)
            assert b.watch(path, SESSION_TIMEOUT_MS / 1000 + 8) == WatchFired(path, WatchKind.DELETED)
            assert time.monotonic() - killed_at < SESSION_TIMEOUT_MS / 1000 + 8
    finally:
        owner.kill()
        owner.wait(timeout=10)


def test_read_watch_on_a_missing_node_fires_created(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 2) as [a, b]:
        assert b.run(lambda r: CoordRead(r, f"{base}/late", watch=True)).error is CoordErrorKind.NO_NODE
        a.run(lambda r: CoordCreate(r, f"{base}/late", b"x"))
        assert b.watch(f"{base}/late") == WatchFired(f"{base}/late", WatchKind.CREATED)
        assert b.run(lambda r: CoordRead(r, f"{base}/late")).data == b"x"


def test_data_watch_fires_changed_once(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 2) as [a, b]:
        a.run(lambda r: CoordCreate(r, f"{base}/node", b"0"))
        assert b.run(lambda r: CoordRead(r, f"{base}/node", watch=True)).version == 0
        a.run(lambda r: CoordSet(r, f"{base}/node", b"1", 0))
        assert b.watch(f"{base}/node") == WatchFired(f"{base}/node", WatchKind.CHANGED)
        a.run(lambda r: CoordSet(r, f"{base}/node", b"2", 1))
        b.no_watch(f"{base}/node")


def test_child_watch_is_one_shot(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 2) as [a, b]:
        a.run(lambda r: CoordCreate(r, f"{base}/members"))
        assert b.run(lambda r: CoordList(r, f"{base}/members", watch=True)).children == ()
        a.run(lambda r: CoordCreate(r, f"{base}/members/n1"))
        assert b.watch(f"{base}/members") == WatchFired(f"{base}/members", WatchKind.CHILD)
        a.run(lambda r: CoordCreate(r, f"{base}/members/n2"))
        b.no_watch(f"{base}/members")
        # Re-arming works and sees both.
        assert b.run(lambda r: CoordList(r, f"{base}/members", watch=True)).children == ("n1", "n2")
        a.run(lambda r: CoordDelete(r, f"{base}/members/n1"))
        assert b.watch(f"{base}/members") == WatchFired(f"{base}/members", WatchKind.CHILD)


def test_deleting_a_node_with_data_and_child_watches_fires_once(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 2) as [a, b]:
        a.run(lambda r: CoordCreate(r, f"{base}/both"))
        b.run(lambda r: CoordRead(r, f"{base}/both", watch=True))
        b.run(lambda r: CoordList(r, f"{base}/both", watch=True))
        a.run(lambda r: CoordDelete(r, f"{base}/both"))
        assert b.watch(f"{base}/both") == WatchFired(f"{base}/both", WatchKind.DELETED)
        b.no_watch(f"{base}/both", wait_s=0.5)


def test_conditional_set_race_has_exactly_one_winner(zookeeper, base) -> None:
    with drivers(zookeeper.hosts, 2) as [a, b]:
        a.run(lambda r: CoordCreate(r, f"{base}/map", b"epoch-0"))
        a.client.execute(CoordSet(101, f"{base}/map", b"epoch-1-by-a", expected_version=0))
        b.client.execute(CoordSet(201, f"{base}/map", b"epoch-1-by-b", expected_version=0))
        result_a = a.wait_for(lambda i: isinstance(i, CoordResult) and i.request_id == 101)
        result_b = b.wait_for(lambda i: isinstance(i, CoordResult) and i.request_id == 201)
        assert isinstance(result_a, CoordResult) and isinstance(result_b, CoordResult)
        errors = sorted(str(result.error) for result in (result_a, result_b))
        assert errors == ["BAD_VERSION", "None"]
        winner = result_a if result_a.error is None else result_b
        assert winner.version == 1
        final = a.run(lambda r: CoordRead(r, f"{base}/map"))
        assert (final.data, final.version) == (
            (b"epoch-1-by-a" if winner is result_a else b"epoch-1-by-b"),
            1,
        )


def test_requests_after_stop_are_rejected_and_nothing_is_delivered(zookeeper, base) -> None:
    driver = Driver(zookeeper.hosts)
    driver.client.start()
    try:
        driver.connected()
    finally:
        driver.client.stop()
    with pytest.raises(Exception, match="closed"):
        driver.client.execute(CoordRead(1, f"{base}/x"))
    assert driver.inbox.empty()
