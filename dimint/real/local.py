"""A whole DiMint cluster on loopback: ZooKeeper, data nodes and Overlords as real processes.

Why real processes: the real runtime's claims (a ``kill -9``'d master is replaced, a SIGSTOPped one
is fenced, a malformed frame kills nothing) are claims about processes, sockets and ZooKeeper
sessions. ``LocalCluster`` starts a standalone ZooKeeper from the Debian package in a temporary
directory (or uses an external ensemble under a fresh chroot, so many clusters can share one
ensemble), then ``shards x (1 + replicas)`` node processes and ``overlords`` Overlord processes,
each ``python -m dimint.real.cli node|overlord ...`` on a free loopback port with its own log
file. ``up()`` returns once the cluster map names a master for every shard and every member
reports the role the map gives it.

The cluster is described by a JSON state file (ZooKeeper hosts, every process's kind, id, pid,
address and log path), so ``dimint cluster status`` or ``down`` in another process can find it
again: ``LocalCluster.load(state_file)``. Processes run in their own sessions, so they outlive the
``dimint cluster up`` command that started them; before signalling a pid read back from a state
file we check that it still runs a DiMint (or ZooKeeper) command line, so a recycled pid is never
killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dimint
from dimint.core.clustermap import REPLICATION_MODES
from dimint.core.errors import ErrorCode
from dimint.real.client import AdminError, Client
from dimint.real.config import keys_for
from dimint.real.zk import ZooKeeperCluster, free_port

__all__ = ["ClusterError", "LocalCluster", "ProcessInfo", "default_state_file"]

STATE_VERSION = 1


class ClusterError(RuntimeError):
    """The local cluster could not be started, found or changed; the message says why."""


def default_state_file() -> Path:
    """``$DIMINT_STATE_FILE``, else one file per user in the temporary directory."""
    configured = os.environ.get("DIMINT_STATE_FILE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"dimint-cluster-{os.getuid()}.json"


@dataclass
class ProcessInfo:
    """One process of the cluster, as recorded in the state file."""

    kind: str  # "zookeeper", "node" or "overlord"
    id: str
    pid: int
    address: str
    log: str
    port: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _runs_ours(pid: int, kind: str) -> bool:
    """Does ``pid`` still run the command we started (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    marker = b"zookeeper" if kind == "zookeeper" else b"dimint.real.cli"
    return marker in cmdline


class LocalCluster:
    """Start, inspect, change and stop a cluster on loopback. See the module docstring."""

    def __init__(
        self,
        shards: int = 2,
        replicas: int = 1,
        overlords: int = 3,
        mode: str = "semi-sync",
        *,
        zookeeper: str | None = None,
        base_dir: str | Path | None = None,
        state_file: str | Path | None = None,
        session_timeout_ms: int = 2000,
        host: str = "127.0.0.1",
        log_level: str = "info",
        node_options: dict[str, Any] | None = None,
        overlord_options: dict[str, Any] | None = None,
        python: str = sys.executable,
    ) -> None:
        if shards < 1 or replicas < 0 or overlords < 1:
            raise ClusterError("a cluster needs shards >= 1, replicas >= 0 and overlords >= 1")
        if mode not in REPLICATION_MODES:
            raise ClusterError(f"mode must be async, semi-sync or sync, got {mode!r}")
        self.shards = shards
        self.replicas = replicas
        self.overlord_count = overlords
        self.mode = mode
        self.external_zookeeper = zookeeper
        self.session_timeout_ms = session_timeout_ms
        self.host = host
        self.log_level = log_level
        self.node_options = dict(node_options or {})
        self.overlord_options = dict(overlord_options or {})
        if "join_policy" in keys_for("overlord"):
            # New shards only when asked (``add_shard``), so that starting nodes and asking for a
            # shard is one deliberate step rather than a race with the leader's own growth policy.
            self.overlord_options.setdefault("join_policy", "fill-only")
        self.python = python
        self._owns_base_dir = base_dir is None
        self.base_dir = (
            Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="dimint-cluster-"))
        )
        self.state_file = Path(state_file) if state_file is not None else self.base_dir / "cluster.json"
        self.zookeeper_hosts = ""
        self.zk: ZooKeeperCluster | None = None
        self.processes: list[ProcessInfo] = []
        self.overlord_addresses: list[str] = []
        self._popen: dict[int, subprocess.Popen[bytes]] = {}
        self._next_node = 1
        self._client: Client | None = None

    # ------------------------------------------------------------ starting

    def up(self, timeout_s: float = 90.0) -> LocalCluster:
        """Start ZooKeeper (unless external), the Overlords and the nodes; wait until serving."""
        try:
            (self.base_dir / "logs").mkdir(parents=True, exist_ok=True)
            self._start_zookeeper()
            self.overlord_addresses = []
            overlord_ports = [free_port(self.host) for _ in range(self.overlord_count)]
            self.overlord_addresses = [f"tcp://{self.host}:{port}" for port in overlord_ports]
            started = [
                self._spawn("overlord", f"o{index + 1}", port) for index, port in enumerate(overlord_ports)
            ]
            for _ in range(self.shards * (1 + self.replicas)):
                started.append(self._spawn_node())
            for info in started:
                self._wait_ready(info)
            self.write_state()
            self.wait_serving(timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    def _start_zookeeper(self) -> None:
        if self.external_zookeeper:
            chroot = f"/dimint-local-{uuid.uuid4().hex[:12]}"
            from kazoo.client import KazooClient

            base_hosts = self.external_zookeeper.split("/", 1)[0]
            kazoo = KazooClient(hosts=base_hosts, timeout=10.0)
            kazoo.start(timeout=30)
            try:
                kazoo.ensure_path(chroot)
            finally:
                kazoo.stop()
                kazoo.close()
            self.zookeeper_hosts = base_hosts + chroot
            return
        self.zk = ZooKeeperCluster(size=1, host=self.host, base_dir=self.base_dir / "zookeeper")
        self.zk.start()
        self.zookeeper_hosts = self.zk.hosts
        for server in self.zk.servers:
            assert server.process is not None
            self.processes.append(
                ProcessInfo(
                    "zookeeper",
                    f"zk{server.server_id}",
                    server.process.pid,
                    server.address,
                    str(server.log_path),
                    server.client_port,
                )
            )

    def _command(self, kind: str, identifier: str, port: int, log: Path) -> list[str]:
        command = [
            self.python,
            "-m",
            "dimint.real.cli",
            kind,
            "--id",
            identifier,
            "--bind-host",
            self.host,
            "--port",
            str(port),
            "--zookeeper",
            self.zookeeper_hosts,
            "--session-timeout-ms",
            str(self.session_timeout_ms),
            "--log-file",
            str(log),
            "--log-level",
            self.log_level,
        ]
        if kind == "node":
            command += ["--overlords", ",".join(self.overlord_addresses)]
            options = self.node_options
        else:
            command += [
                "--shards",
                str(self.shards),
                "--replicas",
                str(self.replicas),
                "--mode",
                self.mode,
            ]
            options = self.overlord_options
        for name, value in options.items():
            text = json.dumps(value) if isinstance(value, dict | list | bool) or value is None else str(value)
            command += ["-o", f"{name}={text}"]
        return command

    def _environment(self) -> dict[str, str]:
        # The cluster's processes are configured by this object's flags alone: a DIMINT_* variable of
        # the caller's shell (a test's, a notebook's) must neither change them nor be refused by them.
        env = {name: value for name, value in os.environ.items() if not name.startswith("DIMINT_")}
        root = str(Path(dimint.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, kind: str, identifier: str, port: int) -> ProcessInfo:
        log = self.base_dir / "logs" / f"{identifier}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                self._command(kind, identifier, port, log),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                start_new_session=True,
            )
        self._popen[process.pid] = process
        info = ProcessInfo(kind, identifier, process.pid, f"tcp://{self.host}:{port}", str(log), port)
        self.processes.append(info)
        return info

    def _spawn_node(self) -> ProcessInfo:
        identifier = f"n{self._next_node:02d}"
        self._next_node += 1
        return self._spawn("node", identifier, free_port(self.host))

    def _wait_ready(self, info: ProcessInfo, timeout_s: float = 30.0) -> None:
        """Wait for the process's ready line; a lost race for its port is retried on a new port."""
        for attempt in range(3):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                text = Path(info.log).read_text(errors="replace") if Path(info.log).exists() else ""
                if '"event": "ready"' in text:
                    return
                process = self._popen.get(info.pid)
                if process is not None and process.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                raise ClusterError(f"{info.kind} {info.id} did not start in {timeout_s}s; see {info.log}")
            tail = "\n".join(text.splitlines()[-5:])
            if "cannot bind" in text and info.kind == "node" and attempt < 2:
                self.processes.remove(info)
                Path(info.log).unlink(missing_ok=True)
                replacement = self._spawn(info.kind, info.id, free_port(self.host))
                info.pid, info.address, info.port = replacement.pid, replacement.address, replacement.port
                self.processes.remove(replacement)
                self.processes.append(info)
                continue
            raise ClusterError(f"{info.kind} {info.id} exited at start; {info.log} says:\n{tail}")

    def client(self, **options: Any) -> Client:
        """A new client of this cluster (the caller closes it)."""
        return Client(self.overlord_addresses, **options)

    def _admin_client(self) -> Client:
        if self._client is None:
            self._client = Client(self.overlord_addresses, timeout=5.0)
        return self._client

    def wait_serving(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Until every shard has a master and every member reports the role the map gives it."""
        deadline = time.monotonic() + timeout_s
        why = "no Overlord answered"
        while time.monotonic() < deadline:
            try:
                status = self._admin_client().cluster_status(timeout=1.0)
            except Exception as exc:
                why = str(exc)
                time.sleep(0.2)
                continue
            ok, why = self._serving(status)
            if ok:
                return status
            time.sleep(0.1)
        raise ClusterError(f"the cluster did not come up within {timeout_s}s: {why}")

    def _serving(self, status: dict[str, Any]) -> tuple[bool, str]:
        shards = status.get("shards") or []
        if len(shards) < self.shards:
            return False, f"map has {len(shards)} of {self.shards} shards"
        reports = status.get("nodes") or {}
        for shard in shards:
            master = shard.get("master")
            if master is None:
                return False, f"shard {shard.get('shard_id')} has no master"
            if (reports.get(master) or {}).get("role") != "master":
                return False, f"{master} does not report itself master yet"
            for slave in shard.get("slaves") or []:
                if (reports.get(slave) or {}).get("role") != "slave":
                    return False, f"{slave} does not report itself slave yet"
        return True, "serving"

    # ------------------------------------------------------------ state file

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "base_dir": str(self.base_dir),
            "owns_base_dir": self._owns_base_dir,
            "zookeeper": self.zookeeper_hosts,
            "external_zookeeper": self.external_zookeeper,
            "shards": self.shards,
            "replicas": self.replicas,
            "mode": self.mode,
            "session_timeout_ms": self.session_timeout_ms,
            "host": self.host,
            "log_level": self.log_level,
            "node_options": self.node_options,
            "overlord_options": self.overlord_options,
            "overlords": self.overlord_addresses,
            "next_node": self._next_node,
            "processes": [info.to_dict() for info in self.processes],
        }

    def write_state(self) -> Path:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state(), indent=2) + "\n")
        temporary.replace(self.state_file)
        return self.state_file

    @classmethod
    def load(cls, state_file: str | Path) -> LocalCluster:
        """Attach to a cluster started elsewhere (by ``dimint cluster up``)."""
        path = Path(state_file)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster state file at {path}: start one with `dimint cluster up`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read cluster state file {path}: {exc}") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ClusterError(f"{path} is not a DiMint cluster state file (version {STATE_VERSION})")
        cluster = cls(
            shards=state["shards"],
            replicas=state["replicas"],
            overlords=max(1, len(state["overlords"])),
            mode=state["mode"],
            zookeeper=state.get("external_zookeeper"),
            base_dir=state["base_dir"],
            state_file=path,
            session_timeout_ms=state["session_timeout_ms"],
            host=state.get("host", "127.0.0.1"),
            log_level=state.get("log_level", "info"),
            node_options=state.get("node_options"),
            overlord_options=state.get("overlord_options"),
        )
        cluster._owns_base_dir = bool(state.get("owns_base_dir"))
        cluster.zookeeper_hosts = state["zookeeper"]
        cluster.overlord_addresses = list(state["overlords"])
        cluster._next_node = int(state.get("next_node", 1))
        cluster.processes = [ProcessInfo(**item) for item in state["processes"]]
        return cluster

    # ------------------------------------------------------------ inspecting

    def process(self, identifier: str) -> ProcessInfo:
        for info in self.processes:
            if info.id == identifier or info.address == identifier:
                return info
        raise ClusterError(f"no process {identifier!r} in this cluster")

    def alive(self, info: ProcessInfo) -> bool:
        process = self._popen.get(info.pid)
        if process is not None:
            return process.poll() is None
        return _pid_alive(info.pid) and _runs_ours(info.pid, info.kind)

    def status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The leader's status plus one row per process: kind, id, role, shard, pid, address, alive."""
        try:
            status = self._admin_client().cluster_status(timeout=timeout_s)
        except Exception as exc:
            status = {"error": str(exc), "shards": [], "nodes": {}, "overlords": []}
        roles: dict[str, tuple[str, int | None]] = {}
        for shard in status.get("shards") or []:
            if shard.get("master"):
                roles[shard["master"]] = ("master", shard["shard_id"])
            for slave in shard.get("slaves") or []:
                roles[slave] = ("slave", shard["shard_id"])
        overlord_roles = {o["address"]: o["role"] for o in status.get("overlords") or []}
        rows = []
        for info in self.processes:
            alive = self.alive(info)
            if info.kind == "node":
                role, shard = roles.get(info.id, ("spare", None))
                report = (status.get("nodes") or {}).get(info.id) or {}
                role = role if alive else "dead"
                extra = {"keys": report.get("keys"), "applied_seq": report.get("applied_seq")}
            elif info.kind == "overlord":
                role, shard, extra = overlord_roles.get(info.address, "unknown"), None, {}
                role = role if alive else "dead"
            else:
                role, shard, extra = ("zookeeper" if alive else "dead"), None, {}
            rows.append({**info.to_dict(), "alive": alive, "role": role, "shard": shard, **extra})
        status["processes"] = rows
        status["zookeeper"] = self.zookeeper_hosts
        status["state_file"] = str(self.state_file)
        return status

    # ------------------------------------------------------------ changing

    def start_node(self) -> ProcessInfo:
        """One more node process (it registers as a spare; the leader decides what it serves)."""
        info = self._spawn_node()
        self._wait_ready(info)
        self.write_state()
        return info

    def add_shard(self, timeout_s: float = 30.0) -> Any:
        """Start ``1 + replicas`` new nodes, then ask the Overlord leader for a shard made of spares.

        The leader counts a spare once it has seen its registration; until then it answers
        UNAVAILABLE, so that answer is retried until ``timeout_s``. Other refusals are raised.
        """
        new = [self._spawn_node() for _ in range(1 + self.replicas)]
        for info in new:
            self._wait_ready(info)
        self.write_state()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._admin_client().add_shard()
            except AdminError as exc:
                if exc.code is not ErrorCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def remove_shard(self, shard_id: int) -> Any:
        """Ask the Overlord leader to drain and remove ``shard_id`` (its nodes keep running as spares)."""
        return self._admin_client().remove_shard(shard_id)

    def wait_rebalanced(self, owning_shards: int, timeout_s: float = 300.0, *, exactly: bool = False) -> bool:
        """Until at least ``owning_shards`` shards own keys (with ``exactly``, that many: a drain ends
        with one fewer) and no rebalance is in progress."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            owning = len(status.get("placement_shards", []))
            settled = owning == owning_shards if exactly else owning >= owning_shards
            if settled and status.get("rebalance") is None:
                return True
            time.sleep(0.05)
        return False

    def last_rebalance(self) -> dict[str, Any] | None:
        """The newest rebalance in the leader's event log, as the leader metered it.

        ``rebalance`` (its id), ``started_ms`` and ``finished_ms`` (the leader's clock; ``finished_ms``
        None while it runs), and ``keys_moved``/``bytes_moved`` summed over its switched moves.
        """
        events = self.status().get("events", [])
        started = [e for e in events if e["event"] == "rebalance_started"]
        if not started:
            return None
        rebalance_id = started[-1]["rebalance"]
        mine = [e for e in events if e.get("rebalance") == rebalance_id]
        moves = [e for e in mine if e["event"] == "move_switched"]
        finished = [e["time_ms"] for e in mine if e["event"] == "rebalance_finished"]
        return {
            "rebalance": rebalance_id,
            "started_ms": started[-1]["time_ms"],
            "finished_ms": finished[-1] if finished else None,
            "keys_moved": sum(e.get("keys", 0) for e in moves),
            "bytes_moved": sum(e.get("bytes", 0) for e in moves),
        }

    def kill(self, process: ProcessInfo | str, sig: int = signal.SIGKILL, wait: bool = True) -> ProcessInfo:
        """Send ``sig`` (default ``kill -9``) to a process of the cluster, by id, address or info."""
        info = process if isinstance(process, ProcessInfo) else self.process(process)
        popen = self._popen.get(info.pid)
        if popen is None and not _runs_ours(info.pid, info.kind):
            return info  # gone already (or the pid was recycled: never signal a stranger)
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, sig)
        if wait and sig in (signal.SIGKILL, signal.SIGTERM):
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and self.alive(info):
                if popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        popen.wait(timeout=0.05)
                else:
                    time.sleep(0.05)
        if self.zk is not None and info.kind == "zookeeper":
            for server in self.zk.servers:
                if server.process is not None and server.process.pid == info.pid:
                    server.process.poll()
        return info

    def down(self) -> None:
        """Stop everything (SIGTERM, then SIGKILL), ZooKeeper too, and remove the temporary directory."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        ours = [p for p in self.processes if p.kind != "zookeeper"]
        for info in ours:
            if self.alive(info):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for info in ours:
            while self.alive(info) and time.monotonic() < deadline:
                popen = self._popen.get(info.pid)
                if popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        popen.wait(timeout=0.05)
                else:
                    time.sleep(0.05)
            if self.alive(info):
                self.kill(info, signal.SIGKILL)
        for popen in self._popen.values():
            with contextlib.suppress(Exception):
                popen.wait(timeout=1)
        if self.zk is not None:
            self.zk.stop()
        elif self.external_zookeeper:
            self._remove_chroot()
        else:
            for info in self.processes:
                if info.kind == "zookeeper" and _pid_alive(info.pid) and _runs_ours(info.pid, info.kind):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(info.pid, signal.SIGKILL)
        self.processes = []
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if self.state_file.exists() and not str(self.state_file).startswith(str(self.base_dir)):
            with contextlib.suppress(OSError):
                self.state_file.unlink()

    def _remove_chroot(self) -> None:
        """Leave an external ensemble as we found it: drop this cluster's chroot (map, elections)."""
        base_hosts, _, chroot = self.zookeeper_hosts.partition("/")
        if not chroot.startswith("dimint-local-"):
            return
        from kazoo.client import KazooClient

        kazoo = KazooClient(hosts=base_hosts, timeout=5.0)
        try:
            kazoo.start(timeout=10)
            kazoo.delete("/" + chroot, recursive=True)
        except Exception:  # best effort: a leftover chroot is harmless
            pass
        finally:
            with contextlib.suppress(Exception):
                kazoo.stop()
                kazoo.close()

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------ helpers for tests and demos

    def nodes(self) -> list[ProcessInfo]:
        return [p for p in self.processes if p.kind == "node"]

    def overlords(self) -> list[ProcessInfo]:
        return [p for p in self.processes if p.kind == "overlord"]

    def collect_logs(self, lines: int = 40) -> str:
        """The tail of every process's log, for a failing test's report."""
        chunks = []
        for info in self.processes:
            path = Path(info.log)
            if path.exists():
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                chunks.append(f"--- {info.kind} {info.id} ({info.log})\n{tail}")
        return "\n".join(chunks)
