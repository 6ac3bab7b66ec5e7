"""Whole-cluster runs that would have caught a write applied twice, and the faults that find it.

What this proves, and how:

* The issue's scenario (``scenarios/replays.toml``: hot keys, deletes, weak reads, a network that
  loses, duplicates and reorders, a schedule of partition, isolation, pause, leader crash and
  clog), the same under seed-drawn faults (``hot-keys.toml``) and under shard joins and leaves
  (``replays-rebalance.toml``) pass their checks over many seeds in semi-sync and sync, and no
  write is ever applied twice in async either. Before the dedup table, 3 of 200 seeds of the
  first failed.
* The checker names the bug when it happens: with ``at_most_once = false`` (the research knob) a
  hot, heavily duplicating variant makes writes run twice, and the run fails with "a write
  applied twice (replayed request)" and both log positions from the trace, not with "lost".
* Hypothesis draws the network (loss, duplication, reordering, latency), the key distribution,
  deletes, weak reads, the replication mode and the fault mix together, and every drawn run
  must be linearizable, lose nothing acknowledged and run nothing twice.
* Clients with short deadlines on a network duplicating a quarter of all frames
  (``short-deadlines.toml``) never report a write failed that took effect.
* Overlapping faults each last their own window: a partition that heals no longer ends an
  isolation that is still scheduled, and ``summary.json``'s ``recovered_at_ms`` is the truth.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dimint.core.checker import REPLAYED, lost_acknowledged_writes
from dimint.core.seeding import derive_rng
from dimint.sim.cluster import SimCluster
from dimint.sim.faults import FaultInjector
from dimint.sim.runner import run_scenario
from dimint.sim.scenario import Scenario
from dimint.sim.sweep import sweep
from dimint.sim.trace import Tracer

ROOT = Path(__file__).resolve().parent.parent
REPLAYS = Scenario.load(ROOT / "scenarios" / "replays.toml")
HOT_KEYS = Scenario.load(ROOT / "scenarios" / "hot-keys.toml")
REBALANCE = Scenario.load(ROOT / "scenarios" / "replays-rebalance.toml")
SHORT_DEADLINES = Scenario.load(ROOT / "scenarios" / "short-deadlines.toml")
WORKERS = min(2, os.cpu_count() or 1)


def _assert_clean(scenario: Scenario, seeds: range) -> dict:
    result = sweep(scenario, seeds, workers=WORKERS)
    failed = [f"seed {r['seed']}: {r['failures']}" for r in result.failed]
    assert not failed, "\n".join(failed[:5])
    totals = result.totals()
    assert totals["lost_acknowledged_writes"] == 0 and totals["replayed_writes"] == 0
    assert totals["double_executions"] == 0
    return totals


def test_the_issues_scenario_passes_in_semi_sync_and_sync() -> None:
    totals = _assert_clean(REPLAYS, range(1, 81))
    assert totals["promotions"] > 0 and totals["faults"] == 5 * 80
    _assert_clean(REPLAYS.with_changes(cluster={"replication_mode": "sync"}), range(101, 141))


def test_hot_keys_with_deletes_duplication_and_drawn_faults_pass() -> None:
    totals = _assert_clean(HOT_KEYS, range(1, 81))
    assert totals["faults"] > 80 and totals["promotions"] > 0
    _assert_clean(HOT_KEYS.with_changes(cluster={"replication_mode": "sync"}), range(201, 241))


def test_rebalancing_while_the_network_duplicates_runs_nothing_twice() -> None:
    _assert_clean(REBALANCE, range(1, 31))


def test_clients_that_give_up_fast_on_a_duplicating_network_report_only_what_is_true() -> None:
    """Found by an adversarial review: a copy of an executed write refused as "not enough replicas"
    made its client report failure for a write that took effect (2 of 150 seeds)."""
    _assert_clean(SHORT_DEADLINES, range(1, 31))
    _assert_clean(SHORT_DEADLINES.with_changes(workload={"operation_deadline_ms": 400}), range(101, 121))


def test_async_mode_never_applies_a_write_twice() -> None:
    """Async may lose acknowledged writes on failover (measured, reported); it never replays."""
    scenario = HOT_KEYS.with_changes(cluster={"replication_mode": "async", "min_in_sync": 0})
    result = sweep(scenario, range(301, 331), workers=WORKERS)
    assert sum(r["replayed_writes"] for r in result.rows) == 0
    assert all("replayed" not in r["failures"] for r in result.rows)


#: Three keys, no weak reads, a heavy-tailed network duplicating a fifth of all frames, async acks:
#: late copies land after newer writes in nearly every run when nothing deduplicates them.
HOTTER = {
    "network": {"duplicate": 0.2, "latency_sigma": 1.5},
    "workload": {"keys": 3, "weak_read_fraction": 0.0, "think_ms": 2.0},
}
ASYNC = {"replication_mode": "async", "min_in_sync": 0}


def test_the_hotter_variant_replays_nothing_with_the_dedup_table() -> None:
    for cluster in (ASYNC, {}):
        result = sweep(REPLAYS.with_changes(**HOTTER, cluster=cluster), range(1, 9), workers=WORKERS)
        assert sum(r["replayed_writes"] for r in result.rows) == 0
        if not cluster:
            assert not result.failed, result.failed[0]["failures"]


def test_without_at_most_once_the_checker_names_the_replay_with_both_log_positions() -> None:
    scenario = REPLAYS.with_changes(**HOTTER, cluster={"at_most_once": False, **ASYNC})
    replayed = []
    for seed in range(1, 6):
        result = run_scenario(scenario, seed)
        replayed += [f for f in result.failures if "replayed request" in f]
        if replayed:
            break
    assert replayed, "five hot, duplicating runs without the dedup table should replay a write"
    assert "a write applied twice (replayed request)" in replayed[0]
    assert replayed[0].count("log seq") == 2 and "and again at" in replayed[0]
    assert result.summary["replayed_writes"] >= 1
    # The trace says so on its own too: the same (client, seq) survives at two log positions.
    assert result.summary["double_executions"] >= 1
    assert any("applied twice and kept twice" in f for f in result.failures)
    [first, *_] = result.summary["replays"]
    assert first["kind"] == REPLAYED and len(first["executions"]) == 2
    # Without the trace the history alone still says it: the value reappeared after a read had
    # seen it overwritten.
    found = lost_acknowledged_writes(result.operations)
    assert any(item.kind == REPLAYED and "no trace" in item.reason for item in found)


@settings(max_examples=12)
@given(
    mode=st.sampled_from(["semi-sync", "sync"]),
    duplicate=st.floats(0.0, 0.15),
    loss=st.floats(0.0, 0.04),
    reorder=st.booleans(),
    latency_sigma=st.floats(0.1, 1.0),
    keys=st.integers(2, 40),
    zipf=st.floats(0.5, 1.6),
    delete_fraction=st.floats(0.0, 0.3),
    weak=st.floats(0.0, 0.5),
    kinds=st.sets(
        st.sampled_from(["crash", "pause", "isolate", "partition", "clog", "crash_overlord"]), min_size=1
    ),
    seed=st.integers(1, 10**6),
)
def test_any_drawn_mix_of_duplication_reordering_hot_keys_deletes_and_faults_is_linearizable(
    mode: str,
    duplicate: float,
    loss: float,
    reorder: bool,
    latency_sigma: float,
    keys: int,
    zipf: float,
    delete_fraction: float,
    weak: float,
    kinds: set[str],
    seed: int,
) -> None:
    scenario = REPLAYS.with_changes(
        duration_ms=3000,
        cluster={"replication_mode": mode},
        network={"duplicate": duplicate, "loss": loss, "reorder": reorder, "latency_sigma": latency_sigma},
        workload={
            "keys": keys,
            "zipf_exponent": zipf,
            "delete_fraction": delete_fraction,
            "read_fraction": min(0.45, 1.0 - delete_fraction),
            "weak_read_fraction": weak,
        },
        faults={"mix": "random", "rate_per_s": 1.0, "kinds": tuple(sorted(kinds)), "schedule": ()},
    )
    result = run_scenario(scenario, seed)
    assert result.ok, result.failures
    assert result.summary["replayed_writes"] == 0


def test_overlapping_partition_and_isolation_each_last_their_own_window() -> None:
    """The regression: a partition healing at 2,500 ms ended an isolation scheduled until 2,700."""
    tracer = Tracer(keep_events=0)
    cluster = SimCluster(REPLAYS, 5, tracer)
    cluster.start()
    injector = FaultInjector(
        cluster, REPLAYS.faults, derive_rng(5, "faults"), REPLAYS.settle_ms, 7000, REPLAYS.cluster.replicas
    )
    injector.start()
    env = cluster.env
    env.run(until=2300)
    partition, isolation = injector.applied[:2]
    assert (partition.kind, isolation.kind) == ("partition", "isolate")
    isolated = isolation.target
    master = partition.target
    others = [a for a in cluster.all_addresses() if a not in (isolated, master)]
    assert not cluster.network.reachable(isolated, others[0])
    assert not cluster.network.reachable(master, "zk")
    env.run(until=2600)  # the partition is over, the isolation is not
    assert cluster.network.reachable(master, "zk")
    assert not any(cluster.network.reachable(isolated, other) for other in others)
    env.run(until=2800)
    assert all(cluster.network.reachable(isolated, other) for other in others)
    env.run(until=7000)
    injector.heal_all()
    for fault in injector.applied:
        assert fault.recovered_at_ms == fault.at_ms + fault.duration_ms, fault.to_dict()


def test_summary_recovery_times_are_the_scheduled_ends() -> None:
    result = run_scenario(REPLAYS, 3)
    for fault in result.summary["faults"]:
        assert fault["recovered_at_ms"] == fault["at_ms"] + fault["duration_ms"], fault
