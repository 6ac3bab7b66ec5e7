"""The slave role: apply the master's log in order, resync by tail or snapshot, and know how stale.

Theory of operation
-------------------
Log matching (Raft's rule, which holds because each shard epoch has exactly one master appending
in order). A ``Replicate`` carries ``(prev_seq, prev_epoch)``, the position just before its first
entry; the slave applies entries only if its own last position is one of the message's positions
with the same epoch. Anything else, a gap after a lost message, a reordered message, or a tail that
diverged under a dead master, is resolved by one path: a ``SyncRequest`` with the slave's position,
answered with the missing tail when the master's log still matches, else with a full snapshot.

Snapshots. Each request carries a fresh token (counted by the node, never reset, so no answer to an
earlier request can match a later one) and supersedes the previous one: only the snapshot that
echoes the latest token is installed, and only once every chunk arrived; store and dedup table are
rebuilt aside and swapped in, so a snapshot either is refused whole or replaces both. While a
snapshot may be on its way the slave waits ``snapshot_wait_ms`` before asking again.

Fencing. Replication from a lower shard epoch is refused (a deposed master); a higher one means
this node's map is behind, so it re-reads the map before trusting anyone.

Staleness (invariant 5 for weak reads). Heartbeats carry the master's position and send time; the
newest beat whose position the slave has caught up to bounds its lag from above. A slave that never
synced has no bound (``None``) and refuses bounded weak reads.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from dimint.core.dedup import DedupTable, check_op, is_session_op
from dimint.core.effects import Effect, Send, Trace
from dimint.core.errors import RemoteProtocolError
from dimint.core.node.config import Role
from dimint.core.protocol import (
    Heartbeat,
    HeartbeatAck,
    PositionQuery,
    PositionReply,
    Replicate,
    ReplicateAck,
    SnapshotChunk,
    SyncRequest,
)
from dimint.core.store import Store

if TYPE_CHECKING:
    from dimint.core.node.node import DataNode

__all__ = ["SlaveRole"]

_NEVER_MS = -(10**12)


class SlaveRole:
    """What a slave knows beyond the replica it shares with every role (see the module docstring)."""

    role = Role.SLAVE

    def __init__(self, node: DataNode, master_id: str | None) -> None:
        self.node = node
        self.master_id = master_id
        self.last_sync_request_ms = _NEVER_MS
        self.snapshot_buffer: dict[int, tuple[list[Any], list[Any]]] = {}
        self.snapshot_key: tuple[int, int] | None = None
        self.awaiting_sync: int | None = None  # token of the request a snapshot may answer
        self.heartbeats: deque[tuple[int, int]] = deque(maxlen=64)  # (seq, sent_at_ms) from master
        self.fresh_at_ms: int | None = None

    def check_invariants(self) -> None:
        """Nothing a slave holds can contradict itself: positions are the node's, and checked there."""

    def close(self, out: list[Effect], why: str) -> None:
        """Leaving the role: a slave holds no replies, so there is nothing to answer."""

    # ================================================================ syncing

    def request_sync(self, now_ms: int, out: list[Effect], *, force: bool = False) -> None:
        """Ask the master for the tail after our position, or a snapshot (see the module docstring)."""
        node = self.node
        if self.master_id is None or node.shard_id is None:
            return
        if not force:
            if now_ms - self.last_sync_request_ms < node.config.sync_retry_ms:
                return
            if (
                self.awaiting_sync is not None
                and now_ms - self.last_sync_request_ms < node.config.snapshot_wait_ms
            ):
                return
        self.last_sync_request_ms = now_ms
        node.sync_token += 1
        self.awaiting_sync = node.sync_token
        self.snapshot_buffer = {}
        self.snapshot_key = None
        out.append(
            Send(
                node.address_of(self.master_id),
                SyncRequest(
                    node.shard_id,
                    node.shard_epoch,
                    node.node_id,
                    node.applied_seq,
                    node.last_epoch,
                    node.sync_token,
                ),
            )
        )

    def _from_my_master(self, source: str, shard_id: int, shard_epoch: int, out: list[Effect]) -> bool:
        node = self.node
        if shard_id != node.shard_id:
            return False
        if shard_epoch < node.shard_epoch:
            out.append(
                Trace(
                    "stale_epoch_rejected",
                    {"node": node.node_id, "shard": shard_id, "got": shard_epoch, "have": node.shard_epoch},
                )
            )
            return False
        if shard_epoch > node.shard_epoch:
            node.read_map(out, watch=False)  # our map is behind; learn the new master first
            return False
        return self.master_id is not None and source == node.address_of(self.master_id)

    # ================================================================ replication

    def on_replicate(self, source: str, message: Replicate, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        if not self._from_my_master(source, message.shard_id, message.shard_epoch, out):
            return
        last_in_message = message.entries[-1][0] if message.entries else message.prev_seq
        if node.applied_seq > last_in_message:
            # An old or duplicated message: nothing to apply; re-ack our position (the master checks it).
            self._ack(source, out)
            return
        if node.applied_seq < message.prev_seq:
            self.request_sync(now_ms, out)  # a gap: something before this message was lost
            return
        position = {message.prev_seq: message.prev_epoch}
        for seq, epoch, _ in message.entries:
            position[seq] = epoch
        if position.get(node.applied_seq) != node.last_epoch:
            self.request_sync(now_ms, out)  # our tail diverged from this master's log
            return
        applied_any = False
        for seq, epoch, writes in message.entries:
            if seq != node.applied_seq + 1:
                continue
            try:
                self._apply_entry(writes, seq, now_ms)  # checks every op before applying any
            except RemoteProtocolError as exc:
                out.append(
                    Trace("bad_replicate", {"node": node.node_id, "shard": node.shard_id, "error": str(exc)})
                )
                break
            node.applied_seq = seq
            node.last_epoch = epoch
            applied_any = True
        if applied_any:
            node.progress_at_ms = now_ms
            # Progress by log matching: no snapshot is needed, and a late one must not roll us back.
            self.awaiting_sync = None
            self._note_fresh()
        self._ack(source, out)

    def _apply_entry(self, writes: list[Any], log_seq: int, now_ms: int) -> None:
        """Apply one replicated entry: store ops to the store, ``session`` ops to the dedup table.

        Every op is checked before anything changes, so a bad entry raises ``RemoteProtocolError``
        and leaves both as they were.
        """
        node = self.node
        session_ops = [op for op in writes if is_session_op(op)]
        if not session_ops:
            node.store.apply(writes, now_ms)
            return
        for op in session_ops:
            check_op(op)
        node.store.apply([op for op in writes if not is_session_op(op)], now_ms)
        for op in session_ops:
            node.sessions.apply(op, log_seq)

    def _ack(self, master_address: str, out: list[Effect]) -> None:
        node = self.node
        out.append(
            Send(
                master_address,
                ReplicateAck(
                    node.shard_id, node.shard_epoch, node.node_id, node.applied_seq, node.last_epoch
                ),
            )
        )

    def on_snapshot_chunk(self, source: str, chunk: SnapshotChunk, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        if not self._from_my_master(source, chunk.shard_id, chunk.shard_epoch, out):
            return
        if chunk.sync_token != self.awaiting_sync:
            # A duplicate, or the answer to a request we have since superseded: installing it could
            # roll us back below a position we already acknowledged.
            out.append(
                Trace(
                    "stale_snapshot_ignored",
                    {
                        "node": node.node_id,
                        "shard": node.shard_id,
                        "token": chunk.sync_token,
                        "awaiting": self.awaiting_sync,
                    },
                )
            )
            return
        key = (chunk.snapshot_seq, chunk.snapshot_epoch)
        if self.snapshot_key != key:
            self.snapshot_key = key
            self.snapshot_buffer = {}
        self.snapshot_buffer[chunk.chunk_no] = (chunk.items, chunk.sessions)
        if not chunk.last:
            return
        if sorted(self.snapshot_buffer) != list(range(chunk.chunk_no + 1)):
            self.request_sync(now_ms, out, force=True)  # a chunk went missing: ask again
            return
        # Restore into a new store and table and swap, so a snapshot either refuses changes nothing.
        restored = Store(node.config.store_limits)
        table = DedupTable(node.config.dedup)
        try:
            sessions: list[Any] = []
            for number in range(chunk.chunk_no + 1):
                items, chunk_sessions = self.snapshot_buffer[number]
                restored.restore(items)
                sessions.extend(chunk_sessions)
            table.restore(sessions, key[0])
        except RemoteProtocolError as exc:
            self.snapshot_buffer = {}
            self.snapshot_key = None
            out.append(
                Trace("bad_snapshot", {"node": node.node_id, "shard": node.shard_id, "error": str(exc)})
            )
            return
        node.store = restored
        node.sessions = table
        self.snapshot_buffer = {}
        self.snapshot_key = None
        self.awaiting_sync = None
        node.applied_seq, node.last_epoch = key
        node.progress_at_ms = now_ms
        self._note_fresh()
        out.append(
            Trace(
                "snapshot_installed",
                {
                    "node": node.node_id,
                    "shard": node.shard_id,
                    "seq": node.applied_seq,
                    "keys": node.store.key_count,
                },
            )
        )
        self._ack(source, out)

    # ================================================================ liveness and freshness

    def on_heartbeat(self, source: str, beat: Heartbeat, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        if not self._from_my_master(source, beat.shard_id, beat.shard_epoch, out):
            return
        self.heartbeats.append((beat.seq, beat.sent_at_ms))
        self._note_fresh()
        behind_without_progress = (
            beat.seq > node.applied_seq and now_ms - node.progress_at_ms >= node.config.heartbeat_interval_ms
        )
        diverged = beat.seq < node.applied_seq or (
            beat.seq == node.applied_seq and beat.last_epoch != node.last_epoch
        )
        if behind_without_progress or diverged:
            self.request_sync(now_ms, out)
        out.append(
            Send(
                source,
                HeartbeatAck(
                    node.shard_id, node.shard_epoch, node.node_id, node.applied_seq, node.last_epoch
                ),
            )
        )

    def _note_fresh(self) -> None:
        """Advance the freshness watermark: the master's send time of the newest beat we have caught up to."""
        applied = self.node.applied_seq
        for seq, sent_at in self.heartbeats:
            if seq <= applied and (self.fresh_at_ms is None or sent_at > self.fresh_at_ms):
                self.fresh_at_ms = sent_at

    def staleness_ms(self, now_ms: int) -> int | None:
        """Upper bound on how far this replica lags the master, or None when unknown (never synced)."""
        if self.fresh_at_ms is None:
            return None
        return max(0, now_ms - self.fresh_at_ms)

    def tick(self, now_ms: int, out: list[Effect]) -> None:
        """The heartbeat timer: a slave that never synced asks again."""
        if self.fresh_at_ms is None:
            self.request_sync(now_ms, out)

    # ================================================================ failover

    def on_position_query(self, source: str, query: PositionQuery, now_ms: int, out: list[Effect]) -> None:
        """The leader asks before choosing whom to promote: only a slave of the shard answers."""
        node = self.node
        if query.shard_id != node.shard_id:
            node.ignore_position_query(query, out)
            return
        out.append(
            Send(
                source,
                PositionReply(
                    query.request_id,
                    node.node_id,
                    query.shard_id,
                    node.shard_epoch,
                    node.last_epoch,
                    node.applied_seq,
                ),
            )
        )
