"""Online rebalancing: shards join and leave under load, faults and leader crashes; nothing is lost.

What this proves, and how: whole simulated clusters (see ``dimint.sim.runner``) run joins and
graceful drains while clients read and write. Every run's history is checked (no acknowledged write
lost, strong reads linearizable), every run must converge with no rebalance left in progress, and
afterwards every master must hold exactly the keys its shard owns (no key unowned, none on two
masters). Runs with a preloaded, read-only key set also check that each move carried exactly the
keys ``plan(old, new)`` assigns it, for every placement kind, including ranges of 0, 1, 2, odd and
even key counts (where the original system misrouted keys). Hypothesis draws interleavings of joins,
leaves, crashes and partitions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimint.core.clustermap import (
    MOVE_PENDING,
    MOVE_SWITCHED,
    MoveInfo,
    NodeInfo,
    Rebalance,
    ShardInfo,
    initial_map,
)
from dimint.core.effects import Receive
from dimint.core.errors import ErrorCode
from dimint.core.node import DataNode
from dimint.core.placement import make_placement, plan
from dimint.core.protocol import AdminReply, AdminRequest, ErrorReply
from dimint.sim.cluster import SimCluster
from dimint.sim.runner import RunResult, _run, run_scenario
from dimint.sim.scenario import FaultEvent, MembershipEvent, Scenario
from dimint.sim.sweep import sweep
from dimint.sim.trace import Tracer

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("modulo", "ring", "rendezvous", "jump", "bounded")
WORKERS = min(2, os.cpu_count() or 1)


def _scenario(**cluster: Any) -> Scenario:
    """A fault-free, read-only cluster of 3 shards: keys only move when shards join or leave."""
    membership = cluster.pop("membership", ())
    faults = cluster.pop("faults", None)
    workload = cluster.pop("workload", {"clients": 2, "keys": 20, "read_fraction": 1.0, "think_ms": 20.0})
    base = Scenario(name="rebalance-test", duration_ms=2500, settle_ms=1500, liveness_timeout_ms=20_000)
    changes: dict[str, Any] = {"cluster": {"session_timeout_ms": 800, **cluster}, "workload": workload}
    if faults is not None:
        changes["faults"] = faults
    return base.with_changes(membership=tuple(membership), **changes)


def _run_kept(scenario: Scenario, seed: int = 1) -> tuple[RunResult, SimCluster]:
    cluster = SimCluster(scenario, seed, Tracer(keep_events=0))
    return _run(cluster, scenario, seed, None), cluster


def _assert_ok(result: RunResult) -> None:
    assert result.ok, result.failures
    assert result.summary["lost_acknowledged_writes"] == 0


def _master_store_keys(cluster: SimCluster) -> dict[int, set[bytes]]:
    cmap = cluster.current_map()
    assert cmap is not None
    out = {}
    for shard_id, shard in cmap.shards.items():
        machine = cluster.hosts[shard.master].machine
        assert isinstance(machine, DataNode)
        out[shard_id] = set(machine.store.dump(int(cluster.env.now)))
    return out


# ------------------------------------------------------------------------------------------ map


def test_ownership_passes_move_by_move_and_round_trips() -> None:
    old = make_placement("ring", [0, 1, 2])
    new = old.with_shard(3)
    moves = tuple(MoveInfo(m.source, m.target) for m in plan(old, new))
    shards = [ShardInfo(i, f"n{i}") for i in range(4)]
    cmap = initial_map(old, shards, [NodeInfo(f"n{i}", f"n{i}") for i in range(4)])
    keys = [f"key-{i}".encode() for i in range(3000)]
    pending = cmap.successor(rebalance=Rebalance(2, new, moves))
    assert [pending.owner(k) for k in keys] == [old.owner(k) for k in keys]
    first = moves[0]
    one = pending.successor(rebalance=pending.rebalance.with_move(MoveInfo(first.source, 3, MOVE_SWITCHED)))
    for key in keys:
        expected = 3 if (old.owner(key), new.owner(key)) == (first.source, 3) else old.owner(key)
        assert one.owner(key) == expected
    assert type(one).from_bytes(one.to_bytes()) == one
    every = one.successor(
        rebalance=Rebalance(2, new, tuple(MoveInfo(m.source, 3, MOVE_SWITCHED) for m in moves))
    )
    assert [every.owner(k) for k in keys] == [new.owner(k) for k in keys]
    assert every.rebalance is not None and every.rebalance.done
    assert MOVE_PENDING in {m.state for m in pending.rebalance.moves}


# ------------------------------------------------------------------------ exact moves, all kinds


@pytest.mark.parametrize("kind", KINDS)
def test_join_then_leave_moves_exactly_the_planned_keys(kind: str) -> None:
    keys = 1500
    scenario = _scenario(
        placement=kind,
        preload_keys=keys,
        membership=(
            MembershipEvent(1700, "add_shard"),
            MembershipEvent(1800, "remove_shard", shard=1),
        ),
    )
    result, cluster = _run_kept(scenario)
    _assert_ok(result)
    names = [f"pre:{i}".encode() for i in range(keys)]
    p0 = make_placement(kind, [0, 1, 2])
    p1 = p0.with_shard(3)
    p2 = p1.without_shard(1)
    join, leave = result.summary["rebalances"]
    for rebalance, old, new in ((join, p0, p1), (leave, p1, p2)):
        expected = {}
        for name in names:
            pair = (old.owner(name), new.owner(name))
            if pair[0] != pair[1]:
                expected[pair] = expected.get(pair, 0) + 1
        moved = {(m["source"], m["target"]): m["keys"] for m in rebalance["moves"] if m["keys"]}
        assert moved == expected, rebalance["reason"]
    cmap = cluster.current_map()
    assert cmap is not None and cmap.rebalance is None and sorted(cmap.placement.shard_ids) == [0, 2, 3]
    # The removed shard handed every key to the shard the new placement names, and no one else has it.
    stores = _master_store_keys(cluster)
    for name in names:
        owner = cmap.owner(name)
        assert name in stores[owner]
        assert sum(name in held for held in stores.values()) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keys", [0, 1, 2, 3, 4])
def test_tiny_ranges_are_handed_over_whole(kind: str, keys: int) -> None:
    scenario = _scenario(
        placement=kind,
        preload_keys=keys,
        membership=(MembershipEvent(1700, "remove_shard", shard=0),),
    )
    result, cluster = _run_kept(scenario)
    _assert_ok(result)
    cmap = cluster.current_map()
    assert cmap is not None and 0 not in cmap.shards
    stores = _master_store_keys(cluster)
    new = make_placement(kind, [0, 1, 2]).without_shard(0)
    for i in range(keys):
        name = f"pre:{i}".encode()
        assert name in stores[new.owner(name)]


def test_a_very_large_value_moves_without_stalling_its_shard() -> None:
    scenario = _scenario(
        preload_keys=200,
        workload={"clients": 4, "keys": 40, "read_fraction": 0.5, "think_ms": 5.0},
        membership=(MembershipEvent(1700, "add_shard"),),
    )
    cluster = SimCluster(scenario, 3, Tracer(keep_events=0))
    big = b"B" * (6 * 1024 * 1024)
    original_preload = cluster.preload

    def preload_with_big_value() -> int:
        count = original_preload()
        cmap = cluster.current_map()
        assert cmap is not None
        # A key the new shard will own, so the join must move it.
        name = next(
            f"big:{i}".encode() for i in range(10_000) if cmap.placement.with_shard(3).owner(f"big:{i}") == 3
        )
        for member in cmap.shard_of(name).members:
            machine = cluster.hosts[member].machine
            assert isinstance(machine, DataNode)
            machine.store.restore([(name, "string", big, None)])
        cluster.big_key = name  # type: ignore[attr-defined]
        return count

    cluster.preload = preload_with_big_value  # type: ignore[method-assign]
    result = _run(cluster, scenario, 3, None)
    _assert_ok(result)
    stores = _master_store_keys(cluster)
    assert cluster.big_key in stores[3]  # type: ignore[attr-defined]
    master = cluster.hosts[cluster.current_map().shards[3].master].machine  # type: ignore[union-attr]
    assert master.store.get(cluster.big_key, now_ms=0) == big  # type: ignore[attr-defined,union-attr]
    (join,) = result.summary["rebalances"]
    assert all(m["during"]["ops"] >= 0 for m in join["moves"])
    assert join["during"]["ops"] > 0  # clients kept completing operations during the move


# ----------------------------------------------------------------------------- crashes mid-move


def _slow_move_scenario(faults: list[FaultEvent], **extra: Any) -> Scenario:
    """Big enough and rate-limited so that a move takes about a simulated second."""
    return _scenario(
        preload_keys=6000,
        migrate_keys_per_s=2500,
        migrate_batch_keys=100,
        workload={"clients": 4, "keys": 40, "read_fraction": 0.5, "think_ms": 8.0},
        membership=(MembershipEvent(1700, "add_shard"),),
        faults={"mix": "schedule", "schedule": tuple(faults)},
        **extra,
    )


def test_the_leader_crashing_mid_migration_does_not_stop_it() -> None:
    scenario = _slow_move_scenario([FaultEvent(2200, "crash_overlord", "leader", 3000)])
    result, cluster = _run_kept(scenario)
    _assert_ok(result)
    switched_by = {e.fields["overlord"] for e in cluster.rebalance_events if e.event == "move_switched"}
    assert len(switched_by) >= 2, "a second leader must have finished what the first started"
    (join,) = result.summary["rebalances"]
    assert join["keys_moved"] > 1000


@pytest.mark.parametrize("target", ["master:0", "master:3", "slave:0"])
@pytest.mark.parametrize("mode", ["semi-sync", "sync"])
def test_source_or_target_crashing_mid_move_restarts_it_cleanly(target: str, mode: str) -> None:
    scenario = _slow_move_scenario([FaultEvent(2000, "crash", target, 800)], replication_mode=mode)
    result, cluster = _run_kept(scenario)
    _assert_ok(result)
    cmap = cluster.current_map()
    assert cmap is not None and cmap.rebalance is None and 3 in cmap.placement.shard_ids


def test_joins_and_leaves_in_quick_succession_converge_to_the_target() -> None:
    scenario = _scenario(
        preload_keys=800,
        workload={"clients": 4, "keys": 40, "read_fraction": 0.5, "think_ms": 8.0},
        membership=(
            MembershipEvent(1600, "add_shard"),
            MembershipEvent(1650, "add_shard"),
            MembershipEvent(1700, "remove_shard", shard=0),
            MembershipEvent(1750, "remove_shard", shard=1),
        ),
    )
    result, cluster = _run_kept(scenario)
    _assert_ok(result)
    cmap = cluster.current_map()
    assert cmap is not None
    assert sorted(cmap.placement.shard_ids) == [2, 3, 4]
    assert sorted(cmap.shards) == [2, 3, 4] and not cmap.draining and cmap.rebalance is None
    assert len(result.summary["rebalances"]) == 4
    # The drained shards' processes are retired spares, not silently reused.
    assert len(cmap.retired) == 6


def test_fill_only_policy_grows_only_on_request() -> None:
    idle = _scenario(join_policy="fill-only", spare_nodes=3)
    result, cluster = _run_kept(idle)
    _assert_ok(result)
    cmap = cluster.current_map()
    assert cmap is not None and sorted(cmap.shards) == [0, 1, 2] and len(cmap.spare_nodes()) == 3
    grown = _scenario(join_policy="fill-only", membership=(MembershipEvent(1600, "add_shard"),))
    result, cluster = _run_kept(grown)
    _assert_ok(result)
    cmap = cluster.current_map()
    assert cmap is not None and sorted(cmap.placement.shard_ids) == [0, 1, 2, 3]


def test_fill_then_grow_waits_for_a_whole_shard_of_spares() -> None:
    # Two spares are fewer than a shard needs (1 + 2 replicas): they wait as spares, ready to fill
    # the slave slot of a failed node, and no half-replicated shard forms.
    scenario = _scenario(replicas=2, spare_nodes=2)
    result, cluster = _run_kept(scenario)
    _assert_ok(result)
    cmap = cluster.current_map()
    assert cmap is not None and sorted(cmap.shards) == [0, 1, 2] and len(cmap.spare_nodes()) == 2


# ------------------------------------------------------------------------------- admin requests


def test_admin_requests_are_validated_and_answered() -> None:
    scenario = _scenario(shards=1, replicas=1)
    cluster = SimCluster(scenario, 1, Tracer(keep_events=0))
    replies: list[Any] = []
    cluster.network.register("probe", lambda source, message: replies.append(message))
    cluster.start()
    cluster.env.run(until=1500)
    leader = cluster.leader_address()
    follower = next(a for a in cluster.overlord_addresses if a != leader)
    assert leader is not None
    cases = [
        (leader, AdminRequest(1, "remove_shard", {"shard_id": 99}), ErrorCode.BAD_ARGUMENT),
        (leader, AdminRequest(2, "remove_shard", {"shard_id": "0"}), ErrorCode.BAD_ARGUMENT),
        (leader, AdminRequest(3, "remove_shard", {"shard_id": 0}), ErrorCode.BAD_ARGUMENT),  # the last
        (leader, AdminRequest(4, "add_shard", {}), ErrorCode.UNAVAILABLE),  # no spares
        (leader, AdminRequest(5, "add_shard", {"n": 1}), ErrorCode.BAD_ARGUMENT),
        (leader, AdminRequest(6, "reboot", {}), ErrorCode.BAD_ARGUMENT),
        (follower, AdminRequest(7, "add_shard", {}), ErrorCode.NOT_MASTER),
    ]
    before = cluster.current_map()
    for address, request, _ in cases:
        cluster.hosts[address].inject(Receive("probe", request))
    cluster.env.run(until=1700)
    codes = {r.request_id: r.code for r in replies if isinstance(r, ErrorReply)}
    assert codes == {request.request_id: code for _, request, code in cases}
    assert cluster.current_map() == before  # nothing changed
    cluster.hosts[leader].inject(Receive("probe", AdminRequest(8, "status", {})))
    cluster.env.run(until=1800)
    (status,) = [r for r in replies if isinstance(r, AdminReply)]
    assert status.result["rebalance"] is None and status.result["placement_shards"] == [0]


# --------------------------------------------------------------------- random interleavings


_FAULTS = st.sampled_from(["crash", "pause", "isolate", "partition", "crash_overlord"])
_TARGETS = st.sampled_from(["any-node", "master:0", "master:1", "slave:2", "leader"])


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[tuple[MembershipEvent, ...], tuple[FaultEvent, ...], str]:
    membership = tuple(
        MembershipEvent(
            draw(st.integers(1600, 3600)),
            kind,
            draw(st.sampled_from([-1, 0, 1, 2])) if kind == "remove_shard" else -1,
        )
        for kind in draw(st.lists(st.sampled_from(["add_shard", "remove_shard"]), min_size=1, max_size=3))
    )
    # Faults one after another (at most one failure at a time), each healed before the next.
    faults = []
    at = draw(st.integers(1600, 2200))
    for _ in range(draw(st.integers(0, 3))):
        duration = draw(st.integers(200, 900))
        kind = draw(_FAULTS)
        target = "leader" if kind == "crash_overlord" else draw(_TARGETS.filter(lambda t: t != "leader"))
        if kind == "partition":
            target = draw(st.sampled_from(["n0", "n1,n2", "o0"]))
        faults.append(FaultEvent(at, kind, target, duration))
        at += duration + draw(st.integers(900, 1500))
    mode = draw(st.sampled_from(["semi-sync", "sync"]))
    return membership, tuple(faults), mode


@settings(max_examples=12)
@given(interleavings())
def test_random_joins_leaves_crashes_and_partitions_lose_nothing(
    case: tuple[tuple[MembershipEvent, ...], tuple[FaultEvent, ...], str],
) -> None:
    membership, faults, mode = case
    scenario = _scenario(
        replication_mode=mode,
        preload_keys=300,
        workload={"clients": 4, "keys": 30, "read_fraction": 0.5, "think_ms": 8.0},
        membership=membership,
        faults={"mix": "schedule", "schedule": faults},
    ).with_changes(duration_ms=3500)
    result = run_scenario(scenario, seed=len(faults) + 7 * len(membership))
    _assert_ok(result)


def test_seeded_sweep_of_rebalancing_under_random_faults() -> None:
    scenario = Scenario.load(ROOT / "scenarios" / "rebalance-faults.toml")
    for mode, seeds in (("semi-sync", range(1, 21)), ("sync", range(1, 7))):
        result = sweep(scenario.with_changes(cluster={"replication_mode": mode}), seeds, workers=WORKERS)
        failed = [f"{mode} seed {r['seed']}: {r['failures']}" for r in result.failed]
        assert not failed, "\n".join(failed[:5])
        assert result.totals()["lost_acknowledged_writes"] == 0


def test_parallel_moves_run_together_and_lose_nothing_under_faults() -> None:
    scenario = Scenario.load(ROOT / "scenarios" / "rebalance.toml")
    result = run_scenario(scenario.with_changes(cluster={"parallel_moves": 3}), 2)
    _assert_ok(result)
    join = result.summary["rebalances"][0]
    assert len(join["moves"]) >= 2
    assert len({move["started_ms"] for move in join["moves"]}) == 1  # every move started at once
    faults = Scenario.load(ROOT / "scenarios" / "rebalance-faults.toml")
    swept = sweep(faults.with_changes(cluster={"parallel_moves": 3}), range(1, 9), workers=WORKERS)
    failed = [f"seed {r['seed']}: {r['failures']}" for r in swept.failed]
    assert not failed, "\n".join(failed[:5])
    assert swept.totals()["lost_acknowledged_writes"] == 0


def test_same_seed_same_trace_with_membership_changes() -> None:
    scenario = Scenario.load(ROOT / "scenarios" / "rebalance.toml")
    first = run_scenario(scenario, 5)
    second = run_scenario(scenario, 5)
    assert first.digest == second.digest
    assert first.summary["rebalances"] and first.summary["rebalances"] == second.summary["rebalances"]


def test_scenario_files_validate_membership() -> None:
    from dimint.core.errors import ConfigError

    with pytest.raises(ConfigError, match="kind must be one of"):
        Scenario.from_dict({"membership": [{"at_ms": 1, "kind": "explode"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        Scenario.from_dict({"membership": [{"at_ms": 1, "kind": "add_shard", "nodes": 3}]})
    with pytest.raises(ConfigError, match="needs at_ms and kind"):
        Scenario.from_dict({"membership": [{"kind": "add_shard"}]})
