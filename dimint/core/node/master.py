"""The master role: the log, commits by replication mode, held replies, acks, the in-sync set,
serving slaves' syncs, and executing writes at most once.

Theory of operation
-------------------
Acknowledgement (invariant 3). A write is applied locally, appended to the log, replicated, and
the client is answered once the write is *committed* by the cluster's mode: ``async`` at once;
``semi-sync`` when at least one in-sync slave acknowledged it; ``sync`` when every in-sync slave
did. An ack counts only if it names a position of this master's own log, so by log matching that
slave holds every entry up to it; a slave that diverged under a dead master cannot sneak in. Held
replies that cannot commit in ``write_timeout_ms`` are answered ``TIMEOUT``: their outcome is
unknown, never reported as failed. Nothing is known committed under a new mastership until its
in-sync slaves acknowledge it, and a fenced master acknowledges nothing even if slaves caught up.

In-sync set. The master asks the Overlords to drop a slave that stopped acknowledging and to
re-admit one that caught up; the change takes effect only through a new map, so promotion (which
picks among in-sync slaves) always sees a set that covers every committed write. A slave whose
removal is pending no longer counts towards semi-sync commits, and in semi-sync the only in-sync
slave holding a committed write is never dropped.

At most once (invariant 8). Every write of an identified client is looked up in the shard's dedup
table before it runs: a duplicate gets the saved outcome once its entry commits, a copy below the
client's floor is refused ``STALE_REQUEST``. A write that runs appends its outcome (a refusal by the
store included) as a ``session`` op in its own log entry, so every replica learns both at once.

Syncs. A slave's ``SyncRequest`` at a position of this log gets the tail after it; any other
position (behind the retained log, or diverged) gets a full snapshot, dedup table included.

All of this state exists only while the node is master: ``MasterRole`` is built when the node
becomes master and dropped when it stops, answering every held reply as unknown on the way out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dimint.core.clustermap import ReplicationMode, ShardInfo
from dimint.core.dedup import (
    SavedResult,
    Verdict,
    error_outcome,
    is_session_op,
    ok_outcome,
    record_op,
)
from dimint.core.effects import Effect, Reply, Send, SetTimer, Trace
from dimint.core.errors import CommandError, ErrorCode
from dimint.core.hashing import FULL_RANGE, key_hash
from dimint.core.node.config import Role, TimerKey
from dimint.core.node.log import ReplicationLog, wire_form, wire_ops
from dimint.core.node.moves import op_key, session_op_selected
from dimint.core.protocol import (
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    InSyncChange,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    SyncRequest,
)

if TYPE_CHECKING:
    from dimint.core.node.node import DataNode

__all__ = ["MasterRole"]


@dataclass(slots=True)
class Pending:
    """A client reply held back until ``seq`` commits."""

    seq: int
    destination: str
    request_id: int
    reply: Response | ErrorReply
    deadline_ms: int


class MasterRole:
    """What a master knows beyond the replica it shares with every role (see the module docstring)."""

    role = Role.MASTER

    def __init__(self, node: DataNode, log: ReplicationLog, now_ms: int) -> None:
        self.node = node
        self.log = log
        self.commit_seq = 0
        self.acks: dict[str, int] = {}
        self.ack_at_ms: dict[str, int] = {}
        self.removal_requested: set[str] = set()
        self.add_requested: set[str] = set()
        self.pending: deque[Pending] = deque()
        self.became_master_at_ms = now_ms
        # The log this master took over: the old master may have acknowledged any of it, so a slave
        # is re-admitted to the in-sync set only once it holds all of it (see _manage_in_sync).
        self.inherited_seq = node.applied_seq

    def check_invariants(self) -> None:
        node = self.node
        if self.commit_seq > node.applied_seq:
            raise node.violation(f"commit {self.commit_seq} > applied {node.applied_seq}")
        if self.log and self.log.last_seq != node.applied_seq:
            raise node.violation(f"log tail {self.log.last_seq} != applied {node.applied_seq}")
        if self.pending and not self.pending[0].seq <= self.pending[-1].seq:
            raise node.violation("pending replies out of order")

    def close(self, out: list[Effect], why: str) -> None:
        """Leaving the role: answer held replies as unknown (the writes were applied here and may yet
        survive)."""
        while self.pending:
            item = self.pending.popleft()
            out.append(Reply(item.destination, ErrorReply(item.request_id, ErrorCode.TIMEOUT, why)))

    def map_update(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        members = set(shard.slaves)
        for gone in [n for n in self.acks if n not in members]:
            self.acks.pop(gone, None)
            self.ack_at_ms.pop(gone, None)
        self.removal_requested &= set(shard.in_sync)
        self.add_requested -= set(shard.in_sync)
        for slave in shard.slaves:
            self.ack_at_ms.setdefault(slave, now_ms)
        self.advance_commit(now_ms, out)

    # ================================================================ writes

    def on_write(
        self, source: str, request: Request, hashes: list[int], now_ms: int, out: list[Effect]
    ) -> None:
        """A new write the admission table let through: enough replicas in sync, then run it."""
        node = self.node
        cmap = node.map
        assert cmap is not None and node.shard_id is not None
        shard = cmap.shards[node.shard_id]
        if cmap.replication_mode != ReplicationMode.ASYNC and len(shard.in_sync) < cmap.min_in_sync:
            node.error(
                source,
                request,
                ErrorCode.NOT_ENOUGH_REPLICAS,
                f"shard {node.shard_id} has {len(shard.in_sync)} in-sync slaves, needs {cmap.min_in_sync}",
                out,
            )
            return
        node.execute(source, request, now_ms, out, wait_commit=True, hashes=hashes)

    def known_write(self, source: str, request: Request, now_ms: int, out: list[Effect]) -> bool:
        """Answer a copy of a write the dedup table knows, before anything could refuse it.

        A copy of an executed write must never be refused with a code that says "not applied"
        (FENCED, FROZEN, NOT_ENOUGH_REPLICAS): its client would take that for a definite failure of
        a write that did happen. So the table is asked first; True when it answered.
        """
        node = self.node
        found = node.sessions.lookup(request.client_id, request.seq)
        if found.verdict is Verdict.DUPLICATE:
            assert found.saved is not None
            self._answer_duplicate(source, request, found.saved, now_ms, out)
            return True
        if found.verdict is Verdict.STALE:
            node.stale_refused += 1
            out.append(
                Trace(
                    "stale_request", {"node": node.node_id, "client": request.client_id, "seq": request.seq}
                )
            )
            node.error(
                source,
                request,
                ErrorCode.STALE_REQUEST,
                f"write {request.seq} of client {request.client_id} is below what the shard still "
                "tracks for that client (it finished with it): a late copy, not executed",
                out,
            )
            return True
        return False

    def _answer_duplicate(
        self, source: str, request: Request, saved: SavedResult, now_ms: int, out: list[Effect]
    ) -> None:
        """Repeat what the first execution answered, once its log entry has committed and this
        master can vouch for it (a fenced master holds the answer; it ends TIMEOUT if fencing lasts)."""
        self.node.duplicates_answered += 1
        kind = saved.outcome[0]
        reply: Response | ErrorReply
        if kind == "ok":
            reply = Response(request.request_id, saved.outcome[1])
        elif kind == "error":
            reply = ErrorReply(request.request_id, ErrorCode(saved.outcome[1]), saved.outcome[2])
        else:
            reply = ErrorReply(
                request.request_id,
                ErrorCode.RESULT_NOT_KEPT,
                f"write {request.seq} of client {request.client_id} was executed once already; its "
                f"{saved.outcome[1]}-byte result was too large to keep",
            )
        out.append(
            Trace(
                "duplicate_request",
                {
                    "node": self.node.node_id,
                    "client": request.client_id,
                    "seq": request.seq,
                    "log_seq": saved.log_seq,
                    "outcome": kind,
                },
            )
        )
        if saved.log_seq <= self.commit_seq and not self.node.fenced:
            out.append(Reply(source, reply))
        else:
            self.hold_reply(source, reply, now_ms, out)

    def execute_identified(
        self,
        source: str,
        request: Request,
        hashes: list[int],
        now_ms: int,
        out: list[Effect],
        wait_commit: bool,
    ) -> None:
        """Run an identified client's write and append its outcome with its ops (a store refusal
        included: a late copy must not turn a refused write into a success), even when the write
        changed nothing, answering only once that entry commits."""
        node = self.node
        try:
            outcome = node.store.execute(request.command, request.args, now_ms)
        except CommandError as exc:
            if not node.config.at_most_once:
                node.error(source, request, exc.code, exc.reason, out)
                return
            epoch = node.map.epoch if node.map is not None else 0
            self._record_execution(request, error_outcome(exc.code, exc.reason), hashes, [], now_ms, out)
            self.reply_when_committed(
                source, ErrorReply(request.request_id, exc.code, exc.reason, epoch), now_ms, out
            )
            return
        node.ops_served += 1
        saved = ok_outcome(outcome.value, node.config.dedup.max_result_bytes)
        self._record_execution(request, saved, hashes, list(outcome.writes), now_ms, out)
        if wait_commit:
            self.reply_when_committed(source, Response(request.request_id, outcome.value), now_ms, out)
        else:
            out.append(Reply(source, Response(request.request_id, outcome.value)))

    def _record_execution(
        self,
        request: Request,
        saved: list[Any],
        hashes: list[int] | None,
        writes: list[Any],
        now_ms: int,
        out: list[Effect],
    ) -> None:
        """Append a write's ops with its ``session`` op, so every replica learns both at once."""
        node = self.node
        if node.config.at_most_once:
            writes.append(record_op(request.client_id, request.seq, request.floor, now_ms, saved, hashes))
        if writes:
            self.append(writes, now_ms, out)
        out.append(
            Trace(
                "write_executed",
                {
                    "node": node.node_id,
                    "shard": node.shard_id,
                    "client": request.client_id,
                    "seq": request.seq,
                    "log_seq": node.applied_seq,
                    "shard_epoch": node.shard_epoch,
                },
            )
        )

    def reply_when_committed(
        self, destination: str, reply: Response | ErrorReply, now_ms: int, out: list[Effect]
    ) -> None:
        if self.commit_seq >= self.node.applied_seq:
            out.append(Reply(destination, reply))
            return
        self.hold_reply(destination, reply, now_ms, out)

    def hold_reply(
        self, destination: str, reply: Response | ErrorReply, now_ms: int, out: list[Effect]
    ) -> None:
        """Answer once everything appended so far commits (and the master is unfenced), or TIMEOUT."""
        node = self.node
        item = Pending(
            node.applied_seq, destination, reply.request_id, reply, now_ms + node.config.write_timeout_ms
        )
        if not self.pending:
            out.append(SetTimer(TimerKey.PENDING, item.deadline_ms))
        self.pending.append(item)

    # ================================================================ log and commit

    def append(self, writes: list[Any], now_ms: int, out: list[Effect], *, wire_form: bool = False) -> None:
        """Log ``writes`` and replicate them; ``wire_form=True`` says they are lists all through
        already (decoded from a frame, or built as lists here), which spares copying them again.

        ``session`` ops join the dedup table at this entry's position, and whatever touches the
        keys of a move in progress is forwarded to its target as a delta.
        """
        node = self.node
        seq = node.applied_seq + 1
        prev = (node.applied_seq, node.last_epoch)
        if not wire_form:
            writes = wire_ops(writes)
        move = node.migration.out_move
        for op in writes:
            if is_session_op(op):
                node.sessions.apply(op, seq)
                if move is not None and not move.ready and session_op_selected(op, move.selector.selects):
                    move.deltas.append(op)
            elif move is not None and not move.ready:
                key = op_key(op)
                if key is not None and move.selector.selects(key_hash(key)):
                    move.deltas.append(op)
        self.log.append(seq, node.shard_epoch, writes)
        node.applied_seq = seq
        node.last_epoch = node.shard_epoch
        shard = node.map.shards[node.shard_id] if node.map and node.shard_id is not None else None
        if shard is not None:
            message = Replicate(
                node.shard_id,
                node.shard_epoch,
                prev[0],
                prev[1],
                [[seq, node.shard_epoch, writes]],
                self.commit_seq,
            )
            for slave in shard.slaves:
                out.append(Send(node.address_of(slave), message))
        self.advance_commit(now_ms, out)

    def advance_commit(self, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        if node.map is None or node.shard_id is None:
            return
        shard = node.map.shards.get(node.shard_id)
        if shard is None:
            return
        mode = node.map.replication_mode
        if mode != ReplicationMode.ASYNC and len(shard.in_sync) < node.map.min_in_sync:
            # Below the configured minimum nothing new commits, not even writes accepted before
            # the in-sync set shrank: acknowledging them would claim durability we do not have.
            candidate = self.commit_seq
        elif mode == ReplicationMode.ASYNC:
            candidate = node.applied_seq
        else:
            counted = [self.acks.get(s, -1) for s in shard.in_sync if s not in self.removal_requested]
            need = min(1, len(shard.in_sync)) if mode == ReplicationMode.SEMI_SYNC else len(shard.in_sync)
            if need == 0:
                candidate = node.applied_seq
            elif len(counted) < need:
                candidate = self.commit_seq
            else:
                candidate = sorted(counted, reverse=True)[need - 1]
        candidate = min(candidate, node.applied_seq)
        if candidate > self.commit_seq:
            self.commit_seq = candidate
        if node.fenced:
            return  # a fenced master acknowledges nothing, even if slaves caught up
        if node.migration.in_moves:
            node.migration.ack_incoming(out)
        while self.pending and self.pending[0].seq <= self.commit_seq:
            item = self.pending.popleft()
            out.append(Reply(item.destination, item.reply))

    def expire_pending(self, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        while self.pending and self.pending[0].deadline_ms <= now_ms:
            item = self.pending.popleft()
            out.append(
                Reply(
                    item.destination,
                    ErrorReply(
                        item.request_id,
                        ErrorCode.TIMEOUT,
                        f"not replicated to the {node.map.replication_mode if node.map else ''} degree "
                        f"within "
                        f"{node.config.write_timeout_ms} ms; outcome unknown",
                    ),
                )
            )
        if self.pending:
            out.append(SetTimer(TimerKey.PENDING, self.pending[0].deadline_ms))

    def durable_seq(self) -> int:
        """The highest log position replicated enough for a migration to count on it.

        The cluster's commit rule, but never weaker than one slave when the shard has in-sync
        slaves: moved data must not live on a single copy even in async mode.
        """
        node = self.node
        assert node.map is not None and node.shard_id is not None
        shard = node.map.shards[node.shard_id]
        if node.map.replication_mode == ReplicationMode.ASYNC:
            if not shard.in_sync:
                return node.applied_seq
            return max(self.acks.get(s, -1) for s in shard.in_sync)
        return self.commit_seq

    # ================================================================ slaves' acks and syncs

    def on_ack(self, source: str, ack: ReplicateAck | HeartbeatAck, now_ms: int, out: list[Effect]) -> None:
        """Both acks report a slave's log position; only this master's current shard epoch counts."""
        node = self.node
        if ack.shard_id != node.shard_id or ack.shard_epoch != node.shard_epoch:
            return
        self._record_ack(ack.node_id, ack.applied_seq, ack.applied_epoch, now_ms, out)

    def _record_ack(
        self, node_id: str, applied_seq: int, applied_epoch: int, now_ms: int, out: list[Effect]
    ) -> None:
        node = self.node
        shard = node.map.shards.get(node.shard_id) if node.map and node.shard_id is not None else None
        if shard is None or node_id not in shard.slaves:
            return
        # An ack counts only if it names a position of *our* log: by log matching, that slave then
        # holds every entry up to it. A slave that diverged under a dead master cannot sneak in.
        if applied_seq > node.applied_seq or self.log.epoch_at(applied_seq) != applied_epoch:
            return
        if applied_seq >= self.acks.get(node_id, -1):
            self.acks[node_id] = applied_seq
        self.ack_at_ms[node_id] = now_ms
        self.advance_commit(now_ms, out)

    def on_sync_request(self, source: str, request: SyncRequest, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        if request.shard_id != node.shard_id or node.map is None:
            return
        shard = node.map.shards[node.shard_id]
        if request.node_id not in shard.slaves or request.shard_epoch != node.shard_epoch:
            return
        matches = (
            request.applied_seq <= node.applied_seq
            and self.log.epoch_at(request.applied_seq) == request.applied_epoch
        )
        entries = (
            self.log.entries_after(request.applied_seq, node.config.replicate_batch) if matches else None
        )
        if entries is not None:
            # The slave's position is in our lineage: its acks count from here (it may have restarted
            # lower than we last heard, so this resets rather than maximises).
            # Never lower: a duplicated or delayed request reports an older position than the slave
            # holds (a restarted slave has a new incarnation and leaves the shard instead).
            self.acks[request.node_id] = max(self.acks.get(request.node_id, -1), request.applied_seq)
            self.ack_at_ms.setdefault(request.node_id, now_ms)
            out.append(
                Send(
                    source,
                    Replicate(
                        node.shard_id,
                        node.shard_epoch,
                        request.applied_seq,
                        request.applied_epoch,
                        entries,
                        self.commit_seq,
                    ),
                )
            )
            out.append(
                Trace(
                    "sync_tail",
                    {
                        "node": node.node_id,
                        "slave": request.node_id,
                        "from_seq": request.applied_seq,
                        "entries": len(entries),
                    },
                )
            )
            return
        # Diverged or too far behind: a full snapshot at our current position, dedup table included.
        self.acks[request.node_id] = -1
        items = wire_form(node.store.snapshot([FULL_RANGE], now_ms))
        sessions = node.sessions.snapshot()
        size = node.config.snapshot_chunk_items
        count = max(1, -(-len(items) // size), -(-len(sessions) // size))
        for number in range(count):
            window = slice(number * size, (number + 1) * size)
            out.append(
                Send(
                    source,
                    SnapshotChunk(
                        node.shard_id,
                        node.shard_epoch,
                        node.applied_seq,
                        node.last_epoch,
                        number,
                        items[window],
                        number == count - 1,
                        request.sync_token,
                        sessions[window],
                    ),
                )
            )
        out.append(
            Trace(
                "sync_snapshot",
                {
                    "node": node.node_id,
                    "slave": request.node_id,
                    "seq": node.applied_seq,
                    "items": len(items),
                },
            )
        )

    # ================================================================ heartbeat tick

    def tick(self, now_ms: int, out: list[Effect]) -> None:
        """Beat to every slave, resend tails they should have by now, and mind the in-sync set."""
        node = self.node
        if node.map is None or node.shard_id is None:
            return
        shard = node.map.shards.get(node.shard_id)
        if shard is None:
            return
        beat = Heartbeat(
            node.shard_id, node.shard_epoch, node.node_id, node.applied_seq, node.last_epoch, now_ms
        )
        for slave in shard.slaves:
            out.append(Send(node.address_of(slave), beat))
            acked = self.acks.get(slave, -1)
            # Resend a tail the slave should have by now (lost or reordered messages).
            if (
                0 <= acked < node.applied_seq
                and now_ms - self.ack_at_ms.get(slave, now_ms) >= node.config.heartbeat_interval_ms
            ):
                entries = self.log.entries_after(acked, node.config.replicate_batch)
                epoch = self.log.epoch_at(acked)
                if entries and epoch is not None:
                    out.append(
                        Send(
                            node.address_of(slave),
                            Replicate(
                                node.shard_id, node.shard_epoch, acked, epoch, entries, self.commit_seq
                            ),
                        )
                    )
        if node.fenced or (node.map.replication_mode == ReplicationMode.ASYNC and not shard.slaves):
            return
        self._manage_in_sync(shard, now_ms, out)

    def _manage_in_sync(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        assert node.map is not None
        remove, add = [], []
        for slave in shard.in_sync:
            if slave in self.removal_requested:
                remove.append(slave)
                continue
            lagging = self.acks.get(slave, -1) < node.applied_seq
            silent = (
                now_ms - self.ack_at_ms.get(slave, self.became_master_at_ms) > node.config.replica_timeout_ms
            )
            if lagging and silent:
                others = [
                    self.acks.get(s, -1)
                    for s in shard.in_sync
                    if s != slave and s not in self.removal_requested
                ]
                # Semi-sync: never drop the only in-sync slave holding a committed write.
                if (
                    node.map.replication_mode == ReplicationMode.SEMI_SYNC
                    and self.acks.get(slave, -1) >= self.commit_seq
                    and (max(others, default=-1) < self.commit_seq)
                ):
                    continue
                self.removal_requested.add(slave)
                remove.append(slave)
                out.append(
                    Trace(
                        "in_sync_drop_requested",
                        {
                            "node": node.node_id,
                            "shard": node.shard_id,
                            "slave": slave,
                            "acked": self.acks.get(slave, -1),
                            "applied": node.applied_seq,
                        },
                    )
                )
        for slave in shard.slaves:
            # Re-admit once the slave holds every committed write and all of the log this master
            # inherited (possibly acknowledged by its predecessor); demanding the exact tail would
            # keep it out for ever under a steady write load.
            if (
                slave not in shard.in_sync
                and self.acks.get(slave, -1) >= max(self.commit_seq, self.inherited_seq, 0)
                and self.acks.get(slave, -1) >= 0
            ):
                self.add_requested.add(slave)
                add.append(slave)
        if remove or add:
            change = InSyncChange(
                node.shard_id, node.shard_epoch, node.node_id, sorted(add), sorted(remove), node.map.epoch
            )
            for overlord in node.overlords:
                out.append(Send(overlord, change))
        self.advance_commit(now_ms, out)
