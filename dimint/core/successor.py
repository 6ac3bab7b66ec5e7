"""The next cluster map: a pure function of the current one, who is alive, and what was asked.

Theory of operation
-------------------
The Overlord leader never edits the map piecemeal. On any change it calls ``next_map`` with the map
it last read, the live registrations, the requests waiting for a map (in-sync changes, drains, new
shards) and what it remembers between maps (failovers in progress, move reports and progress), and
writes the map it returns in one conditional write. ``next_map`` changes none of its inputs: it
returns a ``Decision`` with the map (or None when the current one already matches reality), the
effects to run now (traces, position queries and their timers), the leader's memory afterwards,
and which requests the map took in (``used``: dropped once the write lands, kept if it fails) and
which can never apply (``dropped``: dropped at once). So it can be called twice, or a thousand
times from a property test, and the queues only shrink for a map that exists.

What a decision does, shard by shard: dead or restarted slaves leave (a restarted one lost its
data), in-sync changes from the current master of the current epoch apply, and a shard whose master
is dead or restarted fails over: the live slaves are asked for their log positions and, once every
live in-sync slave answered (or the query timed out), the one with the highest ``(last_epoch,
applied_seq)`` is promoted under a new shard epoch. If no in-sync slave answers, the shard stays
without a master rather than lose acknowledged writes (unless ``unsafe_failover``). Then spares fill
missing slave slots, and rebalancing advances by one step (``_rebalance_step``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dimint.core.clustermap import (
    MOVE_COPYING,
    MOVE_PENDING,
    MOVE_SWITCHED,
    ClusterMap,
    MoveInfo,
    NodeInfo,
    Rebalance,
    ShardInfo,
)
from dimint.core.effects import Effect, Send, SetTimer, Trace
from dimint.core.errors import InvariantViolation
from dimint.core.placement import Placement, plan
from dimint.core.protocol import InSyncChange, MoveReport, PositionQuery

__all__ = [
    "Decision",
    "Failover",
    "Leadership",
    "OverlordTimer",
    "Pending",
    "Registration",
    "failover_timer",
    "next_map",
    "usable_spares",
]


class OverlordTimer(enum.StrEnum):
    """The Overlord's named timers; a failover's timer carries its shard (``failover_timer``).

    They live here rather than in ``overlord`` because ``next_map`` sets the failover ones.
    """

    RECONCILE = "reconcile"  # the periodic reconcile: list nodes, read the map, call next_map
    PROXY = "proxy"  # the oldest proxied client request's deadline
    FAILOVER = "failover"  # a shard's position query timed out: ask the silent slaves again


def failover_timer(shard_id: int) -> str:
    """The timer key of one shard's failover (``failover:<shard id>``)."""
    return f"{OverlordTimer.FAILOVER}:{shard_id}"


MoveId = tuple[int, int, int]  # (rebalance_id, source, target)
AttemptId = tuple[int, int, int, int]  # (rebalance_id, source, target, attempt)


@dataclass(slots=True)
class Registration:
    """A node's current registration znode, and its payload once read."""

    znode: str
    seq: int
    address: str | None = None
    incarnation: int | None = None


@dataclass(slots=True)
class Failover:
    """A shard whose master died: whom the leader asked, and the positions they reported."""

    shard_id: int
    old_master: str | None
    started_ms: int
    asked: set[str]  # live slaves queried
    must_hear: set[str]  # live in-sync slaves: every one must answer (or die) before we choose
    shard_epoch: int = 0
    replies: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (last_epoch, seq)
    request_id: int = 0
    done: bool = False
    timed_out: bool = False

    def ready(self, alive: set[str]) -> bool:
        """Every live in-sync slave answered; the others only count after the query timed out."""
        waiting = {n for n in self.must_hear if n in alive} - set(self.replies)
        if waiting:
            return False
        return self.timed_out or set(self.replies) >= {n for n in self.asked if n in alive}

    def copy(self) -> Failover:
        return replace(self, asked=set(self.asked), must_hear=set(self.must_hear), replies=dict(self.replies))


@dataclass(frozen=True, slots=True)
class Pending:
    """Requests waiting for a map: in-sync changes by shard, drains by shard id, new shards asked."""

    insync: Mapping[int, InSyncChange] = field(default_factory=dict)
    drains: frozenset[int] = frozenset()
    grows: int = 0

    @property
    def empty(self) -> bool:
        return not self.insync and not self.drains and not self.grows


@dataclass(frozen=True, slots=True)
class Leadership:
    """What the leader remembers between maps (nothing of it is in the map)."""

    failovers: Mapping[int, Failover] = field(default_factory=dict)
    move_reports: Mapping[MoveId, MoveReport] = field(default_factory=dict)
    move_progress: Mapping[AttemptId, tuple[int, int]] = field(default_factory=dict)
    query_seq: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``next_map`` decided; see the module docstring."""

    map: ClusterMap | None
    effects: tuple[Effect, ...]
    events: tuple[dict[str, Any], ...]
    failovers: dict[int, Failover]
    move_progress: dict[AttemptId, tuple[int, int]]
    query_seq: int
    used: Pending
    dropped: Pending


@dataclass(slots=True)
class _Work:
    """The scratch state of one decision: copies of the inputs it may change, and what it emits."""

    cmap: ClusterMap
    config: Any  # OverlordConfig (kept untyped here: the Overlord module imports this one)
    overlord_id: str
    now_ms: int
    move_reports: Mapping[MoveId, MoveReport]
    failovers: dict[int, Failover]
    move_progress: dict[AttemptId, tuple[int, int]]
    query_seq: int
    out: list[Effect] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append({"time_ms": self.now_ms, "event": kind, **fields})


def usable_spares(cmap: ClusterMap, live: Mapping[str, Registration]) -> list[str]:
    """Live nodes the map gives no role and that are not retired under their current incarnation."""
    serving = {m for s in cmap.shards.values() for m in s.members}
    return sorted(
        n
        for n in live
        if n not in serving and not (n in cmap.retired and live[n].incarnation == cmap.retired[n])
    )


def next_map(
    cmap: ClusterMap,
    live: Mapping[str, Registration],
    pending: Pending,
    memory: Leadership,
    config: Any,
    overlord_id: str,
    now_ms: int,
) -> Decision:
    """The next map, or None when the current one already matches reality (see the module docstring)."""
    work = _Work(
        cmap,
        config,
        overlord_id,
        now_ms,
        memory.move_reports,
        {shard_id: failover.copy() for shard_id, failover in memory.failovers.items()},
        dict(memory.move_progress),
        memory.query_seq,
    )
    nodes = dict(cmap.nodes)
    shards = dict(cmap.shards)
    # A node whose registration carries another incarnation than the map restarted with empty
    # memory: it loses whatever role the map gives its predecessor (a master fails over at
    # once, without waiting for the old session to expire) and comes back as a fresh node.
    restarted = {
        n
        for n, r in live.items()
        if n in nodes and r.incarnation is not None and nodes[n].incarnation != r.incarnation
    }
    alive = {n for n in live if n not in restarted}
    insync_used: dict[int, InSyncChange] = {}
    # A request for a shard the map no longer has (a drained shard's master, late) can never apply.
    insync_dropped: dict[int, InSyncChange] = {
        shard_id: request for shard_id, request in pending.insync.items() if shard_id not in shards
    }

    for shard_id, shard in sorted(shards.items()):
        master, slaves, in_sync, epoch = (
            shard.master,
            list(shard.slaves),
            list(shard.in_sync),
            shard.shard_epoch,
        )
        # Dead or restarted slaves leave the shard: a restarted one lost its data.
        slaves = [s for s in slaves if s in alive]
        in_sync = [s for s in in_sync if s in slaves]
        # In-sync changes requested by the current master of this epoch.
        request = pending.insync.get(shard_id)
        if request is not None:
            if (
                request.shard_epoch == epoch
                and request.master == master
                and master in alive
                and request.map_epoch == cmap.epoch
            ):
                in_sync = [s for s in in_sync if s not in request.remove]
                in_sync += [s for s in request.add if s in slaves and s not in in_sync]
                insync_used[shard_id] = request
            else:
                insync_dropped[shard_id] = request
        if master is not None and master in alive:
            # A live master ends any earlier failover of the shard, even one whose promotion
            # write we never saw succeed (CONNECTION_LOSS): its positions are stale by now.
            work.failovers.pop(shard_id, None)
        if master is None or master not in alive:
            master, slaves, in_sync, epoch = _fail_over(work, shard, master, slaves, in_sync, epoch, alive)
        shards[shard_id] = ShardInfo(shard_id, master, tuple(slaves), tuple(in_sync), epoch)

    # Forget nodes that are gone and serve nothing; (re)register live ones that serve nothing
    # under their current incarnation; fill missing slave slots with spares.
    serving = {m for s in shards.values() for m in s.members}
    for node_id in list(nodes):
        if node_id not in live and node_id not in serving:
            del nodes[node_id]
    for node_id in sorted(live):
        registration = live[node_id]
        info = NodeInfo(node_id, registration.address or node_id, registration.incarnation or 0)
        if node_id not in nodes or (node_id not in serving and nodes[node_id] != info):
            nodes[node_id] = info
    retired = {
        n: inc
        for n, inc in cmap.retired.items()
        if n in live and (live[n].incarnation is None or live[n].incarnation == inc)
    }
    spares = sorted(n for n in live if n not in serving and n not in retired)
    for shard_id in sorted(shards):
        shard = shards[shard_id]
        while spares and len(shard.slaves) < config.replicas and shard.master is not None:
            shard = replace(shard, slaves=(*shard.slaves, spares.pop(0)))
        shards[shard_id] = shard

    changes, drains_used, drains_dropped = _rebalance_step(work, shards, nodes, spares, retired, pending)
    for shard_id in [s for s in work.failovers if s not in shards]:
        # The shard left the map (drained while its master was gone): nothing is left to fail over,
        # and keeping the record would query its retired slaves for ever.
        del work.failovers[shard_id]
    unchanged = (
        shards == dict(cmap.shards)
        and nodes == dict(cmap.nodes)
        and all(getattr(cmap, name) == value for name, value in changes.items())
    )
    new_map = None
    if not unchanged:
        try:
            new_map = cmap.successor(shards=shards, nodes=nodes, **changes)
        except Exception as exc:  # a successor that fails validation is a bug in this function
            raise InvariantViolation(f"overlord built an invalid map: {exc}") from exc
    used = Pending(insync_used, drains_used, pending.grows)
    dropped = Pending(insync_dropped, drains_dropped, 0)
    if new_map is None:
        # Nothing to write: what would have gone into it changed nothing, so it is done with.
        dropped = Pending({**insync_dropped, **insync_used}, drains_dropped | drains_used, 0)
        used = Pending()
    return Decision(
        new_map,
        tuple(work.out),
        tuple(work.events),
        work.failovers,
        work.move_progress,
        work.query_seq,
        used,
        dropped,
    )


def _fail_over(
    work: _Work,
    shard: ShardInfo,
    master: str | None,
    slaves: list[str],
    in_sync: list[str],
    epoch: int,
    alive: set[str],
) -> tuple[str | None, list[str], list[str], int]:
    """Advance the failover of a shard whose master is gone; the shard's new (master, slaves,
    in-sync, epoch), which is the old one until the positions are in."""
    shard_id = shard.shard_id
    failover = work.failovers.get(shard_id)
    if failover is None or (failover.done and failover.old_master != master):
        _start_failover(work, replace(shard, slaves=tuple(slaves), in_sync=tuple(in_sync)), alive)
        failover = work.failovers[shard_id]
    if failover.done or not failover.ready(alive):
        return master, slaves, in_sync, epoch
    # The live slaves only: the unsafe pool must not pick one that died after answering.
    chosen = _choose_new_master(work, replace(shard, slaves=tuple(slaves), in_sync=tuple(in_sync)), failover)
    failover.done = True
    if chosen is not None:
        work.out.append(
            Trace(
                "failover_promote",
                {
                    "overlord": work.overlord_id,
                    "shard": shard_id,
                    "old_master": master,
                    "new_master": chosen,
                    "position": list(failover.replies[chosen]),
                    "decided_after_ms": work.now_ms - failover.started_ms,
                },
            )
        )
        work.event(
            "failover",
            shard=shard_id,
            old_master=master,
            new_master=chosen,
            decided_after_ms=work.now_ms - failover.started_ms,
        )
        # Only slaves at the chosen one's position stay in sync: one that answered a lower position
        # lacks writes the old master may have acknowledged, and a second failover before it caught
        # up would promote it and lose them. The new master re-admits it once it holds them.
        position = failover.replies[chosen]
        kept = [s for s in in_sync if s != chosen and failover.replies.get(s) == position]
        return chosen, [s for s in slaves if s != chosen], kept, epoch + 1
    work.out.append(
        Trace(
            "failover_stuck",
            {"overlord": work.overlord_id, "shard": shard_id, "why": "no in-sync slave answered"},
        )
    )
    del work.failovers[shard_id]
    if master is not None:
        return None, slaves, in_sync, epoch + 1
    return master, slaves, in_sync, epoch


def _start_failover(work: _Work, shard: ShardInfo, live: set[str]) -> None:
    candidates = [s for s in shard.slaves if s in live]
    work.query_seq += 1
    failover = Failover(
        shard.shard_id,
        shard.master,
        work.now_ms,
        set(candidates),
        {s for s in shard.in_sync if s in live},
        shard.shard_epoch,
        request_id=work.query_seq,
    )
    work.failovers[shard.shard_id] = failover
    work.out.append(
        Trace(
            "failover_started",
            {
                "overlord": work.overlord_id,
                "shard": shard.shard_id,
                "old_master": shard.master,
                "candidates": sorted(candidates),
            },
        )
    )
    work.event("failover_started", shard=shard.shard_id, old_master=shard.master)
    query = PositionQuery(failover.request_id, shard.shard_id, shard.shard_epoch)
    for node_id in sorted(candidates):
        work.out.append(Send(work.cmap.nodes[node_id].address, query))
    work.out.append(
        SetTimer(failover_timer(shard.shard_id), work.now_ms + work.config.position_query_timeout_ms)
    )


def _choose_new_master(work: _Work, shard: ShardInfo, failover: Failover) -> str | None:
    in_sync = [n for n in shard.in_sync if n in failover.replies]
    pool = in_sync or (
        [n for n in failover.replies if n in shard.slaves] if work.config.unsafe_failover else []
    )
    if not pool:
        return None
    return max(pool, key=lambda n: (failover.replies[n], n))


def _rebalance_step(
    work: _Work,
    shards: dict[int, ShardInfo],
    nodes: dict[str, NodeInfo],
    spares: list[str],
    retired: dict[str, int],
    pending: Pending,
) -> tuple[dict[str, Any], frozenset[int], frozenset[int]]:
    """Advance rebalancing by one map: start, progress, switch, restart or finish moves.

    Mutates ``shards`` (a new shard, a drained one leaving) and returns the other map fields, with
    the drain requests the map takes in and those that can never apply.
    """
    cmap, config = work.cmap, work.config
    placement: Placement = cmap.placement
    rebalance = cmap.rebalance
    extra = dict(cmap.extra)
    draining = [d for d in cmap.draining if d in shards]
    already = set(draining)
    drains_used = frozenset(d for d in pending.drains if d in shards and d not in already)
    drains_dropped = frozenset(pending.drains) - drains_used
    for shard_id in sorted(drains_used):
        draining.append(shard_id)
    if pending.grows:
        extra["grow_requests"] = int(extra.get("grow_requests", 0)) + pending.grows
    next_shard_id = cmap.next_shard_id

    if rebalance is not None:
        rebalance = _advance_moves(work, rebalance, shards)
        if rebalance.done:
            placement = rebalance.target
            for shard_id in [d for d in draining if d not in placement.shard_ids]:
                gone = _remove_drained(shard_id, draining, shards, nodes, retired)
                next_shard_id = max(next_shard_id, shard_id + 1)  # ids are never reused
                work.event("shard_removed", shard=shard_id, retired=list(gone.members))
            work.out.append(
                Trace(
                    "rebalance_finished",
                    {
                        "overlord": work.overlord_id,
                        "rebalance": rebalance.rebalance_id,
                        "reason": rebalance.reason,
                        "shards": list(placement.shard_ids),
                    },
                )
            )
            work.event("rebalance_finished", rebalance=rebalance.rebalance_id, reason=rebalance.reason)
            rebalance = None

    if rebalance is None:
        target: Placement | None = None
        reason = ""
        for shard_id in list(draining):
            if shard_id not in placement.shard_ids:
                # Owns nothing (never did, or already drained): it can leave at once.
                _remove_drained(shard_id, draining, shards, nodes, retired)
                next_shard_id = max(next_shard_id, shard_id + 1)
                continue
            if len(placement.shard_ids) > 1:
                target, reason = placement.without_shard(shard_id), f"remove shard {shard_id}"
            else:
                draining.remove(shard_id)  # the last owner cannot leave; the admin was told
            break
        requested = int(extra.get("grow_requests", 0))
        grow = config.join_policy == "fill-then-grow" or requested > 0
        needed = 1 + config.replicas
        if target is None and grow and len(spares) >= needed:
            new_id = max(next_shard_id, max(shards, default=-1) + 1)
            next_shard_id = new_id + 1
            members = [spares.pop(0) for _ in range(needed)]
            # A brand-new shard is empty, so its slaves are trivially in sync.
            shards[new_id] = ShardInfo(new_id, members[0], tuple(members[1:]), tuple(members[1:]), 1)
            target, reason = placement.with_shard(new_id), f"add shard {new_id}"
            if requested:
                extra["grow_requests"] = requested - 1
            work.event("shard_added", shard=new_id, members=members)
        if target is not None:
            rebalance_id = cmap.epoch + 1  # the epoch of the map that starts it: unique
            moves = tuple(MoveInfo(m.source, m.target) for m in plan(placement, target))
            rebalance = Rebalance(rebalance_id, target, moves, reason)
            work.out.append(
                Trace(
                    "rebalance_started",
                    {
                        "overlord": work.overlord_id,
                        "rebalance": rebalance_id,
                        "reason": reason,
                        "moves": [list(m.pair) for m in moves],
                    },
                )
            )
            work.event("rebalance_started", rebalance=rebalance_id, reason=reason, moves=len(moves))
            rebalance = _advance_moves(work, rebalance, shards)
    if not extra.get("grow_requests"):
        extra.pop("grow_requests", None)
    changes = {
        "placement": placement,
        "rebalance": rebalance,
        "draining": tuple(draining),
        "retired": retired,
        "next_shard_id": next_shard_id,
        "extra": extra,
    }
    return changes, drains_used, drains_dropped


def _advance_moves(work: _Work, rebalance: Rebalance, shards: dict[int, ShardInfo]) -> Rebalance:
    """Switch ready moves, restart broken or stalled ones, start pending ones."""
    moves = list(rebalance.moves)
    rid = rebalance.rebalance_id
    for index, move in enumerate(moves):
        if move.state != MOVE_COPYING:
            continue
        source, target = shards.get(move.source), shards.get(move.target)
        if source is None or target is None or source.master is None or target.master is None:
            continue  # wait for failover; the epochs will differ and the move restarts
        epochs = (source.shard_epoch, target.shard_epoch)
        report = work.move_reports.get((rid, move.source, move.target))
        if epochs != (move.source_epoch, move.target_epoch):
            moves[index] = _restart(work, rid, move, epochs, "a shard changed master")
        elif (
            report is not None
            and report.attempt == move.attempt
            and report.state == "ready"
            and report.shard_epoch == move.source_epoch
        ):
            moves[index] = replace(move, state=MOVE_SWITCHED)
            fields = {
                "rebalance": rid,
                "source": move.source,
                "target": move.target,
                "attempt": move.attempt,
                "keys": report.keys,
                "bytes": report.bytes,
                "deltas": report.deltas,
                "copy_ms": report.elapsed_ms,
                "frozen_ms": report.frozen_ms,
            }
            work.out.append(Trace("move_switched", {"overlord": work.overlord_id, **fields}))
            work.event("move_switched", **fields)
        else:
            key = (rid, move.source, move.target, move.attempt)
            seen = work.move_progress.setdefault(key, (-1, work.now_ms))
            if work.now_ms - seen[1] > work.config.move_stall_ms:
                moves[index] = _restart(work, rid, move, epochs, "no progress")
    copying = sum(1 for m in moves if m.state == MOVE_COPYING)
    for index, move in enumerate(moves):
        if copying >= work.config.parallel_moves:
            break
        if move.state != MOVE_PENDING:
            continue
        source, target = shards.get(move.source), shards.get(move.target)
        if source is None or target is None or source.master is None or target.master is None:
            continue
        moves[index] = _restart(work, rid, move, (source.shard_epoch, target.shard_epoch), "start")
        copying += 1
    return replace(rebalance, moves=tuple(moves))


def _restart(work: _Work, rebalance_id: int, move: MoveInfo, epochs: tuple[int, int], why: str) -> MoveInfo:
    new = replace(
        move, state=MOVE_COPYING, attempt=move.attempt + 1, source_epoch=epochs[0], target_epoch=epochs[1]
    )
    work.out.append(
        Trace(
            "move_attempt",
            {
                "overlord": work.overlord_id,
                "rebalance": rebalance_id,
                "source": move.source,
                "target": move.target,
                "attempt": new.attempt,
                "why": why,
            },
        )
    )
    return new


def _remove_drained(
    shard_id: int,
    draining: list[int],
    shards: dict[int, ShardInfo],
    nodes: dict[str, NodeInfo],
    retired: dict[str, int],
) -> ShardInfo:
    """Take a drained shard out of the map and retire its processes' current incarnations."""
    draining.remove(shard_id)
    gone = shards.pop(shard_id)
    for member in gone.members:
        if member in nodes:
            retired[member] = nodes[member].incarnation
    return gone
