"""One shard of real ``DataNode`` machines against a model: replication, at-most-once and failover.

Theory
------
A shard is a master and one or two slaves, each a real ``DataNode`` driven by ``test_node``'s
``NodeHarness`` (which also answers its coordination requests: registration, and every map read
with the map the test currently holds), in async, semi-sync or sync mode. Nothing else is real.
The network is a list of messages, every ``Send`` of every node, addressed; the rules deliver the
oldest, any one (reordering) or the oldest few, duplicate one, lose one, lose all in flight to a
node (an outage) or only the replication data to it (a slave that answers heartbeats but lags).
Clients are rules too: three client ids, each numbering its writes ``seq = 1, 2, ...`` with a floor
that only rises, send set/delete/incr/rpush/sadd/hset and strong gets on four keys, and re-send any
old write, as the same frame or as a retry under a new request id. Their frames travel on the same
network, so they are lost, reordered and duplicated too. Time moves only when a rule advances it,
and then every timer that fell due fires once. The Overlord is two rules built from
``successor.next_map``'s own clauses: one applies the master's latest ``InSyncChange`` (only from
the current master, at the current shard and map epoch); one fails the master over (the master
dies, the live slaves answer a ``PositionQuery``, the in-sync one with the highest
``(last_epoch, applied_seq)`` is promoted under the next shard epoch, the others stay as they
were). Nodes learn each new map through their own install path: the map watch fires and they read
the map. Two more rules suspend and reconnect the master's coordination session (fencing).

The model. Writes are linearized at the master: its log *is* the order of execution. The model
keeps, for every mastership (shard epoch), the list of requests the master executed, in log order
(``Entry``: client, seq, floor, command, arguments); a new mastership's list starts as the prefix
of the previous one its promoted slave held. A small reference implementation of the commands
(``run_command``) replays a prefix of such a list into the store a replica at that position must
hold, every executed write's outcome, and the dedup table's verdict for every ``(client, seq)``
(``dimint.core.dedup``: DUPLICATE if executed at or above the client's floor, STALE below it, NEW
otherwise; the floor is the highest one any executed request of that client carried). When a copy
of a request reaches the master, the model says beforehand what must happen, in the order the node
checks (``DataNode._on_request``: ``MasterRole.known_write``, then admission, then ``on_write``):

* DUPLICATE: no log entry, nothing changes; the reply (now, or once committed) is the outcome of
  the first execution, whatever happened to the key since.
* STALE: no log entry; refused ``STALE_REQUEST`` at once.
* NEW on a fenced master: ``FENCED`` at once; below ``min_in_sync``: ``NOT_ENOUGH_REPLICAS``.
* NEW otherwise: exactly one log entry, whose ``session`` op names the request and the model's
  outcome. A refusal by the store (WRONG_TYPE, NOT_INTEGER) is an outcome too: the store does not
  change and the entry holds nothing but the ``session`` op.
* A strong read: the model's value at the master's log position when the read arrived.

A held reply may end ``TIMEOUT`` (outcome unknown) instead, never anything else, and a reply that
vouches for something (a write's outcome, a read's value) is released only once the master's
commit point covers the log position it depends on. Every reply answers a copy the master
received, and at most once.

Invariants, after every step:

* The master's store and dedup verdicts equal the replay of its whole log. Every replica's equal
  the replay of the prefix its position ``(applied_seq, last_epoch)`` names in the log of the
  master that wrote that entry, so a slave holds a prefix of a master's log and nothing else. A
  position never moves back, except off a tail no surviving master holds (entries a dead master
  never committed), which a snapshot of the new master's log then replaces.
* Durability (semi-sync, sync): while the map names live in-sync slaves, the best placed of them
  holds every write the current master vouched for (promotion picks among them); with none in sync
  nobody can be promoted, and the shard waits rather than lose writes. At a failover the promoted
  slave holds every write the dying master vouched for. Async promises no durability.
* Liveness (the ``quiesce`` rule): once the network is drained and time has passed the write
  timeout, the live master has answered every request it received.

Two bugs the machine found (a strong read's refusal answered before the write it observed
committed; a failover that kept a lagging slave in sync) are fixed and pinned by regression tests
at the end of the file. The dedup table's retention is set far beyond the test's
clock, so the model may remember every session (expiry is proven in ``test_at_most_once``); the log
keeps two entries, so a slave that falls behind takes a snapshot.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_node import (
    CLIENT,
    KEY0B,
    MASTER,
    OTHER_MASTER,
    OTHER_SLAVE,
    OVERLORD,
    PLACEMENT,
    SLAVE,
    SLAVE2,
    NodeHarness,
    address,
    make_map,
    master_node,
    replies,
    responses,
    sent,
    slave_node,
)

from dimint.core import layout
from dimint.core.clustermap import ClusterMap, ShardInfo
from dimint.core.dedup import DedupConfig, Verdict, is_session_op
from dimint.core.effects import (
    CancelTimer,
    CoordCreate,
    CoordRead,
    Effect,
    Input,
    Receive,
    Reply,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
    Trace,
    WatchFired,
    WatchKind,
)
from dimint.core.errors import ErrorCode
from dimint.core.node import DataNode, NodeConfig, Role, TimerKey
from dimint.core.overlord import OverlordConfig
from dimint.core.protocol import (
    ErrorReply,
    InSyncChange,
    PositionQuery,
    PositionReply,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
)
from dimint.core.successor import Failover, Leadership, Registration, next_map
from dimint.core.successor import Pending as FailoverPending

# --------------------------------------------------------------------------------------------
# The world: clients, keys, values, node configuration
# --------------------------------------------------------------------------------------------

CLIENTS = (0xA11CE, 0xB0B, 0xCAFE)
CLIENT_ADDRESS = {client: f"client:{index}" for index, client in enumerate(CLIENTS)}
KEYS = [k for k in (f"key-{i}".encode() for i in range(1000)) if PLACEMENT.owner(k) == 0][:4]
MODES = ("async", "semi-sync", "sync")
WRITE_COMMANDS = ("set", "delete", "incr", "rpush", "sadd", "hset")
TIMEOUT = ("error", ErrorCode.TIMEOUT)

#: Small log retention and snapshot chunks, so slaves far behind take (multi-chunk) snapshots;
#: a retention the test's clock never reaches, so the model may remember every session.
CONFIG = NodeConfig(log_retention=2, snapshot_chunk_items=2, dedup=DedupConfig(retention_ms=10**12))

Outcome = tuple[str, Any]  # ("ok", value) or ("error", ErrorCode)
Message = tuple[str, str, Any]  # (source address, destination address, message)


def command_args(command: str, key: bytes, pick: int) -> list[Any]:
    """Normalised arguments (as a decoded ``Request`` carries them) of one of the write commands."""
    if command == "set":
        return [key, (b"1", b"x", b"-7")[pick % 3], None, None]
    if command == "delete":
        return [key]
    if command == "incr":
        return [key, (1, 5, -2)[pick % 3]]
    if command == "rpush":
        return [key, (b"a", b"b")[pick % 2]]
    if command == "sadd":
        return [key, (b"m", b"n")[pick % 2]]
    assert command == "hset"
    return [key, (b"f", b"g")[pick % 2], b"%d" % pick]


# --------------------------------------------------------------------------------------------
# The model: a reference store, and replays of log prefixes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One executed write, as the master logged it under shard epoch ``epoch``."""

    epoch: int
    client: int
    seq: int
    floor: int
    command: str
    args: tuple[Any, ...]


def canonical_int(text: bytes) -> int | None:
    digits = text[1:] if text.startswith(b"-") else text
    if not digits.isdigit() or (digits.startswith(b"0") and text != b"0"):
        return None
    return int(text)


WRONG_TYPE: Outcome = ("error", ErrorCode.WRONG_TYPE)


def run_command(state: dict[bytes, Any], command: str, args: Sequence[Any]) -> Outcome:
    """The reference semantics of the commands used; mutates ``state`` only when it succeeds."""
    key = args[0]
    current = state.get(key)
    if command == "get":
        return ("ok", current) if current is None or type(current) in (bytes, int) else WRONG_TYPE
    if command == "set":
        state[key] = args[1]
        return ("ok", True)
    if command == "delete":
        return ("ok", 0 if state.pop(key, None) is None else 1)
    if command == "incr":
        if current is None:
            base: int | None = 0
        elif type(current) is int:
            base = current
        elif type(current) is bytes:
            base = canonical_int(current)
            if base is None:
                return ("error", ErrorCode.NOT_INTEGER)
        else:
            return WRONG_TYPE
        state[key] = base + args[1]
        return ("ok", state[key])
    kind = {"rpush": list, "sadd": set, "hset": dict}[command]
    if current is not None and type(current) is not kind:
        return WRONG_TYPE
    value = state.setdefault(key, kind())
    if command == "rpush":
        value.append(args[1])
        return ("ok", len(value))
    if command == "sadd":
        added = args[1] not in value
        value.add(args[1])
        return ("ok", int(added))
    added = args[1] not in value
    value[args[1]] = args[2]
    return ("ok", int(added))


def replay(entries: Sequence[Entry]) -> tuple[dict[bytes, Any], list[Outcome]]:
    """The store after ``entries``, and each entry's outcome."""
    state: dict[bytes, Any] = {}
    return state, [run_command(state, e.command, e.args) for e in entries]


def as_dump(state: dict[bytes, Any]) -> dict[bytes, tuple[str, Any, None]]:
    """The model's store in ``Store.dump`` form (no TTLs are ever set)."""
    out: dict[bytes, tuple[str, Any, None]] = {}
    for key in sorted(state):
        value = state[key]
        if type(value) is bytes:
            out[key] = ("string", value, None)
        elif type(value) is int:
            out[key] = ("integer", value, None)
        elif type(value) is list:
            out[key] = ("list", tuple(value), None)
        elif type(value) is dict:
            out[key] = ("hash", tuple(p for f in sorted(value) for p in (f, value[f])), None)
        else:
            out[key] = ("set", tuple(sorted(value)), None)
    return out


@dataclass(slots=True)
class Sessions:
    """The dedup table a replay implies: executed writes (position, outcome) and client floors."""

    executed: dict[tuple[int, int], tuple[int, Outcome]]
    floors: dict[int, int]

    @classmethod
    def of(cls, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> Sessions:
        executed: dict[tuple[int, int], tuple[int, Outcome]] = {}
        floors: dict[int, int] = {}
        for position, (entry, outcome) in enumerate(zip(entries, outcomes, strict=True), start=1):
            assert (entry.client, entry.seq) not in executed, f"executed twice: {entry}"
            executed[(entry.client, entry.seq)] = (position, outcome)
            floors[entry.client] = max(floors.get(entry.client, 0), entry.floor)
        return cls(executed, floors)

    def verdict(self, client: int, seq: int) -> Verdict:
        floor = self.floors.get(client, 0)
        if (client, seq) in self.executed and seq >= floor:
            return Verdict.DUPLICATE
        return Verdict.STALE if seq < floor else Verdict.NEW


def saved_form(outcome: Outcome) -> list[Any]:
    """The first two fields of the ``session`` op's outcome for a model outcome."""
    kind, value = outcome
    return ["ok", value] if kind == "ok" else ["error", value.value]


def outcome_of(reply: Response | ErrorReply) -> Outcome:
    if isinstance(reply, Response):
        return ("ok", reply.value)
    return ("error", ErrorCode(reply.code))


class Expected:
    """What one delivered copy of a request must be answered (compared by identity, not value).

    ``position`` is the log position the answer depends on (0: none); ``may_time_out`` says the
    reply may be held, and so may end TIMEOUT instead.
    """

    __slots__ = ("may_time_out", "outcome", "position", "read")

    def __init__(self, outcome: Outcome, position: int, may_time_out: bool, read: bool = False) -> None:
        self.outcome = outcome
        self.position = position
        self.may_time_out = may_time_out
        self.read = read

    def __repr__(self) -> str:
        return f"Expected({self.outcome!r}, at={self.position}, may_time_out={self.may_time_out})"


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


class ShardMachine(RuleBasedStateMachine):
    """A master and one or two slaves, a lossy network, clients and a minimal Overlord."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.mode = "semi-sync"
        self.harness: dict[str, NodeHarness] = {}
        self.by_address: dict[str, str] = {}
        self.alive: list[str] = []
        self.cmap: ClusterMap | None = None
        self.queue: list[Message] = []
        self.timers: dict[str, dict[str, int]] = {}
        #: Every mastership's log, by shard epoch: a prefix of the previous one, then its own.
        self.logs: dict[int, list[Entry]] = {1: []}
        self.shard_epoch = 1
        #: The highest log position each mastership vouched for to a client.
        self.acked: dict[int, int] = {}
        self.expected: dict[tuple[str, int], list[Expected]] = {}
        self.sent: dict[int, list[Request]] = {client: [] for client in CLIENTS}
        self.next_seq = dict.fromkeys(CLIENTS, 1)
        self.floor = dict.fromkeys(CLIENTS, 0)
        self.request_ids = itertools.count(1)
        self.insync_request: InSyncChange | None = None
        self.positions: dict[str, tuple[int, int]] = {}

    # ---------------------------------------------------------------- plumbing

    @property
    def started(self) -> bool:
        return self.cmap is not None

    @property
    def log(self) -> list[Entry]:
        return self.logs[self.shard_epoch]

    @property
    def shard(self) -> ShardInfo:
        assert self.cmap is not None
        return self.cmap.shards[0]

    def master(self) -> DataNode:
        master_id = self.shard.master
        assert master_id is not None
        return self.harness[master_id].node

    def feed(self, node_id: str, event: Input) -> None:
        self.route(node_id, self.harness[node_id].feed(event, at=self.now))

    def route(self, node_id: str, effects: list[Effect]) -> None:
        """Do what a driver does with a node's effects (the network is the queue)."""
        harness = self.harness[node_id]
        for effect in effects:
            if isinstance(effect, Send):
                if effect.destination != OVERLORD or isinstance(effect.message, InSyncChange):
                    self.queue.append((address(node_id), effect.destination, effect.message))
                # Reports to the Overlord feed its status pages, which are not modelled.
            elif isinstance(effect, Reply):
                self.on_reply(node_id, effect.message)
            elif isinstance(effect, SetTimer):
                self.timers[node_id][effect.key] = effect.at_ms
            elif isinstance(effect, CancelTimer):
                self.timers[node_id].pop(effect.key, None)
            elif isinstance(effect, CoordCreate | CoordRead):
                self.route(node_id, harness.answer_coord([effect], self.cmap))
            else:
                assert isinstance(effect, Trace), effect

    def install(self, cmap: ClusterMap) -> None:
        """The leader wrote ``cmap``: every live node's map watch fires and it reads the map."""
        self.cmap = cmap
        for node_id in list(self.alive):
            self.feed(node_id, WatchFired(layout.MAP_PATH, WatchKind.CHANGED))

    def lineage(self, seq: int, epoch: int) -> list[Entry]:
        """The log prefix a replica at position ``(seq, epoch)`` holds."""
        if seq == 0:
            return []
        log = self.logs.get(epoch)
        assert log is not None and len(log) >= seq, f"position ({seq}, {epoch}) is no master's log"
        prefix = log[:seq]
        assert prefix[-1].epoch == epoch, f"position ({seq}, {epoch}) is no master's log"
        return prefix

    def in_current_log(self, seq: int, epoch: int) -> bool:
        return seq == 0 or (seq <= len(self.log) and self.log[seq - 1].epoch == epoch)

    # ---------------------------------------------------------------- replies

    def on_reply(self, node_id: str, reply: Response | ErrorReply) -> None:
        pending = self.expected.get((node_id, reply.request_id))
        assert pending, f"{node_id} answered request {reply.request_id}, which nobody is waiting for"
        got = outcome_of(reply)
        node = self.harness[node_id].node
        if got == TIMEOUT:
            match = next((e for e in pending if e.may_time_out), None)
            assert match is not None, f"TIMEOUT for a request that must be answered at once: {pending}"
        else:
            match = next((e for e in pending if e.outcome == got), None)
            assert match is not None, f"request {reply.request_id}: got {got}, expected one of {pending}"
            if match.position:
                assert node.role is Role.MASTER and not node.fenced
                assert node.commit_seq >= match.position, (
                    f"answer depends on log position {match.position}, committed only {node.commit_seq}"
                )
                epoch = node.shard_epoch
                self.acked[epoch] = max(self.acked.get(epoch, 0), match.position)
        pending.remove(match)
        if not pending:
            del self.expected[(node_id, reply.request_id)]

    # ---------------------------------------------------------------- delivery

    def deliver_one(self, message: Message) -> None:
        source, destination, body = message
        if destination == OVERLORD:
            if body.shard_id == 0:
                self.insync_request = body  # the Overlord keeps the latest request per shard
            return
        node_id = self.by_address.get(destination)
        if node_id is None or node_id not in self.alive:
            return  # a dead node, or one the test does not run (shard 1): lost
        if isinstance(body, Request):
            self.request_arrives(node_id, source, body)
        else:
            self.feed(node_id, Receive(source, body))

    def request_arrives(self, node_id: str, source: str, request: Request) -> None:
        """A copy of a client request reaches the master: decide what must happen, then check it."""
        harness = self.harness[node_id]
        node = harness.node
        assert node.role is Role.MASTER, "clients only ever address the current master"
        log = self.log
        assert node.applied_seq == len(log)
        entry: Entry | None = None
        if request.seq == 0:  # a strong read
            if node.fenced:
                expected = Expected(("error", ErrorCode.FENCED), 0, False)
            else:
                state, _ = replay(log)
                expected = Expected(run_command(state, "get", request.args), len(log), True, read=True)
        else:
            sessions = Sessions.of(log, replay(log)[1])
            verdict = sessions.verdict(request.client_id, request.seq)
            assert self.cmap is not None
            if verdict is Verdict.DUPLICATE:
                position, outcome = sessions.executed[(request.client_id, request.seq)]
                expected = Expected(outcome, position, True)
            elif verdict is Verdict.STALE:
                expected = Expected(("error", ErrorCode.STALE_REQUEST), 0, False)
            elif node.fenced:
                expected = Expected(("error", ErrorCode.FENCED), 0, False)
            elif self.mode != "async" and len(self.shard.in_sync) < self.cmap.min_in_sync:
                expected = Expected(("error", ErrorCode.NOT_ENOUGH_REPLICAS), 0, False)
            else:
                entry = Entry(
                    node.shard_epoch,
                    request.client_id,
                    request.seq,
                    request.floor,
                    request.command,
                    tuple(request.args),
                )
                outcome = replay([*log, entry])[1][-1]
                expected = Expected(outcome, len(log) + 1, True)
        self.expected.setdefault((node_id, request.request_id), []).append(expected)
        dump_before = node.store.dump(self.now)
        out = harness.feed(Receive(source, request), at=self.now)
        if entry is None:
            # A read, a duplicate, a stale copy or a refusal: no log entry, nothing changed.
            assert node.applied_seq == len(log), f"{request} appended to the log"
            assert node.store.dump(self.now) == dump_before
        else:
            assert node.applied_seq == len(log) + 1, f"{request} was not executed exactly once"
            seq, epoch, writes = node.master.log.entries[-1]
            assert (seq, epoch) == (len(log) + 1, node.shard_epoch)
            [session] = [op for op in writes if is_session_op(op)]
            [[saved_seq, saved, _hashes]] = session[5]
            assert (session[1], saved_seq) == (request.client_id, request.seq)
            assert saved[:2] == saved_form(expected.outcome)
            if expected.outcome[0] == "error":
                # A refused write changes nothing: its entry records only the refusal.
                assert node.store.dump(self.now) == dump_before
                assert writes == [session]
            log.append(entry)
        self.route(node_id, out)
        if not expected.may_time_out:
            pending = self.expected.get((node_id, request.request_id), [])
            assert all(e is not expected for e in pending), f"{request} must be answered at once"

    # ---------------------------------------------------------------- start

    @initialize(mode=st.sampled_from(MODES), slaves=st.integers(1, 2))
    def start(self, mode: str, slaves: int) -> None:
        self.mode = mode
        ids = [MASTER, SLAVE, SLAVE2][: 1 + slaves]
        for seed, node_id in enumerate(ids, start=101):
            self.harness[node_id] = NodeHarness(node_id, CONFIG, seed=seed)
            self.by_address[address(node_id)] = node_id
            self.timers[node_id] = {}
        incarnations = {n: h.incarnation for n, h in self.harness.items()}
        assert len(set(incarnations.values())) == len(ids)
        followers = tuple(ids[1:])
        self.cmap = make_map(
            incarnations[MASTER],
            mode=mode,
            shard0=ShardInfo(0, MASTER, followers, followers, 1),
            incarnations=incarnations,
        )
        self.alive = list(ids)
        for node_id in ids:
            self.feed(node_id, Start())
            self.feed(node_id, SessionStateChanged(SessionState.CONNECTED))
        assert self.master().role is Role.MASTER and not self.master().fenced

    # ---------------------------------------------------------------- clients

    def send(self, request: Request) -> None:
        master_id = self.shard.master
        assert master_id is not None
        self.queue.append((CLIENT_ADDRESS[request.client_id], address(master_id), request))

    @precondition(lambda self: self.started)
    @rule(
        client=st.sampled_from(CLIENTS),
        command=st.sampled_from(WRITE_COMMANDS),
        key=st.sampled_from(KEYS),
        pick=st.integers(0, 5),
        raise_floor=st.integers(0, 2),
    )
    def write(self, client: int, command: str, key: bytes, pick: int, raise_floor: int) -> None:
        seq = self.next_seq[client]
        self.next_seq[client] += 1
        self.floor[client] = min(seq, self.floor[client] + raise_floor)
        assert self.cmap is not None
        request = Request(
            next(self.request_ids),
            command,
            command_args(command, key, pick),
            "strong",
            self.cmap.epoch,
            client,
            seq,
            self.floor[client],
        )
        self.sent[client].append(request)
        self.send(request)

    @precondition(lambda self: self.started)
    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def strong_read(self, client: int, key: bytes) -> None:
        assert self.cmap is not None
        self.send(Request(next(self.request_ids), "get", [key], "strong", self.cmap.epoch, client, 0, 0))

    @precondition(lambda self: self.started and any(self.sent.values()))
    @rule(client=st.sampled_from(CLIENTS), pick=st.integers(0, 1 << 16), same_frame=st.booleans())
    def resend(self, client: int, pick: int, same_frame: bool) -> None:
        """A copy of an old write: the same frame again, or a retry under a new request id."""
        sent = self.sent[client] or next(s for s in self.sent.values() if s)
        request = sent[pick % len(sent)]
        if not same_frame:
            request = msgspec.structs.replace(request, request_id=next(self.request_ids))
        self.send(request)

    # ---------------------------------------------------------------- network and time

    @precondition(lambda self: self.queue)
    @rule(how=st.sampled_from(["next", "any", "in_order"]), pick=st.integers(0, 1 << 16))
    def deliver(self, how: str, pick: int) -> None:
        """Deliver the oldest message, any one of them (reordering), or the oldest few in order."""
        if how == "any":
            self.deliver_one(self.queue.pop(pick % len(self.queue)))
            return
        for _ in range(min(1 if how == "next" else 1 + pick % 40, len(self.queue))):
            self.deliver_one(self.queue.pop(0))

    @precondition(lambda self: self.queue)
    @rule(how=st.sampled_from(["duplicate", "drop", "cut", "starve"]), pick=st.integers(0, 1 << 16))
    def duplicate_or_lose(self, how: str, pick: int) -> None:
        """The network delivers a message twice (the copy goes last), loses it, loses everything in
        flight to its destination (a link outage: how a slave falls behind the retained log), or
        loses only the replication data in flight to it (its heartbeats and acks still flow: a slave
        that answers but lags, the case the semi-sync guard on dropping in-sync slaves is for)."""
        message = self.queue[pick % len(self.queue)]
        if how == "duplicate":
            self.queue.append(message)
        elif how == "drop":
            self.queue.remove(message)
        elif how == "cut":
            self.queue = [m for m in self.queue if m[1] != message[1]]
        else:
            data = (Replicate, SnapshotChunk)
            self.queue = [m for m in self.queue if m[1] != message[1] or not isinstance(m[2], data)]

    @precondition(lambda self: self.started)
    @rule(ms=st.sampled_from([1, 60, 120, 350, 1100, 2100]))
    def advance_time(self, ms: int) -> None:
        self.advance(ms)

    def advance(self, ms: int) -> None:
        """Move the clock; every timer now due fires once (a driver that was slow coalesces ticks)."""
        self.now += ms
        for _ in range(10):
            due = sorted(
                (at, node_id, key)
                for node_id in self.alive
                for key, at in self.timers[node_id].items()
                if at <= self.now
            )
            if not due:
                return
            for at, node_id, key in due:
                if node_id in self.alive and self.timers[node_id].get(key) == at:
                    del self.timers[node_id][key]
                    self.feed(node_id, TimerFired(key))
        raise AssertionError("timers keep falling due at the same instant")

    # ---------------------------------------------------------------- the Overlord

    @precondition(lambda self: self.insync_request is not None)
    @rule()
    def overlord_applies_in_sync_change(self) -> None:
        """``successor.next_map``'s in-sync clause: only the current master's request, at the current
        shard and map epoch, changes the in-sync set (an unchanged set writes no map)."""
        request, self.insync_request = self.insync_request, None
        assert request is not None and self.cmap is not None
        shard = self.shard
        if not (
            request.shard_epoch == shard.shard_epoch
            and request.master == shard.master
            and shard.master in self.alive
            and request.map_epoch == self.cmap.epoch
        ):
            return
        in_sync = [s for s in shard.in_sync if s not in request.remove]
        in_sync += [s for s in request.add if s in shard.slaves and s not in in_sync]
        if tuple(in_sync) != shard.in_sync:
            new_shard = ShardInfo(0, shard.master, shard.slaves, tuple(in_sync), shard.shard_epoch)
            self.install(self.cmap.successor(shards=self.cmap.with_shard(new_shard)))

    def live_in_sync(self) -> list[str]:
        return [s for s in self.shard.in_sync if s in self.alive]

    @precondition(
        lambda self: self.started and self.shard_epoch <= 2 and len(self.log) >= 3 and self.live_in_sync()
    )
    @rule()
    def fail_over(self) -> None:
        """The master dies; ``next_map`` promotes the live in-sync slave with the highest
        ``(last_epoch, applied_seq)`` (as reported to a ``PositionQuery``) under the next epoch."""
        assert self.cmap is not None
        shard = self.shard
        dead = shard.master
        assert dead is not None
        self.alive.remove(dead)
        del self.timers[dead]
        positions: dict[str, tuple[int, int]] = {}
        for slave in shard.slaves:
            if slave not in self.alive:
                continue
            query = PositionQuery(next(self.request_ids), 0, shard.shard_epoch)
            for effect in self.harness[slave].feed(Receive(OVERLORD, query), at=self.now):
                if isinstance(effect, Send) and isinstance(effect.message, PositionReply):
                    positions[slave] = (effect.message.last_epoch, effect.message.applied_seq)
        pool = [s for s in shard.in_sync if s in positions]
        chosen = max(pool, key=lambda s: (positions[s], s))
        last_epoch, seq = positions[chosen]
        assert self.in_current_log(seq, last_epoch)
        if self.mode != "async":
            # Every write any earlier master acknowledged, not only the last one's (a failover that
            # kept a lagging slave in sync once lost them on the next failover).
            vouched = max(self.acked.values(), default=0)
            assert seq >= vouched, f"promoted {chosen} at {seq} lacks acknowledged writes up to {vouched}"
        epoch = shard.shard_epoch + 1
        self.logs[epoch] = self.log[:seq]
        self.shard_epoch = epoch
        promoted = ShardInfo(
            0,
            chosen,
            tuple(s for s in shard.slaves if s != chosen and s in self.alive),
            # As successor.next_map: only slaves at the chosen one's position stay in sync.
            tuple(
                s
                for s in shard.in_sync
                if s != chosen and s in self.alive and positions.get(s) == (last_epoch, seq)
            ),
            epoch,
        )
        self.install(self.cmap.successor(shards=self.cmap.with_shard(promoted)))
        assert self.master().role is Role.MASTER and not self.master().fenced

    # ---------------------------------------------------------------- fencing

    @precondition(lambda self: self.started and not self.master().fenced and self.master().pending)
    @rule()
    def master_session_suspended(self) -> None:
        self.feed(self.shard.master or "", SessionStateChanged(SessionState.SUSPENDED))
        assert self.master().fenced

    @precondition(lambda self: self.started and self.master().fenced)
    @rule()
    def master_session_reconnected(self) -> None:
        """CONNECTED, then the confirming map read (answered at once) names it master again."""
        self.feed(self.shard.master or "", SessionStateChanged(SessionState.CONNECTED))
        assert not self.master().fenced

    # ---------------------------------------------------------------- liveness

    @precondition(lambda self: self.started)
    @rule()
    def quiesce(self) -> None:
        """Drain the network, let the Overlord act and time pass the write timeout: the live master
        has then answered every request it received (a result, a refusal or TIMEOUT)."""
        for _ in range(4):
            for _ in range(1000):
                if not self.queue:
                    break
                self.deliver_one(self.queue.pop(0))
            if self.insync_request is not None:
                self.overlord_applies_in_sync_change()
            self.advance(CONFIG.write_timeout_ms + 100)
        master_id = self.shard.master
        unanswered = {key: e for key, e in self.expected.items() if key[0] == master_id}
        assert not unanswered, f"never answered: {unanswered}"

    # ---------------------------------------------------------------- invariants

    @invariant()
    def every_replica_holds_a_prefix_of_a_masters_log(self) -> None:
        if not self.started:
            return
        for node_id in self.alive:
            node = self.harness[node_id].node
            seq, epoch = node.applied_seq, node.last_epoch
            lineage = self.lineage(seq, epoch)
            state, outcomes = replay(lineage)
            assert node.store.dump(self.now) == as_dump(state), f"{node_id} at ({seq}, {epoch})"
            node.store.check_invariants()
            node.sessions.check_invariants()
            sessions = Sessions.of(lineage, outcomes)
            for client in CLIENTS:
                for client_seq in range(1, self.next_seq[client]):
                    found = node.sessions.lookup(client, client_seq)
                    assert found.verdict is sessions.verdict(client, client_seq), (
                        f"{node_id}: ({client:#x}, {client_seq}) is {found.verdict}"
                    )
                    if found.saved is not None:
                        _, outcome = sessions.executed[(client, client_seq)]
                        assert found.saved.outcome[:2] == saved_form(outcome)
            if node_id == self.shard.master:
                assert seq == len(self.log) and lineage == self.log
            previous = self.positions.get(node_id)
            if previous is not None and seq < previous[0]:
                assert not self.in_current_log(*previous), f"{node_id} moved back from {previous}"
            self.positions[node_id] = (seq, epoch)

    @invariant()
    def in_sync_slaves_cover_every_acknowledged_write(self) -> None:
        if not self.started or self.mode == "async":
            return
        vouched = self.acked.get(self.shard_epoch, 0)
        if vouched == 0:
            return
        in_sync = [self.harness[s].node for s in self.live_in_sync()]
        if not in_sync:
            return  # nobody can be promoted: the leader leaves the shard without a master instead
        holders = [n.applied_seq for n in in_sync if self.in_current_log(n.applied_seq, n.last_epoch)]
        assert max(holders, default=0) >= vouched, (
            f"in-sync slaves at {holders}, master {self.shard.master} acknowledged up to {vouched}"
        )


TestShardMachine = ShardMachine.TestCase
#: About 15 s on a loaded 2-core machine (the suite's budget for this file is a minute).
TestShardMachine.settings = settings(
    max_examples=200,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_model_agrees_with_the_store_on_each_command_and_refusal() -> None:
    """The reference semantics, pinned on the cases the machine relies on."""
    state: dict[bytes, Any] = {}
    key = KEYS[0]
    assert run_command(state, "incr", [key, 5]) == ("ok", 5)
    assert run_command(state, "rpush", [key, b"a"]) == WRONG_TYPE
    assert run_command(state, "set", [key, b"x", None, None]) == ("ok", True)
    assert run_command(state, "incr", [key, 1]) == ("error", ErrorCode.NOT_INTEGER)
    assert run_command(state, "delete", [key]) == ("ok", 1)
    assert run_command(state, "hset", [key, b"f", b"1"]) == ("ok", 1)
    assert run_command(state, "get", [key]) == WRONG_TYPE
    assert as_dump(state) == {key: ("hash", (b"f", b"1"), None)}


# --------------------------------------------------------------------------------------------
# Bugs the machine found, each as a minimal reproduction
# --------------------------------------------------------------------------------------------


def test_a_strong_read_refused_by_the_store_waits_for_the_commit_it_observed() -> None:
    """A strong read must not be answered from state a failover could still lose (invariant 5).

    The rpush below is applied on the master but acknowledged by no slave. A strong ``get`` of the
    same key then finds a list and the store refuses it WRONG_TYPE. ``DataNode.execute`` sends that
    refusal at once (``self.error``) instead of holding it like a ``Response`` until the commit
    covers the read's position. If the master now dies, the promoted slave never had the rpush:
    the key is absent in every surviving history, yet the client was told it holds a list.
    """
    master = master_node()  # semi-sync; KEY0=v0 committed at position 1, n1 and n2 in sync
    slave = slave_node()  # n1 at position 1
    push = Request(1, "rpush", [KEY0B, b"item"], "strong", 1, CLIENTS[0], 1, 1)
    assert replies(master.receive(CLIENT, push, at=10)) == []  # held: nobody acknowledged it
    assert (master.node.commit_seq, master.node.applied_seq) == (1, 2)
    # The same master's answer to a strong read of a key the write made a list:
    early = replies(master.receive(CLIENT, Request(2, "get", [KEY0B]), at=11))
    # The master dies before replicating; the leader promotes n1, which never had the rpush.
    promoted = ShardInfo(0, SLAVE, (SLAVE2,), (SLAVE2,), 2)
    mine = {SLAVE: slave.incarnation}
    slave.new_map(make_map(slave.incarnation, epoch=2, shard0=promoted, incarnations=mine))
    assert slave.node.role is Role.MASTER
    assert slave.node.store.dump(slave.now).get(KEY0B) is None  # no surviving history has a list
    # So the strong read must have been held (as a Response is), not answered WRONG_TYPE.
    assert early == [], f"answered before its commit: {early}"


def leader_promotes(cmap: ClusterMap, survivors: dict[str, NodeHarness], now_ms: int) -> ClusterMap:
    """The Overlord leader's failover of shard 0, by ``successor.next_map`` itself: the surviving
    slaves answer its ``PositionQuery`` and it writes the map that promotes one of them."""
    shard = cmap.shards[0]
    replies: dict[str, tuple[int, int]] = {}
    for node_id, harness in survivors.items():
        out = harness.receive(OVERLORD, PositionQuery(9, 0, shard.shard_epoch), at=now_ms)
        [reply] = [e.message for e in out if isinstance(e, Send) and isinstance(e.message, PositionReply)]
        replies[node_id] = (reply.last_epoch, reply.applied_seq)
    failover = Failover(
        0,
        shard.master,
        0,
        asked=set(replies),
        must_hear={s for s in shard.in_sync if s in replies},
        shard_epoch=shard.shard_epoch,
        replies=replies,
        request_id=9,
    )
    live = {
        node_id: Registration(f"/nodes/{node_id}", i, address(node_id), cmap.nodes[node_id].incarnation)
        for i, node_id in enumerate([*survivors, OTHER_MASTER, OTHER_SLAVE])
    }
    config = OverlordConfig(replicas=1)  # no spare to fill slots with: the shard keeps its members
    decision = next_map(cmap, live, FailoverPending(), Leadership({0: failover}), config, OVERLORD, now_ms)
    assert decision.map is not None
    return decision.map


def test_a_second_failover_never_loses_a_write_the_first_master_acknowledged() -> None:
    """Semi-sync promises that an acknowledged write survives a master's failure, and the leader
    would rather leave a shard without a master than lose one (``successor``): promotion picks among
    in-sync slaves, which must therefore cover every acknowledged write (``master``'s docstring).

    Here n0 acknowledges a write that only n1 holds (n2's copy was lost; one in-sync slave is
    enough in semi-sync). n0 dies and ``next_map`` promotes n1. It once kept n2 in the in-sync set
    although n2's own ``PositionReply`` said it lacked that write, so when n1 died before n2 had
    caught up the next failover promoted n2 and the acknowledged write was gone, with its entry in
    the dedup table (a copy of the client's request would have run again). Now only slaves at the
    chosen one's position stay in sync, and the new master re-admits n2 only once it holds the whole
    log n1 inherited (not merely n1's commit point, which starts at 0).
    """
    nodes = {n: NodeHarness(n, seed=seed) for seed, n in enumerate((MASTER, SLAVE, SLAVE2), start=11)}
    incarnations = {n: h.incarnation for n, h in nodes.items()}
    shard0 = ShardInfo(0, MASTER, (SLAVE, SLAVE2), (SLAVE, SLAVE2), 1)
    cmap = make_map(incarnations[MASTER], shard0=shard0, incarnations=incarnations)
    for harness in nodes.values():
        harness.feed(Start())
        harness.connect(cmap)
    master, n1, n2 = nodes[MASTER], nodes[SLAVE], nodes[SLAVE2]
    write = Request(1, "set", [KEY0B, b"acknowledged", None, None], "strong", 1, CLIENTS[0], 1, 1)
    [to_n1] = sent(master.receive(CLIENT, write, at=10), Replicate, address(SLAVE))  # n2's copy is lost
    [ack] = sent(n1.receive(address(MASTER), to_n1, at=11), ReplicateAck)
    assert responses(master.receive(address(SLAVE), ack, at=12)) == [Response(1, True)]

    # n0 dies: the leader promotes n1 (it holds the write); n2, at position 0, leaves the in-sync set.
    first = leader_promotes(cmap, {SLAVE: n1, SLAVE2: n2}, now_ms=20)
    assert first.shards[0] == ShardInfo(0, SLAVE, (SLAVE2,), (), 2)

    # If n1 dies too before n2 caught up, nobody may be promoted: the shard waits, the write lives.
    second = leader_promotes(first, {SLAVE2: n2}, now_ms=30)
    assert second.shards[0].master is None and second.shards[0].in_sync == ()

    # If n1 lives, n2 resyncs from it and is re-admitted only once it holds the inherited write.
    in_flight = n1.new_map(first) + n2.new_map(first)
    asked: list[InSyncChange] = []
    now = 40
    for _ in range(50):
        to_n1 = [e.message for e in in_flight if isinstance(e, Send) and e.destination == address(SLAVE)]
        to_n2 = [e.message for e in in_flight if isinstance(e, Send) and e.destination == address(SLAVE2)]
        asked += sent(in_flight, InSyncChange, OVERLORD)
        if not to_n1 and not to_n2:
            break
        now += 1
        in_flight = []
        for message in to_n1:
            in_flight += n1.receive(address(SLAVE2), message, at=now)
        for message in to_n2:
            in_flight += n2.receive(address(SLAVE), message, at=now)
        for change in sent(in_flight, InSyncChange, OVERLORD):
            assert SLAVE2 not in change.add or n2.node.applied_seq >= 1, "re-admitted before it caught up"
    assert n2.node.store.dump(n2.now).get(KEY0B) == ("string", b"acknowledged", None)
    asked += sent(n1.feed(TimerFired(TimerKey.HEARTBEAT), at=now + 100), InSyncChange, OVERLORD)  # the check
    assert any(SLAVE2 in change.add for change in asked), "the caught-up slave was never re-admitted"


def test_semi_sync_never_drops_the_only_in_sync_slave_that_holds_the_commit() -> None:
    """A path the random search rarely walks, driven through the machine's own rules and checked by
    its invariants after every delivery: n1 holds the only acknowledged write, then goes silent,
    while n2 keeps answering heartbeats but never receives replication data. Dropping n1 from the
    in-sync set would leave only n2, which lacks the acknowledged write (removing the semi-sync
    guard in ``MasterRole._manage_in_sync`` makes this test fail on the durability invariant)."""
    machine = ShardMachine()

    def check() -> None:
        machine.every_replica_holds_a_prefix_of_a_masters_log()
        machine.in_sync_slaves_cover_every_acknowledged_write()

    def pump(lost: Any) -> None:
        while machine.queue:
            message = machine.queue.pop(0)
            if not lost(message):
                machine.deliver_one(message)
            check()

    data = (Replicate, SnapshotChunk)
    n1, n2 = address(SLAVE), address(SLAVE2)
    machine.start("semi-sync", 2)
    pump(lambda m: False)
    machine.write(CLIENTS[0], "set", KEYS[0], 0, 0)  # reaches n1 only; n1's ack commits it
    pump(lambda m: m[1] == n2 and isinstance(m[2], data))
    assert machine.acked == {1: 1}
    machine.write(CLIENTS[1], "set", KEYS[1], 0, 0)  # pending: both slaves now lag
    for _ in range(5):
        machine.advance(350)
        pump(lambda m: n1 in m[:2] or (m[1] == n2 and isinstance(m[2], data)))
        if machine.insync_request is not None:
            machine.overlord_applies_in_sync_change()
            check()
    assert SLAVE in machine.shard.in_sync
    machine.quiesce()
    check()
