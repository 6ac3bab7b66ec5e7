"""The data node state machine: every (role, input) pair is handled cleanly, and replication,
acknowledgement and fencing behave as ``dimint.core.node`` promises.

What this proves:

* Layer 1 (exhaustive, h2 ``test_state_machines`` style): in each role a node can be in (starting
  with no map, spare, master fenced, master unfenced, slave) it is fed one valid instance of every
  wire message (a table checked against ``protocol.message_types()``), every timer it uses, every
  ``SessionState`` and the other inputs. It never raises, returns only ``Effect`` instances, sends only
  messages that survive the wire codec, answers every client request (at once, or held until commit
  with the ``pending`` timer armed), and an input that is not valid for the role changes nothing
  observable (role, shard, epochs, log position, fencing, map epoch, store dump). The pairs that *do*
  transition are listed, and each must in fact change something, so the table cannot go stale.
* Behaviour: semi-sync holds a write's reply until an in-sync slave acknowledges a position of the
  master's own log; async answers at once; sync waits for every in-sync slave; writes are refused
  NOT_ENOUGH_REPLICAS below ``min_in_sync``; a held reply times out as TIMEOUT (outcome unknown);
  strong reads wait for the commit of writes they could observe; a SUSPENDED master answers FENCED at
  once, holds its pending replies even as acks arrive, and resumes only after CONNECTED *and* a map
  read naming it master at its shard epoch; slaves fence lower epochs and foreign sources, apply in
  order, resync on gaps and divergence, install snapshots only when complete, and refuse weak reads
  above ``max_staleness_ms``; keys of other shards get MOVED with the map epoch; SyncRequest gets a
  tail or a snapshot; a map naming this node id under another incarnation gives it no role.
* Bad peers (invariant 7): replication data the store refuses changes nothing on a slave.
* Known bugs are pinned by ``xfail(strict=True)`` tests that name them (see their reasons).

How: a ``NodeHarness`` drives one ``DataNode`` by hand. It answers the node's coordination requests
itself (the ``register`` create and the ``map`` reads, matched by the ``request_id`` of the effects
the node returned) and checks every batch of effects on the way. Peers and clients are only
addresses: the tests build their messages and read the node's answers from the effects.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from dimint.core import layout, protocol
from dimint.core.clustermap import (
    MOVE_COPYING,
    MOVE_PENDING,
    ClusterMap,
    MoveInfo,
    NodeInfo,
    Rebalance,
    ShardInfo,
    initial_map,
)
from dimint.core.effects import (
    CoordCreate,
    CoordErrorKind,
    CoordRead,
    CoordResult,
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
    WatchFired,
    WatchKind,
)
from dimint.core.errors import ErrorCode, RemoteProtocolError
from dimint.core.node import ADMISSION, Answer, DataNode, NodeConfig, RequestKind, Role
from dimint.core.placement import make_placement
from dimint.core.protocol import (
    AdminReply,
    AdminRequest,
    ErrorReply,
    GetMap,
    Heartbeat,
    HeartbeatAck,
    InSyncChange,
    MapReply,
    MigrateBatch,
    MigrateBatchAck,
    MoveReport,
    NodeReport,
    PositionQuery,
    PositionReply,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    SyncRequest,
)

# --------------------------------------------------------------------------------------------
# The cluster the tests run in: shard 0 = n0 (master) + n1, n2; shard 1 = n3 + n4; n5 a spare.
# --------------------------------------------------------------------------------------------

PLACEMENT = make_placement("ring", [0, 1])
MASTER, SLAVE, SLAVE2, OTHER_MASTER, OTHER_SLAVE, SPARE = "n0", "n1", "n2", "n3", "n4", "n5"
ALL_NODES = (MASTER, SLAVE, SLAVE2, OTHER_MASTER, OTHER_SLAVE, SPARE)
CLIENT = "client:1"
OVERLORD = "overlord:1"


def address(node_id: str) -> str:
    return f"node:{node_id}"


def _keys_of(shard_id: int) -> list[bytes]:
    candidates = (f"key-{i}".encode() for i in range(1000))
    return [k for k in candidates if PLACEMENT.owner(k) == shard_id][:3]


KEY0, KEY0B, _ = _keys_of(0)
KEY1 = _keys_of(1)[0]


def make_map(
    incarnation: int,
    *,
    epoch: int = 1,
    mode: str = "semi-sync",
    min_in_sync: int = 1,
    shard0: ShardInfo | None = None,
    incarnations: dict[str, int] | None = None,
) -> ClusterMap:
    """The test cluster's map; every node has ``incarnation`` unless ``incarnations`` says otherwise."""
    nodes = [NodeInfo(n, address(n), (incarnations or {}).get(n, incarnation)) for n in ALL_NODES]
    shards = [
        shard0 or ShardInfo(0, MASTER, (SLAVE, SLAVE2), (SLAVE, SLAVE2), 1),
        ShardInfo(1, OTHER_MASTER, (OTHER_SLAVE,), (OTHER_SLAVE,), 1),
    ]
    cmap = initial_map(PLACEMENT, shards, nodes, replication_mode=mode, min_in_sync=min_in_sync)
    return replace(cmap, epoch=epoch)


def put(key: bytes, value: bytes) -> list[Any]:
    """The write op a ``set`` produces, in wire form."""
    return ["put", key, "string", value, None]


def set_request(request_id: int, key: bytes = KEY0, value: bytes = b"v") -> Request:
    return Request(request_id, "set", [key, value, None, None])


def get_request(request_id: int, key: bytes = KEY0, consistency: str = "strong") -> Request:
    return Request(request_id, "get", [key], consistency)


# --------------------------------------------------------------------------------------------
# Driving one node by hand
# --------------------------------------------------------------------------------------------


def check_effects(out: list[Effect]) -> None:
    """Only effects come back, and every message sent would survive the wire codec unchanged."""
    assert isinstance(out, list)
    for effect in out:
        assert isinstance(effect, Effect), effect
        if isinstance(effect, Send | Reply):
            protocol.check(effect.message)


class NodeHarness:
    """One ``DataNode`` plus the little coordination service it talks to."""

    def __init__(self, node_id: str, config: NodeConfig | None = None, seed: int = 7) -> None:
        self.node = DataNode(node_id, address(node_id), [OVERLORD], config, random.Random(seed))
        self.now = 0
        self.map_version = 0

    @property
    def incarnation(self) -> int:
        return self.node.incarnation

    def feed(self, event: Input, at: int | None = None) -> list[Effect]:
        if at is not None:
            assert at >= self.now, "time only moves forward"
            self.now = at
        out = self.node.handle(event, self.now)
        check_effects(out)
        return out

    def receive(self, source: str, message: Any, at: int | None = None) -> list[Effect]:
        return self.feed(Receive(source, message), at)

    def answer_coord(self, out: list[Effect], cmap: ClusterMap | None) -> list[Effect]:
        """Answer the register create and every map read in ``out``; return the effects that follow."""
        follow: list[Effect] = []
        for effect in out:
            if isinstance(effect, CoordCreate):
                follow += self.feed(CoordResult(effect.request_id, path=effect.path + "0000000001"))
            elif isinstance(effect, CoordRead) and effect.path == layout.MAP_PATH:
                self.map_version += 1
                data = cmap.to_bytes() if cmap is not None else None
                follow += self.feed(CoordResult(effect.request_id, data=data, version=self.map_version))
        return follow

    def connect(self, cmap: ClusterMap | None) -> list[Effect]:
        out = self.feed(SessionStateChanged(SessionState.CONNECTED))
        return out + self.answer_coord(out, cmap)

    def new_map(self, cmap: ClusterMap) -> list[Effect]:
        """The map watch fired and the re-read returned ``cmap``."""
        return self.answer_coord(self.feed(WatchFired(layout.MAP_PATH, WatchKind.CHANGED)), cmap)

    def observable(self) -> tuple[Any, ...]:
        n = self.node
        return (
            n.role,
            n.shard_id,
            n.shard_epoch,
            n.applied_seq,
            n.last_epoch,
            n.fenced,
            n.map.epoch if n.map else None,
            n.store.dump(self.now),
            n.sessions.snapshot(),
        )


def replies(out: list[Effect], destination: str = CLIENT) -> list[Any]:
    return [e.message for e in out if isinstance(e, Reply) and e.destination == destination]


def sent(out: list[Effect], kind: type, destination: str | None = None) -> list[Any]:
    return [
        e.message
        for e in out
        if isinstance(e, Send)
        and isinstance(e.message, kind)
        and (destination is None or e.destination == destination)
    ]


def error_codes(out: list[Effect]) -> list[ErrorCode]:
    return [m.code for m in replies(out) if isinstance(m, ErrorReply)]


def responses(out: list[Effect]) -> list[Response]:
    return [m for m in replies(out) if isinstance(m, Response)]


def timers(out: list[Effect], key: str) -> list[int]:
    return [e.at_ms for e in out if isinstance(e, SetTimer) and e.key == key]


# --------------------------------------------------------------------------------------------
# Nodes in each role
# --------------------------------------------------------------------------------------------


def starting_node(config: NodeConfig | None = None) -> NodeHarness:
    h = NodeHarness(MASTER, config)
    h.feed(Start())
    return h


def spare_node(config: NodeConfig | None = None) -> NodeHarness:
    h = NodeHarness(SPARE, config)
    h.feed(Start())
    h.connect(make_map(h.incarnation))
    assert h.node.role is Role.SPARE
    return h


def master_node(
    config: NodeConfig | None = None, *, commit_one_write: bool = True, **map_options: Any
) -> NodeHarness:
    """An unfenced master of shard 0; with ``commit_one_write`` it holds KEY0=v0, acked by n1."""
    h = NodeHarness(MASTER, config)
    h.feed(Start())
    h.connect(make_map(h.incarnation, **map_options))
    assert h.node.role is Role.MASTER and not h.node.fenced
    if commit_one_write:
        out = h.receive(CLIENT, set_request(900, KEY0, b"v0"), at=h.now + 1)
        out += h.receive(address(SLAVE), ReplicateAck(0, 1, SLAVE, 1, 1))
        out += h.receive(address(SLAVE2), ReplicateAck(0, 1, SLAVE2, 1, 1))
        assert [r.request_id for r in responses(out)] == [900]
        assert h.node.commit_seq == h.node.applied_seq == 1
    return h


def fenced_master_node(config: NodeConfig | None = None) -> NodeHarness:
    h = master_node(config)
    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=h.now + 1)
    assert h.node.fenced
    return h


def slave_node(config: NodeConfig | None = None, node_id: str = SLAVE, **map_options: Any) -> NodeHarness:
    """A slave of shard 0 that applied entry 1 (KEY0=v0) and heard a heartbeat at that position."""
    h = NodeHarness(node_id, config)
    h.feed(Start())
    out = h.connect(make_map(h.incarnation, **map_options))
    assert h.node.role is Role.SLAVE
    epoch = h.node.shard_epoch
    assert untokened(sent(out, SyncRequest, address(MASTER))) == [SyncRequest(0, epoch, node_id, 0, 0)]
    h.receive(address(MASTER), Replicate(0, epoch, 0, 0, [[1, epoch, [put(KEY0, b"v0")]]], 0), at=h.now + 1)
    h.receive(address(MASTER), Heartbeat(0, epoch, MASTER, 1, epoch, h.now), at=h.now + 1)
    assert (h.node.applied_seq, h.node.last_epoch) == (1, epoch)
    return h


def ask_for_sync(h: NodeHarness, at: int | None = None) -> None:
    """Make the slave ask its master for a resync (a gap), so that a snapshot answers something."""
    out = h.receive(address(MASTER), Replicate(0, 1, 5, 1, [[6, 1, []]], 1), at=at or h.now + 400)
    assert sent(out, SyncRequest, address(MASTER)) and h.node.awaiting_sync is not None


def untokened(requests: list[Any]) -> list[Any]:
    """Sync requests without their token (tokens only have to grow; tests compare the rest)."""
    return [replace(r, sync_token=0) for r in requests]


def for_slave(h: NodeHarness, chunk: SnapshotChunk) -> SnapshotChunk:
    """The chunk as the master would send it: answering the slave's latest sync request."""
    return replace(chunk, sync_token=h.node.awaiting_sync or 0)


ROLES: dict[str, Callable[[], NodeHarness]] = {
    "starting": starting_node,
    "spare": spare_node,
    "master_fenced": fenced_master_node,
    "master_unfenced": master_node,
    "slave": slave_node,
}

# --------------------------------------------------------------------------------------------
# Layer 1: every input in every role
# --------------------------------------------------------------------------------------------

_SNAPSHOT_ITEM = [KEY0B, "string", b"from-snapshot", None]

#: One valid instance of every message, with the address it comes from. Several requests, since
#: a node's answer depends on the command kind and the consistency asked for.
MESSAGES: dict[str, tuple[str, Any]] = {
    "Request:get": (CLIENT, get_request(1)),
    "Request:get-weak": (CLIENT, get_request(2, consistency="weak")),
    "Request:set": (CLIENT, set_request(3, KEY0, b"new")),
    "Request:set-identified": (
        CLIENT,
        Request(13, "set", [KEY0, b"once", None, None], "strong", 0, 0xC0FFEE, 1, 1),
    ),
    "Request:other-shard": (CLIENT, get_request(4, KEY1)),
    "Response": (CLIENT, Response(5, b"x")),
    "ErrorReply": (CLIENT, ErrorReply(6, ErrorCode.TIMEOUT, "late")),
    "GetMap": (CLIENT, GetMap(7, 0)),
    "MapReply": (OVERLORD, MapReply(8, 1, b"\x80")),
    "AdminRequest": (CLIENT, AdminRequest(9, "status", {})),
    "AdminReply": (OVERLORD, AdminReply(10, {"ok": True})),
    "Replicate": (address(MASTER), Replicate(0, 1, 1, 1, [[2, 1, [put(KEY0, b"replicated")]]], 1)),
    "ReplicateAck": (address(SLAVE), ReplicateAck(0, 1, SLAVE, 1, 1)),
    "SyncRequest": (address(SLAVE), SyncRequest(0, 1, SLAVE, 1, 1)),
    "SnapshotChunk": (address(MASTER), SnapshotChunk(0, 1, 5, 1, 0, [_SNAPSHOT_ITEM], True)),
    "Heartbeat": (address(MASTER), Heartbeat(0, 1, MASTER, 1, 1, 0)),
    "HeartbeatAck": (address(SLAVE), HeartbeatAck(0, 1, SLAVE, 1, 1)),
    "PositionQuery": (OVERLORD, PositionQuery(11, 0, 1)),
    "PositionReply": (OVERLORD, PositionReply(12, SLAVE, 0, 1, 1, 1)),
    "InSyncChange": (OVERLORD, InSyncChange(0, 1, MASTER, [], [SLAVE])),
    "NodeReport": (
        address(SLAVE),
        NodeReport(SLAVE, address(SLAVE), 1, 1, 0, "slave", 1, 1, 1, 0, 1, 40, {}, 3, 0, True, 0),
    ),
    "MigrateBatch": (address(OTHER_MASTER), MigrateBatch(7, 1, 0, 1, 0, [["put", *_SNAPSHOT_ITEM]], True)),
    "MigrateBatchAck": (address(OTHER_MASTER), MigrateBatchAck(7, 1, 0, 1, 0, OTHER_MASTER)),
    "MoveReport": (
        address(OTHER_MASTER),
        MoveReport(OTHER_MASTER, 7, 1, 0, 1, 1, "ready", 1, 10, 0, 1, 5, 1),
    ),
}

#: Client requests (the messages a sender waits on); each must be answered, never dropped.
REQUEST_TYPES = (Request, GetMap, AdminRequest)

OTHER_INPUTS: dict[str, Input] = {
    "Start": Start(),
    "timer:heartbeat": TimerFired("heartbeat"),
    "timer:report": TimerFired("report"),
    "timer:pending": TimerFired("pending"),
    "timer:unknown": TimerFired("no-such-timer"),
    "session:CONNECTED": SessionStateChanged(SessionState.CONNECTED),
    "session:SUSPENDED": SessionStateChanged(SessionState.SUSPENDED),
    "session:LOST": SessionStateChanged(SessionState.LOST),
    "watch:map": WatchFired(layout.MAP_PATH, WatchKind.CHANGED),
    "watch:other": WatchFired("/elsewhere", WatchKind.DELETED),
    "coord:unknown-request": CoordResult(10_000, data=b"junk"),
}

#: The (role, input) pairs that legitimately change observable state; every other pair must not.
TRANSITIONS = {
    ("master_unfenced", "Request:set"),  # applied and appended (the reply waits for an ack)
    ("master_unfenced", "Request:set-identified"),  # the same, plus its outcome in the dedup table
    ("master_unfenced", "session:SUSPENDED"),  # fenced at once
    ("master_unfenced", "session:LOST"),  # and, like any master, forgets its identity
    ("master_fenced", "session:LOST"),  # a new incarnation with no data: never serves that epoch again
    ("slave", "Replicate"),  # the next entry in order
    # ("slave", "SnapshotChunk") is absent on purpose: a snapshot nobody asked for is ignored.
}

#: The role fixtures as the admission table sees them: (role, fenced).
ROLE_STATES: dict[str, tuple[Role, bool]] = {
    "starting": (Role.STARTING, True),
    "spare": (Role.SPARE, True),
    "master_fenced": (Role.MASTER, True),
    "master_unfenced": (Role.MASTER, False),
    "slave": (Role.SLAVE, True),
}
#: The kind of request each client message of the table is.
REQUEST_KINDS: dict[str, RequestKind] = {
    "Request:get": RequestKind.STRONG_READ,
    "Request:get-weak": RequestKind.WEAK_READ,
    "Request:set": RequestKind.WRITE,
    "Request:set-identified": RequestKind.WRITE,
}


def _expected(answer: Answer) -> str:
    """What the exhaustive test observes for an answer: a Response, a held reply, or a code."""
    if answer in (Answer.SERVE_NOW, Answer.SERVE_COMMITTED):
        return "ok"  # a strong read with nothing uncommitted is answered at once
    if answer is Answer.EXECUTE:
        return "held"
    refusal = answer.refusal
    assert refusal is not None
    return refusal.value


#: How each role answers the client requests of the table, read from the node's own admission
#: table (nothing is frozen in these fixtures): a code, "ok" for a Response, or "held" for a reply
#: that waits for the write's commit.
REQUEST_ANSWERS: dict[str, dict[str, Any]] = {
    fixture: {name: _expected(ADMISSION[(role, kind, fenced, False)]) for name, kind in REQUEST_KINDS.items()}
    for fixture, (role, fenced) in ROLE_STATES.items()
}


def test_the_admission_table_answers_every_combination_and_refuses_with_wire_codes() -> None:
    flags = (False, True)
    combinations = {(r, k, f, z) for r in Role for k in RequestKind for f in flags for z in flags}
    assert set(ADMISSION) == combinations
    for (role, kind, fenced, frozen), answer in ADMISSION.items():
        if answer.refusal is None:
            assert role in (Role.MASTER, Role.SLAVE)
        if kind is RequestKind.WEAK_READ and role in (Role.MASTER, Role.SLAVE):
            assert answer is Answer.SERVE_NOW  # weak reads promise nothing, so nothing refuses them
        if role is Role.MASTER and kind is not RequestKind.WEAK_READ:
            assert (answer is Answer.FENCED) == fenced  # fencing wins over freezing
            assert (answer is Answer.FROZEN) == (frozen and not fenced)
    # The table the exhaustive test below reads is the one the code dispatches on.
    assert REQUEST_ANSWERS["master_fenced"] == {
        "Request:get": "FENCED",
        "Request:get-weak": "ok",
        "Request:set": "FENCED",
        "Request:set-identified": "FENCED",
    }


def test_message_table_covers_every_wire_message() -> None:
    covered = {type(message) for _, message in MESSAGES.values()}
    assert covered == set(protocol.message_types().values())
    for _, message in MESSAGES.values():
        protocol.check(message)  # each instance is valid on the wire


def test_transition_table_names_real_roles_and_inputs() -> None:
    for role, name in TRANSITIONS:
        assert role in ROLES and (name in MESSAGES or name in OTHER_INPUTS)


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("name", sorted(MESSAGES) + sorted(OTHER_INPUTS))
def test_every_input_in_every_role_transitions_or_is_rejected_cleanly(role: str, name: str) -> None:
    h = ROLES[role]()
    before = h.observable()
    pending_before = len(h.node.pending)
    if name in MESSAGES:
        source, message = MESSAGES[name]
        out = h.receive(source, message, at=h.now + 5)
    else:
        source, message = "", None
        out = h.feed(OTHER_INPUTS[name], at=h.now + 5)
    after = h.observable()

    if (role, name) in TRANSITIONS:
        assert after != before, f"{role} should act on {name}"
    else:
        assert after == before, f"{role} must ignore {name} (or answer it) without changing state"

    if isinstance(message, REQUEST_TYPES):
        answers = [m for m in replies(out, source) if m.request_id == message.request_id]
        held = len(h.node.pending) == pending_before + 1 and h.node.pending[-1].request_id == (
            message.request_id
        )
        assert len(answers) + held == 1, f"{role} must answer {name} exactly once (or hold it)"
        expected = REQUEST_ANSWERS[role].get(name)
        if name == "Request:other-shard":
            expected = "MOVED"
        if expected == "held":
            assert held and timers(out, "pending")
        elif expected == "ok":
            assert isinstance(answers[0], Response)
        elif expected is not None:
            assert isinstance(answers[0], ErrorReply) and answers[0].code == ErrorCode(expected)
        elif isinstance(message, GetMap):
            expect = ErrorReply if role == "starting" else MapReply
            assert isinstance(answers[0], expect)
        else:
            assert isinstance(answers[0], ErrorReply)


def test_a_request_for_another_shard_gets_moved_with_the_map_epoch() -> None:
    for make in (master_node, slave_node):
        h = make()
        h.new_map(make_map(h.incarnation, epoch=4))
        out = h.receive(CLIENT, set_request(77, KEY1), at=h.now + 1)
        [answer] = replies(out)
        assert isinstance(answer, ErrorReply)
        assert (answer.request_id, answer.code, answer.map_epoch) == (77, ErrorCode.MOVED, 4)
        assert h.node.store.dump(h.now).get(KEY1) is None


def test_bad_replication_data_from_the_master_changes_nothing() -> None:
    """Invariant 7 for a slave: a Replicate or snapshot whose write ops the store refuses."""
    for message in (
        Replicate(0, 1, 1, 1, [[2, 1, [["zap", KEY0]]]], 1),
        SnapshotChunk(0, 1, 9, 1, 0, [[KEY0B, "no-such-type", b"x", None]], True),
    ):
        h = slave_node()
        if isinstance(message, SnapshotChunk):
            ask_for_sync(h)
            message = for_slave(h, message)
        before = h.observable()
        # A bad peer may be reported to the shell by RemoteProtocolError, as long as nothing changed.
        with contextlib.suppress(RemoteProtocolError):
            h.receive(address(MASTER), message, at=h.now + 1)
        assert h.observable() == before, type(message).__name__


# --------------------------------------------------------------------------------------------
# Master: acknowledgement by replication mode
# --------------------------------------------------------------------------------------------


def test_semi_sync_holds_the_reply_until_an_in_sync_slave_acks_that_very_position() -> None:
    h = master_node()
    out = h.receive(CLIENT, set_request(1, KEY0, b"v1"), at=10)
    assert replies(out) == [] and timers(out, "pending") == [10 + NodeConfig().write_timeout_ms]
    replicate = sent(out, Replicate, address(SLAVE))
    assert replicate == [Replicate(0, 1, 1, 1, [[2, 1, [put(KEY0, b"v1")]]], 1)]
    assert sent(out, Replicate, address(SLAVE2)) == replicate

    # Acks that do not name (seq 2, epoch 1) of our log are ignored: wrong epoch, beyond our log,
    # a stale shard epoch, another shard, a node that is not our slave.
    for source, ack in (
        (SLAVE, ReplicateAck(0, 1, SLAVE, 2, 7)),
        (SLAVE, ReplicateAck(0, 1, SLAVE, 3, 1)),
        (SLAVE, ReplicateAck(0, 0, SLAVE, 2, 1)),
        (SLAVE, ReplicateAck(1, 1, SLAVE, 2, 1)),
        (OTHER_SLAVE, ReplicateAck(0, 1, OTHER_SLAVE, 2, 1)),
        (SLAVE, HeartbeatAck(0, 1, SLAVE, 2, 2)),
    ):
        assert replies(h.receive(address(source), ack, at=11)) == []
    assert h.node.commit_seq == 1

    out = h.receive(address(SLAVE2), ReplicateAck(0, 1, SLAVE2, 2, 1), at=12)
    assert responses(out) == [Response(1, True)]
    assert h.node.commit_seq == 2


def test_an_ack_from_a_slave_outside_the_in_sync_set_does_not_commit() -> None:
    shard0 = ShardInfo(0, MASTER, (SLAVE, SLAVE2), (SLAVE,), 1)
    h = master_node(commit_one_write=False, shard0=shard0)
    h.receive(CLIENT, set_request(1), at=10)
    assert replies(h.receive(address(SLAVE2), ReplicateAck(0, 1, SLAVE2, 1, 1), at=11)) == []
    assert responses(h.receive(address(SLAVE), HeartbeatAck(0, 1, SLAVE, 1, 1), at=12)) == [Response(1, True)]


def test_async_replies_at_once() -> None:
    h = master_node(commit_one_write=False, mode="async")
    out = h.receive(CLIENT, set_request(1), at=10)
    assert responses(out) == [Response(1, True)]
    assert sent(out, Replicate, address(SLAVE))  # still streamed to the slaves
    assert h.node.commit_seq == h.node.applied_seq == 1


def test_sync_waits_for_every_in_sync_slave() -> None:
    h = master_node(commit_one_write=False, mode="sync")
    h.receive(CLIENT, set_request(1), at=10)
    assert replies(h.receive(address(SLAVE), ReplicateAck(0, 1, SLAVE, 1, 1), at=11)) == []
    out = h.receive(address(SLAVE2), ReplicateAck(0, 1, SLAVE2, 1, 1), at=12)
    assert responses(out) == [Response(1, True)]


def test_writes_are_refused_when_fewer_slaves_are_in_sync_than_required() -> None:
    shard0 = ShardInfo(0, MASTER, (SLAVE, SLAVE2), (SLAVE,), 1)
    h = master_node(commit_one_write=False, shard0=shard0, min_in_sync=2)
    before = h.observable()
    out = h.receive(CLIENT, set_request(1), at=10)
    assert error_codes(out) == [ErrorCode.NOT_ENOUGH_REPLICAS]
    assert sent(out, Replicate) == [] and h.observable() == before
    # Reads are not writes: still served.
    assert responses(h.receive(CLIENT, get_request(2), at=11)) == [Response(2, None)]


def test_a_write_pending_when_the_in_sync_set_empties_is_never_acknowledged() -> None:
    """Regression (review S3): writes accepted before the in-sync set shrank below min_in_sync
    used to commit with no replica at all once the new map arrived."""
    h = master_node(commit_one_write=False)
    h.receive(CLIENT, set_request(1), at=10)
    emptied = make_map(h.incarnation, epoch=2, shard0=ShardInfo(0, MASTER, (SLAVE, SLAVE2), (), 1))
    out = h.new_map(emptied)
    assert responses(out) == [] and h.node.commit_seq == 0
    out = h.feed(TimerFired("pending"), at=10 + NodeConfig().write_timeout_ms)
    assert error_codes(out) == [ErrorCode.TIMEOUT]  # unknown outcome, never "ok"


def test_commit_knowledge_does_not_survive_a_change_of_role() -> None:
    """Regression (review S5): a master demoted and later promoted must not treat its old
    commit point as committed under its new mastership."""
    h = master_node()
    assert h.node.commit_seq == 1
    demoted = make_map(
        h.incarnation, epoch=2, shard0=ShardInfo(0, SLAVE, (MASTER, SLAVE2), (MASTER, SLAVE2), 2)
    )
    h.new_map(demoted)
    assert h.node.role is Role.SLAVE and h.node.commit_seq == 0


def test_only_a_slave_of_the_shard_answers_a_position_query() -> None:
    """Regression (review S7): a master or spare answering would offer itself for promotion."""
    query = PositionQuery(5, 0, 1)
    assert sent(master_node().receive(OVERLORD, query), PositionReply) == []
    assert sent(spare_node().receive(OVERLORD, query), PositionReply) == []
    assert sent(slave_node().receive(OVERLORD, query), PositionReply) == [PositionReply(5, SLAVE, 0, 1, 1, 1)]


def test_a_pending_write_times_out_as_unknown_outcome_and_stays_applied() -> None:
    h = master_node()
    out = h.receive(CLIENT, set_request(1, KEY0, b"v1"), at=10)
    [deadline] = timers(out, "pending")
    assert replies(h.feed(TimerFired("pending"), at=deadline - 1)) == []
    out = h.feed(TimerFired("pending"), at=deadline)
    [answer] = replies(out)
    assert isinstance(answer, ErrorReply)
    assert (answer.request_id, answer.code) == (1, ErrorCode.TIMEOUT)
    assert "unknown" in answer.reason
    assert h.node.store.dump(h.now)[KEY0][1] == b"v1"  # applied here; it may yet survive
    # A late ack changes no answer already given.
    assert replies(h.receive(address(SLAVE), ReplicateAck(0, 1, SLAVE, 2, 1), at=deadline + 1)) == []


def test_later_pending_replies_rearm_the_timer_for_their_own_deadline() -> None:
    h = master_node()
    [first] = timers(h.receive(CLIENT, set_request(1), at=10), "pending")
    assert timers(h.receive(CLIENT, set_request(2), at=50), "pending") == []  # one timer at a time
    out = h.feed(TimerFired("pending"), at=first)
    assert error_codes(out) == [ErrorCode.TIMEOUT]
    assert timers(out, "pending") == [50 + NodeConfig().write_timeout_ms]


def test_strong_reads_wait_for_the_commit_of_writes_they_could_observe() -> None:
    h = master_node()
    h.receive(CLIENT, set_request(1, KEY0, b"v1"), at=10)
    out = h.receive(CLIENT, get_request(2), at=11)
    assert replies(out) == []  # it would show v1, which a failover could still lose
    weak = h.receive(CLIENT, get_request(3, consistency="weak"), at=12)
    assert responses(weak) == [Response(3, b"v1")]  # weak reads promise nothing of the kind
    out = h.receive(address(SLAVE), ReplicateAck(0, 1, SLAVE, 2, 1), at=13)
    assert responses(out) == [Response(1, True), Response(2, b"v1")]  # in order


# --------------------------------------------------------------------------------------------
# Master: fencing
# --------------------------------------------------------------------------------------------


def test_a_suspended_master_refuses_at_once_and_holds_pending_replies_whatever_acks_arrive() -> None:
    h = master_node()
    h.receive(CLIENT, set_request(1, KEY0, b"v1"), at=10)
    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=11)
    before = h.observable()
    out = h.receive(CLIENT, set_request(2, KEY0, b"v2"), at=12)
    out += h.receive(CLIENT, get_request(3), at=12)
    assert error_codes(out) == [ErrorCode.FENCED, ErrorCode.FENCED]
    assert h.observable() == before
    # The slaves catch up, but a fenced master acknowledges nothing.
    out = h.receive(address(SLAVE), ReplicateAck(0, 1, SLAVE, 2, 1), at=13)
    out += h.receive(address(SLAVE2), ReplicateAck(0, 1, SLAVE2, 2, 1), at=13)
    out += h.feed(TimerFired("heartbeat"), at=14)
    assert replies(out) == []
    # Reconnecting is not enough: the map must be read first ...
    out = h.feed(SessionStateChanged(SessionState.CONNECTED), at=20)
    assert [e for e in out if isinstance(e, CoordRead) and e.path == layout.MAP_PATH]
    assert h.node.fenced
    assert error_codes(h.receive(CLIENT, set_request(4), at=21)) == [ErrorCode.FENCED]
    # ... and must still name us master at our shard epoch.
    h.answer_coord(out, make_map(h.incarnation))
    assert not h.node.fenced
    out = h.receive(address(SLAVE), HeartbeatAck(0, 1, SLAVE, 2, 1), at=22)
    assert responses(out) == [Response(1, True)]
    assert responses(h.receive(CLIENT, get_request(5), at=23)) == [Response(5, b"v1")]


def test_only_a_map_read_issued_after_reconnecting_unfences() -> None:
    h = master_node()
    early = h.feed(WatchFired(layout.MAP_PATH, WatchKind.CHANGED), at=10)  # a read already in flight
    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=11)
    confirm = h.feed(SessionStateChanged(SessionState.CONNECTED), at=20)
    h.answer_coord(early, make_map(h.incarnation))  # it may describe the world before the suspension
    assert h.node.fenced
    # The confirming read fails: still fenced.
    [read] = [e for e in confirm if isinstance(e, CoordRead)]
    h.feed(CoordResult(read.request_id, CoordErrorKind.CONNECTION_LOSS), at=21)
    assert h.node.fenced
    # Its answer arriving after another suspension does not count either.
    confirm = h.feed(SessionStateChanged(SessionState.CONNECTED), at=30)
    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=31)
    h.answer_coord(confirm, make_map(h.incarnation))
    assert h.node.fenced
    confirm = h.feed(SessionStateChanged(SessionState.CONNECTED), at=40)
    h.answer_coord(confirm, make_map(h.incarnation))
    assert not h.node.fenced


def test_a_master_whose_session_expired_never_serves_again_at_its_epoch() -> None:
    h = master_node()
    old_incarnation = h.incarnation
    out = h.receive(CLIENT, set_request(1), at=10)
    out = h.feed(SessionStateChanged(SessionState.LOST), at=11)
    [answer] = replies(out)
    assert isinstance(answer, ErrorReply) and answer.code is ErrorCode.TIMEOUT  # outcome unknown
    assert h.node.role is Role.SPARE and h.node.incarnation != old_incarnation
    assert h.node.store.key_count == 0
    out = h.feed(SessionStateChanged(SessionState.CONNECTED), at=20)
    [register] = [e for e in out if isinstance(e, CoordCreate)]
    assert layout.decode_payload(register.data)["incarnation"] == h.node.incarnation
    # The map still names the old incarnation master (the leader's failover has not landed yet):
    # that role is not ours any more, so nothing is served.
    h.answer_coord(out, make_map(old_incarnation))
    assert h.node.role is Role.SPARE
    [answer] = replies(h.receive(CLIENT, set_request(2), at=21))
    assert isinstance(answer, ErrorReply) and answer.code is ErrorCode.MOVED


def test_a_master_whose_reread_map_names_another_master_becomes_a_slave() -> None:
    h = master_node()
    h.receive(CLIENT, set_request(1), at=10)
    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=11)
    out = h.feed(SessionStateChanged(SessionState.CONNECTED), at=20)
    deposed = make_map(h.incarnation, epoch=2, shard0=ShardInfo(0, SLAVE, (MASTER, SLAVE2), (SLAVE2,), 2))
    out += h.answer_coord(out, deposed)
    assert h.node.role is Role.SLAVE and h.node.master_id == SLAVE
    [answer] = replies(out)
    assert isinstance(answer, ErrorReply) and answer.code is ErrorCode.TIMEOUT  # outcome unknown
    assert sent(out, SyncRequest, address(SLAVE))


# --------------------------------------------------------------------------------------------
# Master: answering SyncRequest
# --------------------------------------------------------------------------------------------


def test_sync_request_at_a_position_of_the_log_gets_the_tail() -> None:
    h = master_node()
    h.receive(CLIENT, set_request(1, KEY0, b"v1"), at=10)
    out = h.receive(address(SLAVE), SyncRequest(0, 1, SLAVE, 1, 1), at=11)
    assert sent(out, Replicate, address(SLAVE)) == [Replicate(0, 1, 1, 1, [[2, 1, [put(KEY0, b"v1")]]], 1)]
    assert sent(out, SnapshotChunk) == []
    out = h.receive(address(SLAVE), SyncRequest(0, 1, SLAVE, 0, 0), at=12)
    [tail] = sent(out, Replicate, address(SLAVE))
    assert (tail.prev_seq, [e[0] for e in tail.entries]) == (0, [1, 2])


@pytest.mark.parametrize(
    "position",
    [(2, 0), (1, 5), (9, 1)],
    ids=["our-seq-under-another-epoch", "wrong-epoch", "beyond-our-log"],
)
def test_sync_request_off_the_log_gets_a_complete_snapshot(position: tuple[int, int]) -> None:
    h = master_node(NodeConfig(snapshot_chunk_items=1))
    h.receive(CLIENT, set_request(1, KEY0B, b"w"), at=10)
    h.receive(address(SLAVE), ReplicateAck(0, 1, SLAVE, 2, 1), at=11)
    seq, epoch = position  # the master holds (1, 1) and (2, 1)
    out = h.receive(address(SLAVE2), SyncRequest(0, 1, SLAVE2, seq, epoch), at=12)
    chunks = sent(out, SnapshotChunk, address(SLAVE2))
    assert sent(out, Replicate) == []
    assert [c.chunk_no for c in chunks] == [0, 1] and [c.last for c in chunks] == [False, True]
    assert {(c.snapshot_seq, c.snapshot_epoch) for c in chunks} == {(2, 1)}
    assert sorted(item[0] for c in chunks for item in c.items) == sorted([KEY0, KEY0B])


def test_sync_requests_from_strangers_or_other_epochs_are_ignored() -> None:
    h = master_node()
    for request in (
        SyncRequest(0, 1, SPARE, 0, 0),
        SyncRequest(0, 2, SLAVE, 0, 0),
        SyncRequest(1, 1, SLAVE, 0, 0),
    ):
        assert h.receive(address(SLAVE), request, at=h.now + 1) == []


# --------------------------------------------------------------------------------------------
# Slave
# --------------------------------------------------------------------------------------------


def test_a_slave_applies_entries_in_order_and_acks_its_position() -> None:
    h = slave_node()
    out = h.receive(
        address(MASTER),
        Replicate(0, 1, 1, 1, [[2, 1, [put(KEY0, b"v2")]], [3, 1, [put(KEY0B, b"w3")]]], 1),
        at=10,
    )
    assert sent(out, ReplicateAck, address(MASTER)) == [ReplicateAck(0, 1, SLAVE, 3, 1)]
    dump = h.node.store.dump(h.now)
    assert (dump[KEY0][1], dump[KEY0B][1], h.node.applied_seq) == (b"v2", b"w3", 3)
    # A duplicate of an old message applies nothing and re-acks the current position.
    out = h.receive(address(MASTER), Replicate(0, 1, 0, 0, [[1, 1, [put(KEY0, b"v0")]]], 0), at=11)
    assert sent(out, ReplicateAck) == [ReplicateAck(0, 1, SLAVE, 3, 1)]
    assert h.node.store.dump(h.now)[KEY0][1] == b"v2"


def test_a_slave_asks_for_a_resync_on_a_gap() -> None:
    h = slave_node()
    before = h.observable()
    out = h.receive(address(MASTER), Replicate(0, 1, 2, 1, [[3, 1, [put(KEY0, b"v3")]]], 1), at=1000)
    assert untokened(sent(out, SyncRequest, address(MASTER))) == [SyncRequest(0, 1, SLAVE, 1, 1)]
    assert h.observable() == before


def test_a_slave_asks_for_a_resync_when_its_tail_diverged() -> None:
    h = slave_node()
    before = h.observable()
    # The master's entry 1 was written under epoch 0 ... ours under epoch 1: our tail is not its.
    out = h.receive(address(MASTER), Replicate(0, 1, 1, 0, [[2, 1, [put(KEY0, b"v2")]]], 1), at=1000)
    assert untokened(sent(out, SyncRequest, address(MASTER))) == [SyncRequest(0, 1, SLAVE, 1, 1)]
    assert h.observable() == before
    # A heartbeat at our sequence under another epoch also reveals the divergence (asked again
    # once the wait for an answer to the first request, snapshot_wait_ms, has passed).
    out = h.receive(address(MASTER), Heartbeat(0, 1, MASTER, 1, 0, 2100), at=2100)
    assert sent(out, SyncRequest, address(MASTER))
    assert h.observable() == before


def test_a_slave_rejects_replication_from_a_lower_shard_epoch() -> None:
    shard0 = ShardInfo(0, MASTER, (SLAVE, SLAVE2), (SLAVE, SLAVE2), 3)
    h = slave_node(shard0=shard0, epoch=5)
    assert (h.node.shard_epoch, h.node.applied_seq) == (3, 1)
    before = h.observable()
    for message in (
        Replicate(0, 2, 1, 3, [[2, 2, [put(KEY0, b"stale")]]], 1),
        Heartbeat(0, 2, MASTER, 9, 2, 20),
        SnapshotChunk(0, 2, 9, 2, 0, [[KEY0, "string", b"stale", None]], True),
    ):
        out = h.receive(address(MASTER), message, at=h.now + 1000)
        assert (
            sent(out, ReplicateAck) == [] and sent(out, HeartbeatAck) == [] and sent(out, SyncRequest) == []
        )
        assert h.observable() == before, type(message).__name__


def test_a_slave_ignores_replication_from_anyone_but_its_master() -> None:
    h = slave_node()
    before = h.observable()
    for message in (
        Replicate(0, 1, 1, 1, [[2, 1, [put(KEY0, b"forged")]]], 1),
        Heartbeat(0, 1, SLAVE2, 7, 1, 0),
        SnapshotChunk(0, 1, 5, 1, 0, [[KEY0, "string", b"forged", None]], True),
    ):
        out = h.receive(address(SLAVE2), message, at=h.now + 1000)
        assert [e for e in out if isinstance(e, Send)] == []
        assert h.observable() == before, type(message).__name__


def test_a_slave_that_sees_a_higher_shard_epoch_rereads_the_map_first() -> None:
    h = slave_node()
    before = h.observable()
    out = h.receive(address(SLAVE2), Replicate(0, 2, 1, 1, [[2, 2, [put(KEY0, b"new")]]], 1), at=10)
    assert [e for e in out if isinstance(e, CoordRead) and e.path == layout.MAP_PATH]
    assert h.observable() == before
    promoted = make_map(h.incarnation, epoch=2, shard0=ShardInfo(0, SLAVE2, (SLAVE,), (SLAVE,), 2))
    out = h.answer_coord(out, promoted)
    assert (h.node.master_id, h.node.shard_epoch) == (SLAVE2, 2)
    assert untokened(sent(out, SyncRequest, address(SLAVE2))) == [SyncRequest(0, 2, SLAVE, 1, 1)]


def test_a_slave_installs_a_snapshot_only_when_every_chunk_arrived() -> None:
    h = slave_node()
    ask_for_sync(h, at=900)
    before = h.observable()
    chunk0 = for_slave(h, SnapshotChunk(0, 1, 7, 1, 0, [[KEY0, "string", b"s0", None]], False))
    chunk1 = for_slave(h, SnapshotChunk(0, 1, 7, 1, 1, [[KEY0B, "string", b"s1", None]], False))
    chunk2 = for_slave(h, SnapshotChunk(0, 1, 7, 1, 2, [], True))
    h.receive(address(MASTER), chunk0, at=1000)
    out = h.receive(address(MASTER), chunk2, at=1001)  # chunk 1 was lost
    assert h.observable() == before
    assert untokened(sent(out, SyncRequest, address(MASTER))) == [SyncRequest(0, 1, SLAVE, 1, 1)]
    # The old copy is superseded by the new request; a fresh, complete copy arrives in any order.
    h.receive(address(MASTER), chunk1, at=1400)
    assert h.observable() == before
    fresh = [for_slave(h, c) for c in (chunk0, chunk1, chunk2)]
    for chunk in (fresh[1], fresh[0]):
        h.receive(address(MASTER), chunk, at=1500)
        assert h.observable() == before
    out = h.receive(address(MASTER), fresh[2], at=1501)
    assert (h.node.applied_seq, h.node.last_epoch) == (7, 1)
    assert h.node.store.dump(h.now) == {KEY0: ("string", b"s0", None), KEY0B: ("string", b"s1", None)}
    assert sent(out, ReplicateAck, address(MASTER)) == [ReplicateAck(0, 1, SLAVE, 7, 1)]


def test_a_duplicate_snapshot_never_rolls_a_slave_back_below_an_acknowledged_position() -> None:
    """Regression: a duplicated or late snapshot used to roll a slave back below an acked position."""
    h = slave_node()
    ask_for_sync(h, at=900)
    snapshot = for_slave(h, SnapshotChunk(0, 1, 3, 1, 0, [[KEY0, "string", b"s3", None]], True))
    h.receive(address(MASTER), snapshot, at=1000)
    assert h.node.applied_seq == 3
    out = h.receive(address(MASTER), Replicate(0, 1, 3, 1, [[4, 1, [put(KEY0, b"v4")]]], 3), at=1001)
    assert sent(out, ReplicateAck) == [ReplicateAck(0, 1, SLAVE, 4, 1)]  # the master may now commit 4
    h.receive(address(MASTER), snapshot, at=1002)  # the network delivers the snapshot a second time
    assert h.node.applied_seq == 4
    assert h.node.store.dump(h.now)[KEY0][1] == b"v4"


def test_weak_reads_on_a_slave_are_refused_when_lag_exceeds_the_bound() -> None:
    h = slave_node(NodeConfig(max_staleness_ms=100))
    heard_at = h.now - 1  # the heartbeat of slave_node() was sent one ms before "now"
    ok = h.receive(CLIENT, get_request(1, consistency="weak"), at=heard_at + 100)
    assert responses(ok) == [Response(1, b"v0")]
    out = h.receive(CLIENT, get_request(2, consistency="weak"), at=heard_at + 101)
    assert error_codes(out) == [ErrorCode.TOO_STALE]
    # A beat the slave has not caught up to does not make it fresh ...
    h.receive(address(MASTER), Heartbeat(0, 1, MASTER, 2, 1, h.now), at=h.now)
    assert error_codes(h.receive(CLIENT, get_request(3, consistency="weak"), at=h.now)) == [
        ErrorCode.TOO_STALE
    ]
    # ... catching up to it does.
    h.receive(address(MASTER), Replicate(0, 1, 1, 1, [[2, 1, [put(KEY0, b"v2")]]], 1), at=h.now)
    assert responses(h.receive(CLIENT, get_request(4, consistency="weak"), at=h.now)) == [Response(4, b"v2")]


def test_a_slave_that_never_synced_refuses_bounded_weak_reads() -> None:
    h = NodeHarness(SLAVE, NodeConfig(max_staleness_ms=10_000))
    h.connect(make_map(h.incarnation))
    assert error_codes(h.receive(CLIENT, get_request(1, consistency="weak"), at=1)) == [ErrorCode.TOO_STALE]


# --------------------------------------------------------------------------------------------
# Roles from the map
# --------------------------------------------------------------------------------------------


def test_a_map_naming_this_node_id_under_another_incarnation_gives_it_no_role() -> None:
    predecessor = NodeHarness(MASTER, seed=1)
    restarted = NodeHarness(MASTER, seed=2)
    assert predecessor.incarnation != restarted.incarnation
    cmap = make_map(predecessor.incarnation)
    restarted.connect(cmap)
    assert restarted.node.role is Role.SPARE and restarted.node.shard_id is None
    assert error_codes(restarted.receive(CLIENT, set_request(1), at=1)) == [ErrorCode.MOVED]
    assert error_codes(restarted.receive(CLIENT, get_request(2, consistency="weak"), at=1)) == [
        ErrorCode.MOVED
    ]
    # A slave's role is not inherited either.
    restarted_slave = NodeHarness(SLAVE, seed=2)
    restarted_slave.connect(make_map(predecessor.incarnation))
    assert restarted_slave.node.role is Role.SPARE
    # The map that names the new incarnation does give it the role.
    restarted.new_map(make_map(restarted.incarnation, epoch=2))
    assert restarted.node.role is Role.MASTER


def test_an_older_map_never_replaces_a_newer_one() -> None:
    h = master_node()
    h.new_map(make_map(h.incarnation, epoch=5))
    before = h.observable()
    old = make_map(h.incarnation, epoch=4, shard0=ShardInfo(0, SLAVE, (MASTER,), (MASTER,), 2))
    h.new_map(old)
    assert h.observable() == before


def test_a_garbage_map_is_traced_and_changes_nothing() -> None:
    h = master_node()
    before = h.observable()
    out = h.feed(WatchFired(layout.MAP_PATH, WatchKind.CHANGED), at=h.now + 1)
    [read] = [e for e in out if isinstance(e, CoordRead)]
    h.feed(CoordResult(read.request_id, data=b"\xc1 not a map", version=3))
    assert h.observable() == before


def test_a_migration_batch_reaching_a_new_shard_master_before_its_map_is_applied_when_the_map_lands() -> None:
    # The source may read the map that starts a move before the target's future master has read it:
    # that node is still a spare when the first batch arrives. The batch must be kept, not dropped
    # (dropping costs a retransmission timeout per join), and applied once the map makes it master.
    h = NodeHarness(SPARE)
    h.connect(make_map(h.incarnation, mode="async"))
    assert h.node.role is Role.SPARE
    target = PLACEMENT.with_shard(2)
    key = next(
        k
        for k in (f"key-{i}".encode() for i in range(1000))
        if PLACEMENT.owner(k) == 0 and target.owner(k) == 2
    )
    batch = MigrateBatch(5, 0, 2, 1, 0, [put(key, b"moved")], True)
    out = h.receive(address(MASTER), batch, at=10)
    assert sent(out, MigrateBatchAck) == []
    base = make_map(h.incarnation, mode="async")
    moves = (MoveInfo(0, 2, MOVE_COPYING, 1, 1, 1), MoveInfo(1, 2, MOVE_PENDING))
    joined = base.successor(
        shards=base.with_shard(ShardInfo(2, SPARE, (), (), 1)), rebalance=Rebalance(5, target, moves)
    )
    out = h.new_map(joined)
    assert h.node.role is Role.MASTER
    assert h.node.store.get(key, now_ms=20) == b"moved"
    assert sent(out, MigrateBatchAck, address(MASTER)) == [MigrateBatchAck(5, 0, 2, 1, 0, SPARE)]
