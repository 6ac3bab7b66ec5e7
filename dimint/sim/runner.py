"""Run one scenario with one seed: build the cluster, load it, break it, heal it, check it.

Theory of operation: a run is a pure function of ``(scenario, seed)`` (invariant 6). Every random
choice comes from a stream derived from the seed and a component name, simulated time is the only
clock, and every delivered message, timer, coordination event and fault is folded into the trace
digest, which the run prints: the same seed gives the same digest.

Phases:
1. *settle*: ZooKeeper model, Overlords and nodes start; a leader is elected and writes the first map.
2. *safety*: clients run the workload while faults are injected and shards join and leave
   (``duration_ms``); every move of a rebalance is metered (keys, bytes, duration, freeze, client
   throughput and latency while it ran) into ``summary.json``.
3. *heal*: every fault is repaired (crashed processes restart with empty memory).
4. *liveness*: within ``liveness_timeout_ms`` every shard must have exactly one unfenced master and
   caught-up in-sync slaves, and no rebalance may be left in progress; then every master must hold
   only keys its shard owns, and no key may live on two masters.
5. *readback*: one client reads every written key with a strong read.
Then the history is checked: linearizability of strong operations, no acknowledged write lost,
staleness of weak reads. Results go to ``history.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dimint.core.checker import (
    REPLAYED,
    check_linearizable,
    lost_acknowledged_writes,
    percentile,
    weak_read_staleness,
)
from dimint.core.effects import TimerFired
from dimint.core.hashing import key_hash
from dimint.core.history import Operation, to_jsonl_lines
from dimint.core.seeding import derive_rng
from dimint.sim.cluster import SimCluster
from dimint.sim.faults import FaultInjector
from dimint.sim.scenario import Scenario
from dimint.sim.trace import Tracer
from dimint.sim.workload import WorkloadClient


@dataclass
class RunResult:
    seed: int
    digest: str
    ok: bool
    summary: dict[str, Any]
    operations: list[Operation] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def run_scenario(
    scenario: Scenario,
    seed: int,
    out_dir: Path | None = None,
    *,
    write_trace: bool = False,
    full_messages: bool = True,
) -> RunResult:
    """Run ``scenario`` with ``seed``; write ``history.jsonl`` and ``summary.json`` when ``out_dir``.

    ``full_messages=False`` digests message types only: cheaper when migrations move big batches.
    """
    trace_file = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if write_trace:
            trace_file = (out_dir / "trace.jsonl").open("w")
    tracer = Tracer(
        keep_events=0,
        sink=(lambda line: trace_file.write(line + "\n")) if trace_file else None,
        full_messages=full_messages,
    )
    try:
        cluster = SimCluster(scenario, seed, tracer)
        return _run(cluster, scenario, seed, out_dir)
    finally:
        if trace_file is not None:
            trace_file.close()


def _run(cluster: SimCluster, scenario: Scenario, seed: int, out_dir: Path | None) -> RunResult:
    env = cluster.env
    cluster.start()
    safety_end = scenario.settle_ms + scenario.duration_ms
    injector = FaultInjector(
        cluster,
        scenario.faults,
        derive_rng(seed, "faults"),
        scenario.settle_ms,
        safety_end,
        scenario.cluster.replicas,
    )
    injector.start()
    membership_rng = derive_rng(seed, "membership")
    for event in sorted(scenario.membership, key=lambda e: (e.at_ms, e.kind, e.shard)):
        env.process(cluster.membership(event, membership_rng))
    if scenario.cluster.preload_keys:
        env.run(until=max(1, scenario.settle_ms - 1))
        cluster.preload()
    env.run(until=safety_end)
    injector.heal_all()
    heal_ms = env.now

    # Liveness: converge within the bound, with the clients' last operations draining meanwhile.
    deadline = heal_ms + scenario.liveness_timeout_ms
    converged, why = cluster.converged()
    while not converged and env.now < deadline:
        env.run(until=env.now + 50)
        converged, why = cluster.converged()
    converged_after = env.now - heal_ms if converged else None
    # Let every client finish its outstanding operation before the readback starts.
    drain_deadline = env.now + scenario.workload.operation_deadline_ms + 1000
    clients = [cluster.hosts[a].machine for a in cluster.client_addresses]
    while any(c.in_flight for c in clients if isinstance(c, WorkloadClient)) and env.now < drain_deadline:
        env.run(until=env.now + 50)

    # Readback: a strong read of every key any write touched.
    written = sorted({e.key for e in cluster.recorder.events if e.type == "invoke" and e.f != "read"})
    reader = clients[0]
    assert isinstance(reader, WorkloadClient)
    reader.start_readback(written)
    cluster.hosts[cluster.client_addresses[0]].inject(TimerFired("workload:next"))
    readback_deadline = env.now + max(5_000, 50 * len(written))
    while (reader.readback_queue or reader.in_flight) and env.now < readback_deadline:
        env.run(until=env.now + 50)
    end_ms = env.now

    operations = cluster.recorder.operations()
    summary, failures = _check(
        cluster, scenario, seed, operations, injector, converged, why, converged_after, heal_ms, end_ms
    )
    if out_dir is not None:
        (out_dir / "history.jsonl").write_text(
            "".join(line + "\n" for line in to_jsonl_lines(cluster.recorder.events))
        )
        (out_dir / "summary.json").write_text(
            json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
        )
    return RunResult(seed, summary["trace_digest"], not failures, summary, operations, failures)


def _failover_durations(
    cluster: SimCluster, injector: FaultInjector, operations: list[Operation]
) -> list[dict]:
    """For every fault that hit a master: time to the first acknowledged write on that shard."""
    cmap = cluster.current_map()
    if cmap is None:
        return []
    shard_of = {}
    writes_by_shard: dict[int, list[Operation]] = {}
    for op in operations:
        if op.f != "write" or op.outcome != "ok":
            continue
        if op.key not in shard_of:
            shard_of[op.key] = cmap.placement.owner_of_hash(key_hash(op.key))
        writes_by_shard.setdefault(shard_of[op.key], []).append(op)
    results = []
    for fault in injector.applied:
        members = fault.extra.get("members", {})
        for target, role in members.items():
            if not role or role[0] != "master":
                continue
            shard_id = role[1]
            after = [
                op.complete_ms
                for op in writes_by_shard.get(shard_id, [])
                if op.invoke_ms >= fault.at_ms and op.complete_ms is not None
            ]
            first = min(after) if after else None
            results.append(
                {
                    "kind": fault.kind,
                    "master": target,
                    "shard": shard_id,
                    "at_ms": fault.at_ms,
                    "first_ack_write_ms": first,
                    "unavailable_ms": (first - fault.at_ms) if first is not None else None,
                }
            )
    return results


def _check(
    cluster: SimCluster,
    scenario: Scenario,
    seed: int,
    operations: list[Operation],
    injector: FaultInjector,
    converged: bool,
    why: str,
    converged_after: float | None,
    heal_ms: float,
    end_ms: float,
) -> tuple[dict[str, Any], list[str]]:
    mode = scenario.cluster.replication_mode
    failures: list[str] = []
    outcomes: dict[str, int] = {}
    for op in operations:
        name = f"{op.f}:{op.outcome}"
        outcomes[name] = outcomes.get(name, 0) + 1
    linearizable = check_linearizable(operations)
    found = lost_acknowledged_writes(operations, executions=cluster.executions)
    replayed = [item for item in found if item.kind == REPLAYED]
    lost = [item for item in found if item.kind != REPLAYED]
    staleness = weak_read_staleness(operations)
    if replayed:
        # At most once holds in every mode, async included: nothing excuses running a write twice.
        failures.append(f"{len(replayed)} replayed request(s): {replayed[0].reason[:400]}")
    doubles = cluster.surviving_double_executions() if converged else []
    if doubles:
        (client_id, seq), runs = doubles[0]
        failures.append(
            f"{len(doubles)} write(s) applied twice and kept twice: client {client_id} seq {seq} at "
            + " and ".join(run.describe() for run in runs)
        )
    if mode in ("sync", "semi-sync"):
        if lost:
            failures.append(f"{len(lost)} acknowledged write(s) lost in {mode} mode")
        if linearizable.failures:
            failures.append("history is not linearizable: " + linearizable.explain()[:500])
    if not converged:
        failures.append(f"did not converge within {scenario.liveness_timeout_ms} ms after healing: {why}")
    readbacks = [op for op in operations if op.is_readback]
    unread = {op.key for op in readbacks} - {op.key for op in readbacks if op.outcome == "ok"}
    if unread:
        failures.append(
            f"{len(unread)} key(s) could not be read back after healing "
            f"({WorkloadClient.READBACK_ATTEMPTS} attempts each): {sorted(unread)[:5]}"
        )
    failovers = _failover_durations(cluster, injector, operations)
    if converged:
        foreign, doubled = cluster.misplaced_keys()
        if foreign or doubled:
            failures.append(
                f"ownership: {foreign} key(s) on a master that does not own them, {doubled} on two"
            )
    rebalances = _rebalance_metrics(cluster, operations, scenario.settle_ms)
    unavailable = [f["unavailable_ms"] for f in failovers if f["unavailable_ms"] is not None]
    counters = cluster.tracer.counters
    summary = {
        "scenario": scenario.name,
        "seed": seed,
        "replication_mode": mode,
        "trace_digest": cluster.tracer.digest(),
        "trace_records": cluster.tracer.records,
        "simulated_ms": end_ms,
        "heal_ms": heal_ms,
        "ok": not failures,
        "failures": failures,
        "operations": {"total": len(operations), "by_outcome": dict(sorted(outcomes.items()))},
        "lost_acknowledged_writes": len(lost),
        "lost_writes": [str(item) for item in lost[:20]],
        "replayed_writes": len(replayed),
        "double_executions": len(doubles),
        "replays": [item.to_dict() for item in replayed[:20]],
        "linearizability": linearizable.to_dict(),
        "staleness": staleness.to_dict(),
        "converged": converged,
        "converged_after_ms": converged_after,
        "faults": [f.to_dict() for f in injector.applied],
        "fault_mix": {
            "kinds": injector.kinds,
            "weights": [round(w, 3) for w in injector.weights],
            "rate_per_s": round(injector.rate_per_s, 3),
        }
        if scenario.faults.mix == "random"
        else None,
        "failovers": failovers,
        "failover_unavailable_ms": {
            "count": len(unavailable),
            "median": statistics.median(unavailable) if unavailable else None,
            "p99": percentile(unavailable, 0.99),
            "max": max(unavailable) if unavailable else None,
        },
        "promotions": counters.get("failover_promote", 0),
        "membership": cluster.membership_applied,
        "rebalances": rebalances,
        "network": dict(cluster.network.stats),
        "network_drops": dict(cluster.network.drops),
    }
    return summary, failures


def _window_stats(operations: list[Operation], start: float, end: float) -> dict[str, Any]:
    """Client throughput and latency of operations completed in ``[start, end)``."""
    done = [
        op
        for op in operations
        if op.complete_ms is not None and start <= op.complete_ms < end and not op.is_readback
    ]
    latencies = [op.complete_ms - op.invoke_ms for op in done if op.outcome == "ok"]  # type: ignore[operator]
    span_s = max(end - start, 1.0) / 1000.0
    return {
        "ops": len(done),
        "ops_per_s": round(sum(op.outcome == "ok" for op in done) / span_s, 1),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
    }


def _rebalance_metrics(cluster: SimCluster, operations: list[Operation], workload_start: float) -> list[dict]:
    """Per rebalance and per move: what moved, how long it took, and what clients saw meanwhile."""
    rebalances: dict[int, dict[str, Any]] = {}
    move_started: dict[tuple[int, int, int], float] = {}
    for event in cluster.rebalance_events:
        f = event.fields
        if event.event == "rebalance_started":
            rebalances.setdefault(
                f["rebalance"],
                {
                    "rebalance": f["rebalance"],
                    "reason": f["reason"],
                    "started_ms": event.time_ms,
                    "moves": [],
                },
            )
        elif event.event == "move_attempt":
            move_started.setdefault((f["rebalance"], f["source"], f["target"]), event.time_ms)
            if f["rebalance"] in rebalances:
                rebalances[f["rebalance"]].setdefault("attempts", 0)
                rebalances[f["rebalance"]]["attempts"] += 1
        elif event.event == "move_switched" and f["rebalance"] in rebalances:
            started = move_started.get((f["rebalance"], f["source"], f["target"]), event.time_ms)
            entry = {
                "source": f["source"],
                "target": f["target"],
                "attempt": f["attempt"],
                "keys": f["keys"],
                "bytes": f["bytes"],
                "deltas": f["deltas"],
                "started_ms": started,
                "switched_ms": event.time_ms,
                "duration_ms": event.time_ms - started,
                "frozen_ms": f["frozen_ms"],
                "during": _window_stats(operations, started, event.time_ms),
            }
            rebalances[f["rebalance"]]["moves"].append(entry)
        elif event.event == "rebalance_finished" and f["rebalance"] in rebalances:
            entry = rebalances[f["rebalance"]]
            entry.setdefault("finished_ms", event.time_ms)
    first = min((r["started_ms"] for r in rebalances.values()), default=None)
    baseline = _window_stats(operations, workload_start, first) if first and first > workload_start else None
    out = []
    for entry in rebalances.values():
        moves = entry["moves"]
        entry["keys_moved"] = sum(m["keys"] for m in moves)
        entry["bytes_moved"] = sum(m["bytes"] for m in moves)
        if "finished_ms" in entry:
            entry["duration_ms"] = entry["finished_ms"] - entry["started_ms"]
            entry["during"] = _window_stats(operations, entry["started_ms"], entry["finished_ms"])
        entry["baseline"] = baseline
        out.append(entry)
    return out
