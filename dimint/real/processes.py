"""Process mains: ``run_node`` and ``run_overlord`` host one core machine each until SIGTERM.

Why a process is this small: all protocol logic is in the machine; the process only binds its
socket, opens its ZooKeeper session through the host, and shuts down cleanly. A clean shutdown
(SIGTERM or SIGINT) closes the ZooKeeper session, so the node's ephemeral registration vanishes at
once and the Overlord leader fails it over without waiting out the session timeout; ``kill -9`` is
the crash case that the session timeout exists for.

Start-up prints one JSON line (``{"event": "ready", ...}``) on stdout once the socket is bound, so a
supervisor (``LocalCluster``, a test) knows the address and pid. Exit codes: 0 after a clean stop,
2 for a configuration or start-up error (with a one-line reason on stderr), 70 when the machine
failed (a bug in DiMint: the log has the input and the traceback).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
from typing import Any

import zmq

from dimint.core import layout
from dimint.core.effects import Machine
from dimint.core.node import DataNode
from dimint.core.overlord import Overlord
from dimint.core.protocol import MigrateBatch, Replicate, ReplicateAck, Response
from dimint.real.config import NodeProcessConfig, OverlordProcessConfig
from dimint.real.runtime import JsonLogFormatter, RealHost
from dimint.real.transport import Transport, TransportOptions

__all__ = ["EXIT_MACHINE_FAILED", "EXIT_START_FAILED", "StartError", "run_node", "run_overlord"]

EXIT_START_FAILED = 2
EXIT_MACHINE_FAILED = 70

logger = logging.getLogger(__name__)

#: The hot path's outbound messages, encoded without re-validation: their fields are the machine's
#: own counters and ids, or values that came in through the validating decoder (a Response's value,
#: a Replicate's writes); msgpack still refuses what it cannot pack (counted as ``encode_error``).
_TRUSTED = frozenset({Response, Replicate, ReplicateAck, MigrateBatch})


class StartError(RuntimeError):
    """The process cannot start (port in use, duplicate node id, ...); the message says why."""


def configure_logging(level: str, log_file: str | None) -> None:
    """JSON lines to ``log_file`` (or stderr). Traces of the machine go to the same place."""
    handler: logging.Handler
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("kazoo").setLevel(max(logging.WARNING, root.level))


def _announce(kind: str, identifier: str, address: str, bound: str | None) -> None:
    line = {
        "event": "ready",
        "kind": kind,
        "id": identifier,
        "address": address,
        "bound": bound,
        "pid": os.getpid(),
    }
    print(json.dumps(line), flush=True)


def _check_node_id_free(config: NodeProcessConfig) -> None:
    """Refuse to start under a node id a *different* live process registered.

    Two processes with one id would look to the Overlord like one node restarting over and over.
    A registration of ours at the same address is a previous incarnation of this very node whose
    session has not expired yet: that is a restart, and allowed.
    """
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError

    client = KazooClient(hosts=config.zookeeper, timeout=min(10.0, config.session_timeout_ms / 1000))
    try:
        client.start(timeout=15)
    except Exception as exc:
        raise StartError(f"cannot reach ZooKeeper at {config.zookeeper}: {exc}") from None
    try:
        try:
            children = client.get_children(layout.NODES_PATH)
        except NoNodeError:
            return
        for name in children:
            parsed = layout.parse_node_znode(name)
            if parsed is None or parsed[0] != config.node_id:
                continue
            try:
                raw, _ = client.get(f"{layout.NODES_PATH}/{name}")
            except NoNodeError:
                continue
            address = layout.decode_payload(raw).get("address")
            if address != config.address:
                raise StartError(
                    f"node id {config.node_id!r} is already registered by a live process at {address}; "
                    f"give this node another id (or wait {config.session_timeout_ms} ms for that "
                    "session to expire if that process is dead)"
                )
    finally:
        client.stop()
        client.close()


def _serve(
    kind: str,
    identifier: str,
    machine_factory: Any,
    address: str,
    bind_address: str,
    zookeeper: str,
    session_timeout_ms: int,
    transport_options: TransportOptions,
    stall_threshold_ms: int | None,
) -> int:
    context = zmq.Context()
    try:
        transport = Transport(address, bind_address, transport_options, context, trusted=_TRUSTED)
    except zmq.ZMQError as exc:
        context.term()
        raise StartError(f"cannot bind {bind_address}: {exc}") from None
    machine: Machine = machine_factory()
    host = RealHost(
        machine,
        transport,
        address=address,
        coord_hosts=zookeeper,
        session_timeout_ms=session_timeout_ms,
        stall_threshold_ms=stall_threshold_ms,
        stats_interval_ms=1000,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s %s: signal %d, stopping", kind, identifier, signum)
        host.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _announce(kind, identifier, address, transport.bound_address)
    logger.info(
        "%s %s serving at %s (bound %s), ZooKeeper %s",
        kind,
        identifier,
        address,
        transport.bound_address,
        zookeeper,
    )
    try:
        host.run()
    finally:
        host.close()
        context.term()
    if host.failure is not None:
        logger.critical("%s %s stopped by a machine failure: %r", kind, identifier, host.failure)
        return EXIT_MACHINE_FAILED
    logger.info("%s %s stopped cleanly (stats %s)", kind, identifier, dict(transport.stats))
    return 0


def run_node(config: NodeProcessConfig) -> int:
    """Run a data node until SIGTERM; returns the process exit code (see module docstring)."""
    configure_logging(config.log_level, config.log_file)
    _check_node_id_free(config)
    # The incarnation drawn from this rng must differ between processes; the seed is logged so a
    # run can be replayed against the simulator's expectations.
    seed = random.SystemRandom().getrandbits(64)
    logger.info("node %s rng seed %d", config.node_id, seed)
    return _serve(
        "node",
        config.node_id,
        lambda: DataNode(config.node_id, config.address, config.overlords, config.node, random.Random(seed)),
        config.address,
        config.bind_address,
        config.zookeeper,
        config.session_timeout_ms,
        config.transport,
        config.stall_threshold_ms,
    )


def run_overlord(config: OverlordProcessConfig) -> int:
    """Run an Overlord until SIGTERM; returns the process exit code."""
    configure_logging(config.log_level, config.log_file)
    seed = random.SystemRandom().getrandbits(64)
    logger.info("overlord %s rng seed %d", config.overlord_id, seed)
    return _serve(
        "overlord",
        config.overlord_id,
        lambda: Overlord(config.overlord_id, config.address, config.overlord, random.Random(seed)),
        config.address,
        config.bind_address,
        config.zookeeper,
        config.session_timeout_ms,
        config.transport,
        config.stall_threshold_ms,
    )
