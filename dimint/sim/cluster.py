"""The simulated deployment: a ZooKeeper model, Overlords, data nodes and workload clients on one
simulated network, each on a host of its own.

Theory of operation: ``SimCluster`` builds every host from the scenario and the run seed (each
machine gets its own stream, ``derive_rng(seed, kind, address, incarnation)``), so a restarted
process is a new machine with a new stream, and the cluster is a pure function of (scenario,
seed). It answers the questions the fault injector and the run phases ask of the deployment (the
map as ZooKeeper holds it, who leads, which hosts run, whether every shard converged, where every
key lives) by reading the model and the machines, never by sending them anything: observation does
not perturb the run. It also gathers what the checks need from the trace as it happens (rebalance
events, and every master's execution of a client write, by ``(client_id, seq)``).
"""

from __future__ import annotations

from typing import Any

import simpy

from dimint.core import layout
from dimint.core.checker import Execution
from dimint.core.clustermap import ClusterMap
from dimint.core.dedup import DedupConfig
from dimint.core.effects import Receive
from dimint.core.errors import DecodeError
from dimint.core.hashing import key_hashes
from dimint.core.history import HistoryRecorder
from dimint.core.node import DataNode, NodeConfig, Role
from dimint.core.overlord import Overlord, OverlordConfig
from dimint.core.protocol import AdminRequest
from dimint.core.routing import RouterConfig
from dimint.core.seeding import derive_rng
from dimint.sim.coord import CoordServiceModel
from dimint.sim.host import HostState, SimHost
from dimint.sim.network import Latency, NetworkOptions, SimNetwork
from dimint.sim.scenario import MembershipEvent, Scenario
from dimint.sim.trace import TraceEvent, Tracer
from dimint.sim.workload import WorkloadClient

__all__ = ["SimCluster"]


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
            workload = self.scenario.workload
            return WorkloadClient(
                index,
                self.overlord_addresses,
                workload,
                self.recorder,
                derive_rng(self.seed, "client", index),
                stop_at,
                RouterConfig(
                    request_timeout_ms=workload.request_timeout_ms,
                    operation_deadline_ms=workload.operation_deadline_ms,
                    via_overlord=workload.route_via_overlord,
                    # What the client may claim about a write it gave up on depends on the network.
                    network_may_duplicate=self.scenario.network.duplicate > 0,
                ),
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

    def surviving_double_executions(self) -> list[tuple[tuple[int, int], list[Execution]]]:
        """Client writes executed at two log positions that both survived: run twice, for good.

        An execution survives when its shard's final master still holds that very entry (same
        sequence, same epoch: log matching). An execution on a deposed master that was never
        replicated does not survive, and its write may rightly run again elsewhere; two surviving
        ones mean the write took effect twice whatever a read happened to see. Positions the final
        logs no longer reach (or shards that no longer exist) are not judged.
        """
        cmap = self.current_map()
        if cmap is None:
            return []
        logs = {}
        for shard_id, shard in cmap.shards.items():
            machine = self.hosts[shard.master].machine if shard.master else None
            if isinstance(machine, DataNode) and machine.role is Role.MASTER:
                logs[shard_id] = machine.master.log
        doubles = []
        for identity, runs in sorted(self.executions.items()):
            if len(runs) < 2:
                continue
            survivors = [
                run
                for run in runs
                if run.shard in logs and logs[run.shard].epoch_at(run.log_seq) == run.shard_epoch
            ]
            if len({(run.shard, run.log_seq) for run in survivors}) >= 2:
                doubles.append((identity, survivors))
        return doubles
