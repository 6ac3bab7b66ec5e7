"""A master's part in online rebalancing: the source's pump, the target's apply, and the sweep.

Theory of operation: ``dimint.core.node.moves`` describes the protocol of one move and holds
its bookkeeping; this module wires it to the node's messages, timers and log. The map alone says
which moves run: after every map install ``update`` starts, resumes, finishes or abandons this
master's outgoing move and keeps only the incoming attempts the map still runs under this node's
shard epoch, so a stream from a deposed node is never trusted and nothing needs manual repair.

Source. The moving keys are selected once per attempt; numbered batches carry the deltas since
the previous batch, then the writers' client sessions (so the target recognises copies of writes
made here), then snapshot ``put``s, bounded by a window and a keys/s plus bytes/s token bucket.
When every snapshot batch is acknowledged the keys freeze, the final deltas go out, and once that
batch is acknowledged the source reports ``ready``; the leader then switches ownership.

Target. Each batch is applied in order *through the target's own replication log* (the store ops
to its store, the session ops to its dedup table) and acknowledged, cumulatively, only once it is
replicated as the master's ``durable_seq`` says. Batch 0 first clears what an aborted attempt left.
A batch that arrives before the map announcing its attempt (the source read it first, or this node
is not master of the target yet) is kept and applied when that map lands.

Sweep. After every ownership change the master deletes, through its log, every key its shard
neither owns nor is receiving, so slaves drop them too and no leftover of a move survives.

This state outlives role changes only as far as the map allows: leaving the master role abandons
the outgoing move and forgets the incoming ones at the next ``update``; the early batches stay, so
a spare that is about to become the target's master keeps what reached it first.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

from dimint.core.clustermap import MOVE_COPYING, MOVE_SWITCHED
from dimint.core.dedup import SESSION_OP, check_op, drop_op, imported, is_session_op, value_bytes
from dimint.core.effects import Effect, Send, SetTimer, Trace
from dimint.core.errors import RemoteProtocolError
from dimint.core.node.config import Role, TimerKey
from dimint.core.node.log import is_sequence, wire_form
from dimint.core.node.moves import IncomingMove, MoveKey, MoveSelector, OutgoingMove, move_key
from dimint.core.protocol import MigrateBatch, MigrateBatchAck, MoveReport

if TYPE_CHECKING:
    from dimint.core.node.master import MasterRole
    from dimint.core.node.node import DataNode

__all__ = ["Migrations"]


class Migrations:
    """The node's outgoing move, incoming moves, early batches and sweep (see the module docstring)."""

    def __init__(self, node: DataNode) -> None:
        self.node = node
        self.out_move: OutgoingMove | None = None
        self.in_moves: dict[MoveKey, IncomingMove] = {}
        # Batches that arrived before the map announcing their attempt (the source saw it first).
        self.early_batches: deque[tuple[str, MigrateBatch]] = deque(maxlen=16)
        self._ownership_seen: tuple[Any, ...] | None = None
        self.keys_swept = 0

    def _master(self) -> MasterRole | None:
        node = self.node
        return node.master if node.role is Role.MASTER else None

    # ================================================================ following the map

    def update(self, now_ms: int, out: list[Effect]) -> None:
        """Align the source and target move state, and the sweep, with the map just installed."""
        node = self.node
        cmap = node.map
        if node.role is not Role.MASTER or cmap is None or node.shard_id is None:
            self._abandon_out_move(out, f"role {node.role.value}")
            self.in_moves.clear()
            self._ownership_seen = None
            return
        rebalance = cmap.rebalance
        current = self.out_move
        if current is not None:
            rebalance_id, source, target, attempt = current.key
            same = rebalance is not None and rebalance.rebalance_id == rebalance_id
            move = rebalance.move(source, target) if same and rebalance is not None else None
            switched = move is not None and move.attempt == attempt and move.state == MOVE_SWITCHED
            # A rebalance leaves the map only once every move switched (none is ever aborted).
            if switched or (not same and current.ready):
                out.append(
                    self._trace(
                        "move_done",
                        (rebalance_id, source, target, attempt),
                        keys=current.keys_sent,
                        bytes=current.bytes_sent,
                        frozen_ms=now_ms - (current.frozen_at_ms or now_ms),
                    )
                )
                self.out_move = None
            elif (
                move is None
                or move.attempt != attempt
                or move.state != MOVE_COPYING
                or move.source_epoch != node.shard_epoch
            ):
                self._abandon_out_move(out, "the map moved on")
        if self.out_move is None and rebalance is not None:
            for move in rebalance.moves:
                if (
                    move.source == node.shard_id
                    and move.state == MOVE_COPYING
                    and move.source_epoch == node.shard_epoch
                ):
                    self._start_out_move(
                        rebalance.rebalance_id, move.source, move.target, move.attempt, now_ms, out
                    )
                    break
        elif self.out_move is not None:
            self.pump(now_ms, out)  # e.g. unfenced again: the copy resumes at once
        # Target side: keep only attempts the map still runs, under our shard epoch.
        live_incoming = set()
        if rebalance is not None:
            live_incoming = {
                move_key(rebalance.rebalance_id, m)
                for m in rebalance.moves
                if m.target == node.shard_id
                and m.state == MOVE_COPYING
                and m.target_epoch == node.shard_epoch
            }
        for key in [k for k in self.in_moves if k not in live_incoming]:
            del self.in_moves[key]
        if self.early_batches:
            early = list(self.early_batches)
            self.early_batches.clear()
            for source, batch in early:
                if (batch.rebalance_id, batch.source, batch.target, batch.attempt) in live_incoming:
                    self.on_batch(source, batch, now_ms, out)
        if not node.fenced:
            seen = (
                tuple(cmap.placement.shard_ids),
                rebalance.rebalance_id if rebalance is not None else None,
                rebalance.switched if rebalance is not None else frozenset(),
                node.shard_epoch,
            )
            if seen != self._ownership_seen:
                self._ownership_seen = seen
                self._sweep(now_ms, out)

    def _trace(self, event: str, key: MoveKey, **fields: Any) -> Trace:
        """One format for every migration trace: which move (and attempt), then what happened."""
        rebalance_id, source, target, attempt = key
        return Trace(
            event,
            {
                "node": self.node.node_id,
                "rebalance": rebalance_id,
                "source": source,
                "target": target,
                "attempt": attempt,
                **fields,
            },
        )

    # ================================================================ source

    def _abandon_out_move(self, out: list[Effect], why: str) -> None:
        move = self.out_move
        if move is None:
            return
        self.out_move = None
        out.append(self._trace("move_abandoned", move.key, why=why))

    def _start_out_move(
        self, rebalance_id: int, source: int, target: int, attempt: int, now_ms: int, out: list[Effect]
    ) -> None:
        node = self.node
        assert node.map is not None
        selector = MoveSelector.of(node.map, source, target)
        if selector is None:
            return
        keys = node.store.select_keys(selector.mask, now_ms)
        self.out_move = OutgoingMove((rebalance_id, source, target, attempt), selector, keys, now_ms)
        self.out_move.next_send_ms = now_ms
        # The writers' sessions go first, so the target recognises copies of writes made here.
        self.out_move.sessions = node.sessions.ops_for_move(selector.selects)
        out.append(self._trace("move_started", (rebalance_id, source, target, attempt), keys=len(keys)))
        self.pump(now_ms, out)

    def _shard_master_address(self, shard_id: int) -> str | None:
        node = self.node
        shard = node.map.shards.get(shard_id) if node.map is not None else None
        if shard is None or shard.master is None:
            return None
        return node.address_of(shard.master)

    def pump(self, now_ms: int, out: list[Effect]) -> None:
        """Send what the window and the rate limit allow; retransmit what went unacknowledged."""
        node = self.node
        move = self.out_move
        if move is None or node.role is not Role.MASTER or node.fenced or node.map is None:
            return
        cfg = node.config
        destination = self._shard_master_address(move.key[2])
        if destination is None:
            out.append(SetTimer(TimerKey.MIGRATE, now_ms + cfg.migrate_retry_ms))
            return
        if move.outbox:
            oldest = min(move.outbox)
            if now_ms - move.sent_at_ms[oldest] >= cfg.migrate_retry_ms:
                for batch_no in sorted(move.outbox):
                    self._send_batch(move, batch_no, destination, now_ms, out)
        while len(move.outbox) < cfg.migrate_window and move.final_batch is None:
            if not move.snapshot_done:
                if now_ms < move.next_send_ms:
                    break
                chosen: list[bytes] = []
                size = 0
                sessions: list[Any] = []
                while move.session_cursor < len(move.sessions) and size < cfg.migrate_batch_bytes:
                    op = move.sessions[move.session_cursor]
                    move.session_cursor += 1
                    sessions.append(op)
                    size += value_bytes(op)
                while (
                    move.cursor < len(move.keys)
                    and len(chosen) < cfg.migrate_batch_keys
                    and size < cfg.migrate_batch_bytes
                ):
                    key = move.keys[move.cursor]
                    move.cursor += 1
                    cost = node.store.entry_bytes(key)
                    if cost:  # deleted since selection: its delete travels as a delta
                        chosen.append(key)
                        size += cost
                puts = [
                    ["put", key, tag, wire_form(value) if is_sequence(value) else value, at]
                    for key, tag, value, at in node.store.items(chosen, now_ms)
                ]
                ops = move.deltas + sessions + puts
                move.deltas_sent += len(move.deltas)
                move.deltas = []
                move.keys_sent += len(puts)
                move.bytes_sent += size
                cost_ms = max(
                    len(chosen) * 1000 / cfg.migrate_keys_per_s, size * 1000 / cfg.migrate_bytes_per_s
                )
                move.next_send_ms = max(move.next_send_ms, now_ms) + math.ceil(cost_ms)
                self._new_batch(move, ops, False, destination, now_ms, out)
            elif move.outbox:
                break  # freeze only once the copy is acknowledged: it keeps the freeze short
            else:
                move.frozen_at_ms = now_ms
                out.append(self._trace("move_frozen", move.key, pending_deltas=len(move.deltas)))
                ops = move.deltas
                move.deltas_sent += len(ops)
                move.deltas = []
                move.final_batch = move.next_batch
                self._new_batch(move, ops, True, destination, now_ms, out)
        deadlines = []
        if move.outbox:
            deadlines.append(min(move.sent_at_ms.values()) + cfg.migrate_retry_ms)
        if not move.snapshot_done and len(move.outbox) < cfg.migrate_window:
            deadlines.append(max(move.next_send_ms, now_ms + 1))
        if deadlines:
            out.append(SetTimer(TimerKey.MIGRATE, min(deadlines)))

    def _new_batch(
        self,
        move: OutgoingMove,
        ops: list[Any],
        final: bool,
        destination: str,
        now_ms: int,
        out: list[Effect],
    ) -> None:
        batch_no = move.next_batch
        move.next_batch += 1
        move.outbox[batch_no] = ops
        if final:
            move.final_batch = batch_no
        self._send_batch(move, batch_no, destination, now_ms, out)

    def _send_batch(
        self, move: OutgoingMove, batch_no: int, destination: str, now_ms: int, out: list[Effect]
    ) -> None:
        move.sent_at_ms[batch_no] = now_ms
        rebalance_id, source, target, attempt = move.key
        out.append(
            Send(
                destination,
                MigrateBatch(
                    rebalance_id,
                    source,
                    target,
                    attempt,
                    batch_no,
                    move.outbox[batch_no],
                    batch_no == move.final_batch,
                ),
            )
        )

    def on_ack(self, ack: MigrateBatchAck, now_ms: int, out: list[Effect]) -> None:
        move = self.out_move
        if move is None or (ack.rebalance_id, ack.source, ack.target, ack.attempt) != move.key:
            return
        if move.acknowledge(ack.batch_no, now_ms):
            out.append(
                self._trace(
                    "move_ready",
                    move.key,
                    keys=move.keys_sent,
                    bytes=move.bytes_sent,
                    deltas=move.deltas_sent,
                    batches=move.next_batch,
                    elapsed_ms=now_ms - move.started_ms,
                )
            )
            self.report(now_ms, out)
            return
        self.pump(now_ms, out)

    def report(self, now_ms: int, out: list[Effect]) -> None:
        """The outgoing move's progress to every Overlord (``ready`` lets the leader switch it)."""
        node = self.node
        move = self.out_move
        if move is None:
            return
        rebalance_id, source, target, attempt = move.key
        report = MoveReport(
            node_id=node.node_id,
            rebalance_id=rebalance_id,
            source=source,
            target=target,
            attempt=attempt,
            shard_epoch=node.shard_epoch,
            state="ready" if move.ready else "copying",
            keys=move.keys_sent,
            bytes=move.bytes_sent,
            deltas=move.deltas_sent,
            batches=move.acked + 1,
            elapsed_ms=now_ms - move.started_ms,
            frozen_ms=now_ms - move.frozen_at_ms if move.frozen_at_ms is not None else 0,
        )
        for overlord in node.overlords:
            out.append(Send(overlord, report))

    # ================================================================ target

    def on_batch(self, source: str, batch: MigrateBatch, now_ms: int, out: list[Effect]) -> None:
        node = self.node
        cmap = node.map
        rebalance = cmap.rebalance if cmap is not None else None
        move = (
            rebalance.move(batch.source, batch.target)
            if rebalance is not None and rebalance.rebalance_id == batch.rebalance_id
            else None
        )
        master = self._master()
        if (
            master is None
            or node.fenced
            or cmap is None
            or batch.target != node.shard_id
            or move is None
            or move.state != MOVE_COPYING
            or move.attempt != batch.attempt
            or move.target_epoch != node.shard_epoch
        ):
            # A stale attempt, or a map we have not seen yet: the source retransmits until it matches,
            # and a batch from the future is kept so the map's arrival can apply it at once.
            # That includes a node not yet master of the target: a new shard's master may hear from
            # the source before it has read the map that makes it master.
            ahead = (
                cmap is None
                or rebalance is None
                or batch.rebalance_id > rebalance.rebalance_id
                or (move is not None and batch.attempt > move.attempt)
                or master is None
                or batch.target != node.shard_id
            )
            if ahead:
                self.early_batches.append((source, batch))
            key = (batch.rebalance_id, batch.source, batch.target, batch.attempt)
            out.append(self._trace("migrate_batch_ignored", key, batch=batch.batch_no))
            return
        key = (batch.rebalance_id, batch.source, batch.target, batch.attempt)
        incoming = self.in_moves.get(key)
        if incoming is None:
            incoming = self.in_moves[key] = IncomingMove(key)
        if batch.batch_no != incoming.expected:
            if batch.batch_no < incoming.expected and incoming.durable >= 0:
                self._send_ack(key, incoming.durable, out)  # our ack was lost
            return
        if any(is_session_op(op) and op[0] != SESSION_OP for op in batch.ops):
            # Only this node decides what its table forgets: a source may send outcomes, never drops.
            out.append(
                Trace("migrate_batch_rejected", {"node": node.node_id, "error": "a source sent session_drop"})
            )
            return
        # The writers' outcomes are tagged with the move, so a restarted attempt can take them back.
        origin = (batch.rebalance_id, batch.source, batch.target)
        ops: list[Any] = [imported(op, origin) if is_session_op(op) else op for op in batch.ops]
        if batch.batch_no == 0:
            # Whatever an aborted earlier attempt left here must not survive into this copy: its
            # copies of the moving keys, and the outcomes it imported (the source may have lost them).
            selector = MoveSelector.of(cmap, batch.source, batch.target)
            assert selector is not None
            ops = [drop_op(origin), *(["del", k] for k in node.store.select_keys(selector.mask, None)), *ops]
        try:
            # Store ops now; the writers' session ops are merged by the append, with the entry's seq.
            session_ops = [op for op in ops if is_session_op(op)]
            for op in session_ops:
                check_op(op)
            node.store.apply([op for op in ops if not is_session_op(op)] if session_ops else ops, now_ms)
        except RemoteProtocolError as exc:
            out.append(Trace("migrate_batch_rejected", {"node": node.node_id, "error": str(exc)}))
            return
        if ops:
            master.append(ops, now_ms, out, wire_form=True)  # decoded from the batch's frame
        incoming.expected += 1
        incoming.waiting.append((batch.batch_no, node.applied_seq))
        if batch.final:
            incoming.final_batch = batch.batch_no
        self.ack_incoming(out)

    def ack_incoming(self, out: list[Effect]) -> None:
        node = self.node
        master = self._master()
        if master is None or node.fenced or node.map is None or node.shard_id is None:
            return
        durable = master.durable_seq()
        for key, incoming in self.in_moves.items():
            newest = incoming.durable
            while incoming.waiting and incoming.waiting[0][1] <= durable:
                newest = incoming.waiting.pop(0)[0]
            if newest > incoming.durable:
                incoming.durable = newest
                self._send_ack(key, newest, out)

    def _send_ack(self, key: MoveKey, batch_no: int, out: list[Effect]) -> None:
        rebalance_id, source, target, attempt = key
        destination = self._shard_master_address(source)
        if destination is not None:
            out.append(
                Send(
                    destination,
                    MigrateBatchAck(rebalance_id, source, target, attempt, batch_no, self.node.node_id),
                )
            )

    # ================================================================ sweep

    def _sweep(self, now_ms: int, out: list[Effect]) -> None:
        """Delete, through the log, every key this shard neither owns nor is receiving."""
        node = self.node
        cmap = node.map
        me = node.shard_id
        master = self._master()
        if cmap is None or me is None or master is None:
            return

        def foreign(hashes: Any) -> Any:
            keep = cmap.owners_of_hashes(hashes) == me
            if cmap.rebalance is not None:
                keep |= cmap.rebalance.target.owners_of_hashes(hashes) == me
            return ~keep

        doomed = node.store.select_keys(foreign, None)
        if not doomed:
            return
        step = node.config.sweep_batch_keys
        for start in range(0, len(doomed), step):
            ops: list[Any] = [["del", key] for key in doomed[start : start + step]]
            node.store.apply(ops, now_ms)
            master.append(ops, now_ms, out, wire_form=True)
        self.keys_swept += len(doomed)
        out.append(Trace("swept", {"node": node.node_id, "shard": me, "keys": len(doomed)}))
