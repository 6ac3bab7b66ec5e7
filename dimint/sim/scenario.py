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

import re
from pathlib import Path
from typing import Any

import msgspec

from dimint.core.clustermap import REPLICATION_MODES
from dimint.core.errors import ConfigError

FAULT_KINDS = ("crash", "pause", "isolate", "partition", "crash_overlord", "loss_burst", "clog")
MEMBERSHIP_KINDS = ("add_shard", "remove_shard")
JOIN_POLICIES = ("fill-then-grow", "fill-only")

#: The kind of value each msgspec type name stands for, in a scenario author's words.
_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "array": "a list",
    "object": "a table",
    "null": "absent",
}


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A table of a scenario file: every key known, typed by its annotation (msgspec checks both)."""


def _names(path: str) -> list[str]:
    """``$.faults.schedule[0].kind`` -> ``["faults", "schedule[0]", "kind"]``."""
    return [
        name + (f"[{index}]" if index else "") for name, index in re.findall(r"\.(\w+)(?:\[(\d+)\])?", path)
    ]


def _label(names: list[str]) -> str:
    """A table as the file names it: ``[cluster]``; an entry of a list of tables: ``membership[0]``."""
    if not names:
        return "[scenario]"
    joined = ".".join(names)
    return joined if joined.endswith("]") else f"[{joined}]"


def _refusal(error: msgspec.ValidationError) -> ConfigError:
    """msgspec's account of a bad scenario, naming the table and key as the scenario file does."""
    problem, _, at = str(error).partition(" - at `")
    names = _names(at.rstrip("`"))
    unknown = re.match(r"Object contains unknown field `(\w+)`", problem)
    if unknown:  # about the table the path names
        table = _SECTIONS.get(re.sub(r"\[\d+\]", "", ".".join(names)), Scenario)
        known = ", ".join(
            sorted(msgspec.structs.fields(table)[i].name for i in range(len(table.__struct_fields__)))
        )
        return ConfigError(f"{_label(names)} has unknown key(s) {unknown.group(1)}; known: {known}")
    if problem.startswith("Object missing required field"):
        return ConfigError(f"{'.'.join(names)} needs at_ms and kind")
    section, key = _label(names[:-1]), names[-1] if names else ""
    mismatch = re.match(r"Expected `([^`]+)`, got `([^`]+)`", problem)
    if mismatch:
        wanted = " or ".join(_KIND_WORDS.get(t, t) for t in mismatch.group(1).split(" | "))
        return ConfigError(f"{section} {key} must be {wanted}, got {mismatch.group(2)}")
    return ConfigError(f"{section} {key}: {problem}")


class ClusterSpec(_Section):
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
        if self.replication_mode not in REPLICATION_MODES:
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


class NetworkSpec(_Section):
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


class WorkloadSpec(_Section):
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


class FaultEvent(_Section):
    """One scheduled fault. ``target`` is an address (``n3``, ``o1``) or a role (``master:0``,
    ``slave:1``, ``leader``, ``any-node``); roles are resolved when the fault fires."""

    at_ms: int
    kind: str
    target: str = "any-node"
    duration_ms: int = 2000


class MembershipEvent(_Section):
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


class FaultSpec(_Section):
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


class Scenario(_Section):
    name: str = "default"
    duration_ms: int = 10_000
    settle_ms: int = 3_000  # before the workload starts: elections, the first map, syncs
    liveness_timeout_ms: int = 15_000
    cluster: ClusterSpec = msgspec.field(default_factory=ClusterSpec)
    network: NetworkSpec = msgspec.field(default_factory=NetworkSpec)
    workload: WorkloadSpec = msgspec.field(default_factory=WorkloadSpec)
    faults: FaultSpec = msgspec.field(default_factory=FaultSpec)
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

    def with_changes(self, **sections: Any) -> Scenario:
        """A validated copy with some section fields replaced.

        Example: ``with_changes(cluster={"replication_mode": "sync"})``.
        """
        updates: dict[str, Any] = {}
        for name, values in sections.items():
            current = getattr(self, name)
            updates[name] = msgspec.structs.replace(current, **values) if isinstance(values, dict) else values
        return msgspec.structs.replace(self, **updates).validate()

    # ---------------------------------------------------------------- parsing

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Check every key and type with msgspec (strict: ``"3"`` is not a number), then the values."""
        if not isinstance(data, dict):
            raise ConfigError("a scenario must be a table of keys")
        try:
            scenario = msgspec.convert(data, cls, strict=True)
        except msgspec.ValidationError as error:
            raise _refusal(error) from None
        return scenario.validate()

    @classmethod
    def from_toml(cls, text: str) -> Scenario:
        try:
            data = msgspec.toml.decode(text)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"scenario is not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        return cls.from_toml(Path(path).read_text())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), for summaries and CSV provenance."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


#: The scenario's tables by their path in the file (list entries without their index).
_SECTIONS: dict[str, type[_Section]] = {
    "cluster": ClusterSpec,
    "network": NetworkSpec,
    "workload": WorkloadSpec,
    "faults": FaultSpec,
    "faults.schedule": FaultEvent,
    "membership": MembershipEvent,
}
