"""Declarative scenarios: cluster shape, replication mode, network, workload, faults, duration.

Why declarative: experiments sweep seeds and these values, never code, and the same file describes
a run in the simulator and (later) against a real local cluster. A scenario is a TOML file; every
key is validated, an unknown key is an error that names it, and numbers must be numbers.

Example::

    name = "semi-sync under crashes"
    duration_ms = 20000          # safety phase: workload + faults
    [cluster]
    shards = 3
    replicas = 2                 # slaves per shard
    overlords = 3
    replication_mode = "semi-sync"
    session_timeout_ms = 1000
    [network]
    latency_ms = 1.0
    [workload]
    clients = 16
    keys = 200
    [faults]
    mix = "random"               # or "none", or "schedule" with [[faults.schedule]] entries
    rate_per_s = 0.5
    [[membership]]               # shards joining and leaving while the workload runs
    at_ms = 4000                 # simulated time from the start (settle_ms included), like faults
    kind = "add_shard"           # start 1 + replicas new processes (they form a shard)
    [[membership]]
    at_ms = 9000
    kind = "remove_shard"        # an administrator drains a shard
    shard = -1                   # -1: a shard chosen from the seed among those owning keys
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dimint.core.errors import ConfigError

FAULT_KINDS = ("crash", "pause", "isolate", "partition", "crash_overlord", "loss_burst", "clog")
MEMBERSHIP_KINDS = ("add_shard", "remove_shard")
JOIN_POLICIES = ("fill-then-grow", "fill-only")


def _check_fields(section: str, data: dict[str, Any], cls: type) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"[{section}] has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    out: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        expected = getattr(defaults, name)
        where = f"[{section}] {name}"
        if isinstance(expected, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
        elif isinstance(expected, int) and not isinstance(expected, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where} must be an integer, got {value!r}")
        elif isinstance(expected, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(expected, str):
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string, got {value!r}")
        elif expected is None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"{where} must be a number, got {value!r}")
        elif isinstance(expected, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings, got {value!r}")
            value = tuple(value)
        out[name] = value
    return out


@dataclass(frozen=True)
class ClusterSpec:
    shards: int = 3
    replicas: int = 2
    overlords: int = 3
    replication_mode: str = "semi-sync"
    min_in_sync: int = 1
    placement: str = "ring"
    session_timeout_ms: int = 1000
    heartbeat_interval_ms: int = 100
    write_timeout_ms: int = 2000
    replica_timeout_ms: int = 1000
    max_staleness_ms: int | None = None
    spare_nodes: int = 0
    # Membership and rebalancing (see dimint.core.node.moves).
    join_policy: str = "fill-then-grow"
    parallel_moves: int = 1
    move_stall_ms: int = 5000
    migrate_batch_keys: int = 500
    migrate_keys_per_s: int = 200_000
    migrate_bytes_per_s: int = 64 * 1024 * 1024
    preload_keys: int = 0  # keys written straight into every replica before the run (big stores)
    preload_value_bytes: int = 100
    # Simulated service time of one input on a data node / an Overlord (0: infinitely fast hosts;
    # set it to study load: queues then build up where the work is).
    node_processing_delay_ms: float = 0.0
    overlord_processing_delay_ms: float = 0.0
    # At most once (dimint.core.dedup): false shows what duplicated requests do without it, and
    # how long a shard remembers a client's writes.
    at_most_once: bool = True
    dedup_retention_ms: int = 60_000

    def validate(self) -> None:
        if self.shards < 1:
            raise ConfigError("[cluster] shards must be >= 1")
        if self.replicas < 0:
            raise ConfigError("[cluster] replicas must be >= 0")
        if self.overlords < 1:
            raise ConfigError("[cluster] overlords must be >= 1")
        if self.replication_mode not in ("async", "semi-sync", "sync"):
            raise ConfigError(
                f"[cluster] replication_mode must be async, semi-sync or sync, got {self.replication_mode!r}"
            )
        if not 0 <= self.min_in_sync <= self.replicas:
            raise ConfigError(f"[cluster] min_in_sync must be between 0 and replicas ({self.replicas})")
        for name in ("session_timeout_ms", "heartbeat_interval_ms", "write_timeout_ms", "replica_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[cluster] {name} must be > 0")
        if self.spare_nodes < 0:
            raise ConfigError("[cluster] spare_nodes must be >= 0")
        if self.join_policy not in JOIN_POLICIES:
            raise ConfigError(f"[cluster] join_policy must be one of {', '.join(JOIN_POLICIES)}")
        for name in (
            "parallel_moves",
            "move_stall_ms",
            "migrate_batch_keys",
            "migrate_keys_per_s",
            "migrate_bytes_per_s",
            "preload_value_bytes",
            "dedup_retention_ms",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[cluster] {name} must be > 0")
        if self.preload_keys < 0:
            raise ConfigError("[cluster] preload_keys must be >= 0")
        if self.node_processing_delay_ms < 0 or self.overlord_processing_delay_ms < 0:
            raise ConfigError("[cluster] processing delays must be >= 0")


@dataclass(frozen=True)
class NetworkSpec:
    latency_ms: float = 1.0
    latency_sigma: float = 0.3
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False

    def validate(self) -> None:
        if self.latency_ms < 0 or self.latency_sigma < 0:
            raise ConfigError("[network] latency_ms and latency_sigma must be >= 0")
        for name in ("loss", "duplicate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"[network] {name} must be in [0, 1)")


@dataclass(frozen=True)
class WorkloadSpec:
    clients: int = 8
    keys: int = 100
    distribution: str = "uniform"
    zipf_exponent: float = 0.99
    read_fraction: float = 0.5
    weak_read_fraction: float = 0.0  # share of reads sent with consistency="weak"
    delete_fraction: float = 0.0
    value_bytes: int = 16
    think_ms: float = 10.0
    request_timeout_ms: int = 500
    operation_deadline_ms: int = 4000
    route_via_overlord: bool = False  # the original design: every request through an Overlord

    def validate(self) -> None:
        if self.clients < 1 or self.keys < 1:
            raise ConfigError("[workload] clients and keys must be >= 1")
        if self.distribution not in ("uniform", "zipfian"):
            raise ConfigError(
                f"[workload] distribution must be uniform or zipfian, got {self.distribution!r}"
            )
        for name in ("read_fraction", "weak_read_fraction", "delete_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"[workload] {name} must be in [0, 1]")
        if self.read_fraction + self.delete_fraction > 1.0:
            raise ConfigError("[workload] read_fraction + delete_fraction must be <= 1")
        if self.value_bytes < 8:
            raise ConfigError("[workload] value_bytes must be >= 8 (values carry a unique id)")
        if self.think_ms < 0:
            raise ConfigError("[workload] think_ms must be >= 0")


@dataclass(frozen=True)
class FaultEvent:
    """One scheduled fault. ``target`` is an address (``n3``, ``o1``) or a role (``master:0``,
    ``slave:1``, ``leader``, ``any-node``); roles are resolved when the fault fires."""

    at_ms: int
    kind: str
    target: str = "any-node"
    duration_ms: int = 2000


@dataclass(frozen=True)
class MembershipEvent:
    """A shard joins (``add_shard``: 1 + replicas new processes start) or leaves (``remove_shard``:
    an administrator drains ``shard``; -1 picks one from the seed among the shards owning keys)."""

    at_ms: int
    kind: str
    shard: int = -1

    def validate(self) -> None:
        if self.kind not in MEMBERSHIP_KINDS:
            raise ConfigError(f"[[membership]] kind must be one of {', '.join(MEMBERSHIP_KINDS)}")
        if self.at_ms < 0 or self.shard < -1:
            raise ConfigError("[[membership]] at_ms must be >= 0 and shard >= -1")


@dataclass(frozen=True)
class FaultSpec:
    mix: str = "none"  # none | random | schedule
    rate_per_s: float = 0.3
    kinds: tuple[str, ...] = FAULT_KINDS
    mean_duration_ms: int = 2500
    recovery_grace_ms: int = 2000
    schedule: tuple[FaultEvent, ...] = ()

    def validate(self) -> None:
        if self.mix not in ("none", "random", "schedule"):
            raise ConfigError(f"[faults] mix must be none, random or schedule, got {self.mix!r}")
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad:
            raise ConfigError(f"[faults] unknown kind(s) {bad}; known: {', '.join(FAULT_KINDS)}")
        if self.rate_per_s < 0 or self.mean_duration_ms <= 0 or self.recovery_grace_ms < 0:
            raise ConfigError("[faults] rate_per_s, mean_duration_ms and recovery_grace_ms must be positive")
        for event in self.schedule:
            if event.kind not in FAULT_KINDS:
                raise ConfigError(f"[[faults.schedule]] unknown kind {event.kind!r}")


@dataclass(frozen=True)
class Scenario:
    name: str = "default"
    duration_ms: int = 10_000
    settle_ms: int = 3_000  # before the workload starts: elections, the first map, syncs
    liveness_timeout_ms: int = 15_000
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    membership: tuple[MembershipEvent, ...] = ()

    def validate(self) -> Scenario:
        if self.duration_ms <= 0 or self.settle_ms < 0 or self.liveness_timeout_ms <= 0:
            raise ConfigError("duration_ms and liveness_timeout_ms must be > 0, settle_ms >= 0")
        self.cluster.validate()
        self.network.validate()
        self.workload.validate()
        self.faults.validate()
        for event in self.membership:
            event.validate()
        return self

    def with_changes(self, **sections: dict[str, Any]) -> Scenario:
        """A validated copy with some section fields replaced.

        Example: ``with_changes(cluster={"replication_mode": "sync"})``.
        """
        updates: dict[str, Any] = {}
        for name, values in sections.items():
            current = getattr(self, name)
            updates[name] = replace(current, **values) if isinstance(values, dict) else values
        return replace(self, **updates).validate()

    # ---------------------------------------------------------------- parsing

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        sections = ("cluster", "network", "workload", "faults", "membership")
        top = {k: v for k, v in data.items() if k not in sections}
        top = _check_fields("scenario", top, _TopLevel)
        faults_raw = dict(data.get("faults", {}))
        schedule_raw = faults_raw.pop("schedule", [])
        faults = _check_fields("faults", faults_raw, FaultSpec)
        if not isinstance(schedule_raw, list):
            raise ConfigError("[[faults.schedule]] must be an array of tables")
        schedule = []
        for index, entry in enumerate(schedule_raw):
            entry = _check_fields(f"faults.schedule[{index}]", entry, _FaultEventFields)
            if "at_ms" not in entry or "kind" not in entry:
                raise ConfigError(f"faults.schedule[{index}] needs at_ms and kind")
            schedule.append(FaultEvent(**entry))
        membership_raw = data.get("membership", [])
        if not isinstance(membership_raw, list):
            raise ConfigError("[[membership]] must be an array of tables")
        membership = []
        for index, entry in enumerate(membership_raw):
            entry = _check_fields(f"membership[{index}]", entry, _MembershipFields)
            if "at_ms" not in entry or "kind" not in entry:
                raise ConfigError(f"membership[{index}] needs at_ms and kind")
            membership.append(MembershipEvent(**entry))
        return cls(
            cluster=ClusterSpec(**_check_fields("cluster", data.get("cluster", {}), ClusterSpec)),
            network=NetworkSpec(**_check_fields("network", data.get("network", {}), NetworkSpec)),
            workload=WorkloadSpec(**_check_fields("workload", data.get("workload", {}), WorkloadSpec)),
            faults=FaultSpec(**faults, schedule=tuple(schedule)),
            membership=tuple(membership),
            **top,
        ).validate()

    @classmethod
    def from_toml(cls, text: str) -> Scenario:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"scenario is not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        return cls.from_toml(Path(path).read_text())

    def to_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if hasattr(obj, "__dataclass_fields__"):
                return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
            if isinstance(obj, tuple):
                return [plain(v) for v in obj]
            return obj

        return plain(self)


@dataclass(frozen=True)
class _TopLevel:
    name: str = "default"
    duration_ms: int = 10_000
    settle_ms: int = 3_000
    liveness_timeout_ms: int = 15_000


@dataclass(frozen=True)
class _FaultEventFields:
    at_ms: int = 0
    kind: str = ""
    target: str = ""
    duration_ms: int = 0


@dataclass(frozen=True)
class _MembershipFields:
    at_ms: int = 0
    kind: str = ""
    shard: int = -1
