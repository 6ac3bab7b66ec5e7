"""The Overlord state machine: election, map creation, failover, membership and in-sync changes.

What this proves:

* Layer 1 (exhaustive): an Overlord that is disconnected, a follower or the leader is fed one valid
  instance of every wire message (a table checked against ``protocol.message_types()``), its timers,
  every ``SessionState`` and watch events. It never raises, returns only ``Effect`` instances, sends
  only messages that survive the wire codec, answers every request (GetMap, AdminRequest, Request)
  exactly once, and an input that is not valid for its role changes nothing observable (role,
  election znode, map and map version, registrations, the map stored in the coordination service).
  A follower or a disconnected Overlord never writes the map, whatever it is fed.
* Behaviour: the lowest election znode leads (by sequence number, not by name); the leader creates
  the initial map only once it has listed the registrations, read every payload and has enough
  nodes; a vanished master makes it query the live slaves and promote the in-sync one with the
  highest ``(last_epoch, applied_seq)``, bumping the shard epoch, in a write conditional on the map
  version it read; BAD_VERSION makes it re-read instead of overwriting (a deposed leader's write
  fails); several masters dying at once are all replaced; a node re-registering under a new
  incarnation loses its role; InSyncChange counts only from the current master of the current
  epoch; a later failover of a shard always asks for fresh positions.
* Known bugs are pinned by ``xfail(strict=True)`` tests that name them (see their reasons).

How: ``FakeCoord`` is a few znodes (the map with its version, the election and registration
children and their payloads) that answers the Overlord's ``Coord*`` effects the way ZooKeeper would.
``OverlordHarness`` feeds one input and then answers the coordination effects that follow, in order,
until none is left, except those a test asks it to hold so it can answer them by hand. Watches are
fired by the tests, after they change the znodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from dimint.core import layout, protocol
from dimint.core.clustermap import ClusterMap, NodeInfo, ShardInfo, initial_map
from dimint.core.effects import (
    COORD_EFFECTS,
    CoordCreate,
    CoordErrorKind,
    CoordList,
    CoordRead,
    CoordResult,
    CoordSet,
    Effect,
    Input,
    Receive,
    Reply,
    Send,
    SessionState,
    SessionStateChanged,
    Start,
    TimerFired,
    WatchFired,
    WatchKind,
)
from dimint.core.errors import ErrorCode
from dimint.core.overlord import Overlord, OverlordConfig, OverlordRole
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

CONFIG = OverlordConfig(initial_shards=2, replicas=2)
PLACEMENT = make_placement("ring", [0, 1])
CLIENT = "client:1"
#: Shard 0 = n0 + n1, n2; shard 1 = n3 + n4, n5: two slaves each, as CONFIG wants.
NODES = ("n0", "n1", "n2", "n3", "n4", "n5")


def address(node_id: str) -> str:
    return f"node:{node_id}"


def incarnation_of(node_id: str) -> int:
    return 1000 + int(node_id[1:])


def make_map(*, shard0: ShardInfo | None = None, nodes: tuple[str, ...] = NODES) -> ClusterMap:
    shards = [
        shard0 or ShardInfo(0, "n0", ("n1", "n2"), ("n1", "n2"), 1),
        ShardInfo(1, "n3", ("n4", "n5"), ("n4", "n5"), 1),
    ]
    infos = [NodeInfo(n, address(n), incarnation_of(n)) for n in nodes]
    return initial_map(PLACEMENT, shards, infos)


def based_on(h: OverlordHarness, change: InSyncChange) -> InSyncChange:
    """The request as a master computes it: from the map the leader currently has."""
    assert h.overlord.map is not None
    return replace(change, map_epoch=h.overlord.map.epoch)


# --------------------------------------------------------------------------------------------
# A tiny coordination service and a harness around one Overlord
# --------------------------------------------------------------------------------------------


class FakeCoord:
    """The znodes an Overlord uses, answering its requests as ZooKeeper would (watches aside)."""

    def __init__(self) -> None:
        self.map_data: bytes | None = None
        self.map_version = -1
        self.election: dict[str, bytes] = {}
        self.registrations: dict[str, bytes] = {}
        self.sequence = 10

    def put_map(self, cmap: ClusterMap, version: int = 4) -> None:
        self.map_data, self.map_version = cmap.to_bytes(), version

    @property
    def map(self) -> ClusterMap | None:
        return ClusterMap.from_bytes(self.map_data) if self.map_data is not None else None

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def register(self, node_id: str, incarnation: int | None = None) -> str:
        name = f"{node_id}_{self._next():010d}"
        payload = {"node_id": node_id, "address": address(node_id)}
        payload["incarnation"] = incarnation if incarnation is not None else incarnation_of(node_id)
        self.registrations[name] = layout.encode_payload(payload)
        return name

    def unregister(self, node_id: str) -> None:
        for name in [n for n in self.registrations if n.rsplit("_", 1)[0] == node_id]:
            del self.registrations[name]

    def answer(self, effect: Effect) -> CoordResult:
        rid = effect.request_id  # type: ignore[attr-defined]
        if isinstance(effect, CoordCreate):
            if effect.path == layout.MAP_PATH:
                if self.map_data is not None:
                    return CoordResult(rid, CoordErrorKind.NODE_EXISTS, path=effect.path)
                self.map_data, self.map_version = effect.data, 0
                return CoordResult(rid, path=effect.path, version=0)
            if effect.path.startswith(layout.ELECTION_PATH + "/"):
                name = f"{effect.path.rsplit('/', 1)[1]}{self._next():010d}"
                self.election[name] = effect.data
                return CoordResult(rid, path=f"{layout.ELECTION_PATH}/{name}", version=0)
            return CoordResult(rid, path=effect.path, version=0)  # mkdir of the nodes path
        if isinstance(effect, CoordSet):
            assert effect.path == layout.MAP_PATH and effect.expected_version != -1
            if self.map_data is None:
                return CoordResult(rid, CoordErrorKind.NO_NODE)
            if effect.expected_version != self.map_version:
                return CoordResult(rid, CoordErrorKind.BAD_VERSION)
            self.map_data, self.map_version = effect.data, self.map_version + 1
            return CoordResult(rid, path=effect.path, version=self.map_version)
        if isinstance(effect, CoordList):
            children = self.election if effect.path == layout.ELECTION_PATH else self.registrations
            return CoordResult(rid, path=effect.path, children=tuple(sorted(children)))
        if isinstance(effect, CoordRead):
            if effect.path == layout.MAP_PATH:
                if self.map_data is None:
                    return CoordResult(rid, CoordErrorKind.NO_NODE)
                return CoordResult(rid, data=self.map_data, version=self.map_version)
            name = effect.path.rsplit("/", 1)[1]
            if name not in self.registrations:
                return CoordResult(rid, CoordErrorKind.NO_NODE)
            return CoordResult(rid, data=self.registrations[name], version=0)
        raise AssertionError(f"unexpected coordination effect {effect!r}")


def check_effects(out: list[Effect]) -> None:
    assert isinstance(out, list)
    for effect in out:
        assert isinstance(effect, Effect), effect
        if isinstance(effect, Send | Reply):
            protocol.check(effect.message)


class OverlordHarness:
    def __init__(self, coord: FakeCoord, overlord_id: str = "o1", config: OverlordConfig = CONFIG) -> None:
        self.overlord = Overlord(overlord_id, f"overlord:{overlord_id}", config, random.Random(3))
        self.coord = coord
        self.now = 0
        self.hold: Callable[[Effect], bool] = lambda effect: False
        self.held: list[Effect] = []

    def _handle(self, event: Input) -> list[Effect]:
        out = self.overlord.handle(event, self.now)
        check_effects(out)
        return out

    def feed(self, event: Input, at: int | None = None) -> list[Effect]:
        """Feed ``event``, then answer the coordination effects that follow; return every effect."""
        if at is not None:
            assert at >= self.now
            self.now = at
        everything = self._handle(event)
        queue = [e for e in everything if isinstance(e, COORD_EFFECTS)]
        while queue:
            effect = queue.pop(0)
            if self.hold(effect):
                self.held.append(effect)
                continue
            more = self._handle(self.coord.answer(effect))
            everything += more
            queue += [e for e in more if isinstance(e, COORD_EFFECTS)]
        return everything

    def answer_held(self, result: Callable[[Effect], CoordResult] | None = None) -> list[Effect]:
        """Answer the held effects (by ``result`` or by the coordination service); what follows is
        answered or held by ``hold`` as usual."""
        held, self.held = self.held, []
        out: list[Effect] = []
        for effect in held:
            answer = result(effect) if result is not None else self.coord.answer(effect)
            out += self.feed(answer)
        return out

    def receive(self, source: str, message: Any, at: int | None = None) -> list[Effect]:
        return self.feed(Receive(source, message), at)

    def membership_changed(self, at: int | None = None) -> list[Effect]:
        return self.feed(WatchFired(layout.NODES_PATH, WatchKind.CHILD), at)

    def observable(self) -> tuple[Any, ...]:
        o = self.overlord
        return (
            o.role,
            o.election_path,
            o.map.epoch if o.map else None,
            o.map_version,
            tuple(sorted((n, r.znode, r.incarnation) for n, r in o.registrations.items())),
            o.write_in_flight,
            self.coord.map_data,
            self.coord.map_version,
        )


def map_writes(out: list[Effect]) -> list[Effect]:
    return [e for e in out if isinstance(e, CoordSet | CoordCreate) and e.path == layout.MAP_PATH]


def written_maps(out: list[Effect]) -> list[ClusterMap]:
    return [ClusterMap.from_bytes(e.data) for e in map_writes(out)]


def queries(out: list[Effect]) -> dict[str, PositionQuery]:
    return {
        e.destination: e.message for e in out if isinstance(e, Send) and isinstance(e.message, PositionQuery)
    }


def answer_queries(
    h: OverlordHarness, out: list[Effect], positions: dict[str, tuple[int, int]]
) -> list[Effect]:
    """Each queried node named in ``positions`` answers with its ``(last_epoch, applied_seq)``."""
    result: list[Effect] = []
    for destination, query in sorted(queries(out).items()):
        node_id = destination.split(":", 1)[1]
        if node_id in positions:
            last_epoch, seq = positions[node_id]
            reply = PositionReply(
                query.request_id, node_id, query.shard_id, query.shard_epoch, last_epoch, seq
            )
            result += h.receive(destination, reply)
    return result


def leader(cmap: ClusterMap | None = None, *, registered: tuple[str, ...] = NODES) -> OverlordHarness:
    """The leader of a cluster whose map is ``cmap`` (stored at version 4) and nodes are all up."""
    coord = FakeCoord()
    if cmap is not None:
        coord.put_map(cmap)
    for node_id in registered:
        coord.register(node_id)
    h = OverlordHarness(coord)
    h.feed(Start())
    out = h.feed(SessionStateChanged(SessionState.CONNECTED), at=1)
    assert h.overlord.role is OverlordRole.LEADER
    if cmap is not None:
        assert map_writes(out) == [], "a cluster that matches its map needs no write"
    return h


def follower(cmap: ClusterMap) -> OverlordHarness:
    coord = FakeCoord()
    coord.put_map(cmap)
    for node_id in NODES:
        coord.register(node_id)
    coord.election["n_0000000001"] = b""  # another Overlord was elected first
    h = OverlordHarness(coord)
    h.feed(Start())
    h.feed(SessionStateChanged(SessionState.CONNECTED), at=1)
    assert h.overlord.role is OverlordRole.FOLLOWER
    return h


def disconnected() -> OverlordHarness:
    h = OverlordHarness(FakeCoord())
    h.feed(Start())
    return h


# --------------------------------------------------------------------------------------------
# Layer 1: every input in every role
# --------------------------------------------------------------------------------------------

_ITEM = [b"k", "string", b"v", None]

MESSAGES: dict[str, tuple[str, Any]] = {
    "Request": (CLIENT, Request(1, "get", [b"k"])),
    "Response": (CLIENT, Response(2, b"x")),
    "ErrorReply": (CLIENT, ErrorReply(3, ErrorCode.TIMEOUT, "late")),
    "GetMap": (CLIENT, GetMap(4, 0)),
    "MapReply": (CLIENT, MapReply(5, 1, b"\x80")),
    "AdminRequest:status": (CLIENT, AdminRequest(6, "status", {})),
    "AdminRequest:add_node": (CLIENT, AdminRequest(7, "add_node", {"node": "n9"})),
    "AdminReply": (CLIENT, AdminReply(8, {"ok": True})),
    "Replicate": (address("n0"), Replicate(0, 1, 0, 0, [[1, 1, [["put", b"k", "string", b"v", None]]]], 0)),
    "ReplicateAck": (address("n1"), ReplicateAck(0, 1, "n1", 1, 1)),
    "SyncRequest": (address("n1"), SyncRequest(0, 1, "n1", 0, 0)),
    "SnapshotChunk": (address("n0"), SnapshotChunk(0, 1, 1, 1, 0, [_ITEM], True)),
    "Heartbeat": (address("n0"), Heartbeat(0, 1, "n0", 1, 1, 0)),
    "HeartbeatAck": (address("n1"), HeartbeatAck(0, 1, "n1", 1, 1)),
    "PositionQuery": (address("n0"), PositionQuery(9, 0, 1)),
    "PositionReply": (address("n1"), PositionReply(10, "n1", 0, 1, 1, 5)),
    "InSyncChange:valid": (address("n0"), InSyncChange(0, 1, "n0", [], ["n2"], 1)),
    "InSyncChange:not-master": (address("n1"), InSyncChange(0, 1, "n1", [], ["n2"], 1)),
    "NodeReport": (
        address("n1"),
        NodeReport("n1", address("n1"), 1001, 1, 0, "slave", 1, 1, 1, 0, 1, 40, {}, 3, 0, True, 0),
    ),
    "MigrateBatch": (address("n3"), MigrateBatch(7, 1, 0, 1, 0, [["put", *_ITEM]], True)),
    "MigrateBatchAck": (address("n3"), MigrateBatchAck(7, 1, 0, 1, 0, "n3")),
    "MoveReport": (address("n3"), MoveReport("n3", 7, 1, 0, 1, 1, "ready", 1, 10, 0, 1, 5, 1)),
}
REQUEST_TYPES = (Request, GetMap, AdminRequest)

OTHER_INPUTS: dict[str, Input] = {
    "Start": Start(),
    "timer:reconcile": TimerFired("reconcile"),
    "timer:failover:0": TimerFired("failover:0"),
    "session:CONNECTED": SessionStateChanged(SessionState.CONNECTED),
    "session:SUSPENDED": SessionStateChanged(SessionState.SUSPENDED),
    "session:LOST": SessionStateChanged(SessionState.LOST),
    "watch:election": WatchFired(layout.ELECTION_PATH, WatchKind.CHILD),
    "watch:map": WatchFired(layout.MAP_PATH, WatchKind.CHANGED),
    "watch:nodes": WatchFired(layout.NODES_PATH, WatchKind.CHILD),
    "watch:one-node": WatchFired(f"{layout.NODES_PATH}/n1_0000000012", WatchKind.DELETED),
    "coord:unknown-request": CoordResult(10_000, data=b"junk"),
}

ROLES: dict[str, Callable[[], OverlordHarness]] = {
    "disconnected": disconnected,
    "follower": lambda: follower(make_map()),
    "leader": lambda: leader(make_map()),
}

TRANSITIONS = {
    ("disconnected", "session:CONNECTED"),  # runs for election (and wins: nobody else is there)
    ("follower", "session:LOST"),  # its election znode is gone with the session
    ("leader", "session:LOST"),
    ("leader", "InSyncChange:valid"),  # the current master drops n2 from the in-sync set
}


def test_message_table_covers_every_wire_message() -> None:
    assert {type(m) for _, m in MESSAGES.values()} == set(protocol.message_types().values())
    for _, message in MESSAGES.values():
        protocol.check(message)


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("name", sorted(MESSAGES) + sorted(OTHER_INPUTS))
def test_every_input_in_every_role_transitions_or_is_rejected_cleanly(role: str, name: str) -> None:
    h = ROLES[role]()
    before = h.observable()
    if name in MESSAGES:
        source, message = MESSAGES[name]
        out = h.receive(source, message, at=h.now + 5)
    else:
        source, message = "", None
        out = h.feed(OTHER_INPUTS[name], at=h.now + 5)
    if (role, name) in TRANSITIONS:
        assert h.observable() != before, f"{role} should act on {name}"
    else:
        assert h.observable() == before, f"{role} must not change on {name}"
    if role != "leader":
        assert map_writes(out) == [], f"a {role} Overlord wrote the map on {name}"

    answers = [e.message for e in out if isinstance(e, Reply)]
    if isinstance(message, Request) and h.overlord.map is not None:
        # Proxied: forwarded once to the owning master, answered when the master answers.
        [forwarded] = [e for e in out if isinstance(e, Send) and isinstance(e.message, Request)]
        assert answers == [] and forwarded.message.command == message.command
        relayed = h.receive(forwarded.destination, Response(forwarded.message.request_id, b"v"), at=h.now + 6)
        assert [e.message for e in relayed if isinstance(e, Reply)] == [Response(message.request_id, b"v")]
        return
    if isinstance(message, REQUEST_TYPES):
        assert [a.request_id for a in answers] == [message.request_id], f"{name} must be answered once"
        [answer] = answers
        if isinstance(message, GetMap):
            assert isinstance(answer, MapReply if role != "disconnected" else ErrorReply)
        elif isinstance(message, Request):
            # Without a map there is nowhere to proxy to: refused with a reason.
            assert isinstance(answer, ErrorReply) and answer.code is ErrorCode.UNAVAILABLE
        elif message.action == "status":
            assert isinstance(answer, AdminReply) and answer.result["role"] == h.overlord.role.value
        else:
            assert isinstance(answer, ErrorReply)
    else:
        assert answers == [], f"{name} is not a request and needs no answer"


def test_a_follower_serves_the_map_and_never_writes_it_whatever_happens() -> None:
    cmap = make_map()
    h = follower(cmap)
    out = h.receive(CLIENT, GetMap(1, 0), at=10)
    assert [e.message for e in out if isinstance(e, Reply)] == [MapReply(1, cmap.epoch, cmap.to_bytes())]
    everything: list[Effect] = []
    h.coord.unregister("n0")  # a master dies: only the leader acts on it
    h.coord.register("n9")
    everything += h.membership_changed(at=20)
    everything += h.receive(address("n0"), based_on(h, InSyncChange(0, 1, "n0", [], ["n2"])), at=21)
    everything += h.receive(address("n1"), PositionReply(1, "n1", 0, 1, 1, 9), at=22)
    for at in (500, 1000, 1500):
        everything += h.feed(TimerFired("reconcile"), at=at)
        everything += h.feed(TimerFired("failover:0"), at=at)
    assert map_writes(everything) == [] and queries(everything) == {}
    assert h.coord.map == cmap


def test_a_suspended_leader_writes_nothing_until_connected_again() -> None:
    h = leader(make_map())
    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=10)
    out = h.receive(address("n0"), based_on(h, InSyncChange(0, 1, "n0", [], ["n2"])), at=11)
    out += h.feed(TimerFired("reconcile"), at=500)
    assert map_writes(out) == []
    out = h.feed(SessionStateChanged(SessionState.CONNECTED), at=600)
    [written] = written_maps(out)
    assert written.shards[0].in_sync == ("n1",)


# --------------------------------------------------------------------------------------------
# Election
# --------------------------------------------------------------------------------------------


def test_the_lowest_election_sequence_number_leads_whatever_the_names() -> None:
    coord = FakeCoord()
    coord.put_map(make_map())
    coord.election["a_0000000099"] = b""  # sorts first by name, but was created later
    h = OverlordHarness(coord)
    h.feed(SessionStateChanged(SessionState.CONNECTED), at=1)
    assert h.overlord.election_path == f"{layout.ELECTION_PATH}/n_0000000011"
    assert h.overlord.role is OverlordRole.LEADER


def test_a_follower_takes_over_when_the_leader_znode_vanishes() -> None:
    h = follower(make_map())
    h.coord.election.pop("n_0000000001")
    out = h.feed(WatchFired(layout.ELECTION_PATH, WatchKind.CHILD), at=10)
    assert h.overlord.role is OverlordRole.LEADER
    # A new leader learns the membership and the map before it judges anything.
    assert any(isinstance(e, CoordList) and e.path == layout.NODES_PATH for e in out)
    assert any(isinstance(e, CoordRead) and e.path == layout.MAP_PATH for e in out)
    assert map_writes(out) == []


def test_a_leader_whose_election_znode_vanished_steps_down() -> None:
    h = leader(make_map())
    h.coord.election.clear()
    h.feed(WatchFired(layout.ELECTION_PATH, WatchKind.CHILD), at=10)
    assert h.overlord.role is OverlordRole.DISCONNECTED
    out = h.receive(address("n0"), based_on(h, InSyncChange(0, 1, "n0", [], ["n2"])), at=11)
    assert map_writes(out) == []


# --------------------------------------------------------------------------------------------
# The initial map
# --------------------------------------------------------------------------------------------


def test_the_initial_map_waits_for_the_listing_and_every_payload() -> None:
    coord = FakeCoord()
    for node_id in NODES:
        coord.register(node_id)
    h = OverlordHarness(coord)
    h.hold = lambda e: isinstance(e, CoordList) and e.path == layout.NODES_PATH
    out = h.feed(SessionStateChanged(SessionState.CONNECTED), at=1)
    out += h.feed(TimerFired("reconcile"), at=500)
    assert h.overlord.is_leader and h.overlord.map_missing
    assert map_writes(out) == [], "no map before the registrations are listed"
    # Listed, but the payloads (the addresses) are not read yet.
    h.hold = lambda e: isinstance(e, CoordRead) and e.path.startswith(layout.NODES_PATH + "/")
    out = h.answer_held()
    assert map_writes(out) == [], "no map before every payload is read"
    assert len(h.held) == len(NODES)
    h.hold = lambda e: False
    last = h.held.pop()
    out = h.answer_held()
    assert map_writes(out) == [], "no map while one payload is still unread"
    h.held = [last]
    out = h.answer_held()
    [create] = map_writes(out)
    assert isinstance(create, CoordCreate)
    cmap = coord.map
    assert cmap is not None and cmap.epoch == 1
    assert [(s.master, s.slaves, s.in_sync, s.shard_epoch) for s in cmap.shards.values()] == [
        ("n0", ("n1", "n2"), ("n1", "n2"), 1),
        ("n3", ("n4", "n5"), ("n4", "n5"), 1),
    ]
    assert {n: (i.address, i.incarnation) for n, i in cmap.nodes.items()} == {
        n: (address(n), incarnation_of(n)) for n in NODES
    }


def test_no_initial_map_with_too_few_nodes() -> None:
    h = leader(registered=NODES[:5])
    out = h.feed(TimerFired("reconcile"), at=500)
    assert map_writes(out) == [] and h.coord.map is None
    h.coord.register("n5")
    [cmap] = written_maps(h.membership_changed(at=600))
    assert cmap.epoch == 1


def test_an_initial_map_that_appeared_meanwhile_is_read_not_overwritten() -> None:
    h = leader(registered=NODES[:5])
    other = make_map()
    h.coord.put_map(other, version=0)  # another leader created it first
    h.coord.register("n5")
    out = h.membership_changed(at=600)
    [create] = map_writes(out)
    assert isinstance(create, CoordCreate)
    assert h.coord.map == other
    assert h.overlord.map == other


# --------------------------------------------------------------------------------------------
# Failover
# --------------------------------------------------------------------------------------------


def test_a_vanished_master_is_replaced_by_the_in_sync_slave_with_the_highest_position() -> None:
    h = leader(make_map())
    h.coord.unregister("n0")
    out = h.membership_changed(at=10)
    assert sorted(queries(out)) == [address("n1"), address("n2")]
    assert {(q.shard_id, q.shard_epoch) for q in queries(out).values()} == {(0, 1)}
    assert map_writes(out) == []  # nothing is decided before the positions are in
    # n1 applied more, but n2 holds an entry of a later epoch: n2 has every committed write.
    out = answer_queries(h, out, {"n1": (1, 9), "n2": (2, 5)})
    [write] = map_writes(out)
    assert isinstance(write, CoordSet) and write.expected_version == 4
    new = ClusterMap.from_bytes(write.data)
    assert new.epoch == 2
    # n1 stays a slave but leaves the in-sync set: its position is not n2's, so it may lack writes
    # the old master acknowledged (here its epoch-1 tail even diverges); n2 re-admits it later.
    assert new.shards[0] == ShardInfo(0, "n2", ("n1",), (), 2)
    assert new.shards[1] == make_map().shards[1]
    assert "n0" not in new.nodes  # dead and serving nothing


def test_promotion_never_picks_a_slave_outside_the_in_sync_set() -> None:
    h = leader(make_map(shard0=ShardInfo(0, "n0", ("n1", "n2"), ("n1",), 1)))
    h.coord.unregister("n0")
    out = h.membership_changed(at=10)
    out = answer_queries(h, out, {"n1": (1, 5), "n2": (1, 9)})
    [new] = written_maps(out)
    assert new.shards[0].master == "n1" and new.shards[0].shard_epoch == 2


def test_no_promotion_before_every_live_in_sync_slave_answered() -> None:
    h = leader(make_map())
    h.coord.unregister("n0")
    out = h.membership_changed(at=10)
    out = answer_queries(h, out, {"n1": (1, 9)})
    out += h.feed(TimerFired("failover:0"), at=310)
    assert map_writes(out) == []
    assert address("n2") in queries(out), "the silent in-sync slave is asked again"


def test_bad_version_makes_the_leader_reread_instead_of_overwriting() -> None:
    h = leader(make_map())
    h.coord.unregister("n0")
    out = h.membership_changed(at=10)
    # Meanwhile a newer leader already replaced the master (n1) and wrote version 5.
    newer = make_map(shard0=ShardInfo(0, "n1", ("n2",), ("n2",), 2), nodes=NODES[1:]).successor()
    h.coord.put_map(newer, version=5)
    out = answer_queries(h, out, {"n1": (1, 9), "n2": (1, 5)})
    writes = map_writes(out)
    assert [w.expected_version for w in writes] == [4]  # ours, refused with BAD_VERSION
    rereads = [e for e in out if isinstance(e, CoordRead) and e.path == layout.MAP_PATH]
    assert out.index(rereads[0]) > out.index(writes[0])
    assert h.coord.map == newer and h.coord.map_version == 5  # not overwritten
    assert h.overlord.map == newer and h.overlord.map_version == 5
    # It decides again from the truth it re-read: the next write is conditional on version 5.
    out = h.receive(address("n1"), based_on(h, InSyncChange(0, 2, "n1", [], ["n2"])), at=600)
    assert [w.expected_version for w in map_writes(out)] == [5]
    assert h.coord.map is not None and h.coord.map.shards[0] == ShardInfo(0, "n1", ("n2",), (), 2)


def test_several_masters_dying_at_once_are_all_replaced() -> None:
    h = leader(make_map())
    h.coord.unregister("n0")
    h.coord.unregister("n3")
    out = h.membership_changed(at=10)
    assert sorted(queries(out)) == [address(n) for n in ("n1", "n2", "n4", "n5")]
    out = answer_queries(h, out, {"n1": (1, 3), "n2": (1, 4), "n4": (1, 8), "n5": (1, 7)})
    final = h.coord.map
    assert final is not None
    assert (final.shards[0].master, final.shards[1].master) == ("n2", "n4")
    assert (final.shards[0].shard_epoch, final.shards[1].shard_epoch) == (2, 2)
    versions = [w.expected_version for w in map_writes(out)]
    assert versions == list(range(4, 4 + len(versions)))  # each write builds on the one before


def test_a_later_failover_asks_for_fresh_positions_after_an_uncertain_promotion_write() -> None:
    """Regression: the failover of an uncertain (CONNECTION_LOSS) promotion write was never forgotten,
    so the next failover of the shard promoted on its stale positions without asking anyone."""
    h = leader(make_map())
    h.coord.unregister("n0")
    out = h.membership_changed(at=10)
    h.hold = lambda e: isinstance(e, CoordSet)
    answer_queries(h, out, {"n1": (1, 9), "n2": (1, 10)})
    [write] = h.held
    assert h.coord.answer(write).error is None  # the write applied ...
    h.answer_held(lambda e: CoordResult(e.request_id, CoordErrorKind.CONNECTION_LOSS))  # ... unseen
    assert h.overlord.map is not None and h.overlord.map.shards[0].master == "n2"
    # Later the new master dies. n1's position of long ago says nothing about what it holds now.
    h.hold = lambda e: False
    h.coord.unregister("n2")
    out = h.membership_changed(at=5000)
    assert map_writes(out) == [], "promoted on stale positions"
    assert address("n1") in queries(out)


# --------------------------------------------------------------------------------------------
# Membership and in-sync changes
# --------------------------------------------------------------------------------------------


def test_a_slave_that_restarted_loses_its_in_sync_role() -> None:
    h = leader(make_map())
    h.coord.unregister("n1")
    h.coord.register("n1", incarnation=5555)
    out = h.membership_changed(at=10)
    [new] = written_maps(out)
    assert new.nodes["n1"].incarnation == 5555
    assert "n1" not in new.shards[0].in_sync  # it lost its data: a fresh slave, not in sync
    assert new.shards[0].master == "n0"
    assert new.role_of("n1", incarnation_of("n1")) is None  # the predecessor's role is gone


def test_a_master_that_restarted_is_failed_over_at_once() -> None:
    h = leader(make_map())
    h.coord.unregister("n0")
    h.coord.register("n0", incarnation=5555)  # back before its old session even expired
    out = h.membership_changed(at=10)
    assert sorted(queries(out)) == [address("n1"), address("n2")]
    out = answer_queries(h, out, {"n1": (1, 4), "n2": (1, 3)})
    final = h.coord.map
    assert final is not None and final.shards[0].master == "n1" and final.shards[0].shard_epoch == 2
    assert final.nodes["n0"].incarnation == 5555
    assert final.role_of("n0", incarnation_of("n0")) is None
    assert "n0" not in final.shards[0].in_sync


def test_a_dead_slave_leaves_its_shard_and_a_spare_fills_the_slot() -> None:
    h = leader(make_map(nodes=(*NODES, "n6")), registered=(*NODES, "n6"))
    out = h.feed(TimerFired("reconcile"), at=5)
    assert map_writes(out) == []  # n6 is spare: registered, serving nothing
    h.coord.unregister("n2")
    [new] = written_maps(h.membership_changed(at=10))
    assert new.shards[0] == ShardInfo(0, "n0", ("n1", "n6"), ("n1",), 1)


IN_SYNC_CASES = [
    (InSyncChange(0, 1, "n0", [], ["n2"]), ("n1",)),
    (InSyncChange(0, 1, "n0", ["n2"], ["n1"]), ("n2",)),
    (InSyncChange(0, 1, "n0", ["n9", "n4"], []), None),  # not slaves of shard 0: nothing to add
    (InSyncChange(0, 0, "n0", [], ["n2"]), None),  # an older epoch of the shard
    (InSyncChange(0, 2, "n0", [], ["n2"]), None),  # a future epoch the map does not know
    (InSyncChange(0, 1, "n1", [], ["n2"]), None),  # not the master
    (InSyncChange(1, 1, "n0", [], ["n4"]), None),  # not the master of that shard
]


@pytest.mark.parametrize(("change", "in_sync"), IN_SYNC_CASES)
def test_in_sync_changes_apply_only_to_the_map_they_were_computed_from_parametrized(
    change: InSyncChange, in_sync: tuple[str, ...] | None
) -> None:
    """A request based on another map epoch (a duplicate, a delayed resend) is ignored."""
    h = leader(make_map(shard0=ShardInfo(0, "n0", ("n1", "n2"), ("n1",), 1) if change.add else None))
    assert h.overlord.map is not None
    stale = replace(change, map_epoch=h.overlord.map.epoch - 1)
    assert map_writes(h.receive(address(change.master), stale, at=10)) == []


@pytest.mark.parametrize(("change", "in_sync"), IN_SYNC_CASES)
def test_in_sync_changes_count_only_from_the_current_master_of_the_current_epoch(
    change: InSyncChange, in_sync: tuple[str, ...] | None
) -> None:
    h = leader(make_map(shard0=ShardInfo(0, "n0", ("n1", "n2"), ("n1",), 1) if change.add else None))
    out = h.receive(address(change.master), based_on(h, change), at=10)
    if in_sync is None:
        assert map_writes(out) == []
    else:
        [new] = written_maps(out)
        assert new.shards[0].in_sync == in_sync and new.shards[0].shard_epoch == 1
        assert [w.expected_version for w in map_writes(out)] == [4]


def test_a_follower_ignores_in_sync_changes() -> None:
    h = follower(make_map())
    out = h.receive(address("n0"), based_on(h, InSyncChange(0, 1, "n0", [], ["n2"])), at=10)
    assert map_writes(out) == [] and h.overlord.insync_requests == {}


def test_a_proxied_request_without_an_answer_ends_unknown_not_failed() -> None:
    h = ROLES["follower"]()
    out = h.receive(CLIENT, Request(41, "set", [b"k", b"v"]), at=h.now + 1)
    [forwarded] = [e for e in out if isinstance(e, Send) and isinstance(e.message, Request)]
    deadline = h.now + h.overlord.config.proxy_timeout_ms + 5
    out = h.feed(TimerFired("proxy"), at=deadline)
    [answer] = [e.message for e in out if isinstance(e, Reply)]
    assert isinstance(answer, ErrorReply) and answer.code is ErrorCode.TIMEOUT and answer.request_id == 41
    # The node's late answer finds nobody waiting and is not relayed twice.
    late = h.receive(forwarded.destination, Response(forwarded.message.request_id, True), at=deadline + 1)
    assert [e for e in late if isinstance(e, Reply)] == []


def test_a_proxied_write_keeps_the_clients_at_most_once_identity() -> None:
    """The Overlord forwards under its own request id, but the dedup key is the client's, so a
    copy proxied twice (or once proxied, once direct) is still recognised by the master."""
    h = ROLES["follower"]()
    request = Request(41, "set", [b"k", b"v", None, None], "strong", 0, 0xC0FFEE, 7, 5)
    out = h.receive(CLIENT, request, at=h.now + 1)
    [forwarded] = [e.message for e in out if isinstance(e, Send) and isinstance(e.message, Request)]
    assert forwarded.request_id != 41
    assert (forwarded.client_id, forwarded.seq, forwarded.floor) == (0xC0FFEE, 7, 5)
