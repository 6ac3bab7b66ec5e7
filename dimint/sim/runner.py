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

import simpy

from dimint.core import layout
from dimint.core.checker import (
    REPLAYED,
    Execution,
    check_linearizable,
    lost_acknowledged_writes,
    percentile,
    weak_read_staleness,
)
from dimint.core.clustermap import ClusterMap
from dimint.core.dedup import DedupConfig
from dimint.core.effects import Receive, TimerFired
from dimint.core.errors import DecodeError
from dimint.core.hashing import key_hash, key_hashes
from dimint.core.history import HistoryRecorder, Operation, to_jsonl_lines
from dimint.core.node import DataNode, NodeConfig, Role
from dimint.core.overlord import Overlord, OverlordConfig
from dimint.core.protocol import AdminRequest
from dimint.sim.coord import CoordServiceModel
from dimint.sim.faults import FaultInjector
from dimint.sim.host import HostState, SimHost
from dimint.sim.network import Latency, NetworkOptions, SimNetwork
from dimint.sim.scenario import MembershipEvent, Scenario
from dimint.sim.trace import TraceEvent, Tracer, derive_rng
from dimint.sim.workload import WorkloadClient


class SimCluster:
    """The simulated deployment: ZooKeeper model, Overlords, data nodes and workload clients."""

    def __init__(self, scenario: Scenario, seed: int, tracer: Tracer) -> None:
        self.scenario = scenario
        self.seed = seed
        self.env = simpy.Environment()
        self.tracer = tracer
        net = scenario.network
        options = NetworkOptions(
            latency=Latency(
                kind="lognormal",
                base_ms=net.latency_ms,
                sigma=net.latency_sigma,
                max_ms=max(50.0, 20 * net.latency_ms),
            ),
            loss_probability=net.loss,
            duplicate_probability=net.duplicate,
            reorder=net.reorder,
        )
        self.network = SimNetwork(self.env, options, derive_rng(seed, "network"), tracer)
        self.zk = CoordServiceModel(self.env, self.network, tracer, address="zk")
        cluster = scenario.cluster
        self.overlord_addresses = [f"o{i}" for i in range(cluster.overlords)]
        node_count = cluster.shards * (1 + cluster.replicas) + cluster.spare_nodes
        self.node_addresses = [f"n{i}" for i in range(node_count)]
        self.client_addresses = [f"c{i}" for i in range(scenario.workload.clients)]
        self.recorder = HistoryRecorder()
        self.hosts: dict[str, SimHost] = {}
        self.overlord_config = OverlordConfig(
            initial_shards=cluster.shards,
            replicas=cluster.replicas,
            placement_kind=cluster.placement,
            replication_mode=cluster.replication_mode,
            min_in_sync=cluster.min_in_sync,
            join_policy=cluster.join_policy,
            parallel_moves=cluster.parallel_moves,
            move_stall_ms=cluster.move_stall_ms,
        )
        self.node_config = NodeConfig(
            heartbeat_interval_ms=cluster.heartbeat_interval_ms,
            write_timeout_ms=cluster.write_timeout_ms,
            replica_timeout_ms=cluster.replica_timeout_ms,
            max_staleness_ms=cluster.max_staleness_ms,
            migrate_batch_keys=cluster.migrate_batch_keys,
            migrate_keys_per_s=cluster.migrate_keys_per_s,
            migrate_bytes_per_s=cluster.migrate_bytes_per_s,
            at_most_once=cluster.at_most_once,
            dedup=DedupConfig(retention_ms=cluster.dedup_retention_ms),
        )
        self.membership_applied: list[dict[str, Any]] = []
        self.rebalance_events: list[TraceEvent] = []
        #: Every execution of a client's write by a master, by ``(client_id, seq)``: the checker
        #: names both log positions when a request ran twice.
        self.executions: dict[tuple[int, int], list[Execution]] = {}
        tracer.add_listener(self._on_trace)
        timeout = cluster.session_timeout_ms
        for address in self.overlord_addresses:
            self._add_host(
                address,
                self._overlord_factory(address),
                coordinated=True,
                timeout=timeout,
                processing_delay_ms=cluster.overlord_processing_delay_ms,
            )
        for address in self.node_addresses:
            self._add_host(
                address,
                self._node_factory(address),
                coordinated=True,
                timeout=timeout,
                processing_delay_ms=cluster.node_processing_delay_ms,
            )
        stop_at = scenario.settle_ms + scenario.duration_ms
        for index, address in enumerate(self.client_addresses):
            self._add_host(address, self._client_factory(index, stop_at), coordinated=False, timeout=timeout)

    # ---------------------------------------------------------------- construction

    _REBALANCE_EVENTS = frozenset(
        {"rebalance_started", "move_attempt", "move_switched", "rebalance_finished", "move_frozen", "swept"}
    )

    def _on_trace(self, event: TraceEvent) -> None:
        if event.event in self._REBALANCE_EVENTS:
            self.rebalance_events.append(event)
        elif event.event == "write_executed":
            fields = event.fields
            self.executions.setdefault((fields["client"], fields["seq"]), []).append(
                Execution(
                    fields["node"], fields["shard"], fields["log_seq"], fields["shard_epoch"], event.time_ms
                )
            )

    def add_node(self) -> str:
        """Start one more data-node process (a join); returns its address."""
        address = f"n{len(self.node_addresses)}"
        self.node_addresses.append(address)
        self._add_host(
            address,
            self._node_factory(address),
            coordinated=True,
            timeout=self.scenario.cluster.session_timeout_ms,
            processing_delay_ms=self.scenario.cluster.node_processing_delay_ms,
        )
        self.hosts[address].start()
        return address

    def admin(self, action: str, params: dict[str, Any], attempts: int = 100) -> Any:
        """A SimPy process: hand an admin request to the current leader (retrying while none leads)."""
        for _ in range(attempts):
            leader = self.leader_address()
            if leader is not None:
                self.hosts[leader].inject(Receive("admin", AdminRequest(0, action, params)))
                return leader
            yield self.env.timeout(100)
        return None

    def membership(self, event: MembershipEvent, rng: Any) -> Any:
        """A SimPy process applying one scheduled join or leave at its time."""
        yield self.env.timeout(max(0, event.at_ms - self.env.now))
        record: dict[str, Any] = {"at_ms": self.env.now, "kind": event.kind}
        if event.kind == "add_shard":
            added = [self.add_node() for _ in range(1 + self.scenario.cluster.replicas)]
            record["nodes"] = added
            self.membership_applied.append(record)
            if self.scenario.cluster.join_policy == "fill-only":
                yield self.env.timeout(self.scenario.cluster.session_timeout_ms)
                yield from self.admin("add_shard", {})
            return
        cmap = self.current_map()
        shard = event.shard
        if shard == -1 and cmap is not None:
            owners = sorted(
                set(cmap.placement.shard_ids)
                - set(cmap.draining)
                - (
                    {s for s in cmap.shards if s not in cmap.rebalance.target.shard_ids}
                    if cmap.rebalance
                    else set()
                )
            )
            shard = owners[rng.randrange(len(owners))] if len(owners) > 1 else -1
        record["shard"] = shard
        self.membership_applied.append(record)
        if shard >= 0:
            yield from self.admin("remove_shard", {"shard_id": shard})

    def preload(self) -> int:
        """Write ``preload_keys`` keys straight into every replica of their owning shard.

        For rebalancing benchmarks with stores far larger than a workload could write in simulated
        time. Replicas get identical contents at identical log positions, so they stay consistent.
        """
        cluster = self.scenario.cluster
        cmap = self.current_map()
        if cluster.preload_keys == 0 or cmap is None:
            return 0
        value = b"v" * cluster.preload_value_bytes
        keys = [f"pre:{i}".encode() for i in range(cluster.preload_keys)]
        owners = cmap.owners_of_hashes(key_hashes(keys)).tolist()
        by_shard: dict[int, list[Any]] = {}
        for key, owner in zip(keys, owners, strict=True):
            by_shard.setdefault(owner, []).append((key, "string", value, None))
        for shard_id, items in by_shard.items():
            for member in cmap.shards[shard_id].members:
                machine = self.hosts[member].machine
                if isinstance(machine, DataNode):
                    machine.store.restore(items)
        return len(keys)

    def _add_host(
        self, address: str, factory: Any, coordinated: bool, timeout: int, processing_delay_ms: float = 0.0
    ) -> None:
        self.hosts[address] = SimHost(
            self.env,
            address,
            factory,
            self.network,
            "zk" if coordinated else None,
            timeout,
            self.tracer,
            derive_rng(self.seed, "host", address),
            processing_delay_ms=processing_delay_ms,
        )

    def _overlord_factory(self, address: str) -> Any:
        incarnation = [0]

        def build() -> Overlord:
            incarnation[0] += 1
            return Overlord(
                address,
                address,
                self.overlord_config,
                derive_rng(self.seed, "overlord", address, incarnation[0]),
            )

        return build

    def _node_factory(self, address: str) -> Any:
        incarnation = [0]

        def build() -> DataNode:
            incarnation[0] += 1
            return DataNode(
                address,
                address,
                self.overlord_addresses,
                self.node_config,
                derive_rng(self.seed, "node", address, incarnation[0]),
            )

        return build

    def _client_factory(self, index: int, stop_at: int) -> Any:
        def build() -> WorkloadClient:
            return WorkloadClient(
                index,
                self.overlord_addresses,
                self.scenario.workload,
                self.recorder,
                derive_rng(self.seed, "client", index),
                stop_at,
            )

        return build

    # ---------------------------------------------------------------- inspection

    def all_addresses(self) -> list[str]:
        return ["zk", *self.overlord_addresses, *self.node_addresses, *self.client_addresses]

    def current_map(self) -> ClusterMap | None:
        raw = self.zk.get(layout.MAP_PATH)
        if raw is None:
            return None
        try:
            return ClusterMap.from_bytes(raw[0])
        except DecodeError:
            return None

    def host_running(self, address: str) -> bool:
        host = self.hosts.get(address)
        return host is not None and host.state == HostState.RUNNING

    def leader_address(self) -> str | None:
        for address in self.overlord_addresses:
            host = self.hosts[address]
            if (
                host.state == HostState.RUNNING
                and isinstance(host.machine, Overlord)
                and host.machine.is_leader
            ):
                return address
        return None

    def ensure_running(self, host: SimHost) -> None:
        if host.state == HostState.PAUSED:
            host.resume()
        elif host.state in (HostState.CRASHED, HostState.STOPPED):
            host.restart()

    def start(self) -> None:
        for host in self.hosts.values():
            host.start()

    def converged(self) -> tuple[bool, str]:
        """Liveness: one unfenced master per shard, every slave alive, in sync and caught up."""
        cmap = self.current_map()
        if cmap is None:
            return False, "no map"
        if cmap.rebalance is not None or cmap.draining:
            return False, f"rebalance in progress ({cmap.rebalance.reason if cmap.rebalance else 'draining'})"
        replicas = self.scenario.cluster.replicas
        for shard_id, shard in sorted(cmap.shards.items()):
            if shard.master is None:
                return False, f"shard {shard_id} has no master"
            master = self.hosts[shard.master].machine
            if (
                not isinstance(master, DataNode)
                or master.role is not Role.MASTER
                or master.fenced
                or master.shard_epoch != shard.shard_epoch
                or master.map is None
                or master.map.epoch != cmap.epoch
            ):
                return (
                    False,
                    f"shard {shard_id}: master {shard.master} not serving at epoch {shard.shard_epoch}",
                )
            if len(shard.slaves) < replicas or set(shard.in_sync) != set(shard.slaves):
                return False, f"shard {shard_id}: slaves {shard.slaves} in sync {shard.in_sync}"
            for slave_id in shard.slaves:
                slave = self.hosts[slave_id].machine
                if (
                    not isinstance(slave, DataNode)
                    or slave.role is not Role.SLAVE
                    or slave.applied_seq != master.applied_seq
                    or slave.last_epoch != master.last_epoch
                ):
                    return False, f"shard {shard_id}: slave {slave_id} not caught up"
        return True, "converged"

    def misplaced_keys(self) -> tuple[int, int]:
        """(keys a master holds that its shard does not own, keys held by two masters)."""
        cmap = self.current_map()
        if cmap is None:
            return 0, 0
        foreign = 0
        seen: set[bytes] = set()
        doubled = 0
        for shard_id, shard in cmap.shards.items():
            master = self.hosts[shard.master].machine if shard.master else None
            if not isinstance(master, DataNode):
                continue
            keys = list(master.store.dump(int(self.env.now)))
            if keys:
                owners = cmap.owners_of_hashes(key_hashes(keys)).tolist()
                foreign += sum(1 for owner in owners if owner != shard_id)
            doubled += len(seen.intersection(keys))
            seen.update(keys)
        return foreign, doubled


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
    if mode in ("sync", "semi-sync"):
        if lost:
            failures.append(f"{len(lost)} acknowledged write(s) lost in {mode} mode")
        if linearizable.failures:
            failures.append("history is not linearizable: " + linearizable.explain()[:500])
    if not converged:
        failures.append(f"did not converge within {scenario.liveness_timeout_ms} ms after healing: {why}")
    readbacks = [op for op in operations if op.is_readback]
    if any(op.outcome != "ok" for op in readbacks):
        failures.append(f"{sum(op.outcome != 'ok' for op in readbacks)} readback read(s) did not succeed")
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
