"""Simulated online rebalancing of a large store: 4 -> 5 shards and back, for every placement kind.

Usage: ``python benchmarks/rebalance.py [--keys 1000000] [--kinds ring,jump] [--replicas 1] [--quick]``

What it measures, and against what:

* **Keys moved / optimum.** Each run preloads ``--keys`` keys (100-byte values) into a 4-shard
  cluster, lets a fifth shard join (the Overlord starts the rebalance by itself), then drains that
  same shard again, with a light read workload running throughout. The keys each rebalance moved are
  summed from the run's per-move metering (the final attempt of each move). The optimum on the join
  is ``keys / 5`` (the new shard's fair share); on the leave it is what the leaving shard holds,
  i.e. what it received. Modulo is the baseline consistent placement is meant to beat.
* **Wall-clock seconds of simulation per million keys moved.** The baseline is the very same
  scenario and seed *without* the join and the leave, run in the same process: the difference of
  the two wall times is what moving the keys cost the simulator (copy, deltas, the target's
  replication to its slaves, the sweeps), divided by the millions of keys moved.

Every run must also pass the simulator's checks (no acknowledged write lost, linearizable, every key
on its owner afterwards); a failing run is reported as such. Figures are single runs per kind on a
noisy 2-core machine: read them as magnitudes. It prints figures; it is not a test; it exits 0.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import replace
from typing import Any

from dimint.sim.cluster import SimCluster
from dimint.sim.runner import _run
from dimint.sim.scenario import MembershipEvent, Scenario
from dimint.sim.trace import Tracer

KINDS = ("modulo", "ring", "rendezvous", "jump", "bounded")


def scenario(kind: str, keys: int, replicas: int, membership: bool) -> Scenario:
    events = (
        (
            MembershipEvent(at_ms=1700, kind="add_shard"),
            MembershipEvent(at_ms=1800, kind="remove_shard", shard=4),
        )
        if membership
        else ()
    )
    return Scenario(
        name=f"rebalance-bench-{kind}", duration_ms=1500, settle_ms=1500, liveness_timeout_ms=600_000
    ).with_changes(
        cluster={
            "shards": 4,
            "replicas": replicas,
            "min_in_sync": min(1, replicas),
            "placement": kind,
            "preload_keys": keys,
            "preload_value_bytes": 100,
            "session_timeout_ms": 5000,
            "replica_timeout_ms": 5000,
            "write_timeout_ms": 10_000,
            "migrate_batch_keys": 2000,
            "migrate_keys_per_s": 2_000_000,
            "migrate_bytes_per_s": 512 * 1024 * 1024,
            "move_stall_ms": 60_000,
        },
        workload={"clients": 1, "keys": 20, "read_fraction": 1.0, "think_ms": 50.0},
        membership=events,
    )


def run_once(
    kind: str, keys: int, replicas: int, membership: bool, seed: int
) -> tuple[float, dict[str, Any]]:
    spec = scenario(kind, keys, replicas, membership)
    tracer = Tracer(keep_events=0, full_messages=False)
    cluster = SimCluster(spec, seed, tracer)
    if kind == "bounded":
        # Bounded load places by key counts: give it the key set the cluster will hold.
        names = [f"pre:{i}".encode() for i in range(keys)]
        cluster.overlord_config = replace(cluster.overlord_config, placement_params={"keys": names})
    gc.collect()
    started = time.perf_counter()
    result = _run(cluster, spec, seed, None)
    return time.perf_counter() - started, {"ok": result.ok, "failures": result.failures, **result.summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100,000 keys")
    args = parser.parse_args()
    keys = 100_000 if args.quick else args.keys
    print(f"rebalance benchmark: {keys:,} keys, 4 -> 5 -> 4 shards, {args.replicas} slave(s) per shard")
    print(
        f"{'kind':11s} {'join moved':>10s} {'/optimum':>8s} {'leave moved':>11s} {'/optimum':>8s} "
        f"{'wall s':>7s} {'base s':>7s} {'s per 1M moved':>14s}  checks"
    )
    for kind in args.kinds.split(","):
        base_s, _ = run_once(kind, keys, args.replicas, False, args.seed)
        wall_s, summary = run_once(kind, keys, args.replicas, True, args.seed)
        rebalances = summary["rebalances"]
        join = next((r for r in rebalances if r["reason"].startswith("add")), None)
        leave = next((r for r in rebalances if r["reason"].startswith("remove")), None)
        join_moved = join["keys_moved"] if join else 0
        leave_moved = leave["keys_moved"] if leave else 0
        join_ratio = join_moved / (keys / 5) if keys else float("nan")
        leave_ratio = leave_moved / join_moved if join_moved else float("nan")
        moved = join_moved + leave_moved
        per_million = (wall_s - base_s) / (moved / 1e6) if moved else float("nan")
        checks = "ok" if summary["ok"] else "FAILED: " + "; ".join(summary["failures"])
        print(
            f"{kind:11s} {join_moved:10,d} {join_ratio:8.3f} {leave_moved:11,d} {leave_ratio:8.3f} "
            f"{wall_s:7.1f} {base_s:7.1f} {per_million:14.1f}  {checks}",
            flush=True,
        )


if __name__ == "__main__":
    main()
