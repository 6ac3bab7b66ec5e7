"""The client router sends each command to the right node and reports honest outcomes.

What this proves:

* Layer 1 (exhaustive): a router without a map, idle with a map, with a write in flight, or with a
  refused write waiting for its retry timer is fed one valid instance of every wire message (a
  table checked against ``protocol.message_types()``) carrying a request id it never used, every
  timer key (its own and strangers), ``Start`` and a ``Submit``. It never raises, returns only
  ``Effect`` instances, sends only messages that survive the wire codec, and an input that is not
  valid in its state changes nothing (map, operations in flight, their attempts and targets) and
  completes nothing; the transitions are listed and each must change something.
* Behaviour: MOVED and NOT_MASTER make it fetch the map from an Overlord and retry after a backoff,
  at the node the new map names; a write whose request timer fires completes ``info`` (outcome
  unknown) and is never sent again, nor is one the master answered TIMEOUT; a read in the same
  situation is retried; a definite error (WRONG_TYPE) completes ``fail``; reaching the deadline
  with no attempt that may have applied completes ``fail``; a late Response of an earlier attempt
  completes ``ok``; keys of several shards in one command fail with BAD_ARGUMENT before anything
  is sent; weak reads go to slaves and fall back to the master on TOO_STALE.
* Robustness: a request or retry timer that fires when there is nothing for it to do (a late firing
  the driver had already queued) acts on nothing, so a write in flight is never sent twice; a garbage
  map reply is treated like a lost one and fetched again.

How: a ``RouterHarness`` drives one ``ClientRouter`` by hand: it plays the Overlord (answering
GetMap with a map built here) and the nodes (answering the Requests it sends), and fires timers at
the deadlines the router set.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from dimint.core import protocol
from dimint.core.clustermap import ClusterMap, NodeInfo, ShardInfo, initial_map
from dimint.core.effects import CancelTimer, Effect, Input, Receive, Send, SetTimer, Start, TimerFired
from dimint.core.errors import ErrorCode
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
from dimint.core.routing import ClientRouter, Completed, ReadPreference, RouterConfig, Submit

PLACEMENT = make_placement("ring", [0, 1])
OVERLORD = "overlord:1"
CONFIG = RouterConfig()


def address(node_id: str) -> str:
    return f"node:{node_id}"


def _keys_of(shard_id: int) -> list[bytes]:
    candidates = (f"key-{i}".encode() for i in range(1000))
    return [k for k in candidates if PLACEMENT.owner(k) == shard_id][:2]


KEY0, KEY0B = _keys_of(0)
KEY1 = _keys_of(1)[0]


def make_map(
    epoch: int = 1, master0: str | None = "n0", slaves0: tuple[str, ...] = ("n1", "n2")
) -> ClusterMap:
    nodes = [NodeInfo(n, address(n), 1) for n in ("n0", "n1", "n2", "n3", "n4")]
    shards = [ShardInfo(0, master0, slaves0, slaves0, epoch), ShardInfo(1, "n3", ("n4",), ("n4",), 1)]
    cmap = initial_map(PLACEMENT, shards, nodes)
    for _ in range(epoch - 1):
        cmap = cmap.successor()
    return cmap


def check_effects(out: list[Effect]) -> None:
    assert isinstance(out, list)
    for effect in out:
        assert isinstance(effect, Effect), effect
        if isinstance(effect, Send):
            protocol.check(effect.message)


class RouterHarness:
    def __init__(self, config: RouterConfig = CONFIG) -> None:
        self.router = ClientRouter("client:1", [OVERLORD], config, random.Random(5))
        self.now = 0
        self.timers: dict[str, int] = {}

    def feed(self, event: Input, at: int | None = None) -> list[Effect]:
        if at is not None:
            assert at >= self.now
            self.now = at
        out = self.router.handle(event, self.now)
        check_effects(out)
        for effect in out:
            if isinstance(effect, SetTimer):
                self.timers[effect.key] = effect.at_ms
            elif isinstance(effect, CancelTimer):
                self.timers.pop(effect.key, None)
        return out

    def fire(self, key: str) -> list[Effect]:
        """Fire the armed timer ``key`` at its deadline."""
        at = self.timers.pop(key)
        return self.feed(TimerFired(key), at=max(at, self.now))

    def receive(self, message: Any, source: str = OVERLORD, at: int | None = None) -> list[Effect]:
        return self.feed(Receive(source, message), at)

    def serve_map(self, out: list[Effect], cmap: ClusterMap) -> list[Effect]:
        [get] = [e.message for e in out if isinstance(e, Send) and isinstance(e.message, GetMap)]
        return self.receive(MapReply(get.request_id, cmap.epoch, cmap.to_bytes()))

    def submit(self, op_id: int, command: str, *args: Any, consistency: str = "strong") -> list[Effect]:
        return self.feed(Submit(op_id, command, args, consistency))

    def observable(self) -> tuple[Any, ...]:
        r = self.router
        ops = {
            i: (o.attempts, o.current_request, o.possibly_applied, o.target) for i, o in r.operations.items()
        }
        return (r.map.epoch if r.map else None, ops)


def requests(out: list[Effect]) -> list[tuple[str, Request]]:
    return [(e.destination, e.message) for e in out if isinstance(e, Send) and isinstance(e.message, Request)]


def map_fetches(out: list[Effect]) -> list[tuple[str, GetMap]]:
    return [(e.destination, e.message) for e in out if isinstance(e, Send) and isinstance(e.message, GetMap)]


def completed(out: list[Effect]) -> list[Completed]:
    return [e for e in out if isinstance(e, Completed)]


def ready(cmap: ClusterMap | None = None) -> RouterHarness:
    h = RouterHarness()
    h.serve_map(h.feed(Start()), cmap or make_map())
    return h


def one_request(out: list[Effect]) -> tuple[str, Request]:
    [sent] = requests(out)
    return sent


# --------------------------------------------------------------------------------------------
# Layer 1
# --------------------------------------------------------------------------------------------

UNUSED = 10_000
_ITEM = [b"k", "string", b"v", None]

MESSAGES: dict[str, Any] = {
    "Request": Request(UNUSED, "get", [b"k"]),
    "Response": Response(UNUSED, b"x"),
    "ErrorReply": ErrorReply(UNUSED, ErrorCode.MOVED, "moved", 9),
    "GetMap": GetMap(UNUSED, 0),
    "MapReply": MapReply(UNUSED, 9, make_map(epoch=9).to_bytes()),
    "AdminRequest": AdminRequest(UNUSED, "status", {}),
    "AdminReply": AdminReply(UNUSED, {"ok": True}),
    "Replicate": Replicate(0, 1, 0, 0, [[1, 1, [["put", b"k", "string", b"v", None]]]], 0),
    "ReplicateAck": ReplicateAck(0, 1, "n1", 1, 1),
    "SyncRequest": SyncRequest(0, 1, "n1", 0, 0),
    "SnapshotChunk": SnapshotChunk(0, 1, 1, 1, 0, [_ITEM], True),
    "Heartbeat": Heartbeat(0, 1, "n0", 1, 1, 0),
    "HeartbeatAck": HeartbeatAck(0, 1, "n1", 1, 1),
    "PositionQuery": PositionQuery(UNUSED, 0, 1),
    "PositionReply": PositionReply(UNUSED, "n1", 0, 1, 1, 5),
    "InSyncChange": InSyncChange(0, 1, "n0", [], ["n2"]),
    "NodeReport": NodeReport("n1", address("n1"), 1, 1, 0, "slave", 1, 1, 1, 0, 1, 40, {}, 3, 0, True, 0),
    "MigrateBatch": MigrateBatch(7, 1, 0, 1, 0, [["put", *_ITEM]], True),
    "MigrateBatchAck": MigrateBatchAck(7, 1, 0, 1, 0, "n3"),
    "MoveReport": MoveReport("n3", 7, 1, 0, 1, 1, "ready", 1, 10, 0, 1, 5, 1),
}

OTHER_INPUTS: dict[str, Input] = {
    "Start": Start(),
    "timer:map": TimerFired("map"),
    "timer:request": TimerFired("request:1"),
    "timer:retry": TimerFired("retry:1"),
    "timer:deadline": TimerFired("deadline:1"),
    "timer:request-of-nothing": TimerFired("request:999"),
    "timer:malformed": TimerFired("request:x"),
    "timer:stranger": TimerFired("no-such-timer"),
    "submit": Submit(2, "get", (KEY1,)),
}


def no_map() -> RouterHarness:
    h = RouterHarness()
    h.feed(Start())
    return h


def idle() -> RouterHarness:
    return ready()


def busy() -> RouterHarness:
    h = ready()
    h.submit(1, "set", KEY0, b"v")
    return h


def retrying() -> RouterHarness:
    """A write refused before it applied (FENCED), waiting for its retry timer."""
    h = ready()
    _, request = one_request(h.submit(1, "set", KEY0, b"v"))
    h.receive(ErrorReply(request.request_id, ErrorCode.FENCED, "fenced"), source=address("n0"))
    assert "retry:1" in h.timers and "request:1" not in h.timers
    return h


STATES = {"no_map": no_map, "idle": idle, "busy": busy, "retrying": retrying}

TRANSITIONS = {
    ("no_map", "submit"),  # waits for the map
    ("idle", "submit"),  # sent at once
    ("busy", "submit"),
    ("busy", "timer:request"),  # the write's outcome is unknown: completed "info"
    ("busy", "timer:deadline"),  # gave up
    ("retrying", "submit"),
    ("retrying", "timer:retry"),  # the next attempt
    ("retrying", "timer:deadline"),
}
COMPLETES = {("busy", "timer:request"), ("busy", "timer:deadline"), ("retrying", "timer:deadline")}


def test_message_table_covers_every_wire_message() -> None:
    assert {type(m) for m in MESSAGES.values()} == set(protocol.message_types().values())
    for message in MESSAGES.values():
        protocol.check(message)


@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("name", sorted(MESSAGES) + sorted(OTHER_INPUTS))
def test_every_input_in_every_state_transitions_or_is_ignored_cleanly(state: str, name: str) -> None:
    h = STATES[state]()
    before = h.observable()
    event = Receive(address("n0"), MESSAGES[name]) if name in MESSAGES else OTHER_INPUTS[name]
    out = h.feed(event, at=h.now + 1)
    if (state, name) in TRANSITIONS:
        assert h.observable() != before, f"{state} should act on {name}"
    else:
        assert h.observable() == before, f"{state} must not change on {name}"
    assert bool(completed(out)) == ((state, name) in COMPLETES)


def test_a_command_the_table_refuses_fails_before_anything_is_sent() -> None:
    h = ready()
    for op_id, submit in enumerate(
        [
            Submit(1, "no-such-command", (KEY0,)),
            Submit(2, "set", (KEY0,)),
            Submit(3, "incr", (KEY0, "one")),
            Submit(4, "get", (KEY0,), "eventual"),
        ],
        start=1,
    ):
        out = h.feed(submit)
        [done] = completed(out)
        assert done.op_id == op_id and done.outcome == "fail"
        assert done.code in (ErrorCode.UNKNOWN_COMMAND, ErrorCode.BAD_ARGUMENT)
        assert requests(out) == []
    assert h.router.operations == {}


# --------------------------------------------------------------------------------------------
# Routing and retries
# --------------------------------------------------------------------------------------------


def test_commands_wait_for_the_map_then_go_to_the_master_of_their_shard() -> None:
    h = RouterHarness()
    start = h.feed(Start())
    assert [d for d, _ in map_fetches(start)] == [OVERLORD]
    assert requests(h.submit(1, "set", KEY0, b"v")) == []
    out = h.serve_map(start, make_map())
    destination, request = one_request(out)
    assert destination == address("n0")
    assert (request.command, request.args, request.map_epoch) == ("set", [KEY0, b"v", None, None], 1)
    assert h.timers[f"request:{1}"] == h.now + CONFIG.request_timeout_ms
    assert h.timers["deadline:1"] == CONFIG.operation_deadline_ms
    out = h.receive(Response(request.request_id, True), source=destination)
    [done] = completed(out)
    assert (done.outcome, done.value, done.attempts, done.node) == ("ok", True, 1, "n0")
    assert {"request:1", "deadline:1", "retry:1"}.isdisjoint(h.timers)
    assert one_request(h.submit(2, "get", KEY1))[0] == address("n3")


@pytest.mark.parametrize("code", [ErrorCode.MOVED, ErrorCode.NOT_MASTER])
def test_moved_and_not_master_refresh_the_map_and_retry_after_a_backoff(code: ErrorCode) -> None:
    h = ready()
    _, first = one_request(h.submit(1, "set", KEY0, b"v"))
    out = h.receive(ErrorReply(first.request_id, code, "not here", 2), source=address("n0"), at=100)
    assert [d for d, _ in map_fetches(out)] == [OVERLORD]
    assert requests(out) == [] and completed(out) == []
    assert "request:1" not in h.timers
    retry_at = h.timers["retry:1"]
    assert retry_at >= 100 + CONFIG.backoff_base_ms
    # The Overlord's newer map names n1 master of shard 0.
    h.serve_map(out, make_map(epoch=2, master0="n1", slaves0=("n0", "n2")))
    destination, second = one_request(h.fire("retry:1"))
    assert destination == address("n1") and second.map_epoch == 2
    assert second.request_id != first.request_id
    [done] = completed(h.receive(Response(second.request_id, True), source=destination))
    assert (done.outcome, done.attempts, done.node) == ("ok", 2, "n1")


def test_backoff_grows_with_attempts_and_is_capped() -> None:
    config = RouterConfig(backoff_base_ms=10, backoff_max_ms=80, operation_deadline_ms=10**9)
    h = RouterHarness(config)
    h.serve_map(h.feed(Start()), make_map())
    _, request = one_request(h.submit(1, "get", KEY0))
    delays = []
    for _ in range(12):
        now = h.now
        h.receive(ErrorReply(request.request_id, ErrorCode.FENCED, "fenced"), source=address("n0"))
        delays.append(h.timers["retry:1"] - now)
        _, request = one_request(h.fire("retry:1"))
    assert all(10 <= d < 10 + 80 for d in delays)
    assert delays[0] < 10 + 10 * 2  # first retry: a ceiling of base * 2**attempts


def test_a_write_whose_request_timer_fires_is_info_and_never_sent_again() -> None:
    h = ready()
    destination, request = one_request(h.submit(1, "set", KEY0, b"v"))
    out = h.fire("request:1")
    [done] = completed(out)
    assert (done.outcome, done.code) == ("info", ErrorCode.TIMEOUT)
    assert requests(out) == [] and "retry:1" not in h.timers and h.router.operations == {}
    # The attempt did apply after all: its late answer completes nothing a second time.
    assert completed(h.receive(Response(request.request_id, True), source=destination)) == []


def test_a_write_the_master_answered_timeout_is_info_and_never_retried() -> None:
    h = ready()
    destination, request = one_request(h.submit(1, "incr", KEY0, 1))
    out = h.receive(ErrorReply(request.request_id, ErrorCode.TIMEOUT, "outcome unknown"), source=destination)
    [done] = completed(out)
    assert (done.outcome, done.code) == ("info", ErrorCode.TIMEOUT)
    assert requests(out) == [] and "retry:1" not in h.timers


def test_a_read_whose_request_timer_fires_is_retried() -> None:
    h = ready()
    one_request(h.submit(1, "get", KEY0))
    out = h.fire("request:1")
    assert completed(out) == []
    assert map_fetches(out)  # the node may be gone: refresh
    assert "retry:1" in h.timers
    destination, retry = one_request(h.fire("retry:1"))
    [done] = completed(h.receive(Response(retry.request_id, b"v"), source=destination))
    assert (done.outcome, done.value, done.attempts) == ("ok", b"v", 2)


def test_a_late_response_of_an_earlier_attempt_completes_the_operation() -> None:
    h = ready()
    first_destination, first = one_request(h.submit(1, "get", KEY0))
    h.fire("request:1")
    _, second = one_request(h.fire("retry:1"))
    # A late error of the first attempt says nothing new ...
    assert completed(h.receive(ErrorReply(first.request_id, ErrorCode.MOVED, "x"), first_destination)) == []
    assert h.router.operations[1].current_request == second.request_id
    # ... but its late success is a success.
    out = h.receive(Response(first.request_id, b"old-attempt"), source=first_destination)
    [done] = completed(out)
    assert (done.outcome, done.value) == ("ok", b"old-attempt")
    assert completed(h.receive(Response(second.request_id, b"v"), source=address("n0"))) == []


def test_a_definite_error_completes_fail_at_once() -> None:
    h = ready()
    destination, request = one_request(h.submit(1, "lpush", KEY0, b"x"))
    out = h.receive(ErrorReply(request.request_id, ErrorCode.WRONG_TYPE, "a string"), source=destination)
    [done] = completed(out)
    assert (done.outcome, done.code, done.reason) == ("fail", ErrorCode.WRONG_TYPE, "a string")
    assert requests(out) == [] and h.router.operations == {}


def test_the_deadline_with_no_possibly_applied_attempt_completes_fail() -> None:
    h = ready()
    _, request = one_request(h.submit(1, "set", KEY0, b"v"))
    while True:  # every attempt is refused before it applies
        out = h.receive(ErrorReply(request.request_id, ErrorCode.FENCED, "fenced"), source=address("n0"))
        assert completed(out) == []
        if h.timers["retry:1"] >= h.timers["deadline:1"]:
            break
        _, request = one_request(h.fire("retry:1"))
    out = h.fire("deadline:1")
    [done] = completed(out)
    assert (done.outcome, done.code) == ("fail", ErrorCode.FENCED)
    assert done.attempts > 1
    assert h.router.operations == {}
    assert {"retry:1", "request:1", "deadline:1"}.isdisjoint(h.timers)


def test_the_deadline_during_a_write_attempt_is_an_unknown_outcome_not_a_failure() -> None:
    # The master may hold the reply until the write commits; the write may still apply after the
    # deadline, so reporting it failed would invite a caller to repeat it.
    h = RouterHarness(RouterConfig(request_timeout_ms=1_000, operation_deadline_ms=500))
    h.serve_map(h.feed(Start()), make_map())
    one_request(h.submit(1, "set", KEY0, b"v"))
    [done] = completed(h.fire("deadline:1"))
    assert (done.outcome, done.code) == ("info", ErrorCode.TIMEOUT)
    one_request(h.submit(2, "get", KEY0))
    [read] = completed(h.fire("deadline:2"))
    assert (read.outcome, read.code) == ("fail", ErrorCode.TIMEOUT)  # a read changes nothing


def test_a_shard_without_a_master_is_retried_until_one_appears() -> None:
    h = ready(make_map(master0=None))
    out = h.submit(1, "set", KEY0, b"v")
    assert requests(out) == [] and map_fetches(out) and completed(out) == []
    h.serve_map(out, make_map(epoch=2, master0="n1", slaves0=("n2",)))
    destination, _ = one_request(h.fire("retry:1"))
    assert destination == address("n1")


def test_keys_of_several_shards_in_one_command_fail_with_bad_argument() -> None:
    h = ready()
    for op_id, (command, args) in enumerate(
        [("mget", (KEY0, KEY1)), ("mset", (KEY0, b"a", KEY1, b"b")), ("delete", (KEY1, KEY0))], start=1
    ):
        out = h.submit(op_id, command, *args)
        [done] = completed(out)
        assert (done.outcome, done.code) == ("fail", ErrorCode.BAD_ARGUMENT)
        assert requests(out) == []
    destination, request = one_request(h.submit(9, "mget", KEY0, KEY0B))
    assert destination == address("n0") and request.args == [KEY0, KEY0B]


def test_weak_reads_go_to_a_slave_and_fall_back_to_the_master_when_too_stale() -> None:
    h = ready()
    destination, request = one_request(h.submit(1, "get", KEY0, consistency="weak"))
    assert destination in (address("n1"), address("n2")) and request.consistency == "weak"
    h.receive(ErrorReply(request.request_id, ErrorCode.TOO_STALE, "lag"), source=destination)
    destination, _ = one_request(h.fire("retry:1"))
    assert destination == address("n0")
    # Writes and strong reads never go to a slave.
    assert one_request(h.submit(2, "set", KEY0, b"v", consistency="weak"))[0] == address("n0")
    assert one_request(h.submit(3, "get", KEY0))[0] == address("n0")


def test_read_preference_master_sends_weak_reads_to_the_master() -> None:
    h = RouterHarness(RouterConfig(read_preference=ReadPreference.MASTER))
    h.serve_map(h.feed(Start()), make_map())
    assert one_request(h.submit(1, "get", KEY0, consistency="weak"))[0] == address("n0")


def test_an_overlord_without_a_map_is_asked_again_when_the_map_timer_fires() -> None:
    h = RouterHarness()
    start = h.feed(Start())
    [(_, get)] = map_fetches(start)
    h.submit(1, "get", KEY0)
    h.receive(ErrorReply(get.request_id, ErrorCode.UNAVAILABLE, "no map yet"))
    out = h.fire("map")
    assert len(map_fetches(out)) == 1
    destination, _ = one_request(h.serve_map(out, make_map()))
    assert destination == address("n0")


def test_an_older_or_garbage_map_never_replaces_the_cached_one() -> None:
    h = ready(make_map(epoch=3))
    _, request = one_request(h.submit(1, "get", KEY0))
    out = h.receive(ErrorReply(request.request_id, ErrorCode.MOVED, "x"), source=address("n0"))
    [(_, get)] = map_fetches(out)
    h.receive(MapReply(get.request_id, 9, b"\xc1garbage"))
    assert h.router.map is not None and h.router.map.epoch == 3
    _, request = one_request(h.fire("retry:1"))
    out = h.receive(ErrorReply(request.request_id, ErrorCode.MOVED, "x"), source=address("n0"))
    h.serve_map(out, make_map(epoch=2, master0="n1", slaves0=("n2",)))
    assert h.router.map.epoch == 3
    assert one_request(h.fire("retry:1"))[0] == address("n0")


def test_a_garbage_map_reply_is_fetched_again_like_a_lost_one() -> None:
    """Regression: a garbage MapReply cancelled the map timer, so commands waiting for the first map
    hung until their deadline instead of being sent after the next fetch."""
    h = RouterHarness()
    [(_, get)] = map_fetches(h.feed(Start()))
    h.submit(1, "get", KEY0)
    h.receive(MapReply(get.request_id, 1, b"\xc1garbage"))
    assert h.router.map is None and "map" in h.timers
    out = h.fire("map")
    destination, _ = one_request(h.serve_map(out, make_map()))
    assert destination == address("n0")
