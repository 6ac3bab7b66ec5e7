"""Start real ZooKeeper servers (the Debian package) on loopback, for tests, demos and `cluster up`.

Why not mock: DiMint's fencing and failover depend on ZooKeeper's real session-expiry and watch
behaviour, which a mock would only restate. Each server runs as its own JVM from the Debian
``zookeeper`` package in a private temporary directory, so tests can start a standalone server or a
3-server ensemble, ``kill -9`` one of them, and clean everything up afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

_LOG4J = """\
log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] %-5p %c{1} - %m%n
"""


class ZooKeeperUnavailable(RuntimeError):
    """Java or the Debian zookeeper package is missing, or a server did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice, so concurrent tests don't clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ruok(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"srvr")
            data = sock.recv(4096)
            return b"Mode:" in data
    except OSError:
        return False


@dataclass
class ZooKeeperServer:
    """One ZooKeeper JVM; part of an ensemble when ``peers`` has more than one entry."""

    server_id: int
    client_port: int
    data_dir: Path
    peers: list[tuple[int, int, int]]  # (server id, quorum port, election port)
    host: str = "127.0.0.1"
    tick_time_ms: int = 200
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.client_port}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "log4j.properties").write_text(_LOG4J)
        lines = [
            f"tickTime={self.tick_time_ms}",
            "initLimit=50",
            "syncLimit=25",
            f"dataDir={self.data_dir / 'data'}",
            f"clientPort={self.client_port}",
            f"clientPortAddress={self.host}",
            # Short sessions are the point of the tests; allow them explicitly.
            f"minSessionTimeout={2 * self.tick_time_ms}",
            "maxSessionTimeout=60000",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,ruok,stat,mntr",
            "maxClientCnxns=0",
        ]
        if len(self.peers) > 1:
            for sid, quorum_port, election_port in self.peers:
                lines.append(f"server.{sid}={self.host}:{quorum_port}:{election_port}")
            (self.data_dir / "data").mkdir(exist_ok=True)
            (self.data_dir / "data" / "myid").write_text(f"{self.server_id}\n")
        cfg = conf / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self) -> None:
        cfg = self._write_config()
        java = shutil.which("java")
        if java is None or not ZOOKEEPER_JAR.exists():
            raise ZooKeeperUnavailable(
                "ZooKeeper needs Java and the Debian 'zookeeper' package; run scripts/test.sh to install them"
            )
        self.log_path = self.data_dir / "server.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                java,
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-Dzookeeper.admin.enableServer=false",
                "-cp",
                f"{cfg.parent}:{ZOOKEEPER_JAR}",
                MAIN_CLASS,
                str(cfg),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def is_serving(self) -> bool:
        return self.process is not None and self.process.poll() is None and _ruok(self.host, self.client_port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill for real (default ``kill -9``); the data directory stays for a restart."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ZooKeeperCluster:
    """A standalone server (``size=1``) or an ensemble on loopback ports, in a temporary directory."""

    size: int = 1
    host: str = "127.0.0.1"
    tick_time_ms: int = 200
    base_dir: Path | None = None
    servers: list[ZooKeeperServer] = field(default_factory=list)
    _owns_dir: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a ZooKeeper cluster needs at least one server")
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="dimint-zk-"))
            self._owns_dir = True
        peers = [(sid, free_port(self.host), free_port(self.host)) for sid in range(1, self.size + 1)]
        self.servers = [
            ZooKeeperServer(
                server_id=sid,
                client_port=free_port(self.host),
                data_dir=self.base_dir / f"zk{sid}",
                peers=peers if self.size > 1 else [],
                host=self.host,
                tick_time_ms=self.tick_time_ms,
            )
            for sid, _, _ in peers
        ]

    @property
    def hosts(self) -> str:
        """The kazoo connection string: every server, comma-separated."""
        return ",".join(s.address for s in self.servers)

    def start(self, timeout_s: float = 60.0) -> ZooKeeperCluster:
        for server in self.servers:
            server.start()
        self.wait_serving(timeout_s)
        return self

    def wait_serving(self, timeout_s: float = 60.0, servers: list[ZooKeeperServer] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(servers if servers is not None else [s for s in self.servers if s.process])
        while pending:
            for server in list(pending):
                if server.process is not None and server.process.poll() is not None:
                    raise ZooKeeperUnavailable(
                        f"ZooKeeper server {server.server_id} exited with {server.process.returncode}:\n"
                        + server.log_tail()
                    )
                if server.is_serving():
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(s.log_tail() for s in pending)
                raise ZooKeeperUnavailable(f"ZooKeeper did not start within {timeout_s}s:\n{tails}")
            if pending:
                time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.kill(signal.SIGKILL)
        if self._owns_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
