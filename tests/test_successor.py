"""Properties of ``next_map``, the pure function the Overlord leader computes every map from.

Why property tests here: the example-based Overlord tests drive a handful of hand-built clusters
through the state machine, but ``next_map`` decides every failover, in-sync change, spare, drain
and rebalance step of every cluster. Its contract (see ``dimint.core.successor``) is what the
leader's safety rests on, so Hypothesis draws states the real leader can be in (1-4 shards, each a
master or none with 0-3 slaves and an in-sync subset, spares, retired processes, rebalances adding
or removing a shard with moves pending, copying or switched; registrations with dead, restarted
and returning processes; in-sync requests from current and deposed masters and stale maps; drains
and growth; failovers with some positions in; move reports and progress). Half the states are
drawn directly; the other half are what the leader itself settles into from such a state, then
disturbed by one to three events, which keeps the checks honest about reachability. It checks:

* Purity: no input is changed and equal inputs give equal decisions, so the leader may compute a
  decision, throw it away and compute it again (its queues only shrink for a map that exists).
* Well-formedness: a new map is the old epoch plus one, validates, names every process once, keeps
  shard epochs monotone, gives new roles and in-sync membership only to live processes under the
  incarnation the map records, and removes only shards that were asked to drain.
* Failover safety: a master changes only when the old one is gone, and only to a live in-sync slave
  whose position is at least that of every live in-sync slave, all of which must have answered;
  the shard epoch grows by one. Without a live in-sync slave nobody is promoted (unless
  ``unsafe_failover``). A shard without a live master is always being failed over or declared stuck.
* Rebalancing only moves forward: a switched move never reverts, a move switches only on a ready
  report for its very attempt and source epoch, and a copying move never runs under stale epochs.
* Queues: ``used`` and ``dropped`` name only the very request objects given (the Overlord forgets
  them by identity), never the same one twice; an in-sync request is used only if it is fresh, and
  then the map reflects it.
* Fixpoint: feeding each decision back (write the map, forget ``used`` and ``dropped``, keep the
  leader's memory, nothing else changing) reaches "no new map" within a few steps.

Four contract violations were found and are fixed in ``successor.py``; each keeps a minimal explicit
test at the end (a shard id reused after draining the highest shard of an initial map; an in-sync
request for a removed shard never dropped; ``unsafe_failover`` promoting a slave that died after
answering; the failover of a removed shard kept forever, querying its retired slaves), and the
properties above now check those cases too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimint.core.clustermap import (
    MOVE_COPYING,
    MOVE_PENDING,
    MOVE_SWITCHED,
    ClusterMap,
    MoveInfo,
    NodeInfo,
    Rebalance,
    ShardInfo,
    initial_map,
)
from dimint.core.effects import Send, Trace
from dimint.core.overlord import JOIN_POLICIES, OverlordConfig
from dimint.core.placement import make_placement, plan
from dimint.core.protocol import InSyncChange, MoveReport, PositionQuery
from dimint.core.successor import Decision, Failover, Leadership, Pending, Registration, next_map

OVERLORD = "o1"
POOL = tuple(f"n{i:02d}" for i in range(24))  # 4 shards of 4, 4 spares, 4 newcomers
RESTART = 100  # a restarted process draws a new incarnation: the map's plus this
FIXPOINT_STEPS = 8
EXAMPLES = 250

PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
SAFETY = settings(PROPERTY, max_examples=2 * EXAMPLES)  # failover safety: the most to lose


def address(node_id: str) -> str:
    return f"node:{node_id}"


# ------------------------------------------------------------------------------------------
# The inputs of one decision
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Everything ``next_map`` reads, as the leader would pass it."""

    cmap: ClusterMap
    live: dict[str, Registration]
    pending: Pending
    memory: Leadership
    config: OverlordConfig
    now_ms: int

    def run(self) -> Decision:
        return next_map(self.cmap, self.live, self.pending, self.memory, self.config, OVERLORD, self.now_ms)

    def alive(self) -> set[str]:
        return alive_in(self.cmap, self.live)


def alive_in(cmap: ClusterMap, live: Mapping[str, Registration]) -> set[str]:
    """Registered processes that are the incarnation the map knows (or that the map does not know)."""
    return {
        n
        for n, r in live.items()
        if n not in cmap.nodes or r.incarnation is None or r.incarnation == cmap.nodes[n].incarnation
    }


def current(cmap: ClusterMap, live: Mapping[str, Registration], node_id: str) -> bool:
    """``node_id`` is registered and the map records its current incarnation."""
    registration = live.get(node_id)
    if registration is None or node_id not in cmap.nodes:
        return False
    return registration.incarnation in (None, cmap.nodes[node_id].incarnation)


def subset(draw: st.DrawFn, items: list[Any] | tuple[Any, ...]) -> list[Any]:
    """A sub-list of ``items``, order kept."""
    keep = draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
    return [item for item, kept in zip(items, keep, strict=True) if kept]


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True with probability 1/n."""
    return draw(st.integers(0, n - 1)) == 0


def epoch_at_most(draw: st.DrawFn, top: int) -> int:
    """An epoch no greater than ``top``, often exactly it (stale ones are the rarer case)."""
    return draw(st.one_of(st.just(top), st.integers(max(1, top - 2), top)))


@st.composite
def configs(draw: st.DrawFn) -> OverlordConfig:
    return OverlordConfig(
        replicas=draw(st.integers(0, 3)),
        unsafe_failover=one_in(draw, 4),
        join_policy=draw(st.sampled_from(JOIN_POLICIES)),
        parallel_moves=draw(st.integers(1, 2)),
        move_stall_ms=draw(st.sampled_from([1_000, 5_000])),
    )


def _rebalance(
    draw: st.DrawFn,
    config: OverlordConfig,
    ids: list[int],
    shards: dict[int, ShardInfo],
    epoch: int,
    focus: str,
) -> tuple[Any, Rebalance | None, tuple[int, ...]]:
    """(placement, rebalance, draining) as the leader leaves them: a drain always has a rebalance
    removing its first shard, a joining shard exists only while the rebalance adding it runs."""
    kind = draw(st.sampled_from(("modulo", "rendezvous", "ring")))
    params = {"vnodes": 4} if kind == "ring" else {}
    modes = ("add", "remove") if focus == "rebalance" else ("none", "add", "remove")
    mode = draw(st.sampled_from(modes)) if len(ids) >= 2 else "none"
    if mode == "none":
        return make_placement(kind, ids, **params), None, ()
    if mode == "add":
        joining = draw(st.sampled_from(ids))
        placement = make_placement(kind, [i for i in ids if i != joining], **params)
        target = placement.with_shard(joining)
        # Queued drains (the joining shard too); at least one owner must remain.
        draining = tuple(draw(st.permutations(subset(draw, ids))))[: len(ids) - 1]
        reason = f"add shard {joining}"
    else:
        leaving = draw(st.sampled_from(ids))
        placement = make_placement(kind, ids, **params)
        target = placement.without_shard(leaving)
        queued = subset(draw, list(target.shard_ids))[: len(target.shard_ids) - 1]
        draining = (leaving, *queued)
        reason = f"remove shard {leaving}"
    moves = []
    copying = 0
    for move in plan(placement, target):
        state = draw(st.sampled_from((MOVE_PENDING, MOVE_COPYING, MOVE_SWITCHED)))
        if state == MOVE_COPYING and copying >= config.parallel_moves:
            state = MOVE_SWITCHED  # never more than parallel_moves copy at once
        if state == MOVE_PENDING:
            moves.append(MoveInfo(move.source, move.target))
            continue
        copying += state == MOVE_COPYING
        moves.append(
            MoveInfo(
                move.source,
                move.target,
                state,
                draw(st.integers(1, 4)),
                epoch_at_most(draw, shards[move.source].shard_epoch),
                epoch_at_most(draw, shards[move.target].shard_epoch),
            )
        )
    if moves and all(m.state == MOVE_SWITCHED for m in moves):
        # The map that switches the last move also finishes the rebalance: never seen like this.
        moves[-1] = replace(moves[-1], state=MOVE_COPYING)
    rebalance = Rebalance(draw(st.integers(1, epoch)), target, tuple(moves), reason)
    return placement, rebalance, draining


@st.composite
def cases(draw: st.DrawFn, focus: str = "") -> Case:
    """Any state the leader can be in; ``focus`` ("failover", "rebalance", "queues") makes the
    cases one property is about more frequent."""
    config = draw(configs())
    epoch = draw(st.integers(3, 40))
    now_ms = draw(st.integers(20_000, 60_000))
    ids = sorted(draw(st.sets(st.integers(0, 6), min_size=2 if focus == "rebalance" else 1, max_size=4)))
    order = list(draw(st.permutations(POOL)))

    shards: dict[int, ShardInfo] = {}
    for shard_id in ids:
        has_master = not one_in(draw, 8)  # a shard whose failover got stuck has none
        members = [order.pop() for _ in range(draw(st.integers(0, 3)) + has_master)]
        master = members[0] if has_master else None
        slaves = tuple(members[1:] if has_master else members)
        in_sync = slaves if draw(st.booleans()) else tuple(subset(draw, slaves))  # usually all
        shards[shard_id] = ShardInfo(shard_id, master, slaves, in_sync, draw(st.integers(1, 6)))
    known_spares = [order.pop() for _ in range(draw(st.integers(0, 4)))]
    fresh = [order.pop() for _ in range(draw(st.integers(0, 4)))]  # not in the map yet

    placement, rebalance, draining = _rebalance(draw, config, ids, shards, epoch, focus)
    members = [m for s in shards.values() for m in s.members]
    nodes = {n: NodeInfo(n, address(n), draw(st.integers(1, 3))) for n in members + known_spares}
    retired = {n: nodes[n].incarnation for n in subset(draw, known_spares)}
    extra = {"grow_requests": draw(st.integers(1, 2))} if one_in(draw, 5) else {}
    next_shard_id = 0 if draw(st.booleans()) else max(ids) + 1 + draw(st.integers(0, 2))
    cmap = ClusterMap(
        epoch=epoch,
        placement=placement,
        shards=shards,
        nodes=nodes,
        replication_mode=draw(st.sampled_from(("async", "semi-sync", "sync"))),
        extra=extra,
        rebalance=rebalance,
        draining=draining,
        retired=retired,
        next_shard_id=next_shard_id,
    )
    cmap.validate()

    live: dict[str, Registration] = {}
    churn = draw(st.integers(0, 3))  # in tenths: how many known processes died or restarted
    for seq, node_id in enumerate(sorted(nodes)):
        fate = "alive"
        if draw(st.integers(0, 9)) < churn:
            fate = draw(st.sampled_from(("dead", "restarted", "unknown")))
        incarnation: int | None = nodes[node_id].incarnation
        if fate == "dead":
            continue
        if fate == "restarted":
            incarnation = nodes[node_id].incarnation + RESTART
        elif fate == "unknown":
            incarnation = None  # a payload without an incarnation
        live[node_id] = Registration(f"{node_id}_{seq:010d}", seq, address(node_id), incarnation)
    for seq, node_id in enumerate(fresh, start=100):
        live[node_id] = Registration(f"{node_id}_{seq:010d}", seq, address(node_id), draw(st.integers(1, 3)))
    if focus == "failover" or one_in(draw, 3):  # masters in particular die
        for shard in shards.values():
            if shard.master in live and draw(st.booleans()):
                del live[shard.master]
    alive = alive_in(cmap, live)

    pending = _pending(draw, cmap, rebalance)
    failovers: dict[int, Failover] = {}
    query_seq = draw(st.integers(0, 5))
    for shard_id, shard in shards.items():
        # A dead master's failover may not have started yet; a live master may have one left
        # from when its session expired (it re-registered as the same process).
        started = focus == "failover" or draw(st.booleans())
        if not started if shard.master not in alive else not one_in(draw, 6):
            continue
        query_seq += 1
        in_sync_alive = [s for s in shard.in_sync if s in alive]
        # Everyone asked was a live slave when the failover started; live in-sync slaves always
        # were (the in-sync set only shrinks while the master is gone). Spares added since were not.
        asked = set(in_sync_alive) | set(subset(draw, [s for s in shard.slaves if s not in in_sync_alive]))
        must_hear = {s for s in asked if s in shard.in_sync}
        replies = {
            s: (draw(st.integers(0, shard.shard_epoch)), draw(st.integers(0, 30)))
            for s in (sorted(asked) if draw(st.booleans()) else subset(draw, sorted(asked)))
        }
        failovers[shard_id] = Failover(
            shard_id,
            shard.master,
            now_ms - draw(st.integers(0, 2_000)),
            asked,
            must_hear,
            shard.shard_epoch,
            replies,
            request_id=query_seq,
            timed_out=draw(st.booleans()),
        )
    reports, progress = _move_memory(draw, cmap, now_ms, 2 if focus == "rebalance" else 3)
    memory = Leadership(failovers, reports, progress, query_seq + draw(st.integers(0, 2)))
    return Case(cmap, live, pending, memory, config, now_ms)


def insync_request(draw: st.DrawFn, cmap: ClusterMap, shard: ShardInfo) -> InSyncChange:
    """An in-sync change for ``shard``: from its master, computed from this map (a real change or
    one that changes nothing), or stale in exactly one way (an older map, an older shard epoch, a
    deposed master): only the first kind may apply."""
    kind = draw(st.sampled_from(("change", "noop", "stale map", "stale epoch", "deposed")))
    if kind == "stale epoch" and shard.shard_epoch <= 1:
        kind = "deposed"
    if shard.master is None:
        kind = "deposed"
    outside = [s for s in shard.slaves if s not in shard.in_sync]
    add = subset(draw, outside) + subset(draw, sorted(cmap.nodes)[:1])
    remove = subset(draw, shard.in_sync)
    if kind == "noop":
        add, remove = subset(draw, shard.in_sync), []
    master = shard.master
    if kind == "deposed":
        master = draw(st.sampled_from(sorted({*cmap.nodes, "n00", "n01"} - {shard.master})))
    assert master is not None
    shard_epoch, map_epoch = shard.shard_epoch, cmap.epoch
    if kind == "stale epoch":
        shard_epoch -= draw(st.integers(1, shard_epoch - 1))
    elif kind == "stale map":
        map_epoch -= draw(st.integers(1, 2))
    return InSyncChange(shard.shard_id, shard_epoch, master, add, remove, map_epoch)


def _pending(draw: st.DrawFn, cmap: ClusterMap, rebalance: Rebalance | None) -> Pending:
    insync = {k: insync_request(draw, cmap, s) for k, s in cmap.shards.items() if draw(st.booleans())}
    # Drains of existing shards (the admin checks that one owner remains) and of a removed one.
    owners = set(cmap.placement.shard_ids) | (set(rebalance.target.shard_ids) if rebalance else set())
    drains = set(subset(draw, sorted(cmap.shards))) if one_in(draw, 3) else set()
    remaining = sorted(owners - set(cmap.draining))  # never empty: the generator keeps an owner
    if set(remaining) <= drains:
        drains.discard(remaining[0])
    if one_in(draw, 6):
        drains.add(99)
    return Pending(insync, frozenset(drains), draw(st.integers(0, 2)) if one_in(draw, 3) else 0)


def _move_memory(
    draw: st.DrawFn, cmap: ClusterMap, now_ms: int, late: int
) -> tuple[dict[tuple[int, int, int], MoveReport], dict[tuple[int, int, int, int], tuple[int, int]]]:
    """Move reports (for this attempt, or one in ``late`` from an earlier attempt or a newer source
    master) and progress records, some stalled."""
    reports: dict[tuple[int, int, int], MoveReport] = {}
    progress: dict[tuple[int, int, int, int], tuple[int, int]] = {}
    rebalance = cmap.rebalance
    if rebalance is None:
        return reports, progress
    rid = rebalance.rebalance_id
    for move in rebalance.moves:
        if move.state == MOVE_PENDING or one_in(draw, 3):
            continue
        attempt = move.attempt - 1 if move.attempt > 1 and one_in(draw, late) else move.attempt
        shard_epoch = move.source_epoch + 1 if one_in(draw, late + 1) else move.source_epoch
        state = draw(st.sampled_from(("copying", "ready", "ready")))
        source_master = cmap.shards[move.source].master or "n00"
        reports[(rid, move.source, move.target)] = MoveReport(
            source_master, rid, move.source, move.target, attempt, shard_epoch, state, 5, 50, 1, 2, 10, 1
        )
        if move.state == MOVE_COPYING and draw(st.booleans()):
            progress[(rid, move.source, move.target, move.attempt)] = (
                draw(st.integers(-1, 3)),
                now_ms - draw(st.integers(0, 10_000)),
            )
    return reports, progress


def forget(queue: Pending, requests: Pending) -> Pending:
    """What ``Overlord._forget`` leaves of ``queue`` (in-sync requests go by identity)."""
    insync = {k: v for k, v in queue.insync.items() if requests.insync.get(k) is not v}
    return Pending(insync, queue.drains - requests.drains, max(0, queue.grows - requests.grows))


def after_write(decision: Decision) -> dict[int, Failover]:
    """The failovers the Overlord keeps once the decision's map landed (``_on_write_result``)."""
    assert decision.map is not None
    failovers = dict(decision.failovers)
    for shard_id, failover in list(failovers.items()):
        shard = decision.map.shards.get(shard_id)
        if failover.done and shard is not None and shard.master != failover.old_master:
            del failovers[shard_id]
    return failovers


def settle(case: Case) -> Case:
    """The state the leader reaches from ``case`` when nothing else happens (at most a few maps)."""
    cmap, pending, memory = case.cmap, case.pending, case.memory
    for _ in range(FIXPOINT_STEPS):
        decision = next_map(cmap, case.live, pending, memory, case.config, OVERLORD, case.now_ms)
        pending = forget(pending, decision.dropped)
        if decision.map is None:
            memory = Leadership(
                decision.failovers, memory.move_reports, decision.move_progress, decision.query_seq
            )
            break
        pending = forget(pending, decision.used)
        memory = Leadership(
            after_write(decision), memory.move_reports, decision.move_progress, decision.query_seq
        )
        cmap = decision.map
    return replace(case, cmap=cmap, pending=pending, memory=memory)


PERTURBATIONS = (
    "die",
    "restart",
    "join",
    "return",
    "positions",
    "timeout",
    "insync",
    "drain",
    "grow",
    "stall",
)


@st.composite
def settled_cases(draw: st.DrawFn, focus: str = "") -> Case:
    """A state the leader itself reached (a settled ``cases()``), then one to three things happen:
    processes die, restart or join, failovers hear positions or time out, moves report ready or
    stall, a master asks for an in-sync change, an administrator drains or grows."""
    case = settle(draw(cases(focus)))
    cmap, config, now_ms = case.cmap, case.config, case.now_ms
    live = copy.deepcopy(case.live)
    insync, drains, grows = dict(case.pending.insync), set(case.pending.drains), case.pending.grows
    failovers = {k: f.copy() for k, f in case.memory.failovers.items()}
    reports = dict(case.memory.move_reports)
    events = draw(st.lists(st.sampled_from(PERTURBATIONS), min_size=1, max_size=3))
    if focus == "queues" and draw(st.booleans()):
        events = ["insync"]  # alone, so that a request that changes nothing makes no map
    for what in events:
        if what in ("die", "restart") and live:
            node_id = draw(st.sampled_from(sorted(live)))
            if what == "die":
                del live[node_id]
            else:
                old = live[node_id]
                incarnation = (old.incarnation or 0) + RESTART
                live[node_id] = Registration(
                    f"{node_id}_{old.seq + 1:010d}", old.seq + 1, old.address, incarnation
                )
        elif what == "return":  # a process whose session expired registers again, same incarnation
            gone = [n for n in sorted(cmap.nodes) if n not in live]
            if gone:
                node_id = draw(st.sampled_from(gone))
                info = cmap.nodes[node_id]
                live[node_id] = Registration(f"{node_id}_0000000600", 600, info.address, info.incarnation)
        elif what == "join":
            newcomers = [n for n in POOL if n not in live and n not in cmap.nodes]
            if newcomers:
                node_id = draw(st.sampled_from(newcomers))
                live[node_id] = Registration(f"{node_id}_0000000500", 500, address(node_id), 7)
        elif what in ("positions", "timeout"):
            for failover in failovers.values():
                if what == "timeout":
                    failover.timed_out = True
                    continue
                epoch = failover.shard_epoch
                silent = sorted(failover.asked - set(failover.replies))
                for node_id in silent if draw(st.booleans()) else subset(draw, silent):
                    failover.replies[node_id] = (draw(st.integers(0, epoch)), draw(st.integers(0, 30)))
        elif what == "insync":
            shard = cmap.shards[draw(st.sampled_from(sorted(cmap.shards)))]
            insync[shard.shard_id] = insync_request(draw, cmap, shard)
        elif what == "drain":
            owners = set(cmap.placement.shard_ids) | (
                set(cmap.rebalance.target.shard_ids) if cmap.rebalance else set()
            )
            remaining = owners - set(cmap.draining) - drains
            if len(remaining) > 1:
                drains.add(draw(st.sampled_from(sorted(remaining))))
        elif what == "grow":
            grows += 1
        elif what == "stall":
            now_ms += config.move_stall_ms + 1
    if cmap.rebalance is not None:  # copying moves report, for their attempt or late
        rid = cmap.rebalance.rebalance_id
        for move in cmap.rebalance.moves:
            if move.state != MOVE_COPYING or not draw(st.booleans()):
                continue
            # Late: from the previous attempt, or from a new source master that took the attempt
            # over before the map restarted it.
            attempt, epoch = move.attempt, move.source_epoch
            if draw(st.booleans()):
                attempt, epoch = (
                    (attempt - 1, epoch) if attempt > 1 and draw(st.booleans()) else (attempt, epoch + 1)
                )
            master = cmap.shards[move.source].master or "n00"
            reports[(rid, *move.pair)] = MoveReport(
                master, rid, move.source, move.target, attempt, epoch, "ready", 5, 50, 1, 2, 10, 1
            )
    memory = Leadership(failovers, reports, case.memory.move_progress, case.memory.query_seq)
    return Case(cmap, live, Pending(insync, frozenset(drains), grows), memory, config, now_ms)


#: Half drawn afresh (any state the leader can be in), half reached by the leader itself.
ANY_CASE = st.one_of(cases(), settled_cases())


def focused(focus: str) -> st.SearchStrategy[Case]:
    """Any case, or one focused on what a property is about."""
    return st.one_of(ANY_CASE, cases(focus), settled_cases(focus))


def unsafe_pick(case: Case, was: ShardInfo, chosen: str) -> bool:
    """``chosen`` became master only because ``unsafe_failover`` allows a slave that is not a live
    in-sync one (still a live one: ``test_unsafe_failover_never_promotes_a_dead_slave``)."""
    return case.config.unsafe_failover and chosen not in {s for s in was.in_sync if s in case.alive()}


def events_of(decision: Decision, kind: str) -> set[int]:
    """The shards named by the decision's ``kind`` events (``shard_added``, ``shard_removed``)."""
    return {e["shard"] for e in decision.events if e["event"] == kind}


def added_and_removed(old: ClusterMap, decision: Decision) -> tuple[set[int], set[int]]:
    """Shards the decision created and removed (an id is never both: ``test_shard_ids_are_never_reused``)."""
    assert decision.map is not None
    added = events_of(decision, "shard_added")
    removed = (set(old.shards) - set(decision.map.shards)) | (events_of(decision, "shard_removed") & added)
    return added, removed


# ------------------------------------------------------------------------------------------
# 1. Purity
# ------------------------------------------------------------------------------------------


@PROPERTY
@given(ANY_CASE)
def test_next_map_changes_no_input_and_is_deterministic(case: Case) -> None:
    before_map = case.cmap.to_bytes()
    before = copy.deepcopy((case.cmap, case.live, case.pending, case.memory, case.config))
    first = case.run()
    assert case.cmap.to_bytes() == before_map
    assert (case.cmap, case.live, case.pending, case.memory, case.config) == before
    again = case.run()  # the very same objects, after a first call
    twin = replace(
        case,
        cmap=before[0],
        live=copy.deepcopy(before[1]),
        pending=copy.deepcopy(before[2]),
        memory=copy.deepcopy(before[3]),
    ).run()  # equal objects
    assert first == again == twin
    if first.map is not None and twin.map is not None:
        assert first.map.to_bytes() == twin.map.to_bytes()  # the very bytes the leader writes
    # The leader keeps the decision's failovers and mutates them later (position replies): they
    # must be its own copies, not the memory it was given.
    for shard_id, failover in first.failovers.items():
        assert failover is not case.memory.failovers.get(shard_id)
    assert first.move_progress is not case.memory.move_progress


# ------------------------------------------------------------------------------------------
# 2. A new map is a well-formed successor
# ------------------------------------------------------------------------------------------


@PROPERTY
@given(ANY_CASE)
def test_a_new_map_is_a_well_formed_successor(case: Case) -> None:
    old, decision = case.cmap, case.run()
    new = decision.map
    if new is None:
        return
    assert new.epoch == old.epoch + 1
    new.validate()
    assert ClusterMap.from_bytes(new.to_bytes()) == new
    added, removed = added_and_removed(old, decision)
    # Members of a shard removed just now are retired as the incarnation the map had, even if
    # dead or restarted; the next map forgets them (harmless, so allowed here).
    leavers = {m for shard_id in removed for m in old.shards[shard_id].members}
    roles: dict[str, int] = {}
    for shard_id, shard in new.shards.items():
        assert set(shard.in_sync) <= set(shard.slaves)
        for member in shard.members:
            assert member not in roles, f"{member} serves shards {roles[member]} and {shard_id}"
            roles[member] = shard_id
        # Slaves and in-sync slaves are always live, as the incarnation the map records; a
        # master is either the old one (whose failover may still be waiting) or a live one.
        for slave in shard.slaves:
            assert current(new, case.live, slave), (shard_id, slave)
        was = None if shard_id in added else old.shards.get(shard_id)
        promoted = shard.master is not None and (was is None or was.master != shard.master)
        if promoted:
            assert current(new, case.live, shard.master), (shard_id, shard.master)
        if was is not None:
            assert shard.shard_epoch >= was.shard_epoch
            assert shard.shard_epoch == was.shard_epoch + (shard.master != was.master)
        else:
            # A brand-new shard: fresh id, epoch 1, empty so trivially in sync.
            assert shard.shard_epoch == 1 and shard.master is not None
            assert shard.in_sync == shard.slaves
            assert shard_id >= old.fresh_shard_id() and shard_id not in old.shards
            assert new.next_shard_id > shard_id
            assert new.rebalance is not None and shard_id in new.rebalance.target.shard_ids
    for shard_id in removed:
        assert shard_id in old.draining or shard_id in case.pending.drains
        assert shard_id not in old.placement.shard_ids or old.rebalance is not None
    for node_id, incarnation in new.retired.items():
        assert node_id not in roles
        if node_id not in leavers:
            assert node_id in case.live and case.live[node_id].incarnation in (None, incarnation)
    for node_id, info in new.nodes.items():
        assert node_id in case.live or node_id in roles or node_id in leavers
        registration = case.live.get(node_id)
        if node_id not in roles.keys() | leavers and registration is not None and registration.incarnation:
            assert info.incarnation == registration.incarnation  # a spare is known as it runs now
    for node_id in case.live:
        assert node_id in new.nodes  # every registered process is known to the map
    assert set(new.draining) <= set(new.shards) and len(set(new.draining)) == len(new.draining)


# ------------------------------------------------------------------------------------------
# 3. Failover safety
# ------------------------------------------------------------------------------------------


@SAFETY
@given(focused("failover"))
def test_failover_promotes_only_the_most_advanced_live_in_sync_slave(case: Case) -> None:
    old, decision, alive = case.cmap, case.run(), case.alive()
    new = decision.map or old
    stuck = {
        e.fields["shard"] for e in decision.effects if isinstance(e, Trace) and e.event == "failover_stuck"
    }
    reborn = events_of(decision, "shard_added")
    assert not reborn & set(old.shards), "a shard id reused"
    for shard_id, was in old.shards.items():
        shard = new.shards.get(shard_id)
        if shard is None or shard_id in reborn:
            continue
        live_in_sync = [s for s in was.in_sync if s in alive]
        if was.master is not None and was.master in alive:
            assert shard.master == was.master and shard.shard_epoch == was.shard_epoch
            continue
        # The master is gone (dead, restarted, or the shard had none).
        if shard.master not in (was.master, None):
            chosen = shard.master
            failover = case.memory.failovers.get(shard_id)
            assert failover is not None and chosen in failover.replies, "promoted without a position"
            assert chosen in was.slaves
            assert chosen in alive
            assert shard.shard_epoch == was.shard_epoch + 1
            # Every live in-sync slave answered: one that did not might hold the newest write.
            assert all(s in failover.replies for s in live_in_sync), (live_in_sync, failover.replies)
            if live_in_sync:
                assert chosen in was.in_sync
                position = failover.replies[chosen]
                assert all(failover.replies[s] <= position for s in live_in_sync)
                assert position == max(failover.replies[s] for s in live_in_sync)
            else:
                assert case.config.unsafe_failover, "promoted a slave that was not in sync"
            # Only slaves at the chosen position stay in sync: one behind it may lack writes the
            # old master acknowledged, and a second failover could promote it and lose them.
            for s in shard.in_sync:
                assert failover.replies.get(s) == failover.replies[chosen], (s, failover.replies)
        elif not live_in_sync and not case.config.unsafe_failover:
            assert shard.master in (was.master, None)
        if shard.master is None or shard.master not in alive:
            # Not promoted (yet): a failover is under way, or it was declared stuck just now.
            assert shard_id in decision.failovers or shard_id in stuck, shard_id
        if shard_id in stuck:
            # Stuck only when no live in-sync slave is left to hear from (a silent one is asked
            # again, however long it takes: availability is lost, never a write), and then the
            # shard goes without a master under a new epoch, fencing the old one.
            assert not live_in_sync, (live_in_sync, case.memory.failovers.get(shard_id))
            assert shard_id not in decision.failovers
            if was.master is not None:
                assert shard.master is None and shard.shard_epoch == was.shard_epoch + 1
    # The leader forgets a failover once the shard has a live master again; one that chose a new
    # master is kept (done) until that map lands.
    for shard_id, failover in decision.failovers.items():
        assert shard_id in new.shards, "the failover of a removed shard is kept"
        was = old.shards[shard_id]
        assert failover.done or was.master is None or was.master not in alive
        if failover.done:
            assert new.shards[shard_id].master not in (was.master, None)
    # Position queries go only to live slaves of the shard, under its current epoch.
    for effect in decision.effects:
        if isinstance(effect, Send) and isinstance(effect.message, PositionQuery):
            query = effect.message
            was = old.shards[query.shard_id]
            assert query.shard_epoch == was.shard_epoch
            assert effect.destination in {address(s) for s in was.slaves if s in alive}


# ------------------------------------------------------------------------------------------
# 3b. Rebalancing moves only forward
# ------------------------------------------------------------------------------------------


@PROPERTY
@given(focused("rebalance"))
def test_rebalance_moves_only_forward(case: Case) -> None:
    old, decision = case.cmap, case.run()
    new = decision.map
    if new is None or new.rebalance is None:
        return
    rebalance = new.rebalance
    if old.rebalance is not None and old.rebalance.rebalance_id == rebalance.rebalance_id:
        before = {m.pair: m for m in old.rebalance.moves}
        assert set(before) == {m.pair for m in rebalance.moves}
        assert rebalance.target == old.rebalance.target and new.placement == old.placement
        for move in rebalance.moves:
            was = before[move.pair]
            assert move.attempt >= was.attempt
            if was.state == MOVE_SWITCHED:
                assert move == was, "a switched move went back"
            elif move.state == MOVE_SWITCHED:
                report = case.memory.move_reports.get((rebalance.rebalance_id, *move.pair))
                assert was.state == MOVE_COPYING and report is not None and report.state == "ready"
                assert report.attempt == was.attempt and report.shard_epoch == was.source_epoch
                assert (was.source_epoch, was.target_epoch) == (
                    new.shards[move.source].shard_epoch,
                    new.shards[move.target].shard_epoch,
                )
    else:
        assert rebalance.rebalance_id == old.epoch + 1  # started by this very map
        assert rebalance.target.shard_ids != new.placement.shard_ids
    copying = [m for m in rebalance.moves if m.state == MOVE_COPYING]
    assert len(copying) <= case.config.parallel_moves
    for move in copying:
        source, target = new.shards[move.source], new.shards[move.target]
        if source.master is not None and target.master is not None:
            assert (move.source_epoch, move.target_epoch) == (source.shard_epoch, target.shard_epoch)


# ------------------------------------------------------------------------------------------
# 4. Queues
# ------------------------------------------------------------------------------------------


@PROPERTY
@given(focused("queues"))
def test_used_and_dropped_name_only_given_requests_and_consume_nothing(case: Case) -> None:
    old, pending, alive = case.cmap, case.pending, case.alive()
    decision = case.run()
    used, dropped = decision.used, decision.dropped
    for taken in (used, dropped):
        for shard_id, request in taken.insync.items():
            assert request is pending.insync[shard_id]  # the very object: forgotten by identity
        assert taken.drains <= pending.drains
    assert not set(used.insync) & set(dropped.insync)
    assert not used.drains & dropped.drains
    assert used.grows in (0, pending.grows) and dropped.grows == 0
    if decision.map is None:
        assert used.empty, "nothing was written, so nothing was taken in"
    else:
        assert used.grows == pending.grows
    for shard_id, request in pending.insync.items():
        shard = old.shards.get(shard_id)
        if shard is None:
            assert shard_id in dropped.insync and shard_id not in used.insync, "a removed shard's request"
            continue
        assert (shard_id in used.insync) != (shard_id in dropped.insync), "every request is decided"
        fresh = (
            request.shard_epoch == shard.shard_epoch
            and request.master == shard.master
            and request.master in alive
            and request.map_epoch == old.epoch
        )
        if not fresh:
            assert shard_id in dropped.insync
        elif shard_id in used.insync:
            assert decision.map is not None
            if shard_id not in decision.map.shards:
                continue  # drained and removed by this very map
            in_sync = set(decision.map.shards[shard_id].in_sync)
            assert not in_sync & (set(request.remove) - set(request.add))
            assert {s for s in request.add if s in shard.slaves and s in alive} <= in_sync
    for shard_id in pending.drains:
        assert (shard_id in used.drains) != (shard_id in dropped.drains)
        if shard_id in dropped.drains and decision.map is not None:
            assert shard_id not in old.shards or shard_id in old.draining
        if shard_id in used.drains:
            new = decision.map
            assert new is not None and (shard_id in new.draining or shard_id not in new.shards)
    # Nothing was consumed while computing: the same inputs give the same verdict again.
    second = case.run()
    assert (second.used, second.dropped) == (used, dropped)


# ------------------------------------------------------------------------------------------
# 5. Fixpoint
# ------------------------------------------------------------------------------------------


@PROPERTY
@given(ANY_CASE)
def test_feeding_decisions_back_reaches_a_fixpoint(case: Case) -> None:
    """Write each map, forget ``used`` and ``dropped``, keep the leader's memory: no new map soon.

    Precondition: none beyond "nothing else happens" (same registrations, move reports, position
    replies and clock). Waiting never writes: a failover missing a live in-sync slave's position
    leaves the shard as it is, a copying move without a matching ready report stays copying, a
    stall restart records the new attempt's progress at ``now_ms`` so it cannot restart again, and
    a finished rebalance starts the next one (queued drain, or growth that consumes spares) in the
    same map. So rebalances and failovers in progress need not be excluded.
    """
    cmap, pending, memory = case.cmap, case.pending, case.memory
    ever = set(cmap.shards)
    for _ in range(FIXPOINT_STEPS):
        decision = next_map(cmap, case.live, pending, memory, case.config, OVERLORD, case.now_ms)
        pending = forget(pending, decision.dropped)
        if decision.map is None:
            memory = Leadership(
                decision.failovers, memory.move_reports, decision.move_progress, decision.query_seq
            )
            break
        pending = forget(pending, decision.used)
        failovers = after_write(decision)
        memory = Leadership(failovers, memory.move_reports, decision.move_progress, decision.query_seq)
        assert decision.map.epoch == cmap.epoch + 1
        born = events_of(decision, "shard_added")
        assert not born & ever, f"shard ids {born & ever} reused"
        ever |= born
        cmap = decision.map
    else:
        raise AssertionError(f"still writing maps after {FIXPOINT_STEPS} steps: {cmap}")
    # A fixpoint stays one, and every request left is for a shard the map no longer has.
    again = next_map(cmap, case.live, pending, memory, case.config, OVERLORD, case.now_ms)
    assert again.map is None
    assert not pending.drains and not pending.grows
    assert not pending.insync, "every in-sync request was decided"


# ------------------------------------------------------------------------------------------
# Contract violations the properties above found (fixed in successor.py), kept as minimal examples
# ------------------------------------------------------------------------------------------


def _drained_highest_shard() -> tuple[ClusterMap, dict[str, Registration], Leadership]:
    """An initial map (``next_shard_id`` 0) of shards 0 and 1 draining shard 1, whose only move
    just reported ready, with two live spares and ``replicas=1``."""
    placement = make_placement("modulo", [0, 1])
    target = placement.without_shard(1)
    moves = tuple(MoveInfo(m.source, m.target, MOVE_COPYING, 1, 1, 1) for m in plan(placement, target))
    assert [m.pair for m in moves] == [(1, 0)]
    names = ("a", "b", "c", "d", "s1", "s2")
    cmap = initial_map(
        placement,
        [ShardInfo(0, "a", ("b",), ("b",), 1), ShardInfo(1, "c", ("d",), ("d",), 1)],
        [NodeInfo(n, address(n), 1) for n in names],
    )
    cmap = cmap.successor(rebalance=Rebalance(2, target, moves, "remove shard 1"), draining=(1,))
    live = {n: Registration(f"{n}_0000000001", 1, address(n), 1) for n in names}
    report = MoveReport("c", 2, 1, 0, 1, 1, "ready", 5, 50, 1, 2, 10, 1)
    return cmap, live, Leadership(move_reports={(2, 1, 0): report})


# VIOLATION (found by test_a_new_map_is_a_well_formed_successor and the fixpoint property, which
# skip maps with next_shard_id == 0 for this reason): ``ClusterMap.fresh_shard_id`` and the
# ``next_shard_id`` field promise that shard ids are never reused ("larger than any id ever used,
# so no stale state can match it"), but removing a drained shard does not advance
# ``next_shard_id``. An initial map has ``next_shard_id == 0``; once its highest shard is drained
# and removed, the next new shard gets that same id (here within the same map: the last move
# switches, the removal finishes, the spares form a new shard, and max(0, max(shards) + 1) is the
# removed id again; with join_policy="fill-only" the next add_shard does the same, maps later).
def test_shard_ids_are_never_reused() -> None:
    cmap, live, memory = _drained_highest_shard()
    config = OverlordConfig(replicas=1, join_policy="fill-then-grow")
    decision = next_map(cmap, live, Pending(), memory, config, OVERLORD, 10_000)
    new = decision.map
    assert new is not None and new.rebalance is not None
    assert sorted(e["shard"] for e in decision.events if e["event"] == "shard_removed") == [1]
    added = [e["shard"] for e in decision.events if e["event"] == "shard_added"]
    # Actual: added == [1] and shard 1 is back with members s1, s2 (the id of the shard just removed).
    assert added == [2], f"new shard got id {added}; shard 1 was removed in this very map"


# VIOLATION (found by the queue property, which skips requests for shards absent from the map):
# ``Decision.dropped`` is documented as the requests "which can never apply (dropped at once)".
# An in-sync request for a shard that is no longer in the map (its master asked just before the
# shard was drained and removed; the Overlord stores any InSyncChange it receives while leading)
# can never apply, yet next_map neither uses nor drops it, so it stays in
# ``Overlord.insync_requests`` forever (and, with the id reuse above, is then judged against a
# different shard of the same id, where only its stale map_epoch keeps it from applying).
def test_insync_request_for_a_removed_shard_is_dropped() -> None:
    placement = make_placement("modulo", [0])
    cmap = initial_map(
        placement, [ShardInfo(0, "a", ("b",), ("b",), 1)], [NodeInfo(n, address(n), 1) for n in "ab"]
    )
    live = {n: Registration(f"{n}_0000000001", 1, address(n), 1) for n in "ab"}
    request = InSyncChange(5, 1, "c", [], ["d"], cmap.epoch)  # shard 5 was drained and removed
    decision = next_map(
        cmap, live, Pending({5: request}), Leadership(), OverlordConfig(replicas=1), OVERLORD, 0
    )
    assert decision.map is None
    assert decision.dropped.insync.get(5) is request


# VIOLATION (found by the failover and well-formedness properties, which skip promotions that only
# ``unsafe_failover`` allows for this reason): with ``unsafe_failover`` and no in-sync slave
# answering, ``_choose_new_master`` picks among the repliers that are slaves of the *unfiltered*
# shard, so a slave that answered its position and then died (or restarted, losing its data) can
# be promoted. Reachable: the master dies, the leader asks slaves b and c (neither in sync), b
# answers, dies, then c answers; the failover is ready and b has the higher position. The map then
# names a dead master (or a restarted process's old incarnation), and the shard stays unavailable
# until yet another failover. Expected: c (the live slave that answered) is promoted.
def test_unsafe_failover_never_promotes_a_dead_slave() -> None:
    placement = make_placement("modulo", [0])
    cmap = initial_map(
        placement, [ShardInfo(0, "a", ("b", "c"), (), 1)], [NodeInfo(n, address(n), 1) for n in "abc"]
    )
    live = {"c": Registration("c_0000000001", 1, address("c"), 1)}  # a and b are gone
    failover = Failover(0, "a", 0, {"b", "c"}, set(), 1, {"b": (1, 9), "c": (1, 5)}, request_id=1)
    config = OverlordConfig(replicas=1, unsafe_failover=True)
    decision = next_map(cmap, live, Pending(), Leadership({0: failover}), config, OVERLORD, 100)
    assert decision.map is not None
    # Actual: master "b", which is not registered.
    assert decision.map.shards[0].master == "c"


# VIOLATION (found by the failover property, which skips failovers of shards no longer in the
# map for this reason): a failover is forgotten only when its shard gets a live master (or is
# declared stuck), never when the shard leaves the map. Reachable: a draining shard's master sends
# its last move "ready" and dies; the leader sees the death first (failover started, waiting for
# positions), then the report: the move switches, the rebalance finishes and the shard is removed,
# but its failover stays in the decision, and ``Overlord._on_write_result`` keeps it too (it only
# drops failovers whose shard is still in the map). So the leader keeps the failover forever, and
# its ``failover:<shard>`` timer re-arms itself and re-queries the retired slaves every
# ``position_query_timeout_ms`` (``Overlord._on_timer``). Expected: no failover for shard 0.
def test_failover_of_a_removed_shard_is_forgotten() -> None:
    placement = make_placement("modulo", [0, 1])
    target = placement.without_shard(0)
    moves = tuple(MoveInfo(m.source, m.target, MOVE_COPYING, 1, 1, 1) for m in plan(placement, target))
    cmap = initial_map(
        placement,
        [ShardInfo(0, "a", ("b",), ("b",), 1), ShardInfo(1, "c", ("d",), ("d",), 1)],
        [NodeInfo(n, address(n), 1) for n in "abcd"],
    )
    cmap = cmap.successor(rebalance=Rebalance(2, target, moves, "remove shard 0"), draining=(0,))
    live = {n: Registration(f"{n}_0000000001", 1, address(n), 1) for n in "bcd"}  # a died
    report = MoveReport("a", 2, 0, 1, 1, 1, "ready", 5, 50, 1, 2, 10, 1)
    failover = Failover(0, "a", 0, {"b"}, {"b"}, 1, request_id=1)  # waiting for b's position
    memory = Leadership({0: failover}, {(2, 0, 1): report})
    decision = next_map(cmap, live, Pending(), memory, OverlordConfig(replicas=1), OVERLORD, 100)
    assert decision.map is not None and 0 not in decision.map.shards  # drained and removed
    # Actual: {0: Failover(shard_id=0, ...)}.
    assert 0 not in decision.failovers
