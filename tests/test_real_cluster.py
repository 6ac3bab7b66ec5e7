"""Real clusters under real faults: kill -9, SIGSTOP, a lost ZooKeeper server; configuration; the CLI.

What this proves:
* ``kill -9`` of a master under load: a slave is promoted, the failover time (kill to the first
  acknowledged write on that shard) is measured and printed, and in semi-sync and sync mode no
  acknowledged write is lost and strong reads are linearizable -- judged by the simulator's own
  checker (``dimint.core.checker``) on the history the client library recorded;
* ``kill -9`` of the Overlord leader: another Overlord takes over, service continues, and the new
  leader fails a master over;
* a cluster on a 3-server ZooKeeper ensemble keeps serving when the ensemble's leader is killed;
* a master frozen with SIGSTOP until its session expired acknowledges nothing after SIGCONT, not
  even the requests that queued up in its socket while it was frozen;
* configuration errors name the key and where it came from; ``dimint node`` refuses a bad config;
* ``dimint cluster up``, ``status --json`` and ``down`` work from a subprocess.
How: ``LocalCluster`` processes on loopback over the session's real ZooKeeper (or a fresh
ensemble); a few client threads apply a bounded load of unique writes and strong reads. Tests
assert behaviour, never speed; the figures are printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from dimint.core.checker import check_linearizable, lost_acknowledged_writes
from dimint.core.errors import ConfigError
from dimint.core.history import HistoryRecorder, Operation
from dimint.core.protocol import ErrorReply, Request, Response, decode, encode
from dimint.real.client import AdminError, DimintClientError
from dimint.real.config import load_node_config, load_overlord_config
from dimint.real.local import LocalCluster

pytestmark = pytest.mark.real

WAIT_S = 40.0


def _now_ms() -> float:
    return time.monotonic() * 1000.0  # the clock the client's history recorder uses


class Load:
    """A bounded load: ``threads`` client threads writing unique values and reading strongly."""

    def __init__(self, cluster: LocalCluster, threads: int = 3, keys: int = 5) -> None:
        self.history = HistoryRecorder()
        self.client = cluster.client(history=self.history, timeout=8.0, request_timeout=0.5, retries=0)
        self.keys = [f"load-{i}" for i in range(keys)]
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(threads)]
        self.unexpected: list[BaseException] = []

    def _work(self, worker: int) -> None:
        step = 0
        while not self.stop_event.is_set() and step < 5_000:
            step += 1
            key = self.keys[(worker + step) % len(self.keys)]
            try:
                if step % 2:
                    self.client.set(key, f"w{worker}-{step}")
                else:
                    self.client.get(key)
            except DimintClientError:
                pass  # refused or unknown: recorded in the history as fail/info
            except BaseException as exc:
                self.unexpected.append(exc)
                return
            time.sleep(0.004)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)
        self.client.close()

    def operations(self) -> list[Operation]:
        return self.history.operations()

    def acknowledged_writes_after(self, after_ms: float) -> list[Operation]:
        return [
            op
            for op in self.operations()
            if op.f == "write" and op.outcome == "ok" and op.invoke_ms >= after_ms
        ]

    def wait_for_acknowledged_write(self, after_ms: float, timeout_s: float = WAIT_S) -> Operation:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            writes = self.acknowledged_writes_after(after_ms)
            if writes:
                return min(writes, key=lambda op: op.complete_ms or 0)
            time.sleep(0.05)
        raise AssertionError(f"no write acknowledged within {timeout_s}s of the fault")


def _readback(cluster: LocalCluster, load: Load) -> None:
    """Strong reads of every key after the load, on the same history: what survived."""
    with cluster.client(history=load.history, timeout=15.0) as reader:
        for key in load.keys:
            reader.get(key)


def _judge(load: Load) -> dict[str, int]:
    operations = load.operations()
    lost = lost_acknowledged_writes(operations)
    assert lost == [], "acknowledged writes lost:\n" + "\n".join(
        f"{item.reason}: {item.write.describe()} / {item.witness.describe()}" for item in lost
    )
    verdict = check_linearizable(operations)
    assert verdict.ok, verdict.explain()
    outcomes: dict[str, int] = {}
    for op in operations:
        outcomes[op.outcome] = outcomes.get(op.outcome, 0) + 1
    return outcomes


def _status(cluster: LocalCluster) -> dict:
    return cluster.status(timeout_s=0.5)  # short: a killed Overlord costs one timeout per poll


def _wait_status(cluster: LocalCluster, predicate, what: str, timeout_s: float = WAIT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            status = _status(cluster)
            if predicate(status):
                return status
        except (DimintClientError, KeyError, IndexError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s}s; last status {status}")


def _master_of(status: dict, shard_id: int = 0) -> str | None:
    for shard in status.get("shards") or []:
        if shard["shard_id"] == shard_id:
            return shard["master"]
    return None


def _single_shard_cluster(hosts: str, mode: str, overlords: int = 1, replicas: int = 2) -> LocalCluster:
    return LocalCluster(shards=1, replicas=replicas, overlords=overlords, mode=mode, zookeeper=hosts)


@pytest.fixture
def cleanup() -> Iterator[list[LocalCluster]]:
    clusters: list[LocalCluster] = []
    yield clusters
    for cluster in clusters:
        cluster.down()


def _up(cleanup: list[LocalCluster], cluster: LocalCluster) -> LocalCluster:
    cleanup.append(cluster)
    return cluster.up()


# --------------------------------------------------------------------------------------------
# kill -9 of a master
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["semi-sync", "sync"])
def test_kill_9_master_promotes_a_slave_and_loses_no_acknowledged_write(zookeeper, cleanup, mode) -> None:
    cluster = _up(cleanup, _single_shard_cluster(zookeeper.hosts, mode))
    before = _status(cluster)
    old_master = _master_of(before)
    slaves = set(before["shards"][0]["slaves"])
    with Load(cluster) as load:
        load.wait_for_acknowledged_write(_now_ms())
        time.sleep(1.0)
        killed_at = _now_ms()
        cluster.kill(old_master, signal.SIGKILL)  # returns once the process is gone
        first = load.wait_for_acknowledged_write(_now_ms())
        after = _wait_status(cluster, lambda s: _master_of(s) not in (None, old_master), "promotion")
        time.sleep(1.0)
    _readback(cluster, load)
    assert not load.unexpected, load.unexpected
    new_master = _master_of(after)
    assert new_master in slaves, f"{new_master} was not a slave of the shard"
    assert after["shards"][0]["shard_epoch"] > before["shards"][0]["shard_epoch"]
    assert first.node == new_master
    outcomes = _judge(load)
    failover_ms = (first.complete_ms or 0) - killed_at
    print(
        f"\n{mode}: kill -9 of master {old_master}: {new_master} promoted; first acknowledged write "
        f"{failover_ms:.0f} ms after the kill (session timeout {cluster.session_timeout_ms} ms); "
        f"history {outcomes}; 0 acknowledged writes lost; strong reads linearizable"
    )


def _ask(raw: zmq.Socket, frame: bytes, timeout_s: float = 10.0) -> object:
    """Send one frame on a raw DEALER and wait for the one answer to it."""
    raw.send(frame)
    if not raw.poll(int(timeout_s * 1000)):
        raise AssertionError("no answer within the timeout")
    return decode(raw.recv())


def test_a_duplicated_write_frame_is_answered_not_rerun_even_by_the_promoted_slave(
    zookeeper, cleanup
) -> None:
    """Invariant 8 over real sockets: the very frame of a push, delivered again after another client's
    newer write and again after kill -9 of the master, never runs a second time."""
    cluster = _up(cleanup, _single_shard_cluster(zookeeper.hosts, "semi-sync"))
    old_master = _master_of(_status(cluster))
    context = zmq.Context()
    sockets: list[zmq.Socket] = []

    def dealer(address: str) -> zmq.Socket:
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(address)
        sockets.append(raw)
        return raw

    identity = 0x5EED_0001
    try:
        with cluster.client(timeout=10.0) as other:
            epoch = other.wait_for_map().epoch
            raw = dealer(cluster.process(old_master).address)
            push = encode(Request(1, "rpush", [b"once:list", b"item"], "strong", epoch, identity, 1, 1))
            assert _ask(raw, push) == Response(1, 1)
            assert _ask(raw, push) == Response(1, 1)  # the network's duplicate: answered, not run
            write_x = encode(
                Request(2, "set", [b"once:reg", b"x", None, None], "strong", epoch, identity, 2, 1)
            )
            assert _ask(raw, write_x) == Response(2, True)
            other.set("once:reg", "y")  # another client's newer write
            assert _ask(raw, write_x) == Response(2, True)  # the late copy changes nothing
            assert other.get("once:reg") == b"y"
            assert other.lrange("once:list") == [b"item"]

            cluster.kill(old_master, signal.SIGKILL)
            after = _wait_status(cluster, lambda s: _master_of(s) not in (None, old_master), "promotion")
            new_master = cluster.process(_master_of(after))
            promoted = dealer(new_master.address)
            deadline = time.monotonic() + WAIT_S
            while True:  # until the new master is unfenced and has its in-sync slave back
                answer = _ask(promoted, push)
                if isinstance(answer, Response) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert answer == Response(1, 1), answer
            assert _ask(promoted, write_x) == Response(2, True)
            # The client finishes with 1 and 2 (floor 3): a copy of either is now refused unexecuted.
            advance = encode(
                Request(3, "set", [b"once:other", b"z", None, None], "strong", epoch, identity, 3, 3)
            )
            assert _ask(promoted, advance) == Response(3, True)
            stale = _ask(promoted, push)
            assert isinstance(stale, ErrorReply) and stale.code.value == "STALE_REQUEST", stale
            assert other.lrange("once:list") == [b"item"]
            assert other.get("once:reg") == b"y"
    finally:
        for raw in sockets:
            raw.close(linger=0)
        context.term()


# --------------------------------------------------------------------------------------------
# kill -9 of the Overlord leader
# --------------------------------------------------------------------------------------------


def test_kill_9_overlord_leader_service_continues(zookeeper, cleanup) -> None:
    cluster = _up(cleanup, _single_shard_cluster(zookeeper.hosts, "semi-sync", overlords=3))
    with Load(cluster) as load:
        load.wait_for_acknowledged_write(_now_ms())
        leader = load.client.leader()
        assert leader is not None
        killed_at = _now_ms()
        cluster.kill(leader, signal.SIGKILL)
        load.wait_for_acknowledged_write(_now_ms())  # the data path does not need the leader
        status = _wait_status(
            cluster,
            lambda s: any(o["role"] == "leader" and o["address"] != leader for o in s["overlords"]),
            "a new Overlord leader",
        )
        new_leader = next(o["address"] for o in status["overlords"] if o["role"] == "leader")
        elected_ms = _now_ms() - killed_at
        # The new leader does a leader's work: fail a master over.
        old_master = _master_of(status)
        cluster.kill(old_master, signal.SIGKILL)
        load.wait_for_acknowledged_write(_now_ms())
        _wait_status(cluster, lambda s: _master_of(s) not in (None, old_master), "failover by the new leader")
        time.sleep(0.5)
    _readback(cluster, load)
    assert not load.unexpected, load.unexpected
    outcomes = _judge(load)
    print(
        f"\nOverlord leader {leader} killed: {new_leader} leads after <= {elected_ms:.0f} ms; "
        f"it then failed master {old_master} over; history {outcomes}"
    )


# --------------------------------------------------------------------------------------------
# Adding and removing a shard under load
# --------------------------------------------------------------------------------------------


def test_add_and_remove_a_shard_under_load(zookeeper, cleanup) -> None:
    cluster = _up(cleanup, _single_shard_cluster(zookeeper.hosts, "semi-sync", replicas=1))
    with Load(cluster, keys=16) as load:
        load.wait_for_acknowledged_write(_now_ms())
        try:
            accepted = cluster.add_shard()
        except AdminError as refused:
            # The Overlord of this build does not rebalance: the refusal must reach the caller intact.
            assert refused.code is not None and "not supported" in refused.reason, refused
            return
        assert accepted
        grown = _wait_status(
            cluster,
            lambda s: sorted(s.get("placement_shards") or []) == [0, 1] and s.get("rebalance") is None,
            "the new shard owning keys",
        )
        load.wait_for_acknowledged_write(_now_ms())
        cluster.remove_shard(1)
        shrunk = _wait_status(
            cluster,
            lambda s: [x["shard_id"] for x in s["shards"]] == [0] and s.get("rebalance") is None,
            "shard 1 drained and removed",
        )
        # After a drain "at least" is not enough: benchmarks/e2e.py waits for exactly this many.
        assert cluster.wait_rebalanced(1, timeout_s=10, exactly=True)
        assert not cluster.wait_rebalanced(0, timeout_s=0.3, exactly=True)
        assert cluster.wait_rebalanced(0, timeout_s=0.3)
        load.wait_for_acknowledged_write(_now_ms())
        time.sleep(0.5)
    _readback(cluster, load)
    assert not load.unexpected, load.unexpected
    outcomes = _judge(load)
    switched = [e for e in grown["events"] + shrunk["events"] if e.get("event") == "move_switched"]
    moved = list({(e.get("rebalance"), e.get("source"), e.get("target")): e for e in switched}.values())
    print(
        f"\nadd_shard then remove_shard under load: {len(moved)} move(s) switched "
        f"({sum(e.get('keys', 0) for e in moved)} keys); history {outcomes}; no acknowledged write lost"
    )


# --------------------------------------------------------------------------------------------
# A ZooKeeper ensemble losing a server
# --------------------------------------------------------------------------------------------


def _zookeeper_mode(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"srvr")
            data = sock.recv(4096).decode(errors="replace")
    except OSError:
        return "down"
    for line in data.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def test_cluster_on_an_ensemble_survives_kill_9_of_the_zookeeper_leader(zookeeper_ensemble, cleanup) -> None:
    cluster = _up(cleanup, _single_shard_cluster(zookeeper_ensemble.hosts, "semi-sync"))
    servers = zookeeper_ensemble.servers
    leader = next(s for s in servers if _zookeeper_mode(s.host, s.client_port) == "leader")
    with Load(cluster) as load:
        load.wait_for_acknowledged_write(_now_ms())
        killed_at = _now_ms()
        leader.kill(signal.SIGKILL)
        time.sleep(0.5)
        resumed = load.wait_for_acknowledged_write(_now_ms())
        time.sleep(1.5)
        survivors = [_zookeeper_mode(s.host, s.client_port) for s in servers if s is not leader]
    _readback(cluster, load)
    assert not load.unexpected, load.unexpected
    assert "leader" in survivors, survivors
    status = _status(cluster)
    assert _master_of(status) is not None
    outcomes = _judge(load)
    print(
        f"\nZooKeeper leader {leader.server_id} killed: writes acknowledged again "
        f"{(resumed.complete_ms or 0) - killed_at:.0f} ms later; survivors {survivors}; history {outcomes}"
    )


# --------------------------------------------------------------------------------------------
# SIGSTOP until the session expires, then SIGCONT
# --------------------------------------------------------------------------------------------


def test_a_master_resumed_after_its_session_expired_acknowledges_nothing(zookeeper, cleanup) -> None:
    cluster = _up(cleanup, _single_shard_cluster(zookeeper.hosts, "semi-sync"))
    old_master_id = _master_of(_status(cluster))
    old_master = cluster.process(old_master_id)
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.ROUTING_ID, b"client-stale-raw")
    raw.connect(old_master.address)
    try:
        with Load(cluster) as load:
            load.wait_for_acknowledged_write(_now_ms())
            cluster.kill(old_master, signal.SIGSTOP, wait=False)
            stopped_at = _now_ms()
            _wait_status(cluster, lambda s: _master_of(s) not in (None, old_master_id), "failover")
            # Requests that reach the frozen master's socket: a client with a stale map would send these.
            for number in range(20):
                if number % 2:
                    raw.send(encode(Request(number, "get", [b"load-0"])))
                else:
                    raw.send(encode(Request(number, "set", [b"load-0", b"stale-write", None, None])))
            time.sleep(0.3)
            resumed_at = _now_ms()
            cluster.kill(old_master, signal.SIGCONT, wait=False)
            answers: dict[int, object] = {}
            deadline = time.monotonic() + 15
            while len(answers) < 20 and time.monotonic() < deadline:
                if raw.poll(100):
                    message = decode(raw.recv())
                    answers[message.request_id] = message  # type: ignore[attr-defined]
            load.wait_for_acknowledged_write(resumed_at)
            time.sleep(1.0)
        _readback(cluster, load)
    finally:
        raw.close(linger=0)
        context.term()
    assert not load.unexpected, load.unexpected
    responses = [m for m in answers.values() if isinstance(m, Response)]
    assert responses == [], f"the resumed master answered {responses}"
    codes = {m.code.value for m in answers.values() if isinstance(m, ErrorReply)}
    assert codes <= {"FENCED", "NOT_MASTER", "MOVED", "TIMEOUT", "STALE_EPOCH"}, codes
    late = [
        op
        for op in load.operations()
        if op.outcome == "ok" and op.node == old_master_id and op.invoke_ms > stopped_at
    ]
    assert late == [], f"acknowledged by the deposed master: {[op.describe() for op in late]}"
    with cluster.client() as check:
        assert check.get("load-0") != b"stale-write"
    outcomes = _judge(load)
    print(
        f"\nSIGSTOP {old_master_id} for {(resumed_at - stopped_at) / 1000:.1f} s then SIGCONT: "
        f"answers to its queued requests {sorted(codes) or 'none'}; 0 acknowledged by it; history {outcomes}"
    )


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_config_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "dimint.toml"
    config.write_text(
        'zookeeper = "zk1:2181,zk2:2181/dimint"\n'
        "session_timeout_ms = 3000\n"
        "[node]\n"
        'overlords = ["10.0.0.1:7000", "tcp://10.0.0.2:7000"]\n'
        "port = 7101\n"
        "heartbeat_interval_ms = 50\n"
        "max_value_bytes = 1024\n"
        "dedup_retention_ms = 30000\n"
        "at_most_once = true\n"
        "[overlord]\n"
        "replicas = 1\n"
    )
    env = {"DIMINT_PORT": "7102", "DIMINT_ADVERTISE_HOST": "db1.example", "DIMINT_CONFIG": "ignored"}
    node = load_node_config(config, environ=env, flags={"port": 7103, "options": ["write_timeout_ms=900"]})
    assert node.port == 7103  # flag > env > file
    assert node.advertise_host == "db1.example" and node.address == "tcp://db1.example:7103"
    assert node.bind_address == "tcp://127.0.0.1:7103"
    assert node.node_id == "node-db1.example-7103"
    assert node.zookeeper == "zk1:2181,zk2:2181/dimint" and node.session_timeout_ms == 3000
    assert node.overlords == ("tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000")
    assert node.node.heartbeat_interval_ms == 50 and node.node.write_timeout_ms == 900
    assert node.node.store_limits.max_value_bytes == 1024
    assert node.node.dedup.retention_ms == 30000 and node.node.at_most_once is True
    overlord = load_overlord_config(config, environ={}, flags={"replication_mode": "sync"})
    assert overlord.overlord.replicas == 1 and overlord.overlord.replication_mode == "sync"


@pytest.mark.parametrize(
    ("text", "environ", "flags", "message"),
    [
        ('port = "7100"', {}, {}, "port must be a number"),
        ("heartbeat_interval_ms = 1.5", {}, {}, "heartbeat_interval_ms must be a number (an integer)"),
        ("heartbeat_intervall_ms = 10", {}, {}, "unknown key 'heartbeat_intervall_ms'"),
        ("[node]\nreplication_mode = 'sync'", {}, {}, "unknown key 'replication_mode'"),
        ("", {"DIMINT_PORT": "seventy"}, {}, "DIMINT_PORT: port must be a number"),
        ("", {"DIMINT_COLOUR": "blue"}, {}, "DIMINT_COLOUR: unknown key 'colour'"),
        ("port = 70000", {}, {}, "port must be a port number in 0..65535"),
        ("", {}, {"options": ["advertise_port=0"]}, "advertise_port must be a port number"),
        ("bind_host = '0.0.0.0'", {}, {}, "advertise_host is '0.0.0.0'"),
        ("", {}, {"options": ["session_timeout_ms=0"]}, "session_timeout_ms must be > 0"),
        ("", {}, {"options": ["nonsense"]}, "expected KEY=VALUE"),
        ("zookeeper = 'nohostport'", {}, {}, "zookeeper must be host:port"),
        ("log_level = 'loud'", {}, {}, "log_level must be one of"),
        ("id = 'bad/id'", {}, {}, "id must be"),
        ("write_timeout_ms = -5", {}, {}, "write_timeout_ms must be a positive int"),
        ("dedup_max_clients = 0", {}, {}, "dedup_max_clients must be a positive int"),
        ("this is not toml", {}, {}, "is not valid"),
    ],
)
def test_node_config_errors_name_the_key(tmp_path, text, environ, flags, message) -> None:
    config = tmp_path / "node.toml"
    config.write_text(text + "\noverlords = ['127.0.0.1:7000']\n" if "[node]" not in text else text)
    with pytest.raises(ConfigError) as error:
        load_node_config(config, environ=environ, flags=flags)
    assert message in str(error.value)


def test_overlord_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="replication_mode must be one of async, semi-sync, sync"):
        load_overlord_config(environ={"DIMINT_REPLICATION_MODE": "quorum"})
    with pytest.raises(ConfigError, match="placement_kind must be one of"):
        load_overlord_config(environ={}, flags={"placement_kind": "hash"})
    with pytest.raises(ConfigError, match="initial_shards must be > 0"):
        load_overlord_config(environ={}, flags={"initial_shards": 0})
    with pytest.raises(ConfigError, match="unsafe_failover must be true or false"):
        load_overlord_config(environ={"DIMINT_UNSAFE_FAILOVER": "maybe"})
    with pytest.raises(ConfigError, match="overlords is required"):
        load_node_config(environ={})


def test_node_process_refuses_a_bad_config_with_a_clear_error(tmp_path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("overlords = ['127.0.0.1:7000']\nport = 'eighty'\n")
    done = subprocess.run(
        [sys.executable, "-m", "dimint.real.cli", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIMINT_")},
    )
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "port must be a number" in done.stderr


# --------------------------------------------------------------------------------------------
# The cluster CLI
# --------------------------------------------------------------------------------------------


def _cli(*args: str, state_file: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIMINT_")}
    return subprocess.run(
        [sys.executable, "-m", "dimint.real.cli", *args, "--state-file", str(state_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cluster_up_status_down_through_the_cli(tmp_path) -> None:
    state_file = tmp_path / "cluster.json"
    up = _cli("cluster", "up", "--shards", "1", "--replicas", "1", "--overlords", "1", state_file=state_file)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert "Overlords:" in up.stdout
        state = json.loads(state_file.read_text())
        kinds = sorted(p["kind"] for p in state["processes"])
        assert kinds == ["node", "node", "overlord", "zookeeper"]
        status = _cli("cluster", "status", "--json", state_file=state_file)
        assert status.returncode == 0, status.stderr
        document = json.loads(status.stdout)
        rows = {row["id"]: row for row in document["processes"]}
        assert {row["role"] for row in rows.values()} == {"master", "slave", "leader", "zookeeper"}
        assert all(row["alive"] and row["pid"] > 0 and row["address"] for row in rows.values())
        assert [shard["shard_id"] for shard in document["shards"]] == [0]
        shell = _cli("cli", "-c", "set cli:k v", "-c", "get cli:k", state_file=state_file)
        assert shell.returncode == 0 and shell.stdout.splitlines() == ["OK", '"v"'], shell.stdout
        table = _cli("cluster", "status", state_file=state_file)
        assert table.returncode == 0 and "master" in table.stdout
    finally:
        down = _cli("cluster", "down", state_file=state_file)
    assert down.returncode == 0, down.stderr
    for process in state["processes"]:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process['pid']}").exists() and time.monotonic() < deadline:
            stat = (
                Path(f"/proc/{process['pid']}/stat").read_text()
                if Path(f"/proc/{process['pid']}").exists()
                else ""
            )
            if ") Z" in stat:
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{process['pid']}").exists() or ") Z" in stat, f"{process['id']} still runs"
    assert not Path(state["base_dir"]).exists()


# --------------------------------------------------------------------------------------------
# Clean shutdown and duplicate ids
# --------------------------------------------------------------------------------------------


def _registrations(hosts: str) -> list[str]:
    from kazoo.client import KazooClient

    kazoo = KazooClient(hosts=hosts, timeout=5.0)
    kazoo.start(timeout=20)
    try:
        return sorted(kazoo.get_children("/dimint/nodes"))
    finally:
        kazoo.stop()
        kazoo.close()


def test_sigterm_closes_the_session_at_once_and_ids_stay_unique(zookeeper, cleanup) -> None:
    cluster = _up(cleanup, _single_shard_cluster(zookeeper.hosts, "semi-sync"))
    status = _status(cluster)
    master = _master_of(status)
    slave = status["shards"][0]["slaves"][0]
    # A second process under a live node's id is refused before it registers.
    duplicate = subprocess.run(
        [
            sys.executable,
            "-m",
            "dimint.real.cli",
            "node",
            "--id",
            slave,
            "--port",
            "0",
            "--advertise-port",
            "1",
            "--zookeeper",
            cluster.zookeeper_hosts,
            "--overlords",
            ",".join(cluster.overlord_addresses),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIMINT_")},
    )
    assert duplicate.returncode == 2 and "already registered" in duplicate.stderr, duplicate.stderr
    # SIGTERM: the process exits 0 and its registration is gone the moment it has exited.
    info = cluster.kill(slave, signal.SIGTERM)
    assert cluster._popen[info.pid].returncode == 0
    assert not any(name.startswith(f"{slave}_") for name in _registrations(cluster.zookeeper_hosts))
    assert "stopped cleanly" in Path(info.log).read_text()
    # A master stopped cleanly is replaced without waiting out its session timeout.
    stopped_at = time.monotonic()
    cluster.kill(master, signal.SIGTERM)
    after = _wait_status(cluster, lambda s: _master_of(s) not in (None, master), "promotion after SIGTERM")
    elapsed_ms = (time.monotonic() - stopped_at) * 1000
    print(
        f"\nSIGTERM of master {master}: {_master_of(after)} promoted {elapsed_ms:.0f} ms later "
        f"(session timeout {cluster.session_timeout_ms} ms)"
    )
