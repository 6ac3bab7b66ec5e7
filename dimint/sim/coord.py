"""A model of ZooKeeper and of a kazoo-like client, for the simulator.

Theory of operation
-------------------
``CoordServiceModel`` is one logical ZooKeeper: the ensemble is modelled as a single server that is
always up (quorum loss is not modelled) except during an explicit ``outage(duration_ms)``. It holds a
znode tree with ZooKeeper's semantics: data versions (+1 per set), ``cversion`` (+1 per child
create/delete), ephemeral owners, sequential names (the parent's ``cversion`` as a 10-digit zero-padded
suffix, exactly as ZooKeeper does, so numbers can skip after deletes), a global ``zxid`` stamped on
every change (``czxid``/``mzxid``/``pzxid``), and one-shot watches per session. A session expires
when the server hears nothing on it for ``session_timeout_ms``: its watches are forgotten, then its
ephemerals are deleted (firing other sessions' watches), and its connection is closed.

``SimCoordClient`` is the per-host client with the interface the real kazoo adapter has:
``execute(effect)`` for the ``Coord*`` effects, results and events handed back as core inputs through
``deliver``. Client and server talk over the simulated network as *stream* traffic
(``SimNetwork.send(..., reliable=True)``), which is FIFO and never randomly lost, like ZooKeeper's TCP
connection; partitions hold it, pauses queue it, crashes sever it. Their messages are private
dataclasses of this module.

Client timing follows kazoo: with session timeout ``T`` the client pings every ``T/3``
(``PING_FRACTION``), and if it hears nothing from the server for ``2T/3`` (``READ_TIMEOUT_FRACTION``,
kazoo's read timeout) it declares the connection lost: ``SUSPENDED`` is delivered, in-flight requests
fail with ``CONNECTION_LOSS`` (outcome unknown), and it starts reconnecting at once, retrying every
``T/3`` plus a little seeded jitter. A reconnect that finds the session alive delivers ``CONNECTED``
with the same session id; one that finds it expired delivers ``LOST`` then, once a new session is
open, ``CONNECTED`` with the new id. A client that stays cut off remains ``SUSPENDED``: like kazoo, it
learns of expiry only from the server. The server closing a connection (session expiry, outage)
reaches the client as a message, like a TCP reset, and is handled as connection loss.

Ordering, as ZooKeeper guarantees it: every connection is one FIFO stream; the server applies a
session's requests in arrival order and answers in that order; a change's watch events are sent
before the reply to the request that caused it and before any later reply on that session, so a
watch event always reaches a client before the result of a later read that observes the change.

Watches survive a ``SUSPENDED -> CONNECTED`` reconnect the way ZooKeeper makes them survive: each
connection has its own server-side watches, the client keeps its list of armed watches and the last
zxid it saw, and re-registers them when it reconnects; the server fires at once every watch whose node
changed after that zxid. On ``LOST`` the client forgets them all. A session that holds a data watch
and a child watch on a node that is deleted gets one ``DELETED`` event for it.

Misuse that ZooKeeper answers with errors that ``CoordErrorKind`` does not have (a malformed path,
deleting ``/``, a child under an ephemeral node) is a DiMint bug and raises ``LocalProtocolError``,
failing the run loudly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from dimint.core.effects import (
    CoordCreate,
    CoordDelete,
    CoordErrorKind,
    CoordList,
    CoordRead,
    CoordResult,
    CoordSet,
    Effect,
    Input,
    SessionState,
    SessionStateChanged,
    WatchFired,
    WatchKind,
)
from dimint.core.errors import LocalProtocolError
from dimint.core.layout import validate_path
from dimint.sim.network import SimNetwork
from dimint.sim.trace import Tracer

__all__ = [
    "PING_FRACTION",
    "READ_TIMEOUT_FRACTION",
    "RECONNECT_FRACTION",
    "CoordServiceModel",
    "SimCoordClient",
]

PING_FRACTION = 1 / 3
"""The client pings every ``session_timeout * PING_FRACTION`` (kazoo: half its read timeout)."""

READ_TIMEOUT_FRACTION = 2 / 3
"""Silence for ``session_timeout * READ_TIMEOUT_FRACTION`` means connection lost (kazoo's value)."""

RECONNECT_FRACTION = 1 / 3
"""A connection attempt unanswered for ``session_timeout * RECONNECT_FRACTION`` is retried."""

RECONNECT_JITTER = 0.1
"""Each retry waits up to this fraction longer, drawn from the client's rng, so clients drift apart."""

CoordOp = CoordCreate | CoordSet | CoordDelete | CoordRead | CoordList


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


# --------------------------------------------------------------------------------------------
# Wire messages between client and service (private: not dimint.core.protocol)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Connect:
    """Open a connection: a new session when ``session_id`` is 0, else resume that session."""

    connection_id: int
    session_id: int
    timeout_ms: int
    last_zxid: int
    data_watches: tuple[str, ...] = ()
    exist_watches: tuple[str, ...] = ()
    child_watches: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _ConnectAck:
    connection_id: int
    session_id: int


@dataclass(frozen=True, slots=True)
class _ConnectRefused:
    """The session asked for has expired (or never existed): the client must report LOST."""

    connection_id: int
    session_id: int


@dataclass(frozen=True, slots=True)
class _Ping:
    connection_id: int
    session_id: int


@dataclass(frozen=True, slots=True)
class _Pong:
    connection_id: int


@dataclass(frozen=True, slots=True)
class _Request:
    connection_id: int
    session_id: int
    xid: int
    op: CoordOp


@dataclass(frozen=True, slots=True)
class _Response:
    connection_id: int
    xid: int
    zxid: int
    result: CoordResult


@dataclass(frozen=True, slots=True)
class _WatchEvent:
    connection_id: int
    zxid: int
    path: str
    kind: WatchKind


@dataclass(frozen=True, slots=True)
class _Close:
    session_id: int


@dataclass(frozen=True, slots=True)
class _Disconnected:
    """The server closed this connection (expiry, outage): a TCP reset, as the client sees it."""

    connection_id: int


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Znode:
    data: bytes
    czxid: int
    mzxid: int
    pzxid: int
    version: int = 0
    cversion: int = 0
    ephemeral_owner: int = 0
    children: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Session:
    session_id: int
    owner: str
    timeout_ms: int
    last_heard: float
    connection_id: int | None
    check_pending: bool = False
    ephemerals: set[str] = field(default_factory=set)
    data_watches: set[str] = field(default_factory=set)
    child_watches: set[str] = field(default_factory=set)


class CoordServiceModel:
    """One logical ZooKeeper on the simulated network. See the module docstring."""

    def __init__(
        self, env: simpy.Environment, network: SimNetwork, tracer: Tracer, address: str = "zk"
    ) -> None:
        self._env = env
        self._network = network
        self._tracer = tracer
        self.address = address
        self._zxid = 0
        self._nodes: dict[str, _Znode] = {"/": _Znode(b"", 0, 0, 0)}
        self._sessions: dict[int, _Session] = {}
        self._next_session_id = 1
        self._data_watchers: dict[str, set[int]] = {}
        self._child_watchers: dict[str, set[int]] = {}
        self._down_until: float | None = None
        network.register(address, self._receive)

    # ------------------------------------------------------------ inspection (tests, checkers)

    def get(self, path: str) -> tuple[bytes, int] | None:
        """``(data, version)`` of a node, or None; reads the tree directly, outside any session."""
        node = self._nodes.get(path)
        return None if node is None else (node.data, node.version)

    def get_children(self, path: str) -> tuple[str, ...] | None:
        node = self._nodes.get(path)
        return None if node is None else tuple(sorted(node.children))

    def ephemeral_owner(self, path: str) -> int | None:
        """The owning session id of an ephemeral node; 0 for a persistent one; None if absent."""
        node = self._nodes.get(path)
        return None if node is None else node.ephemeral_owner

    def session_alive(self, session_id: int) -> bool:
        return session_id in self._sessions

    def sessions(self) -> list[int]:
        return sorted(self._sessions)

    @property
    def zxid(self) -> int:
        return self._zxid

    @property
    def is_down(self) -> bool:
        return self._down_until is not None

    # ------------------------------------------------------------ faults

    def outage(self, duration_ms: float) -> None:
        """Make the whole ensemble unreachable for ``duration_ms``.

        Every open connection is closed at once (clients see it as connection loss), everything
        arriving meanwhile is dropped, and nothing expires. On recovery every session's expiry clock
        restarts, as it does after a ZooKeeper leader election, so clients that reconnect within
        their timeout keep their sessions.
        """
        now = self._env.now
        end = now + duration_ms
        self._trace("zk.outage", duration_ms=duration_ms)
        if self._down_until is None:
            for session_id in sorted(self._sessions):
                session = self._sessions[session_id]
                if session.connection_id is not None:
                    self._send(session.owner, _Disconnected(session.connection_id))
                    session.connection_id = None
        self._down_until = max(end, self._down_until or end)
        event = self._env.timeout(duration_ms)
        event.callbacks.append(lambda _event: self._end_outage())

    def _end_outage(self) -> None:
        if self._down_until is None or self._env.now < self._down_until:
            return
        self._down_until = None
        self._trace("zk.outage_end")
        for session_id in sorted(self._sessions):
            session = self._sessions[session_id]
            session.last_heard = self._env.now
            self._schedule_expiry_check(session)

    def expire_session(self, session_id: int) -> None:
        """Expire a session now, as if its timeout had passed (a fault-injection shortcut)."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._end_session(session, "expired")

    # ------------------------------------------------------------ transport

    def _send(self, owner: str, message: Any) -> None:
        self._network.send(self.address, owner, message, reliable=True)

    def _receive(self, source: str, message: Any) -> None:
        if self._down_until is not None:
            self._trace("zk.drop_during_outage", src=source, message=type(message).__name__)
            return
        if isinstance(message, _Connect):
            self._on_connect(source, message)
        elif isinstance(message, _Close):
            session = self._sessions.get(message.session_id)
            if session is not None:
                self._end_session(session, "closed")
        elif isinstance(message, _Ping | _Request):
            session = self._sessions.get(message.session_id)
            if session is None:
                self._send(source, _Disconnected(message.connection_id))
                return
            if session.connection_id != message.connection_id:
                return  # a closed connection's late packets go nowhere
            session.last_heard = self._env.now
            if isinstance(message, _Ping):
                self._send(session.owner, _Pong(message.connection_id))
            else:
                result = self._apply(session, message.op)
                self._send(session.owner, _Response(message.connection_id, message.xid, self._zxid, result))
        else:
            raise LocalProtocolError(f"coordination service got an unknown message {message!r}")

    # ------------------------------------------------------------ sessions

    def _on_connect(self, source: str, message: _Connect) -> None:
        now = self._env.now
        if message.session_id == 0:
            session_id = self._next_session_id
            self._next_session_id += 1
            session = _Session(session_id, source, message.timeout_ms, now, message.connection_id)
            self._sessions[session_id] = session
            self._zxid += 1
            self._trace(
                "zk.session_created", session_id=session_id, owner=source, timeout_ms=message.timeout_ms
            )
            self._send(source, _ConnectAck(message.connection_id, session_id))
            self._schedule_expiry_check(session)
            return
        existing = self._sessions.get(message.session_id)
        if existing is None:
            self._send(source, _ConnectRefused(message.connection_id, message.session_id))
            return
        session = existing
        session.owner = source
        session.connection_id = message.connection_id
        session.last_heard = now
        self._trace("zk.session_resumed", session_id=session.session_id, connection_id=message.connection_id)
        self._send(source, _ConnectAck(message.connection_id, session.session_id))
        self._reregister_watches(session, message)

    def _reregister_watches(self, session: _Session, message: _Connect) -> None:
        """ZooKeeper's SetWatches: fire what changed after ``last_zxid``, arm the rest again."""
        self._forget_watches(session)
        last = message.last_zxid
        fired: set[tuple[str, WatchKind]] = set()

        def fire(path: str, kind: WatchKind) -> None:
            if (path, kind) not in fired:
                fired.add((path, kind))
                self._send(session.owner, _WatchEvent(message.connection_id, self._zxid, path, kind))

        for path in sorted(message.data_watches):
            node = self._nodes.get(path)
            if node is None:
                fire(path, WatchKind.DELETED)
            elif node.mzxid > last:
                fire(path, WatchKind.CHANGED)
            else:
                self._add_watch(self._data_watchers, session.data_watches, path, session.session_id)
        for path in sorted(message.exist_watches):
            node = self._nodes.get(path)
            if node is not None:
                fire(path, WatchKind.CREATED)
            else:
                self._add_watch(self._data_watchers, session.data_watches, path, session.session_id)
        for path in sorted(message.child_watches):
            node = self._nodes.get(path)
            if node is None:
                fire(path, WatchKind.DELETED)
            elif node.pzxid > last:
                fire(path, WatchKind.CHILD)
            else:
                self._add_watch(self._child_watchers, session.child_watches, path, session.session_id)

    def _schedule_expiry_check(self, session: _Session) -> None:
        if session.check_pending:
            return
        session.check_pending = True
        delay = max(0.0, session.last_heard + session.timeout_ms - self._env.now)
        event = self._env.timeout(delay)
        event.callbacks.append(lambda _event: self._check_expiry(session))

    def _check_expiry(self, session: _Session) -> None:
        session.check_pending = False
        if self._sessions.get(session.session_id) is not session or self._down_until is not None:
            return
        # Tolerance: a remainder below the float resolution of env.now would spin at one instant.
        if self._env.now - session.last_heard >= session.timeout_ms - 1e-6:
            self._end_session(session, "expired")
        else:
            self._schedule_expiry_check(session)

    def _end_session(self, session: _Session, reason: str) -> None:
        """Close or expire: forget the session's watches first, so it is not told of its own end."""
        self._forget_watches(session)
        del self._sessions[session.session_id]
        self._zxid += 1
        self._trace(
            f"zk.session_{reason}",
            session_id=session.session_id,
            owner=session.owner,
            ephemerals=sorted(session.ephemerals),
        )
        for path in sorted(session.ephemerals, reverse=True):
            if path in self._nodes:
                self._delete_node(path)
        if reason == "expired" and session.connection_id is not None:
            self._send(session.owner, _Disconnected(session.connection_id))

    # ------------------------------------------------------------ watches

    @staticmethod
    def _add_watch(index: dict[str, set[int]], own: set[str], path: str, session_id: int) -> None:
        index.setdefault(path, set()).add(session_id)
        own.add(path)

    def _forget_watches(self, session: _Session) -> None:
        for path in session.data_watches:
            self._discard(self._data_watchers, path, session.session_id)
        for path in session.child_watches:
            self._discard(self._child_watchers, path, session.session_id)
        session.data_watches.clear()
        session.child_watches.clear()

    @staticmethod
    def _discard(index: dict[str, set[int]], path: str, session_id: int) -> None:
        watchers = index.get(path)
        if watchers is not None:
            watchers.discard(session_id)
            if not watchers:
                del index[path]

    def _trigger(self, path: str, kind: WatchKind, *, data: bool, child: bool) -> None:
        """Fire (and disarm) the data and/or child watches on ``path``: one event per session."""
        targets: set[int] = set()
        if data:
            targets |= self._data_watchers.pop(path, set())
        if child:
            targets |= self._child_watchers.pop(path, set())
        for session_id in sorted(targets):
            session = self._sessions[session_id]
            if data:
                session.data_watches.discard(path)
            if child:
                session.child_watches.discard(path)
            self._trace("zk.watch_fired", session_id=session_id, path=path, kind=kind)
            if session.connection_id is not None:
                self._send(session.owner, _WatchEvent(session.connection_id, self._zxid, path, kind))

    # ------------------------------------------------------------ the tree

    def _apply(self, session: _Session, op: CoordOp) -> CoordResult:
        if isinstance(op, CoordCreate):
            return self._create(session, op)
        if isinstance(op, CoordSet):
            return self._set(op)
        if isinstance(op, CoordDelete):
            return self._delete(op)
        if isinstance(op, CoordRead):
            return self._read(session, op)
        if isinstance(op, CoordList):
            return self._list(session, op)
        raise LocalProtocolError(f"not a coordination request: {op!r}")

    def _create(self, session: _Session, op: CoordCreate) -> CoordResult:
        validate_path(op.path, sequential=op.sequential)
        if op.path == "/":
            return CoordResult(op.request_id, CoordErrorKind.NODE_EXISTS, path=op.path)
        parent_path = _parent(op.path)
        if parent_path not in self._nodes:
            if not op.make_parents:
                return CoordResult(op.request_id, CoordErrorKind.NO_NODE, path=op.path)
            missing: list[str] = []
            ancestor = parent_path
            while ancestor not in self._nodes:
                missing.append(ancestor)
                ancestor = _parent(ancestor)
            for ancestor in reversed(missing):
                self._create_node(ancestor, b"", 0)
        parent = self._nodes[parent_path]
        path = op.path + f"{parent.cversion:010d}" if op.sequential else op.path
        if path in self._nodes:
            return CoordResult(op.request_id, CoordErrorKind.NODE_EXISTS, path=path)
        owner = session.session_id if op.ephemeral else 0
        self._create_node(path, op.data, owner)
        if op.ephemeral:
            session.ephemerals.add(path)
        return CoordResult(op.request_id, path=path, version=0)

    def _create_node(self, path: str, data: bytes, ephemeral_owner: int) -> None:
        parent_path = _parent(path)
        parent = self._nodes[parent_path]
        if parent.ephemeral_owner:
            raise LocalProtocolError(f"cannot create {path!r}: ephemeral nodes cannot have children")
        self._zxid += 1
        self._nodes[path] = _Znode(
            bytes(data), self._zxid, self._zxid, self._zxid, ephemeral_owner=ephemeral_owner
        )
        parent.children.add(_name(path))
        parent.cversion += 1
        parent.pzxid = self._zxid
        self._trace("zk.created", path=path, zxid=self._zxid, ephemeral_owner=ephemeral_owner)
        self._trigger(path, WatchKind.CREATED, data=True, child=False)
        self._trigger(parent_path, WatchKind.CHILD, data=False, child=True)

    def _set(self, op: CoordSet) -> CoordResult:
        validate_path(op.path)
        node = self._nodes.get(op.path)
        if node is None:
            return CoordResult(op.request_id, CoordErrorKind.NO_NODE, path=op.path)
        if op.expected_version != -1 and op.expected_version != node.version:
            return CoordResult(op.request_id, CoordErrorKind.BAD_VERSION, path=op.path, version=node.version)
        self._zxid += 1
        node.data = bytes(op.data)
        node.version += 1
        node.mzxid = self._zxid
        self._trace("zk.set", path=op.path, zxid=self._zxid, version=node.version)
        self._trigger(op.path, WatchKind.CHANGED, data=True, child=False)
        return CoordResult(op.request_id, path=op.path, version=node.version)

    def _delete(self, op: CoordDelete) -> CoordResult:
        validate_path(op.path, deleting=True)
        node = self._nodes.get(op.path)
        if node is None:
            return CoordResult(op.request_id, CoordErrorKind.NO_NODE, path=op.path)
        if op.expected_version != -1 and op.expected_version != node.version:
            return CoordResult(op.request_id, CoordErrorKind.BAD_VERSION, path=op.path, version=node.version)
        if node.children:
            return CoordResult(op.request_id, CoordErrorKind.NOT_EMPTY, path=op.path, version=node.version)
        self._delete_node(op.path)
        return CoordResult(op.request_id, path=op.path, version=-1)

    def _delete_node(self, path: str) -> None:
        node = self._nodes.pop(path)
        self._zxid += 1
        parent_path = _parent(path)
        parent = self._nodes[parent_path]
        parent.children.discard(_name(path))
        parent.cversion += 1
        parent.pzxid = self._zxid
        if node.ephemeral_owner:
            owner = self._sessions.get(node.ephemeral_owner)
            if owner is not None:
                owner.ephemerals.discard(path)
        self._trace("zk.deleted", path=path, zxid=self._zxid)
        self._trigger(path, WatchKind.DELETED, data=True, child=True)
        self._trigger(parent_path, WatchKind.CHILD, data=False, child=True)

    def _read(self, session: _Session, op: CoordRead) -> CoordResult:
        validate_path(op.path)
        node = self._nodes.get(op.path)
        if op.watch:
            # An exists-watch on a missing node, a data watch on a present one: same index.
            self._add_watch(self._data_watchers, session.data_watches, op.path, session.session_id)
        if node is None:
            return CoordResult(op.request_id, CoordErrorKind.NO_NODE, path=op.path)
        return CoordResult(op.request_id, path=op.path, data=node.data, version=node.version)

    def _list(self, session: _Session, op: CoordList) -> CoordResult:
        validate_path(op.path)
        node = self._nodes.get(op.path)
        if node is None:
            return CoordResult(op.request_id, CoordErrorKind.NO_NODE, path=op.path)
        if op.watch:
            self._add_watch(self._child_watchers, session.child_watches, op.path, session.session_id)
        children = tuple(sorted(node.children))
        return CoordResult(op.request_id, path=op.path, version=node.version, children=children)

    def _trace(self, event: str, **fields: Any) -> None:
        self._tracer.record(self._env.now, self.address, event, fields)


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class SimCoordClient:
    """A host's ZooKeeper client: executes ``Coord*`` effects, delivers results, watches and states.

    States: ``new`` -> ``connecting`` (opening a fresh session) -> ``connected`` <-> ``suspended``
    (reconnecting to the same session) ... and finally ``closed`` (``stop``) or ``crashed``.
    Messages from the service must be handed to ``receive``; ``SimHost`` does that for its address.
    With ``register_address=True`` the client registers ``owner_address`` on the network itself
    (for standalone use: tests, or a process that talks only to ZooKeeper).
    """

    def __init__(
        self,
        env: simpy.Environment,
        network: SimNetwork,
        service_address: str,
        owner_address: str,
        session_timeout_ms: int,
        deliver: Callable[[Input], None],
        rng: random.Random,
        tracer: Tracer,
        *,
        register_address: bool = False,
    ) -> None:
        if session_timeout_ms <= 0:
            raise LocalProtocolError(f"session_timeout_ms must be > 0, got {session_timeout_ms!r}")
        self._env = env
        self._network = network
        self.service_address = service_address
        self.owner_address = owner_address
        self.session_timeout_ms = session_timeout_ms
        self._deliver = deliver
        self._rng = rng
        self._tracer = tracer
        self._register_address = register_address
        self.state = "new"
        self.session_id = 0
        self._connection_id = 0
        self._next_xid = 0
        self._pending: dict[int, CoordOp] = {}
        self._last_heard = 0.0
        self._last_zxid = 0
        self._session_lost = False  # between LOST and the next CONNECTED
        self._data_watches: set[str] = set()
        self._exist_watches: set[str] = set()
        self._child_watches: set[str] = set()
        self._timer_generation: dict[str, int] = {}
        self._paused = False
        self._deferred: list[tuple[str, int, Callable[[], None]]] = []

    @property
    def ping_interval_ms(self) -> float:
        return self.session_timeout_ms * PING_FRACTION

    @property
    def read_timeout_ms(self) -> float:
        return self.session_timeout_ms * READ_TIMEOUT_FRACTION

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open a session; ``CONNECTED(session_id)`` is delivered once the server answers."""
        if self.state != "new":
            raise LocalProtocolError(f"start() on a coordination client in state {self.state}")
        if self._register_address:
            self._network.register(self.owner_address, self.receive)
        self._set_state("connecting")
        self._attempt_connect()

    def stop(self) -> None:
        """Close the session cleanly: the server deletes our ephemerals as soon as it hears this."""
        if self.state in ("closed", "crashed"):
            return
        if self.session_id:
            self._send(_Close(self.session_id))
        self._void_timers()
        self._set_state("closed")
        self._pending.clear()
        if self._register_address:
            self._network.unregister(self.owner_address)

    def crash(self) -> None:
        """Stop silently: nothing more is sent or delivered; the server expires the session later."""
        self._void_timers()
        self._set_state("crashed")
        self._pending.clear()
        if self._register_address:
            self._network.crash(self.owner_address)

    def pause(self) -> None:
        """Freeze (the host is SIGSTOP'd): no pings, no timeouts, until ``resume``."""
        self._paused = True
        if self._register_address:
            self._network.pause(self.owner_address)

    def resume(self) -> None:
        """Thaw: queued server messages first, then every timer that came due while frozen."""
        self._paused = False
        if self._register_address:
            self._network.resume(self.owner_address)
        deferred, self._deferred = self._deferred, []
        for name, generation, action in deferred:
            if self._timer_generation.get(name) == generation and self.state not in ("closed", "crashed"):
                action()

    # ------------------------------------------------------------ requests

    def execute(self, effect: Effect) -> None:
        """Send one ``Coord*`` request; its ``CoordResult`` is delivered later, in request order.

        While not connected the request is not sent: it fails at once with ``CONNECTION_LOSS``
        (``SESSION_EXPIRED`` between ``LOST`` and the next ``CONNECTED``), so a machine should wait
        for ``CONNECTED`` before relying on coordination.
        """
        if not isinstance(effect, CoordCreate | CoordSet | CoordDelete | CoordRead | CoordList):
            raise LocalProtocolError(f"not a coordination effect: {effect!r}")
        if self.state in ("new", "closed", "crashed"):
            raise LocalProtocolError(f"coordination request in client state {self.state}: {effect!r}")
        validate_path(effect.path, sequential=isinstance(effect, CoordCreate) and effect.sequential)
        if self.state != "connected":
            error = CoordErrorKind.SESSION_EXPIRED if self._session_lost else CoordErrorKind.CONNECTION_LOSS
            self._deliver_result(CoordResult(effect.request_id, error, path=effect.path))
            return
        self._next_xid += 1
        self._pending[self._next_xid] = effect
        self._send(_Request(self._connection_id, self.session_id, self._next_xid, effect))

    # ------------------------------------------------------------ from the service

    def receive(self, source: str, message: Any) -> None:
        """Handle one message from the service (the host routes its coordination traffic here)."""
        if self.state in ("new", "closed", "crashed") or source != self.service_address:
            return
        if getattr(message, "connection_id", None) != self._connection_id:
            return  # from a connection we already gave up on
        if isinstance(message, _ConnectAck):
            self._on_connect_ack(message)
        elif isinstance(message, _ConnectRefused):
            self._on_connect_refused(message)
        elif self.state != "connected":
            return
        elif isinstance(message, _Disconnected):
            self._connection_lost("closed_by_server")
        else:
            self._last_heard = self._env.now
            if isinstance(message, _Response):
                self._on_response(message)
            elif isinstance(message, _WatchEvent):
                self._on_watch_event(message)
            # _Pong only proves liveness.

    def _on_connect_ack(self, message: _ConnectAck) -> None:
        if self.state not in ("connecting", "suspended"):
            return
        self.session_id = message.session_id
        self._session_lost = False
        self._last_heard = self._env.now
        self._cancel_timer("connect")
        self._set_state("connected")
        self._deliver_state(SessionState.CONNECTED)
        self._arm("ping", self.ping_interval_ms, self._ping)
        self._arm("liveness", self.read_timeout_ms, self._check_liveness)

    def _on_connect_refused(self, message: _ConnectRefused) -> None:
        if self.state != "suspended":
            return
        lost_session = self.session_id
        self.session_id = 0
        self._session_lost = True
        self._data_watches.clear()
        self._exist_watches.clear()
        self._child_watches.clear()
        self._set_state("connecting")
        self._deliver(SessionStateChanged(SessionState.LOST, lost_session))
        self._trace("coord.state", state=SessionState.LOST, session_id=lost_session)
        self._attempt_connect()

    def _on_response(self, message: _Response) -> None:
        self._last_zxid = max(self._last_zxid, message.zxid)
        op = self._pending.pop(message.xid, None)
        if op is None:
            return
        result = message.result
        if isinstance(op, CoordRead) and op.watch:
            if result.error is None:
                self._data_watches.add(op.path)
            elif result.error is CoordErrorKind.NO_NODE:
                self._exist_watches.add(op.path)
        elif isinstance(op, CoordList) and op.watch and result.error is None:
            self._child_watches.add(op.path)
        self._deliver_result(result)

    def _on_watch_event(self, message: _WatchEvent) -> None:
        self._last_zxid = max(self._last_zxid, message.zxid)
        if message.kind in (WatchKind.CHANGED, WatchKind.CREATED, WatchKind.DELETED):
            self._data_watches.discard(message.path)
            self._exist_watches.discard(message.path)
        if message.kind in (WatchKind.CHILD, WatchKind.DELETED):
            self._child_watches.discard(message.path)
        self._trace("coord.watch", path=message.path, kind=message.kind)
        self._deliver(WatchFired(message.path, message.kind))

    # ------------------------------------------------------------ connection management

    def _attempt_connect(self) -> None:
        self._connection_id += 1
        self._send(
            _Connect(
                self._connection_id,
                self.session_id,
                self.session_timeout_ms,
                self._last_zxid,
                tuple(sorted(self._data_watches)),
                tuple(sorted(self._exist_watches)),
                tuple(sorted(self._child_watches)),
            )
        )
        wait = self.session_timeout_ms * RECONNECT_FRACTION * (1.0 + RECONNECT_JITTER * self._rng.random())
        self._arm("connect", wait, self._attempt_connect)

    def _ping(self) -> None:
        self._send(_Ping(self._connection_id, self.session_id))
        self._arm("ping", self.ping_interval_ms, self._ping)

    def _check_liveness(self) -> None:
        silent_for = self._env.now - self._last_heard
        # The tolerance matters: a remainder below the float resolution of env.now would re-arm the
        # timer at the same instant for ever.
        if silent_for >= self.read_timeout_ms - 1e-6:
            self._connection_lost("read_timeout")
        else:
            self._arm("liveness", self.read_timeout_ms - silent_for, self._check_liveness)

    def _connection_lost(self, reason: str) -> None:
        """kazoo's SUSPENDED: fail what is in flight (outcome unknown) and reconnect at once."""
        self._cancel_timer("ping")
        self._cancel_timer("liveness")
        self._set_state("suspended", reason=reason)
        self._deliver_state(SessionState.SUSPENDED)
        pending, self._pending = self._pending, {}
        for op in pending.values():
            self._deliver_result(CoordResult(op.request_id, CoordErrorKind.CONNECTION_LOSS, path=op.path))
        self._attempt_connect()

    # ------------------------------------------------------------ timers

    def _arm(self, name: str, delay_ms: float, action: Callable[[], None]) -> None:
        generation = self._timer_generation.get(name, 0) + 1
        self._timer_generation[name] = generation
        event = self._env.timeout(max(0.0, delay_ms))
        event.callbacks.append(lambda _event: self._fire(name, generation, action))

    def _fire(self, name: str, generation: int, action: Callable[[], None]) -> None:
        if self._timer_generation.get(name) != generation or self.state in ("closed", "crashed"):
            return
        if self._paused:
            self._deferred.append((name, generation, action))
            return
        action()

    def _cancel_timer(self, name: str) -> None:
        self._timer_generation[name] = self._timer_generation.get(name, 0) + 1

    def _void_timers(self) -> None:
        for name in list(self._timer_generation):
            self._cancel_timer(name)
        self._deferred.clear()

    # ------------------------------------------------------------ plumbing

    def _send(self, message: Any) -> None:
        self._network.send(self.owner_address, self.service_address, message, reliable=True)

    def _set_state(self, state: str, **fields: Any) -> None:
        self.state = state
        self._trace("coord.client_state", state=state, session_id=self.session_id, **fields)

    def _deliver_state(self, state: SessionState) -> None:
        self._trace("coord.state", state=state, session_id=self.session_id)
        self._deliver(SessionStateChanged(state, self.session_id))

    def _deliver_result(self, result: CoordResult) -> None:
        self._trace(
            "coord.result",
            request_id=result.request_id,
            error=result.error,
            path=result.path,
            version=result.version,
        )
        self._deliver(result)

    def _trace(self, event: str, **fields: Any) -> None:
        self._tracer.record(self._env.now, self.owner_address, event, fields)
