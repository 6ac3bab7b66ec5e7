"""A data node's knobs and roles: what the operator sets, and what the map makes of the node.

Why a module of its own: the configuration loaders (``dimint.real.config``, the simulator's
scenario) read every field of ``NodeConfig`` as a key, and the admission table and every role
refer to ``Role``; neither needs the machinery of the roles themselves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dimint.core.dedup import DedupConfig
from dimint.core.store import StoreLimits

__all__ = ["NodeConfig", "Role", "TimerKey"]


class Role(enum.StrEnum):
    STARTING = "starting"  # no map yet
    SPARE = "spare"  # registered, serves no shard
    MASTER = "master"
    SLAVE = "slave"


class TimerKey(enum.StrEnum):
    """The node's named timers (``SetTimer(key, at_ms)`` replaces any earlier deadline of ``key``)."""

    HEARTBEAT = "heartbeat"  # a master beats and resends tails; a slave that never synced asks again
    REPORT = "report"  # the NodeReport (and a source master's MoveReport) to every Overlord
    MIGRATE = "migrate"  # the migration pump: the rate limit allows a batch, or one is overdue
    PENDING = "pending"  # the oldest held reply's write_timeout_ms deadline


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Timing and sizing knobs of a data node; every duration in milliseconds."""

    heartbeat_interval_ms: int = 100
    report_interval_ms: int = 250
    write_timeout_ms: int = 2_000
    replica_timeout_ms: int = 1_000
    sync_retry_ms: int = 300
    snapshot_wait_ms: int = 1_000
    max_staleness_ms: int | None = None
    log_retention: int = 20_000
    replicate_batch: int = 500
    snapshot_chunk_items: int = 1_000
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # Migration (source side): batch size by keys and bytes, batches in flight, and the rate limit
    # that keeps a large rebalance from starving clients or delaying heartbeats.
    migrate_batch_keys: int = 500
    migrate_batch_bytes: int = 256 * 1024
    migrate_window: int = 4
    migrate_keys_per_s: int = 200_000
    migrate_bytes_per_s: int = 64 * 1024 * 1024
    migrate_retry_ms: int = 300
    sweep_batch_keys: int = 1_000
    #: At-most-once execution of identified clients' writes, and the bounds of its table. Turning it
    #: off is for experiments only: it shows what duplicated and retried requests do without it.
    at_most_once: bool = True
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval_ms",
            "report_interval_ms",
            "write_timeout_ms",
            "replica_timeout_ms",
            "sync_retry_ms",
            "snapshot_wait_ms",
            "log_retention",
            "replicate_batch",
            "snapshot_chunk_items",
            "migrate_batch_keys",
            "migrate_batch_bytes",
            "migrate_window",
            "migrate_keys_per_s",
            "migrate_bytes_per_s",
            "migrate_retry_ms",
            "sweep_batch_keys",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"NodeConfig.{name} must be a positive int, got {value!r}")
