"""At most once (invariant 8): a copy of a client's write never executes a second time.

What this proves, layer by layer:

* The data node (driven by hand with ``test_node``'s harness): a duplicated ``Request`` delivered
  after another client's newer write to the same key changes nothing and appends no log entry, and
  gets the first execution's answer, in async, semi-sync and sync; so does a copy reaching the
  slave promoted after a failover (the table travels in the log), a slave rebuilt from a snapshot
  (it travels in snapshots), and the target of a migration (it travels in the batches). A copy
  below the client's floor is refused ``STALE_REQUEST``; a write the store refused, and one that
  changed nothing (``set nx`` of a present key), are outcomes too, and a late copy of either
  stays refused or unchanged after the key changed. With ``at_most_once=False`` the copy runs
  again: the knob an experiment turns to show the bug.
* The dedup table against a naive model (Hypothesis): lookups agree with "remember everything";
  merging is order-independent; a snapshot restores the same verdicts; every bound holds and is
  counted (per-client window, clients, bytes, retention).
* The router: writes get one sequence number for all their attempts, reads none; the floor is
  the lowest write still outstanding; a stale refusal of a write's own attempt is an unknown
  outcome, never a failure.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_node import (
    CLIENT,
    KEY0,
    KEY0B,
    MASTER,
    PLACEMENT,
    SLAVE,
    SLAVE2,
    SPARE,
    NodeHarness,
    address,
    error_codes,
    make_map,
    master_node,
    replies,
    responses,
    sent,
    slave_node,
)

from dimint.core.clustermap import MOVE_COPYING, MOVE_PENDING, MOVE_SWITCHED, MoveInfo, Rebalance, ShardInfo
from dimint.core.dedup import (
    DedupConfig,
    DedupTable,
    Verdict,
    check_op,
    error_outcome,
    imported,
    ok_outcome,
    record_op,
)
from dimint.core.effects import Receive, Send, Start, TimerFired
from dimint.core.errors import ErrorCode, RemoteProtocolError
from dimint.core.hashing import key_hash
from dimint.core.node import NodeConfig, Role
from dimint.core.protocol import (
    ErrorReply,
    GetMap,
    MapReply,
    MigrateBatch,
    MigrateBatchAck,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    SyncRequest,
)
from dimint.core.routing import ClientRouter, Completed, RouterConfig, Submit, draw_identity

ALICE, BOB = 0xA11CE, 0xB0B


def write(
    request_id: int,
    client: int,
    seq: int,
    value: bytes,
    *,
    key: bytes = KEY0,
    floor: int | None = None,
    command: str = "set",
) -> Request:
    args: list[Any] = [key, value, None, None] if command == "set" else [key, value]
    return Request(request_id, command, args, "strong", 1, client, seq, seq if floor is None else floor)


def ack_all(h: NodeHarness, slaves: tuple[str, ...] = (SLAVE, SLAVE2)) -> list[Any]:
    """Every slave acknowledges the master's whole log: whatever waits for a commit is answered."""
    out: list[Any] = []
    for slave in slaves:
        out += h.receive(
            address(slave), ReplicateAck(0, h.node.shard_epoch, slave, h.node.applied_seq, h.node.last_epoch)
        )
    return out


def value_of(h: NodeHarness, key: bytes = KEY0) -> Any:
    return h.node.store.dump(h.now).get(key)


MODES = ("async", "semi-sync", "sync")


# --------------------------------------------------------------------------------------------
# The bug of the issue, on one master
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_duplicate_delivered_after_a_newer_write_changes_nothing_and_appends_nothing(mode: str) -> None:
    h = master_node(mode=mode)
    first = write(1, ALICE, 1, b"x")
    answered = responses(h.receive(CLIENT, first, at=10) + ack_all(h))
    assert answered == [Response(1, True)]
    assert responses(h.receive(CLIENT, write(2, BOB, 1, b"y"), at=11) + ack_all(h)) == [Response(2, True)]
    position = h.node.applied_seq

    out = h.receive(CLIENT, first, at=12)  # the network's late copy of Alice's frame
    assert sent(out, Replicate) == [] and h.node.applied_seq == position
    assert value_of(h) == ("string", b"y", None)
    assert responses(out) == [Response(1, True)]  # the first execution's answer, once more
    assert h.node.duplicates_answered == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_retry_of_an_applied_write_with_a_new_request_id_is_answered_not_run(mode: str) -> None:
    """A push is not idempotent: run twice, the list would hold the item twice."""
    h = master_node(mode=mode)
    push = Request(1, "rpush", [KEY0B, b"item"], "strong", 1, ALICE, 1, 1)
    assert responses(h.receive(CLIENT, push, at=10) + ack_all(h)) == [Response(1, 1)]
    position = h.node.applied_seq
    out = h.receive(CLIENT, replace(push, request_id=2), at=11) + ack_all(h)
    assert responses(out) == [Response(2, 1)] and h.node.applied_seq == position
    assert h.node.store.execute("lrange", [KEY0B, 0, -1], h.now).value == [b"item"]


def test_a_duplicate_of_a_write_not_yet_committed_waits_for_the_commit() -> None:
    h = master_node()
    first = write(1, ALICE, 1, b"x")
    assert replies(h.receive(CLIENT, first, at=10)) == []
    out = h.receive(CLIENT, replace(first, request_id=2), at=11)
    assert replies(out) == [] and [p.request_id for p in h.node.pending] == [1, 2]
    out = ack_all(h)
    assert sorted(r.request_id for r in responses(out)) == [1, 2]


def test_a_copy_below_the_clients_floor_is_refused_stale_and_changes_nothing() -> None:
    h = master_node()
    h.receive(CLIENT, write(1, ALICE, 1, b"x"), at=10)
    h.receive(CLIENT, write(2, ALICE, 2, b"x2", floor=2), at=11)  # Alice finished with seq 1
    ack_all(h)
    before = (h.node.applied_seq, value_of(h))
    out = h.receive(CLIENT, write(1, ALICE, 1, b"x"), at=12)
    assert error_codes(out) == [ErrorCode.STALE_REQUEST]
    assert (h.node.applied_seq, value_of(h)) == before and h.node.stale_refused == 1
    # And a copy of a seq the client never got to send is still new: floors only cover the past.
    assert error_codes(h.receive(CLIENT, write(3, ALICE, 4, b"x4", floor=2), at=13)) == []


def test_a_refused_write_stays_refused_when_its_copy_arrives_after_the_key_changed() -> None:
    h = master_node(mode="async")
    h.receive(CLIENT, Request(1, "rpush", [KEY0B, b"item"], "strong", 1, BOB, 1, 1), at=10)
    incr = Request(2, "incr", [KEY0B, 5], "strong", 1, ALICE, 1, 1)
    assert error_codes(h.receive(CLIENT, incr, at=11)) == [ErrorCode.WRONG_TYPE]
    h.receive(CLIENT, Request(3, "delete", [KEY0B], "strong", 1, BOB, 2, 2), at=12)
    out = h.receive(CLIENT, incr, at=13)  # the late copy: now the key is absent and incr would work
    assert error_codes(out) == [ErrorCode.WRONG_TYPE]
    assert value_of(h, KEY0B) is None


def test_a_write_that_changed_nothing_is_an_outcome_too() -> None:
    h = master_node(mode="async")
    nx = Request(1, "set", [KEY0, b"late", None, "nx"], "strong", 1, ALICE, 1, 1)
    assert responses(h.receive(CLIENT, nx, at=10)) == [Response(1, False)]  # KEY0 held v0
    h.receive(CLIENT, Request(2, "delete", [KEY0], "strong", 1, BOB, 1, 1), at=11)
    assert responses(h.receive(CLIENT, nx, at=12)) == [Response(1, False)]
    assert value_of(h) is None


def test_anonymous_writes_are_not_deduplicated() -> None:
    """Client id 0 is an old client or a hand-made frame: executed as it comes, as before."""
    h = master_node(mode="async")
    anonymous = Request(1, "incr", [KEY0B, 1])
    h.receive(CLIENT, anonymous, at=10)
    h.receive(CLIENT, anonymous, at=11)
    assert h.node.store.get(KEY0B, now_ms=11) == 2
    assert h.node.sessions.result_count == 0


def test_without_at_most_once_the_copy_runs_again() -> None:
    """The research knob: what the issue's bug looks like, for experiments and the checker's tests."""
    h = master_node(NodeConfig(at_most_once=False), mode="async")
    first = write(1, ALICE, 1, b"x")
    h.receive(CLIENT, first, at=10)
    h.receive(CLIENT, write(2, BOB, 1, b"y"), at=11)
    h.receive(CLIENT, first, at=12)
    assert value_of(h) == ("string", b"x", None)


# --------------------------------------------------------------------------------------------
# The table travels: log, failover, snapshot, migration
# --------------------------------------------------------------------------------------------


def replicate_to(slave: NodeHarness, out: list[Any]) -> None:
    for effect in out:
        if (
            isinstance(effect, Send)
            and isinstance(effect.message, Replicate)
            and effect.destination == address(slave.node.node_id)
        ):
            slave.receive(address(MASTER), effect.message, at=slave.now + 1)


@pytest.mark.parametrize("mode", MODES)
def test_the_slave_promoted_after_a_failover_answers_the_duplicate_from_the_replicated_table(
    mode: str,
) -> None:
    master = master_node(mode=mode)
    slave = slave_node(mode=mode)
    first = write(1, ALICE, 1, b"x")
    replicate_to(slave, master.receive(CLIENT, first, at=10))
    replicate_to(slave, master.receive(CLIENT, write(2, BOB, 1, b"y"), at=11))
    assert slave.node.sessions.lookup(ALICE, 1).verdict is Verdict.DUPLICATE
    assert slave.node.sessions.snapshot() == master.node.sessions.snapshot()

    # The master dies; the leader promotes n1 at shard epoch 2.
    promoted = ShardInfo(0, SLAVE, (SLAVE2,), (SLAVE2,), 2)
    slave.new_map(
        make_map(
            slave.incarnation, epoch=2, mode=mode, shard0=promoted, incarnations={SLAVE: slave.incarnation}
        )
    )
    assert slave.node.role is Role.MASTER and not slave.node.fenced
    position = slave.node.applied_seq
    out = slave.receive(CLIENT, first, at=slave.now + 1)
    out += slave.receive(address(SLAVE2), ReplicateAck(0, 2, SLAVE2, position, slave.node.last_epoch))
    assert sent(out, Replicate) == [] and slave.node.applied_seq == position
    assert responses(out) == [Response(1, True)]
    assert value_of(slave) == ("string", b"y", None)


def test_a_slave_rebuilt_from_a_snapshot_gets_the_table_with_the_data() -> None:
    master = master_node(NodeConfig(snapshot_chunk_items=1))
    for client in range(1, 5):
        master.receive(CLIENT, write(client, client, 1, b"v%d" % client), at=10 + client)
    ack_all(master)
    h = NodeHarness(SLAVE2, NodeConfig(snapshot_chunk_items=1))
    h.feed(Start())
    out = h.connect(make_map(h.incarnation))
    [request] = sent(out, SyncRequest)
    chunks = sent(
        master.receive(address(SLAVE2), replace(request, applied_seq=0, applied_epoch=7), at=30),
        SnapshotChunk,
    )
    assert len(chunks) == 4 and all(len(c.sessions) == 1 for c in chunks)  # spread like the items
    for chunk in chunks:
        h.receive(address(MASTER), chunk, at=h.now + 1)
    assert h.node.applied_seq == master.node.applied_seq
    assert h.node.sessions.snapshot() == master.node.sessions.snapshot()
    for client in range(1, 5):
        assert h.node.sessions.lookup(client, 1).verdict is Verdict.DUPLICATE


def test_a_snapshot_with_a_bad_session_changes_nothing() -> None:
    h = slave_node()
    from test_node import ask_for_sync, for_slave

    ask_for_sync(h)
    before = (h.observable(), h.node.sessions.snapshot())
    bad = for_slave(h, SnapshotChunk(0, 1, 9, 1, 0, [], True, 0, [["session", 0, 0, 0, 0, []]]))
    h.receive(address(MASTER), bad, at=h.now + 1)
    assert (h.observable(), h.node.sessions.snapshot()) == before


def test_a_replicated_entry_with_a_bad_session_op_is_refused_whole() -> None:
    h = slave_node()
    before = h.observable()
    bad = Replicate(
        0,
        1,
        1,
        1,
        [[2, 1, [["put", KEY0, "string", b"z", None], ["session", 5, 0, 0, 0, [[0, [], None]]]]]],
        1,
    )
    h.receive(address(MASTER), bad, at=h.now + 1)
    assert h.observable() == before and len(h.node.sessions) == 0


def _moving_key() -> tuple[bytes, Any]:
    target = PLACEMENT.with_shard(2)
    key = next(
        k
        for k in (f"key-{i}".encode() for i in range(1000))
        if PLACEMENT.owner(k) == 0 and target.owner(k) == 2
    )
    return key, target


def test_a_copy_reaching_the_new_owner_after_a_migration_is_answered_there() -> None:
    key, target = _moving_key()
    source = master_node(mode="async")
    first = Request(1, "set", [key, b"x", None, None], "strong", 1, ALICE, 1, 1)
    source.receive(CLIENT, first, at=10)
    source.receive(CLIENT, Request(2, "set", [key, b"y", None, None], "strong", 1, BOB, 1, 1), at=11)
    other = Request(3, "set", [KEY0, b"stays", None, None], "strong", 1, BOB, 2, 2)
    source.receive(CLIENT, other, at=12)

    base = make_map(source.incarnation, mode="async", incarnations={SPARE: 0})
    receiver = NodeHarness(SPARE)
    receiver.connect(replace(base, nodes={**base.nodes}))
    moves = (MoveInfo(0, 2, MOVE_COPYING, 1, 1, 1), MoveInfo(1, 2, MOVE_PENDING))
    joined = base.successor(
        shards=base.with_shard(ShardInfo(2, SPARE, (), (), 1)), rebalance=Rebalance(5, target, moves)
    )
    joined = replace(
        joined, nodes={**joined.nodes, SPARE: replace(joined.nodes[SPARE], incarnation=receiver.incarnation)}
    )
    receiver.new_map(joined)
    assert receiver.node.role is Role.MASTER
    out = source.new_map(joined)
    batches = sent(out, MigrateBatch)
    for _ in range(10):
        acks: list[Any] = []
        for batch in batches:
            acks += sent(receiver.receive(address(MASTER), batch, at=receiver.now + 1), MigrateBatchAck)
        batches = []
        for ack in acks:
            batches += sent(source.receive(address(SPARE), ack, at=source.now + 1), MigrateBatch)
        if not batches:
            break
    assert source.node.out_move is not None and source.node.out_move.ready
    # Alice's write of the moving key came along with its outcome; Bob's write of a key that stays
    # did not (only his floor did).
    assert receiver.node.sessions.lookup(ALICE, 1).verdict is Verdict.DUPLICATE
    assert receiver.node.sessions.lookup(BOB, 2).verdict is Verdict.NEW
    assert receiver.node.sessions.lookup(BOB, 1).verdict is Verdict.STALE  # below Bob's floor 2

    switched = joined.successor(
        rebalance=Rebalance(5, target, (MoveInfo(0, 2, MOVE_SWITCHED, 1, 1, 1), MoveInfo(1, 2, MOVE_PENDING)))
    )
    receiver.new_map(switched)
    position = receiver.node.applied_seq
    out = receiver.receive(CLIENT, replace(first, map_epoch=switched.epoch), at=receiver.now + 1)
    assert responses(out) == [Response(1, True)] and receiver.node.applied_seq == position
    assert receiver.node.store.get(key, now_ms=receiver.now) == b"y"


# --------------------------------------------------------------------------------------------
# The dedup table against a naive model
# --------------------------------------------------------------------------------------------


UNBOUNDED = DedupConfig(
    retention_ms=10**12, max_clients=10**6, max_results_per_client=10**6, max_bytes=10**12
)


class TableAgainstModel(RuleBasedStateMachine):
    """Clients with several writes in flight record outcomes out of order, with floors that only
    the client advances; the table must agree with a model that remembers everything."""

    def __init__(self) -> None:
        super().__init__()
        self.table = DedupTable(UNBOUNDED)
        self.executed: dict[int, dict[int, Any]] = {}
        self.floors: dict[int, int] = {}
        self.position = 0

    @rule(
        client=st.integers(1, 3), seq=st.integers(1, 12), raise_floor=st.integers(0, 2), value=st.integers()
    )
    def execute(self, client: int, seq: int, raise_floor: int, value: int) -> None:
        floor = min(seq, self.floors.get(client, 0) + raise_floor)
        verdict = self.table.lookup(client, seq).verdict
        expected = (
            Verdict.DUPLICATE
            if seq in self.executed.get(client, {}) and seq >= self.floors.get(client, 0)
            else Verdict.STALE
            if seq < self.floors.get(client, 0)
            else Verdict.NEW
        )
        assert verdict is expected
        if verdict is not Verdict.NEW:
            return
        self.position += 1
        op = record_op(client, seq, floor, self.position, ok_outcome(value, 4096), [key_hash(b"k")])
        check_op(op)
        self.table.apply(op, self.position)
        self.executed.setdefault(client, {})[seq] = value
        self.floors[client] = max(self.floors.get(client, 0), floor)

    @precondition(lambda self: self.position > 0)
    @rule()
    def snapshot_restores_the_same_table(self) -> None:
        copy = DedupTable(UNBOUNDED)
        copy.restore(self.table.snapshot(), self.position)
        assert copy.snapshot() == self.table.snapshot()

    @invariant()
    def counters_hold(self) -> None:
        self.table.check_invariants()
        for client, results in self.executed.items():
            for seq, value in results.items():
                found = self.table.lookup(client, seq)
                if seq >= self.floors[client]:
                    assert found.saved is not None and found.saved.outcome == ["ok", value]


TestTableAgainstModel = TableAgainstModel.TestCase
TestTableAgainstModel.settings = settings(max_examples=60, stateful_step_count=40)


@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(0, 20)), max_size=40), st.randoms()
)
def test_merging_sessions_does_not_depend_on_their_order(
    records: list[tuple[int, int, int]], rng: random.Random
) -> None:
    ops = [record_op(c, s, min(f, s), 0, ["ok", s], None) for c, s, f in records]
    ordered, shuffled = DedupTable(UNBOUNDED), DedupTable(UNBOUNDED)
    for op in ops:
        ordered.apply(op, 1)
    rng.shuffle(ops)
    for op in ops:
        shuffled.apply(op, 1)
    for client in range(1, 5):
        for seq in range(1, 21):
            assert ordered.lookup(client, seq).verdict is shuffled.lookup(client, seq).verdict


def test_each_bound_holds_and_is_counted() -> None:
    table = DedupTable(
        DedupConfig(retention_ms=1_000, max_clients=3, max_results_per_client=4, max_bytes=10**9)
    )
    for seq in range(1, 11):  # ten writes in flight, floor never raised
        table.apply(record_op(1, seq, 1, 0, ["ok", None], None), seq)
    assert len(table.sessions[1].results) == 4 and table.results_forgotten == 6
    assert table.lookup(1, 6).verdict is Verdict.STALE  # forgotten: refused, never re-run
    assert table.lookup(1, 7).verdict is Verdict.DUPLICATE
    for client in (2, 3, 4):
        table.apply(record_op(client, 1, 1, 10, ["ok", None], None), 20)
    assert len(table) == 3 and table.evicted == 1 and 1 not in table.sessions  # least recent out
    table.apply(record_op(5, 1, 1, 1_011, ["ok", None], None), 21)  # clients 2-4 wrote at 10 ms
    assert list(table.sessions) == [5] and table.expired == 3
    table.check_invariants()

    small = DedupTable(DedupConfig(max_bytes=2_000))
    for client in range(1, 20):
        small.apply(record_op(client, 1, 1, 0, ["ok", b"x" * 300], None), client)
        assert small.bytes <= 2_000 or len(small) == 1
    small.check_invariants()
    assert ok_outcome(b"x" * 5000, 4096) == ["done", 5008]
    assert error_outcome(ErrorCode.WRONG_TYPE, "no") == ["error", "WRONG_TYPE", "no"]


@pytest.mark.parametrize(
    "op",
    [
        ["session", 0, 0, 0, 0, []],
        ["session", 1, -1, 0, 0, []],
        ["session", 1, 0, 0, 0, [[0, ["ok", 1], None]]],
        ["session", 1, 0, 0, 0, [[1, ["bogus"], None]]],
        ["session", 1, 0, 0, 0, [[1, ["error", "NOPE", "x"], None]]],
        ["session", 1, 0, 0, 0, [[1, ["ok", 1], ["h"]]]],
        ["session", 1, 0, 0, "now", []],
        ["session", 1, 0, 0],
    ],
)
def test_malformed_session_ops_are_refused(op: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError, match="bad session op"):
        check_op(op)


# --------------------------------------------------------------------------------------------
# The router: one sequence number per write, floors, and what a stale refusal means
# --------------------------------------------------------------------------------------------


def router_with_map(rng_seed: int = 3) -> tuple[ClientRouter, list[Any]]:
    router = ClientRouter("c", ["o"], RouterConfig(), random.Random(rng_seed))
    out = router.handle(Start(), 0)
    [get_map] = [e.message for e in out if isinstance(e, Send) and isinstance(e.message, GetMap)]
    cmap = make_map(1)
    router.handle(Receive("o", MapReply(get_map.request_id, cmap.epoch, cmap.to_bytes())), 1)
    return router, out


def requests(out: list[Any]) -> list[Request]:
    return [e.message for e in out if isinstance(e, Send) and isinstance(e.message, Request)]


def test_every_attempt_of_a_write_carries_one_seq_and_reads_carry_none() -> None:
    router, _ = router_with_map()
    [first] = requests(router.handle(Submit(1, "set", (KEY0, b"a")), 2))
    [read] = requests(router.handle(Submit(2, "get", (KEY0,)), 2))
    [second] = requests(router.handle(Submit(3, "set", (KEY0, b"b")), 2))
    assert (first.client_id, first.seq, first.floor) == (router.identity, 1, 1)
    assert (read.seq, read.floor) == (0, 0)
    assert (second.seq, second.floor) == (2, 1)  # seq 1 is still outstanding
    retry = router.handle(Receive("n", ErrorReply(first.request_id, ErrorCode.NOT_MASTER, "no")), 3)
    retry += router.handle(TimerFired("retry:1"), 1_000)
    [again] = requests(retry)
    assert again.request_id != first.request_id and (again.seq, again.client_id) == (1, router.identity)
    done = router.handle(Receive("n", Response(again.request_id, True)), 1_001)
    assert [c.seq for c in done if isinstance(c, Completed)] == [1]
    [third] = requests(router.handle(Submit(4, "set", (KEY0, b"c")), 1_002))
    assert (third.seq, third.floor) == (3, 2)


def test_a_stale_refusal_of_the_writes_own_attempt_is_an_unknown_outcome() -> None:
    router, _ = router_with_map()
    [request] = requests(router.handle(Submit(1, "set", (KEY0, b"a")), 2))
    out = router.handle(Receive("n", ErrorReply(request.request_id, ErrorCode.STALE_REQUEST, "late")), 3)
    [done] = [c for c in out if isinstance(c, Completed)]
    assert done.outcome == "info" and done.code is ErrorCode.STALE_REQUEST


def test_identities_differ_between_routers_and_are_never_zero() -> None:
    seen = {draw_identity(f"c{i}", random.Random(0)) for i in range(2_000)}
    seen |= {draw_identity("c", random.Random(i)) for i in range(2_000)}
    assert len(seen) == 4_000 and 0 not in seen
    assert all(0 < identity < 1 << 63 for identity in seen)
    with pytest.raises(ValueError):
        ClientRouter("c", ["o"], identity=0)


def test_routers_built_without_a_random_stream_still_get_distinct_identities() -> None:
    assert ClientRouter("client", ["o"]).identity != ClientRouter("client", ["o"]).identity
    seeded = [ClientRouter("client", ["o"], rng=random.Random(5)).identity for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seeded router is a pure function of its name and stream


# --------------------------------------------------------------------------------------------
# Found by an adversarial review: each test below failed on the first version of the table
# --------------------------------------------------------------------------------------------


def test_a_copy_of_an_executed_write_is_never_refused_as_if_it_had_not_run() -> None:
    """NOT_ENOUGH_REPLICAS, FENCED and FROZEN say "not applied": a client retries, then reports
    failure. For a copy of a write that did run, the table answers first (held until it can vouch)."""
    alice = write(7, ALICE, 1, b"ALICE")
    h = master_node(mode="sync")
    h.receive(CLIENT, alice, at=h.now + 1)  # executed, its reply held for the commit
    shrunk = ShardInfo(0, MASTER, (SLAVE, SLAVE2), (SLAVE,), 1)
    h.new_map(make_map(h.incarnation, epoch=2, mode="sync", min_in_sync=2, shard0=shrunk))
    out = h.receive(CLIENT, replace(alice, request_id=8), at=h.now + 1)
    assert error_codes(out) == [] and [p.request_id for p in h.node.pending][-1] == 8

    h = master_node()
    h.receive(CLIENT, alice, at=h.now + 1)
    ack_all(h)
    from dimint.core.effects import SessionState, SessionStateChanged

    h.feed(SessionStateChanged(SessionState.SUSPENDED), at=h.now + 1)
    out = h.receive(CLIENT, replace(alice, request_id=9), at=h.now + 1)
    assert error_codes(out) == [] and h.node.pending[-1].request_id == 9  # held: fenced vouches for nothing
    out = h.feed(TimerFired("pending"), at=h.now + NodeConfig().write_timeout_ms + 1)
    assert error_codes(out) == [ErrorCode.TIMEOUT]  # unknown, never "failed"


def _router_against(
    h: NodeHarness, config: RouterConfig
) -> tuple[ClientRouter, list[Request], list[Completed]]:
    """A router whose requests go straight to ``h`` and whose map is ``h``'s; returns its sent frames."""
    router = ClientRouter("c1", ["o"], config, random.Random(1))
    frames: list[Request] = []
    done: list[Completed] = []
    timers: dict[str, int] = {}

    def run(effects: list[Any], now: int) -> None:
        queue = list(effects)
        while queue:
            effect = queue.pop(0)
            if isinstance(effect, Send) and isinstance(effect.message, Request):
                frames.append(effect.message)
                for reply in replies(h.receive(CLIENT, effect.message, at=max(h.now, now))):
                    queue += router.handle(Receive(address(MASTER), reply), now)
            elif isinstance(effect, Send) and isinstance(effect.message, GetMap):
                cmap = h.node.map
                assert cmap is not None
                queue += router.handle(
                    Receive("o", MapReply(effect.message.request_id, cmap.epoch, cmap.to_bytes())), now
                )
            elif type(effect).__name__ == "SetTimer":
                timers[effect.key] = effect.at_ms
            elif isinstance(effect, Completed):
                done.append(effect)

    run(router.handle(Start(), 0), 0)
    run(router.handle(Submit(1, "set", (KEY0, b"REFUSED", None, None)), 0), 0)
    while not done:
        key, at = min(timers.items(), key=lambda item: item[1])
        del timers[key]
        run(router.handle(TimerFired(key), at), at)
    return router, frames, done


@pytest.mark.parametrize("duplicating", [False, True])
def test_a_write_refused_until_its_deadline_fails_only_where_no_copy_can_still_arrive(
    duplicating: bool,
) -> None:
    h = master_node()
    h.new_map(make_map(h.incarnation, epoch=2, shard0=ShardInfo(0, MASTER, (SLAVE, SLAVE2), (), 1)))
    _, frames, [done] = _router_against(h, RouterConfig(network_may_duplicate=duplicating))
    assert len(frames) > 3  # retried after every refusal, under one seq
    assert done.code is ErrorCode.NOT_ENOUGH_REPLICAS
    # On a duplicating network the first attempt's copy may yet arrive once the shard recovers,
    # and run: so there the write is unknown, not failed.
    assert done.outcome == ("info" if duplicating else "fail")


def test_a_superseded_attempts_unknown_answer_keeps_the_write_from_ending_failed() -> None:
    router, _ = router_with_map()
    [first] = requests(router.handle(Submit(1, "set", (KEY0, b"a")), 2))
    router.handle(Receive("n", ErrorReply(first.request_id, ErrorCode.NOT_MASTER, "no")), 3)
    [second] = requests(router.handle(TimerFired("retry:1"), 1_000))
    # The first attempt's copy ran somewhere and timed out there: the write may have applied.
    router.handle(Receive("n", ErrorReply(first.request_id, ErrorCode.TIMEOUT, "late")), 1_001)
    router.handle(Receive("n", ErrorReply(second.request_id, ErrorCode.NOT_MASTER, "no")), 1_002)
    out = router.handle(TimerFired("deadline:1"), 10_000)
    [done] = [c for c in out if isinstance(c, Completed)]
    assert done.outcome == "info"


def test_a_restarted_move_takes_back_the_outcomes_its_earlier_attempt_imported() -> None:
    """A source ships outcomes of writes it has not committed (as it ships their data); if it fails
    over, the new source may not have them. The target must not answer a copy of such a write as
    done: batch 0 of the new attempt drops them, and the copy then runs, once."""
    key, target = _moving_key()
    phantom = Request(1, "set", [key, b"PHANTOM", None, None], "strong", 1, ALICE, 1, 1)
    source = master_node(mode="semi-sync", min_in_sync=0)
    base = make_map(source.incarnation, mode="semi-sync", min_in_sync=0, incarnations={SPARE: 0})
    receiver = NodeHarness(SPARE)
    receiver.feed(Start())
    receiver.connect(base)

    def own(cmap: Any) -> Any:
        return replace(
            cmap, nodes={**cmap.nodes, SPARE: replace(cmap.nodes[SPARE], incarnation=receiver.incarnation)}
        )

    def move(attempt: int, state: str, source_epoch: int) -> Rebalance:
        return Rebalance(
            5, target, (MoveInfo(0, 2, state, attempt, source_epoch, 1), MoveInfo(1, 2, MOVE_PENDING))
        )

    def pump(sender: NodeHarness, out: list[Any]) -> None:
        batches = sent(out, MigrateBatch)
        for _ in range(10):
            acks = [
                a
                for b in batches
                for a in sent(
                    receiver.receive(address(sender.node.node_id), b, at=receiver.now + 1), MigrateBatchAck
                )
            ]
            batches = [
                b
                for a in acks
                for b in sent(sender.receive(address(SPARE), a, at=sender.now + 1), MigrateBatch)
            ]
            if not batches:
                return

    first = own(
        base.successor(
            shards=base.with_shard(ShardInfo(2, SPARE, (), (), 1)), rebalance=move(1, MOVE_COPYING, 1)
        )
    )
    receiver.new_map(first)
    pump(source, source.receive(CLIENT, phantom, at=source.now + 1) + source.new_map(first))
    assert receiver.node.sessions.lookup(ALICE, 1).verdict is Verdict.DUPLICATE  # imported, uncommitted

    # The source dies before any slave had the write; n1 (without it) masters shard 0 at epoch 2.
    successor = NodeHarness(SLAVE)
    successor.feed(Start())
    second = own(
        first.successor(
            shards={**first.shards, 0: ShardInfo(0, SLAVE, (SLAVE2,), (SLAVE2,), 2)},
            rebalance=move(2, MOVE_COPYING, 2),
        )
    )
    second = replace(
        second, nodes={**second.nodes, SLAVE: replace(second.nodes[SLAVE], incarnation=successor.incarnation)}
    )
    receiver.new_map(second)
    pump(successor, successor.connect(second))
    assert receiver.node.sessions.lookup(ALICE, 1).verdict is Verdict.NEW  # taken back

    receiver.new_map(second.successor(rebalance=move(2, MOVE_SWITCHED, 2)))
    assert responses(receiver.receive(CLIENT, replace(phantom, request_id=2), at=receiver.now + 1)) == [
        Response(2, True)
    ]
    assert receiver.node.store.get(key, now_ms=receiver.now) == b"PHANTOM"  # it ran, now, once
    position = receiver.node.applied_seq
    receiver.receive(CLIENT, replace(phantom, request_id=3), at=receiver.now + 1)
    assert receiver.node.applied_seq == position


def test_a_source_may_not_tell_the_target_what_to_forget() -> None:
    h = NodeHarness(SPARE)
    h.feed(Start())
    key, target = _moving_key()
    base = make_map(h.incarnation, mode="async")
    joined = base.successor(
        shards=base.with_shard(ShardInfo(2, SPARE, (), (), 1)),
        rebalance=Rebalance(5, target, (MoveInfo(0, 2, MOVE_COPYING, 1, 1, 1), MoveInfo(1, 2, MOVE_PENDING))),
    )
    h.connect(joined)
    forged = MigrateBatch(
        5, 0, 2, 1, 0, [["session_drop", 1, 2, 3], ["put", key, "string", b"x", None]], False
    )
    before = h.observable()
    h.receive(address(MASTER), forged, at=h.now + 1)
    assert h.observable() == before


def test_a_snapshot_restores_exactly_the_table_it_was_taken_from() -> None:
    own = record_op(0xC, 3, 3, 1000, ok_outcome(True, 4096), [42])
    moved = imported(["session", 0xC, 0, 5, 900, []], (5, 0, 2))
    table = DedupTable()
    table.apply(own, 1)
    table.apply(moved, 2)
    copy = DedupTable()
    copy.restore(table.snapshot(), 2)
    assert copy.snapshot() == table.snapshot() and copy.bytes == table.bytes
    assert table.lookup(0xC, 3).verdict is copy.lookup(0xC, 3).verdict is Verdict.STALE


def test_a_snapshot_larger_than_this_nodes_bounds_is_cut_to_them_not_fatal() -> None:
    from test_node import ask_for_sync, for_slave

    h = slave_node(NodeConfig(dedup=DedupConfig(max_clients=2)))
    ask_for_sync(h)
    ops = [record_op(client, 1, 1, 100, ok_outcome(True, 4096), [1]) for client in (11, 12, 13)]
    h.receive(address(MASTER), for_slave(h, SnapshotChunk(0, 1, 9, 1, 0, [], True, 0, ops)), at=h.now + 1)
    assert h.node.applied_seq == 9 and len(h.node.sessions) == 2 and h.node.sessions.evicted == 1


def test_only_a_masters_own_records_age_the_table() -> None:
    """An imported op carries the source master's clock; far ahead, it must not expire live sessions."""
    table = DedupTable(DedupConfig(retention_ms=60_000))
    table.apply(record_op(0xA, 7, 7, 1_000_000, ok_outcome(True, 4096), [1]), 1)
    table.apply(imported(["session", 0xB, 1, 0, 1_061_000, []], (5, 0, 2)), 2)
    assert table.lookup(0xA, 7).verdict is Verdict.DUPLICATE
    table.apply(record_op(0xB, 2, 2, 1_061_000, ok_outcome(True, 4096), [1]), 3)  # our own clock
    assert table.lookup(0xA, 7).verdict is Verdict.NEW and table.expired == 1


@given(
    st.lists(
        st.tuples(
            st.integers(1, 3), st.integers(1, 12), st.integers(0, 12), st.integers(0, 12), st.booleans()
        ),
        max_size=30,
    ),
    st.randoms(),
)
def test_own_records_and_imported_sessions_merge_to_one_table_in_any_order(
    records: list[tuple[int, int, int, int, bool]], rng: random.Random
) -> None:
    ops = []
    for client, number, floor, forgotten, moved in records:
        # One seq is executed on one shard: what a move brings is never what ran here as well.
        seq = 2 * number + (1 if moved else 0)
        if moved:
            ops.append(
                imported(["session", client, floor, forgotten, 0, [[seq, ["ok", seq], None]]], (1, 0, 1))
            )
        else:
            ops.append(record_op(client, seq, min(floor, seq), 0, ["ok", seq], None))
    ordered, shuffled = DedupTable(UNBOUNDED), DedupTable(UNBOUNDED)
    for op in ops:
        ordered.apply(op, 1)
    rng.shuffle(ops)
    for op in ops:
        shuffled.apply(op, 1)

    def state(table: DedupTable) -> dict[int, Any]:
        return {op[1]: (op[2], op[3], sorted(map(str, op[5]))) for op in table.snapshot()}

    assert state(ordered) == state(shuffled)
    ordered.check_invariants()
