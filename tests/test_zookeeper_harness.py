"""The real ZooKeeper path works: the Debian package starts on a free loopback port, kazoo talks to it.

This proves the set-up that every real-runtime test depends on. It starts real JVMs (a standalone
server and a 3-server ensemble), writes and reads znodes through kazoo, checks that an ephemeral
znode of a killed session disappears about one session timeout later, and that the ensemble keeps
serving after one member is killed with SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from kazoo.client import KazooClient

from dimint.real.zk import ZooKeeperCluster

pytestmark = pytest.mark.real


def _client(hosts: str, timeout_s: float = 5.0) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=timeout_s)
    client.start(timeout=20)
    return client


def test_standalone_create_and_read(zookeeper: ZooKeeperCluster) -> None:
    client = _client(zookeeper.hosts)
    try:
        client.create("/harness/standalone/node", b"hello", makepath=True)
        data, stat = client.get("/harness/standalone/node")
        assert data == b"hello"
        assert stat.version == 0
        client.set("/harness/standalone/node", b"again", version=0)
        assert client.get("/harness/standalone/node")[1].version == 1
    finally:
        client.stop()
        client.close()
    assert all(server.host == "127.0.0.1" for server in zookeeper.servers)


def test_ephemeral_of_killed_process_vanishes_after_session_timeout(zookeeper: ZooKeeperCluster) -> None:
    # The owner is a real process killed with SIGKILL: its session is never closed, so the server
    # must expire it (about one session timeout later) and delete the ephemeral znode.
    code = (
        "import sys, time\n"
        "from kazoo.client import KazooClient\n"
        f"c = KazooClient(hosts={zookeeper.hosts!r}, timeout=0.8); c.start(timeout=20)\n"
        "c.create('/harness/eph/n', b'', ephemeral=True, makepath=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    watcher = _client(zookeeper.hosts)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        assert watcher.exists("/harness/eph/n")
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        killed_at = time.monotonic()
        while watcher.exists("/harness/eph/n") and time.monotonic() - killed_at < 15:
            time.sleep(0.02)
        vanished_after_s = time.monotonic() - killed_at
        assert not watcher.exists("/harness/eph/n")
        # ZooKeeper may round the timeout to its tick; it never expires a live session early.
        assert vanished_after_s < 10
    finally:
        owner.kill()
        watcher.stop()
        watcher.close()


def test_ensemble_survives_one_killed_server(zookeeper_ensemble: ZooKeeperCluster) -> None:
    client = _client(zookeeper_ensemble.hosts, timeout_s=10.0)
    try:
        client.create("/harness/ensemble", b"v1", makepath=True)
        zookeeper_ensemble.servers[0].kill()
        # The client may have to fail over to another server; retry the read for a bounded time.
        deadline = time.monotonic() + 30
        while True:
            try:
                client.set("/harness/ensemble", b"v2")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert client.get("/harness/ensemble")[0] == b"v2"
    finally:
        client.stop()
        client.close()
