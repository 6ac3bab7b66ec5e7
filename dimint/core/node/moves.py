"""Online range migration: the protocol of one move, and the bookkeeping of its source and target.

Theory of operation
-------------------
A rebalance (``ClusterMap.rebalance``) is a list of moves, one per (source shard, target shard)
pair of ``plan(placement, target_placement)``. The Overlord leader starts them one after another
(``state="copying"`` with a fresh ``attempt``); the source shard's master drives the copy:

1. **Select.** The moving keys are those whose hash the current placement gives to the source and
   the target placement gives to the target (vectorised over the whole store, once per attempt).
2. **Copy + stream.** The source sends numbered ``MigrateBatch``es. Each carries first the *deltas*
   (write ops that touched moving keys since the previous batch was built), then ``put`` ops of the
   next snapshot keys, read when the batch is built. Applied in order this converges: a key's put
   reflects every delta before it, and every later delta follows it. Batch 0 tells the target to
   clear whatever an earlier, aborted attempt left behind. A window bounds batches in flight and a
   token bucket bounds keys and bytes per second, so a large move neither starves clients nor
   delays heartbeats into a false failover; batches are cut by bytes, so one big value travels
   alone instead of holding a whole batch back.
   Before any key, the batches carry the source's client sessions (``dimint.core.dedup``): every
   client's floor, and the saved outcomes of writes to the moving keys; deltas carry the session
   ops of writes made during the copy. So a copy of a write executed here, arriving at the target
   after the switch, is answered from the table there instead of running a second time.
3. **Replicate on the target.** The target master applies each batch to its store *and appends it to
   its own replication log*, then acknowledges (cumulatively) only once the batch is replicated to
   at least one slave (or to the cluster's stronger mode): the moved data never lives on one copy.
4. **Freeze.** When every snapshot batch is acknowledged the source freezes the moving keys (writes
   and strong reads answer ``FROZEN``; clients back off and retry), sends the remaining deltas as the
   ``final`` batch and, once that is acknowledged, reports ``ready`` to the Overlords.
5. **Switch.** The leader marks the move ``switched`` with a version-checked map write, but only if
   the report's attempt and both shard epochs still match the map. From that map on the target owns
   the keys and the source answers ``MOVED``; the source's master then deletes them through its log.

Any change of either master (failover, restart) restarts the move with a new attempt, so a stream
from a deposed node is never trusted; ownership did not change, so restarting is always safe.

This module holds the bookkeeping; ``dimint.core.node.migration`` wires it to the node's messages,
timers and log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dimint.core.clustermap import ClusterMap, MoveInfo
from dimint.core.placement import Placement

MoveKey = tuple[int, int, int, int]  # (rebalance_id, source, target, attempt)


def move_key(rebalance_id: int, move: MoveInfo) -> MoveKey:
    return (rebalance_id, move.source, move.target, move.attempt)


@dataclass(frozen=True, slots=True)
class MoveSelector:
    """Which key hashes a (source -> target) move carries: old owner is source, new owner target."""

    old: Placement
    new: Placement
    source: int
    target: int

    def selects(self, h: int) -> bool:
        return self.old.owner_of_hash(h) == self.source and self.new.owner_of_hash(h) == self.target

    def mask(self, hashes: np.ndarray) -> np.ndarray:
        return (self.old.owners_of_hashes(hashes) == self.source) & (
            self.new.owners_of_hashes(hashes) == self.target
        )

    @classmethod
    def of(cls, cmap: ClusterMap, source: int, target: int) -> MoveSelector | None:
        if cmap.rebalance is None:
            return None
        return cls(cmap.placement, cmap.rebalance.target, source, target)


def op_key(op: Any) -> bytes | None:
    """The key a store write op touches (None for range ops such as ``drop``)."""
    if op and op[0] != "drop" and len(op) > 1 and isinstance(op[1], bytes):
        return op[1]
    return None


def session_op_selected(op: list[Any], selects: Any) -> bool:
    """Whether a ``session`` op concerns a move: one of its results touched a moving key."""
    return any(hashes is None or any(selects(h) for h in hashes) for _, _, hashes in op[5])


@dataclass(slots=True)
class OutgoingMove:
    """Source side of one move attempt."""

    key: MoveKey
    selector: MoveSelector
    keys: list[bytes]
    started_ms: int
    cursor: int = 0
    deltas: list[Any] = field(default_factory=list)
    #: The source's client sessions for the target (``DedupTable.ops_for_move``), sent before keys.
    sessions: list[Any] = field(default_factory=list)
    session_cursor: int = 0
    outbox: dict[int, list[Any]] = field(default_factory=dict)
    sent_at_ms: dict[int, int] = field(default_factory=dict)
    next_batch: int = 0
    acked: int = -1
    frozen_at_ms: int | None = None
    final_batch: int | None = None
    ready_at_ms: int | None = None
    next_send_ms: int = 0
    keys_sent: int = 0
    bytes_sent: int = 0
    deltas_sent: int = 0

    @property
    def frozen(self) -> bool:
        return self.frozen_at_ms is not None

    @property
    def ready(self) -> bool:
        return self.ready_at_ms is not None

    @property
    def snapshot_done(self) -> bool:
        return self.cursor >= len(self.keys) and self.session_cursor >= len(self.sessions)

    def acknowledge(self, batch_no: int, now_ms: int) -> bool:
        """Record a cumulative ack; True when it completed the final batch (the move is ready)."""
        if batch_no <= self.acked or batch_no >= self.next_batch:
            return False
        self.acked = batch_no
        for number in [n for n in self.outbox if n <= batch_no]:
            del self.outbox[number]
            self.sent_at_ms.pop(number, None)
        if self.final_batch is not None and batch_no >= self.final_batch and self.ready_at_ms is None:
            self.ready_at_ms = now_ms
            return True
        return False


@dataclass(slots=True)
class IncomingMove:
    """Target side of one move attempt: batches applied in order, acked once replicated."""

    key: MoveKey
    expected: int = 0
    waiting: list[tuple[int, int]] = field(default_factory=list)  # (batch_no, log seq) not yet durable
    durable: int = -1  # highest batch known replicated
    final_batch: int | None = None
