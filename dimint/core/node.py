"""The data node: one process holding one replica of one shard, as master or slave.

Theory of operation
-------------------
A node registers itself with an ephemeral sequential znode and watches the cluster map. The map
alone decides its role: master of a shard, slave of a shard, or spare. Roles change only in
``_become_<role>()``, each transition traced in one format.

Replication log. The master numbers every state change ``(epoch, seq)``: ``seq`` grows by one per
write that changed something, ``epoch`` is the shard epoch under which the master appended it. It
keeps a bounded in-memory log of recent entries and streams them to its slaves in ``Replicate``
messages that also carry ``(prev_seq, prev_epoch)``, the position just before the first entry.
A slave applies an entry only if its own last position matches (the log-matching rule of Raft,
which holds because each shard epoch has exactly one master appending in order). Anything else, a
gap after a lost message, a reordered message, a new slave, or a slave whose tail diverged under a
dead master, is resolved by one path: the slave sends ``SyncRequest`` with its position and the
master answers with the missing tail when its log still matches, else with a full snapshot.

Acknowledgement (invariant 3). A write is applied locally, appended, replicated, and the client is
answered once the write is *committed* by the cluster's mode: ``async`` at once; ``semi-sync`` when
at least one in-sync slave acknowledged it; ``sync`` when every in-sync slave did. Strong reads wait
for the commit of every write they could observe, so a strong read never returns a value that a
failover could still lose (invariant 5). Pending replies that cannot commit in ``write_timeout_ms``
are answered ``TIMEOUT``: their outcome is unknown, never reported as failed.

In-sync set. The master asks the Overlords to drop a slave that stopped acknowledging and to
re-admit one that caught up; the change takes effect only through a new map, so promotion (which
picks among in-sync slaves) always sees a set that covers every committed write. A slave whose
removal is pending no longer counts towards semi-sync commits.

At most once (invariant 8). Every write of an identified client carries ``(client_id, seq)``; the
master looks it up in the shard's dedup table (``dimint.core.dedup``) before executing it, answers a
duplicate with the saved outcome once its entry commits, refuses a copy below the client's floor
with ``STALE_REQUEST``, and appends the outcome of every write it executes (a refusal by the store
included) as a ``session`` op in the write's own log entry. Slaves apply those ops with the entry
and snapshots carry the table, so a promoted slave recognises the same duplicates; a migration
carries the sessions of the moving keys' writers to the target.

Fencing (invariant 2). On SUSPENDED or LOST the master stops acknowledging writes and strong reads
at once; after reconnecting (SUSPENDED) it re-reads the map and resumes only if the map still names
it master at its shard epoch. After LOST it never resumes: it registers again as a new incarnation
with no data, which makes the leader fail it over. Slaves drop replication from a lower shard epoch.

Migration. As the source of a range move the master streams the moving keys to the target shard's
master and freezes them briefly before the switch; as the target it applies the batches through its
own log, so its slaves hold the data before it owns it (``dimint.core.migration`` explains the
protocol). After every ownership change the master deletes, through its log, the keys it no longer
owns, so the slaves drop them too and a leftover of an interrupted move never lingers.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dimint.core import layout
from dimint.core.clustermap import MOVE_COPYING, MOVE_SWITCHED, ClusterMap, ShardInfo
from dimint.core.commands import COMMANDS
from dimint.core.dedup import (
    ANONYMOUS,
    DedupConfig,
    DedupTable,
    SavedResult,
    Verdict,
    check_op,
    error_outcome,
    is_session_op,
    ok_outcome,
    record_op,
    value_bytes,
)
from dimint.core.effects import (
    CoordCreate,
    CoordErrorKind,
    CoordRead,
    CoordResult,
    Effect,
    Input,
    ProcessStats,
    Receive,
    Reply,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
    Trace,
    WatchFired,
)
from dimint.core.errors import CommandError, DecodeError, ErrorCode, InvariantViolation, RemoteProtocolError
from dimint.core.hashing import FULL_RANGE, as_key, key_hash
from dimint.core.migration import IncomingMove, MoveKey, MoveSelector, OutgoingMove, move_key, op_key
from dimint.core.protocol import (
    AdminRequest,
    ErrorReply,
    GetMap,
    Heartbeat,
    HeartbeatAck,
    InSyncChange,
    MapReply,
    MigrateBatch,
    MigrateBatchAck,
    MoveReport,
    NodeReport,
    PositionQuery,
    PositionReply,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    SyncRequest,
)
from dimint.core.store import Store, StoreLimits


class Role(enum.StrEnum):
    STARTING = "starting"  # no map yet
    SPARE = "spare"  # registered, serves no shard
    MASTER = "master"
    SLAVE = "slave"


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


@dataclass(slots=True)
class _Pending:
    """A client reply held back until ``seq`` commits."""

    seq: int
    destination: str
    request_id: int
    reply: Response | ErrorReply
    deadline_ms: int


def request_keys(command: str, args: list[Any] | tuple[Any, ...]) -> list[bytes]:
    """The keys a command touches, by the command table (used for routing and ownership checks)."""
    spec = COMMANDS[command]
    if spec.key_positions == (-1,):
        return [as_key(a) for a in args]
    if spec.key_positions == (-2,):
        return [as_key(a) for a in args[0::2]]
    return [as_key(args[i]) for i in spec.key_positions]


def _wire_form(value: Any) -> Any:
    """Write ops and snapshot items with every tuple turned into a list.

    The store speaks tuples, but msgpack delivers lists, and the codec refuses a message that would
    not arrive unchanged; the store accepts either form, so the log keeps what the slaves will see.
    """
    if isinstance(value, _SEQUENCES):
        # Scalars are most items (a put is five of them): test them here rather than in a call each.
        return [_wire_form(item) if isinstance(item, _SEQUENCES) else item for item in value]
    return value


def _wire_ops(writes: list[Any] | tuple[Any, ...]) -> list[Any]:
    """``_wire_form`` of a list of write ops, a string ``put`` (all scalars) copied straight."""
    return [list(op) if op[0] == "put" and type(op[3]) in _SCALAR_VALUES else _wire_form(op) for op in writes]


_SCALAR_VALUES = frozenset({bytes, int})


def _session_op_selected(op: list[Any], selects: Any) -> bool:
    """Whether a ``session`` op concerns a move: one of its results touched a moving key."""
    return any(hashes is None or any(selects(h) for h in hashes) for _, _, hashes in op[5])


_SEQUENCES = (tuple, list)  # a tuple of types: ``tuple | list`` would build a union on every call


class DataNode:
    """Master or slave replica of one shard; see the module docstring for the protocol."""

    def __init__(
        self,
        node_id: str,
        address: str,
        overlords: list[str] | tuple[str, ...],
        config: NodeConfig | None,
        rng: random.Random,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.overlords = tuple(overlords)
        self.config = config or NodeConfig()
        # Required, never defaulted: the incarnation drawn from it must differ between processes
        # (two processes with one default seed would look like the same incarnation).
        self.rng = rng
        self.incarnation = self.rng.getrandbits(48)
        self.store = Store(self.config.store_limits)
        # Replicated with the store: every replica of the shard holds the same table.
        self.sessions = DedupTable(self.config.dedup)
        self.role = Role.STARTING
        self.map: ClusterMap | None = None
        self.shard_id: int | None = None
        self.shard_epoch = 0
        self.session = SessionState.SUSPENDED
        self.registered_path: str | None = None
        self._coord_seq = 0
        self._coord_pending: dict[int, str] = {}
        # Replication position: the last applied entry.
        self.applied_seq = 0
        self.last_epoch = 0
        # Master state.
        self.fenced = True
        self._confirm_request: int | None = None
        self.log: deque[tuple[int, int, list[Any]]] = deque()
        self.log_base = (0, 0)  # (seq, epoch) of the entry just before the first retained one
        self.commit_seq = 0
        self.acks: dict[str, int] = {}
        self.ack_at_ms: dict[str, int] = {}
        self.removal_requested: set[str] = set()
        self.add_requested: set[str] = set()
        self.pending: deque[_Pending] = deque()
        self.became_master_at_ms = 0
        # Slave state.
        self.master_id: str | None = None
        self.last_sync_request_ms = -(10**12)
        self.snapshot_buffer: dict[int, tuple[list[Any], list[Any]]] = {}
        self.snapshot_key: tuple[int, int] | None = None
        self.sync_token = 0
        self.awaiting_sync: int | None = None  # token of the request a snapshot may answer
        self.heartbeats: deque[tuple[int, int]] = deque(maxlen=64)  # (seq, sent_at_ms) from master
        self.fresh_at_ms: int | None = None
        self.progress_at_ms = 0
        # Migration state (masters only).
        self.out_move: OutgoingMove | None = None
        self.in_moves: dict[MoveKey, IncomingMove] = {}
        # Batches that arrived before the map announcing their attempt (the source saw it first).
        self.early_batches: deque[tuple[str, MigrateBatch]] = deque(maxlen=16)
        self._ownership_seen: tuple[Any, ...] | None = None
        # Metrics.
        self.ops_served = 0
        self.process_stats: ProcessStats | None = None
        self.keys_swept = 0
        self.duplicates_answered = 0
        self.stale_refused = 0

    # ================================================================ entry point

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        if isinstance(event, Receive):
            self._on_receive(event.source, event.message, now_ms, out)
        elif isinstance(event, TimerFired):
            self._on_timer(event.key, now_ms, out)
        elif isinstance(event, SessionStateChanged):
            self._on_session(event.state, now_ms, out)
        elif isinstance(event, CoordResult):
            self._on_coord_result(event, now_ms, out)
        elif isinstance(event, WatchFired):
            if event.path == layout.MAP_PATH:
                self._read_map(out, watch=True)
        elif isinstance(event, ProcessStats):
            self.process_stats = event
        elif isinstance(event, Start):
            out.append(SetTimer("heartbeat", now_ms + self.config.heartbeat_interval_ms))
            out.append(SetTimer("report", now_ms + self.config.report_interval_ms))
        self._check_invariants()
        return out

    def _check_invariants(self) -> None:
        if self.commit_seq > self.applied_seq and self.role is Role.MASTER:
            raise InvariantViolation(f"{self.node_id}: commit {self.commit_seq} > applied {self.applied_seq}")
        if self.log and self.log[-1][0] != self.applied_seq and self.role is Role.MASTER:
            raise InvariantViolation(
                f"{self.node_id}: log tail {self.log[-1][0]} != applied {self.applied_seq}"
            )
        if self.role is Role.MASTER and self.pending and not self.pending[0].seq <= self.pending[-1].seq:
            raise InvariantViolation(f"{self.node_id}: pending replies out of order")
        if len(self.sessions) > self.sessions.config.max_clients:
            raise InvariantViolation(f"{self.node_id}: dedup table above max_clients")

    # ================================================================ coordination

    def _coord(self, purpose: str) -> int:
        self._coord_seq += 1
        self._coord_pending[self._coord_seq] = purpose
        return self._coord_seq

    def _read_map(self, out: list[Effect], watch: bool) -> int:
        request_id = self._coord("map")
        out.append(CoordRead(request_id, layout.MAP_PATH, watch=watch))
        return request_id

    def _on_session(self, state: SessionState, now_ms: int, out: list[Effect]) -> None:
        previous = self.session
        self.session = state
        out.append(Trace("session", {"node": self.node_id, "state": state.value, "previous": previous.value}))
        if state in (SessionState.SUSPENDED, SessionState.LOST):
            if self.role is Role.MASTER and not self.fenced:
                out.append(
                    Trace("fenced", {"node": self.node_id, "shard": self.shard_id, "why": state.value})
                )
            self.fenced = True
            if state is SessionState.LOST:
                self.registered_path = None
                if self.role is Role.MASTER:
                    self._forget_identity(now_ms, out)
            return
        # CONNECTED: register if this session has no znode of ours, and re-confirm the map.
        if self.registered_path is None:
            payload = layout.encode_payload(
                {"node_id": self.node_id, "address": self.address, "incarnation": self.incarnation}
            )
            out.append(
                CoordCreate(
                    self._coord("register"),
                    layout.node_znode_prefix(self.node_id),
                    payload,
                    ephemeral=True,
                    sequential=True,
                )
            )
        self._confirm_request = self._read_map(out, watch=True)

    def _forget_identity(self, now_ms: int, out: list[Effect]) -> None:
        """A master whose session expired comes back as a new incarnation, with no data.

        While our session was gone the leader may have started a failover that has not reached the
        map yet; if we resumed at our old epoch on a re-read of that map, writes we acknowledged could
        be missing from the slave it is about to promote. A new incarnation makes the leader fail us
        over at once (the path of a restarted process), so we never serve again at that epoch.
        """
        old = self.incarnation
        self.incarnation = self.rng.getrandbits(48)
        out.append(Trace("new_incarnation", {"node": self.node_id, "why": "session lost", "old": old}))
        self._become_spare(now_ms, out)
        self._migration_update(now_ms, out)

    def _on_coord_result(self, result: CoordResult, now_ms: int, out: list[Effect]) -> None:
        purpose = self._coord_pending.pop(result.request_id, None)
        if purpose == "register":
            if result.error is None:
                self.registered_path = result.path
                out.append(Trace("registered", {"node": self.node_id, "path": result.path}))
            elif result.error in (CoordErrorKind.CONNECTION_LOSS, CoordErrorKind.SESSION_EXPIRED):
                pass  # the next CONNECTED retries
        elif purpose == "map":
            confirming = result.request_id == self._confirm_request
            if confirming:
                self._confirm_request = None
            if result.error is None and result.data is not None:
                try:
                    cmap = ClusterMap.from_bytes(result.data)
                except DecodeError as exc:
                    out.append(Trace("bad_map", {"node": self.node_id, "error": str(exc)}))
                    return
                self._install_map(cmap, now_ms, out)
                if confirming and self.session is SessionState.CONNECTED:
                    self._maybe_unfence(cmap, out)
                self._migration_update(now_ms, out)
            elif result.error is CoordErrorKind.NO_NODE and confirming:
                pass  # no map yet; the exists-watch tells us when it appears

    def _maybe_unfence(self, cmap: ClusterMap, out: list[Effect]) -> None:
        if self.role is not Role.MASTER or not self.fenced:
            return
        shard = cmap.shards.get(self.shard_id) if self.shard_id is not None else None
        if shard is not None and shard.master == self.node_id and shard.shard_epoch == self.shard_epoch:
            self.fenced = False
            out.append(
                Trace(
                    "unfenced",
                    {"node": self.node_id, "shard": self.shard_id, "shard_epoch": self.shard_epoch},
                )
            )

    # ================================================================ map and roles

    def _install_map(self, cmap: ClusterMap, now_ms: int, out: list[Effect]) -> None:
        if self.map is not None and cmap.epoch <= self.map.epoch:
            return
        self.map = cmap
        # A role recorded for an earlier incarnation of this node id is not ours: that process
        # held data we do not have. We wait, spare, until the leader reassigns us.
        role = cmap.role_of(self.node_id, self.incarnation)
        if role is None:
            if self.role is not Role.SPARE:
                self._become_spare(now_ms, out)
            return
        kind, shard_id = role
        shard = cmap.shards[shard_id]
        if kind == "master":
            if (
                self.role is Role.MASTER
                and self.shard_id == shard_id
                and self.shard_epoch == shard.shard_epoch
            ):
                self._master_map_update(shard, now_ms, out)
            else:
                self._become_master(shard, now_ms, out)
        else:
            if not (
                self.role is Role.SLAVE
                and self.shard_id == shard_id
                and self.shard_epoch == shard.shard_epoch
                and self.master_id == shard.master
            ):
                self._become_slave(shard, now_ms, out)

    def _trace_role(self, new_role: Role, out: list[Effect], **fields: Any) -> None:
        out.append(
            Trace(
                "role",
                {
                    "node": self.node_id,
                    "from": self.role.value,
                    "to": new_role.value,
                    "shard": self.shard_id,
                    "shard_epoch": self.shard_epoch,
                    "applied_seq": self.applied_seq,
                    **fields,
                },
            )
        )

    def _fail_pending(self, out: list[Effect], why: str) -> None:
        """Answer held replies as unknown: the writes were applied here and may yet survive."""
        while self.pending:
            item = self.pending.popleft()
            out.append(Reply(item.destination, ErrorReply(item.request_id, ErrorCode.TIMEOUT, why)))

    def _become_spare(self, now_ms: int, out: list[Effect]) -> None:
        self._fail_pending(out, "node no longer serves this shard; outcome unknown")
        self.commit_seq = 0
        self.shard_id = None
        self._trace_role(Role.SPARE, out)
        self.role = Role.SPARE
        # A spare keeps no data: when it serves a shard again it is rebuilt from a snapshot.
        self.store.drop([FULL_RANGE])
        self.sessions.clear()
        self.applied_seq = 0
        self.last_epoch = 0
        self.log.clear()
        self.log_base = (0, 0)
        self.master_id = None

    def _become_master(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        changed_shard = self.shard_id != shard.shard_id
        self._fail_pending(out, "mastership changed; outcome unknown")
        self.shard_id = shard.shard_id
        self.shard_epoch = shard.shard_epoch
        self._trace_role(Role.MASTER, out)
        self.role = Role.MASTER
        if changed_shard and self.applied_seq == 0:
            self.log.clear()
            self.log_base = (0, 0)
        elif not self.log:
            self.log_base = (self.applied_seq, self.last_epoch)
        self.master_id = self.node_id
        # Nothing is known committed under our mastership until in-sync slaves acknowledge it.
        self.commit_seq = 0
        self.acks = {}
        self.ack_at_ms = {}
        self.removal_requested = set()
        self.add_requested = set()
        self.became_master_at_ms = now_ms
        # Fenced until the session is up and this very map (already read) names us master.
        self.fenced = self.session is not SessionState.CONNECTED
        if self.map is not None and not self.fenced:
            self.fenced = True
            self._maybe_unfence(self.map, out)
        self._master_map_update(shard, now_ms, out)

    def _master_map_update(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        members = set(shard.slaves)
        for gone in [n for n in self.acks if n not in members]:
            self.acks.pop(gone, None)
            self.ack_at_ms.pop(gone, None)
        self.removal_requested &= set(shard.in_sync)
        self.add_requested -= set(shard.in_sync)
        for slave in shard.slaves:
            self.ack_at_ms.setdefault(slave, now_ms)
        self._advance_commit(now_ms, out)

    def _become_slave(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        self._fail_pending(out, "node became a slave; outcome unknown")
        self.commit_seq = 0
        if self.shard_id != shard.shard_id:
            # Data of another shard is useless here; start empty and take a snapshot.
            self.store.drop([FULL_RANGE])
            self.sessions.clear()
            self.applied_seq = 0
            self.last_epoch = 0
        self.shard_id = shard.shard_id
        self.shard_epoch = shard.shard_epoch
        self._trace_role(Role.SLAVE, out, master=shard.master)
        self.role = Role.SLAVE
        self.master_id = shard.master
        self.fenced = True
        self.log.clear()
        self.log_base = (self.applied_seq, self.last_epoch)
        self.snapshot_buffer = {}
        self.snapshot_key = None
        self.heartbeats.clear()
        self.fresh_at_ms = None
        self.last_sync_request_ms = -(10**12)
        self._request_sync(now_ms, out)

    # ================================================================ messages

    def _on_receive(self, source: str, message: Any, now_ms: int, out: list[Effect]) -> None:
        if isinstance(message, Request):
            self._on_request(source, message, now_ms, out)
        elif isinstance(message, Replicate):
            self._on_replicate(source, message, now_ms, out)
        elif isinstance(message, (ReplicateAck, HeartbeatAck)):
            self._on_ack(message, now_ms, out)
        elif isinstance(message, SyncRequest):
            self._on_sync_request(source, message, now_ms, out)
        elif isinstance(message, SnapshotChunk):
            self._on_snapshot_chunk(source, message, now_ms, out)
        elif isinstance(message, Heartbeat):
            self._on_heartbeat(source, message, now_ms, out)
        elif isinstance(message, PositionQuery):
            self._on_position_query(source, message, out)
        elif isinstance(message, MigrateBatch):
            self._on_migrate_batch(source, message, now_ms, out)
        elif isinstance(message, MigrateBatchAck):
            self._on_migrate_ack(message, now_ms, out)
        elif isinstance(message, GetMap):
            if self.map is not None:
                out.append(Reply(source, MapReply(message.request_id, self.map.epoch, self.map.to_bytes())))
            else:
                out.append(Reply(source, ErrorReply(message.request_id, ErrorCode.UNAVAILABLE, "no map yet")))
        else:
            # Answer only requests (a client waits for them); answering a stray *reply* with an
            # error could set two processes bouncing errors at each other.
            if isinstance(message, AdminRequest):
                request_id = message.request_id
                out.append(
                    Reply(
                        source,
                        ErrorReply(
                            request_id,
                            ErrorCode.UNKNOWN_COMMAND,
                            f"a data node does not handle {type(message).__name__}",
                        ),
                    )
                )
            out.append(Trace("ignored", {"node": self.node_id, "message": type(message).__name__}))

    def _on_position_query(self, source: str, query: PositionQuery, out: list[Effect]) -> None:
        """Only a slave of the shard has a position worth promoting; anyone else stays silent."""
        if self.role is not Role.SLAVE or query.shard_id != self.shard_id:
            out.append(
                Trace(
                    "position_query_ignored",
                    {"node": self.node_id, "shard": query.shard_id, "role": self.role.value},
                )
            )
            return
        out.append(
            Send(
                source,
                PositionReply(
                    query.request_id,
                    self.node_id,
                    query.shard_id,
                    self.shard_epoch,
                    self.last_epoch,
                    self.applied_seq,
                ),
            )
        )

    # ---------------------------------------------------------------- client requests

    def _error(self, source: str, request: Request, code: ErrorCode, reason: str, out: list[Effect]) -> None:
        epoch = self.map.epoch if self.map is not None else 0
        out.append(Reply(source, ErrorReply(request.request_id, code, reason, epoch)))

    def _on_request(self, source: str, request: Request, now_ms: int, out: list[Effect]) -> None:
        spec = COMMANDS.get(request.command)
        if spec is None:
            self._error(
                source, request, ErrorCode.UNKNOWN_COMMAND, f"unknown command {request.command!r}", out
            )
            return
        if self.map is None or self.shard_id is None:
            self._error(source, request, ErrorCode.MOVED, f"node {self.node_id} serves no shard", out)
            return
        try:
            keys = request_keys(request.command, request.args)
        except (TypeError, IndexError) as exc:
            self._error(source, request, ErrorCode.BAD_ARGUMENT, f"bad keys: {exc}", out)
            return
        hashes = [key_hash(key) for key in keys]
        for key, h in zip(keys, hashes, strict=True):
            owner = self.map.owner_of_hash(h)
            if owner != self.shard_id:
                self._error(
                    source,
                    request,
                    ErrorCode.MOVED,
                    f"key {key!r} belongs to shard {owner}, not {self.shard_id}",
                    out,
                )
                return
        weak = request.consistency == "weak" and not spec.is_write
        if self.role is Role.SLAVE:
            if not weak:
                self._error(
                    source,
                    request,
                    ErrorCode.NOT_MASTER,
                    f"node {self.node_id} is a slave of shard {self.shard_id}",
                    out,
                )
                return
            staleness = self.staleness_ms(now_ms)
            limit = self.config.max_staleness_ms
            if limit is not None and (staleness is None or staleness > limit):
                self._error(
                    source,
                    request,
                    ErrorCode.TOO_STALE,
                    f"slave lag {staleness} ms exceeds max_staleness_ms={limit}",
                    out,
                )
                return
            self._execute(source, request, now_ms, out, wait_commit=False)
            return
        if self.role is not Role.MASTER:
            self._error(
                source, request, ErrorCode.NOT_MASTER, f"node {self.node_id} is {self.role.value}", out
            )
            return
        if self.fenced and not weak:
            self._error(
                source,
                request,
                ErrorCode.FENCED,
                f"master {self.node_id} cannot confirm its lease (session {self.session.value})",
                out,
            )
            return
        move = self.out_move
        if not weak and move is not None and move.frozen and any(move.selector.selects(h) for h in hashes):
            self._error(
                source,
                request,
                ErrorCode.FROZEN,
                f"key moves to shard {move.selector.target}; ownership switches in a moment",
                out,
            )
            return
        if not spec.is_write:
            self._execute(source, request, now_ms, out, wait_commit=not weak)
            return
        shard = self.map.shards[self.shard_id]
        if self.map.replication_mode != "async" and len(shard.in_sync) < self.map.min_in_sync:
            self._error(
                source,
                request,
                ErrorCode.NOT_ENOUGH_REPLICAS,
                f"shard {self.shard_id} has {len(shard.in_sync)} in-sync slaves, "
                f"needs {self.map.min_in_sync}",
                out,
            )
            return
        if request.client_id != ANONYMOUS and self.config.at_most_once:
            found = self.sessions.lookup(request.client_id, request.seq)
            if found.verdict is Verdict.DUPLICATE:
                assert found.saved is not None
                self._answer_duplicate(source, request, found.saved, now_ms, out)
                return
            if found.verdict is Verdict.STALE:
                self.stale_refused += 1
                out.append(
                    Trace(
                        "stale_request",
                        {"node": self.node_id, "client": request.client_id, "seq": request.seq},
                    )
                )
                self._error(
                    source,
                    request,
                    ErrorCode.STALE_REQUEST,
                    f"write {request.seq} of client {request.client_id} is below what the shard still "
                    "tracks for that client (it finished with it): a late copy, not executed",
                    out,
                )
                return
        self._execute(source, request, now_ms, out, wait_commit=True, hashes=hashes)

    def _answer_duplicate(
        self, source: str, request: Request, saved: SavedResult, now_ms: int, out: list[Effect]
    ) -> None:
        """Repeat what the first execution answered, once its log entry has committed."""
        self.duplicates_answered += 1
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
                    "node": self.node_id,
                    "client": request.client_id,
                    "seq": request.seq,
                    "log_seq": saved.log_seq,
                    "outcome": kind,
                },
            )
        )
        if saved.log_seq <= self.commit_seq:
            out.append(Reply(source, reply))
        else:
            self._reply_when_committed(source, reply, now_ms, out)

    def _execute(
        self,
        source: str,
        request: Request,
        now_ms: int,
        out: list[Effect],
        wait_commit: bool,
        hashes: list[int] | None = None,
    ) -> None:
        """Run a command on the local store; a master appends what it changed (a write, or the
        delete of a lazily expired key a read observed) and answers once that is committed.

        A master appends the outcome of an identified client's write (a store refusal included:
        a late copy must not turn a refused write into a success) to the same entry, even when
        the write changed nothing, and answers only once that entry commits.
        """
        identified = hashes is not None and request.client_id != ANONYMOUS and self.role is Role.MASTER
        try:
            outcome = self.store.execute(request.command, request.args, now_ms)
        except CommandError as exc:
            if not identified or not self.config.at_most_once:
                self._error(source, request, exc.code, exc.reason, out)
                return
            epoch = self.map.epoch if self.map is not None else 0
            self._record_execution(request, error_outcome(exc.code, exc.reason), hashes, [], now_ms, out)
            self._reply_when_committed(
                source, ErrorReply(request.request_id, exc.code, exc.reason, epoch), now_ms, out
            )
            return
        self.ops_served += 1
        if identified:
            outcome_saved = ok_outcome(outcome.value, self.config.dedup.max_result_bytes)
            self._record_execution(request, outcome_saved, hashes, list(outcome.writes), now_ms, out)
        elif outcome.writes and self.role is Role.MASTER:
            # A read that observed a lazily expired key deletes it on the master; slaves learn it too.
            self._append(list(outcome.writes), now_ms, out)
        if wait_commit:
            self._reply_when_committed(source, Response(request.request_id, outcome.value), now_ms, out)
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
        if self.config.at_most_once:
            writes.append(record_op(request.client_id, request.seq, request.floor, now_ms, saved, hashes))
        if writes:
            self._append(writes, now_ms, out)
        out.append(
            Trace(
                "write_executed",
                {
                    "node": self.node_id,
                    "shard": self.shard_id,
                    "client": request.client_id,
                    "seq": request.seq,
                    "log_seq": self.applied_seq,
                    "shard_epoch": self.shard_epoch,
                },
            )
        )

    def _reply_when_committed(
        self, destination: str, reply: Response | ErrorReply, now_ms: int, out: list[Effect]
    ) -> None:
        if self.commit_seq >= self.applied_seq:
            out.append(Reply(destination, reply))
            return
        item = _Pending(
            self.applied_seq, destination, reply.request_id, reply, now_ms + self.config.write_timeout_ms
        )
        if not self.pending:
            out.append(SetTimer("pending", item.deadline_ms))
        self.pending.append(item)

    # ---------------------------------------------------------------- master: log and commit

    def _append(self, writes: list[Any], now_ms: int, out: list[Effect], *, wire_form: bool = False) -> None:
        """Log ``writes`` and replicate them; ``wire_form=True`` says they are lists all through
        already (decoded from a frame, or built as lists here), which spares copying them again."""
        seq = self.applied_seq + 1
        prev = (self.applied_seq, self.last_epoch)
        if not wire_form:
            writes = _wire_ops(writes)
        move = self.out_move
        for op in writes:
            if is_session_op(op):
                self.sessions.apply(op, seq)
                if move is not None and not move.ready and _session_op_selected(op, move.selector.selects):
                    move.deltas.append(op)
            elif move is not None and not move.ready:
                key = op_key(op)
                if key is not None and move.selector.selects(key_hash(key)):
                    move.deltas.append(op)
        self.log.append((seq, self.shard_epoch, writes))
        self.applied_seq = seq
        self.last_epoch = self.shard_epoch
        while len(self.log) > self.config.log_retention:
            old_seq, old_epoch, _ = self.log.popleft()
            self.log_base = (old_seq, old_epoch)
        shard = self.map.shards[self.shard_id] if self.map and self.shard_id is not None else None
        if shard is not None:
            message = Replicate(
                self.shard_id,
                self.shard_epoch,
                prev[0],
                prev[1],
                [[seq, self.shard_epoch, writes]],
                self.commit_seq,
            )
            for slave in shard.slaves:
                out.append(Send(self._address(slave), message))
        self._advance_commit(now_ms, out)

    def _address(self, node_id: str) -> str:
        if self.map is not None and node_id in self.map.nodes:
            return self.map.nodes[node_id].address
        return node_id

    def _advance_commit(self, now_ms: int, out: list[Effect]) -> None:
        if self.role is not Role.MASTER or self.map is None or self.shard_id is None:
            return
        shard = self.map.shards.get(self.shard_id)
        if shard is None:
            return
        mode = self.map.replication_mode
        if mode != "async" and len(shard.in_sync) < self.map.min_in_sync:
            # Below the configured minimum nothing new commits, not even writes accepted before
            # the in-sync set shrank: acknowledging them would claim durability we do not have.
            candidate = self.commit_seq
        elif mode == "async":
            candidate = self.applied_seq
        else:
            counted = [self.acks.get(s, -1) for s in shard.in_sync if s not in self.removal_requested]
            need = min(1, len(shard.in_sync)) if mode == "semi-sync" else len(shard.in_sync)
            if need == 0:
                candidate = self.applied_seq
            elif len(counted) < need:
                candidate = self.commit_seq
            else:
                candidate = sorted(counted, reverse=True)[need - 1]
        candidate = min(candidate, self.applied_seq)
        if candidate > self.commit_seq:
            self.commit_seq = candidate
        if self.fenced:
            return  # a fenced master acknowledges nothing, even if slaves caught up
        if self.in_moves:
            self._ack_incoming(out)
        while self.pending and self.pending[0].seq <= self.commit_seq:
            item = self.pending.popleft()
            out.append(Reply(item.destination, item.reply))

    def _expire_pending(self, now_ms: int, out: list[Effect]) -> None:
        while self.pending and self.pending[0].deadline_ms <= now_ms:
            item = self.pending.popleft()
            out.append(
                Reply(
                    item.destination,
                    ErrorReply(
                        item.request_id,
                        ErrorCode.TIMEOUT,
                        f"not replicated to the {self.map.replication_mode if self.map else ''} degree "
                        f"within "
                        f"{self.config.write_timeout_ms} ms; outcome unknown",
                    ),
                )
            )
        if self.pending:
            out.append(SetTimer("pending", self.pending[0].deadline_ms))

    def _on_ack(self, ack: ReplicateAck | HeartbeatAck, now_ms: int, out: list[Effect]) -> None:
        """Both acks report a slave's log position; only this master's current shard epoch counts."""
        if (
            self.role is not Role.MASTER
            or ack.shard_id != self.shard_id
            or ack.shard_epoch != self.shard_epoch
        ):
            return
        self._record_ack(ack.node_id, ack.applied_seq, ack.applied_epoch, now_ms, out)

    def _record_ack(
        self, node_id: str, applied_seq: int, applied_epoch: int, now_ms: int, out: list[Effect]
    ) -> None:
        shard = self.map.shards.get(self.shard_id) if self.map and self.shard_id is not None else None
        if shard is None or node_id not in shard.slaves:
            return
        # An ack counts only if it names a position of *our* log: by log matching, that slave then
        # holds every entry up to it. A slave that diverged under a dead master cannot sneak in.
        if applied_seq > self.applied_seq or self._epoch_at(applied_seq) != applied_epoch:
            return
        if applied_seq >= self.acks.get(node_id, -1):
            self.acks[node_id] = applied_seq
        self.ack_at_ms[node_id] = now_ms
        self._advance_commit(now_ms, out)

    def _entries_after(self, seq: int, limit: int) -> list[list[Any]] | None:
        """Log entries after ``seq`` (at most ``limit``), or None when the log no longer reaches back."""
        base_seq = self.log_base[0]
        if seq < base_seq:
            return None
        start = seq - base_seq
        return [[s, e, w] for s, e, w in list(self.log)[start : start + limit]]

    def _epoch_at(self, seq: int) -> int | None:
        if seq == self.log_base[0]:
            return self.log_base[1]
        index = seq - self.log_base[0] - 1
        if 0 <= index < len(self.log):
            return self.log[index][1]
        return None

    def _on_sync_request(self, source: str, request: SyncRequest, now_ms: int, out: list[Effect]) -> None:
        if self.role is not Role.MASTER or request.shard_id != self.shard_id or self.map is None:
            return
        shard = self.map.shards[self.shard_id]
        if request.node_id not in shard.slaves or request.shard_epoch != self.shard_epoch:
            return
        matches = (
            request.applied_seq <= self.applied_seq
            and self._epoch_at(request.applied_seq) == request.applied_epoch
        )
        entries = self._entries_after(request.applied_seq, self.config.replicate_batch) if matches else None
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
                        self.shard_id,
                        self.shard_epoch,
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
                        "node": self.node_id,
                        "slave": request.node_id,
                        "from_seq": request.applied_seq,
                        "entries": len(entries),
                    },
                )
            )
            return
        # Diverged or too far behind: a full snapshot at our current position, dedup table included.
        self.acks[request.node_id] = -1
        items = _wire_form(self.store.snapshot([FULL_RANGE], now_ms))
        sessions = self.sessions.snapshot()
        size = self.config.snapshot_chunk_items
        count = max(1, -(-len(items) // size), -(-len(sessions) // size))
        for number in range(count):
            window = slice(number * size, (number + 1) * size)
            out.append(
                Send(
                    source,
                    SnapshotChunk(
                        self.shard_id,
                        self.shard_epoch,
                        self.applied_seq,
                        self.last_epoch,
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
                    "node": self.node_id,
                    "slave": request.node_id,
                    "seq": self.applied_seq,
                    "items": len(items),
                },
            )
        )

    # ---------------------------------------------------------------- slave side

    def _request_sync(self, now_ms: int, out: list[Effect], *, force: bool = False) -> None:
        """Ask the master for the tail after our position, or a snapshot.

        Each request carries a fresh token and supersedes the previous one: only the snapshot that
        echoes the latest token is installed. While a snapshot may be on its way we wait up to
        ``snapshot_wait_ms`` before asking again, so a large snapshot is not starved by newer asks.
        """
        if self.role is not Role.SLAVE or self.master_id is None or self.shard_id is None:
            return
        if not force:
            if now_ms - self.last_sync_request_ms < self.config.sync_retry_ms:
                return
            if (
                self.awaiting_sync is not None
                and now_ms - self.last_sync_request_ms < self.config.snapshot_wait_ms
            ):
                return
        self.last_sync_request_ms = now_ms
        self.sync_token += 1
        self.awaiting_sync = self.sync_token
        self.snapshot_buffer = {}
        self.snapshot_key = None
        out.append(
            Send(
                self._address(self.master_id),
                SyncRequest(
                    self.shard_id,
                    self.shard_epoch,
                    self.node_id,
                    self.applied_seq,
                    self.last_epoch,
                    self.sync_token,
                ),
            )
        )

    def _from_my_master(
        self, source: str, shard_id: int, shard_epoch: int, now_ms: int, out: list[Effect]
    ) -> bool:
        if self.role is not Role.SLAVE or shard_id != self.shard_id:
            return False
        if shard_epoch < self.shard_epoch:
            out.append(
                Trace(
                    "stale_epoch_rejected",
                    {"node": self.node_id, "shard": shard_id, "got": shard_epoch, "have": self.shard_epoch},
                )
            )
            return False
        if shard_epoch > self.shard_epoch:
            self._read_map(out, watch=False)  # our map is behind; learn the new master first
            return False
        return self.master_id is not None and source == self._address(self.master_id)

    def _on_replicate(self, source: str, message: Replicate, now_ms: int, out: list[Effect]) -> None:
        if not self._from_my_master(source, message.shard_id, message.shard_epoch, now_ms, out):
            return
        last_in_message = message.entries[-1][0] if message.entries else message.prev_seq
        if self.applied_seq > last_in_message:
            # An old or duplicated message: nothing to apply; re-ack our position (the master checks it).
            self._ack(source, out)
            return
        if self.applied_seq < message.prev_seq:
            self._request_sync(now_ms, out)  # a gap: something before this message was lost
            return
        position = {message.prev_seq: message.prev_epoch}
        for seq, epoch, _ in message.entries:
            position[seq] = epoch
        if position.get(self.applied_seq) != self.last_epoch:
            self._request_sync(now_ms, out)  # our tail diverged from this master's log
            return
        applied_any = False
        for seq, epoch, writes in message.entries:
            if seq != self.applied_seq + 1:
                continue
            try:
                self._apply_entry(writes, seq, now_ms)  # checks every op before applying any
            except RemoteProtocolError as exc:
                out.append(
                    Trace("bad_replicate", {"node": self.node_id, "shard": self.shard_id, "error": str(exc)})
                )
                break
            self.applied_seq = seq
            self.last_epoch = epoch
            applied_any = True
        if applied_any:
            self.progress_at_ms = now_ms
            # Progress by log matching: no snapshot is needed, and a late one must not roll us back.
            self.awaiting_sync = None
            self._note_fresh()
        self._ack(source, out)

    def _apply_entry(self, writes: list[Any], log_seq: int, now_ms: int) -> None:
        """Apply one replicated entry: store ops to the store, ``session`` ops to the dedup table.

        Every op is checked before anything changes, so a bad entry raises ``RemoteProtocolError``
        and leaves both as they were.
        """
        session_ops = [op for op in writes if is_session_op(op)]
        if not session_ops:
            self.store.apply(writes, now_ms)
            return
        for op in session_ops:
            check_op(op)
        self.store.apply([op for op in writes if not is_session_op(op)], now_ms)
        for op in session_ops:
            self.sessions.apply(op, log_seq)

    def _ack(self, master_address: str, out: list[Effect]) -> None:
        out.append(
            Send(
                master_address,
                ReplicateAck(
                    self.shard_id, self.shard_epoch, self.node_id, self.applied_seq, self.last_epoch
                ),
            )
        )

    def _on_snapshot_chunk(self, source: str, chunk: SnapshotChunk, now_ms: int, out: list[Effect]) -> None:
        if not self._from_my_master(source, chunk.shard_id, chunk.shard_epoch, now_ms, out):
            return
        if chunk.sync_token != self.awaiting_sync:
            # A duplicate, or the answer to a request we have since superseded: installing it could
            # roll us back below a position we already acknowledged.
            out.append(
                Trace(
                    "stale_snapshot_ignored",
                    {
                        "node": self.node_id,
                        "shard": self.shard_id,
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
            self._request_sync(now_ms, out, force=True)  # a chunk went missing: ask again
            return
        # Restore into a new store and table and swap, so a snapshot either refuses changes nothing.
        restored = Store(self.config.store_limits)
        table = DedupTable(self.config.dedup)
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
                Trace("bad_snapshot", {"node": self.node_id, "shard": self.shard_id, "error": str(exc)})
            )
            return
        self.store = restored
        self.sessions = table
        self.snapshot_buffer = {}
        self.snapshot_key = None
        self.awaiting_sync = None
        self.applied_seq, self.last_epoch = key
        self.progress_at_ms = now_ms
        self._note_fresh()
        out.append(
            Trace(
                "snapshot_installed",
                {
                    "node": self.node_id,
                    "shard": self.shard_id,
                    "seq": self.applied_seq,
                    "keys": self.store.key_count,
                },
            )
        )
        self._ack(source, out)

    def _on_heartbeat(self, source: str, beat: Heartbeat, now_ms: int, out: list[Effect]) -> None:
        if not self._from_my_master(source, beat.shard_id, beat.shard_epoch, now_ms, out):
            return
        self.heartbeats.append((beat.seq, beat.sent_at_ms))
        self._note_fresh()
        behind_without_progress = (
            beat.seq > self.applied_seq and now_ms - self.progress_at_ms >= self.config.heartbeat_interval_ms
        )
        diverged = beat.seq < self.applied_seq or (
            beat.seq == self.applied_seq and beat.last_epoch != self.last_epoch
        )
        if behind_without_progress or diverged:
            self._request_sync(now_ms, out)
        out.append(
            Send(
                source,
                HeartbeatAck(
                    self.shard_id, self.shard_epoch, self.node_id, self.applied_seq, self.last_epoch
                ),
            )
        )

    def _note_fresh(self) -> None:
        """Advance the freshness watermark: the master's send time of the newest beat we have caught up to."""
        for seq, sent_at in self.heartbeats:
            if seq <= self.applied_seq and (self.fresh_at_ms is None or sent_at > self.fresh_at_ms):
                self.fresh_at_ms = sent_at

    def staleness_ms(self, now_ms: int) -> int | None:
        """Upper bound on how far this replica lags the master, or None when unknown (never synced)."""
        if self.role is Role.MASTER:
            return 0
        if self.fresh_at_ms is None:
            return None
        return max(0, now_ms - self.fresh_at_ms)

    # ================================================================ timers

    def _on_timer(self, key: str, now_ms: int, out: list[Effect]) -> None:
        if key == "heartbeat":
            out.append(SetTimer("heartbeat", now_ms + self.config.heartbeat_interval_ms))
            if self.role is Role.MASTER:
                self._master_tick(now_ms, out)
            elif self.role is Role.SLAVE and self.fresh_at_ms is None:
                self._request_sync(now_ms, out)
        elif key == "report":
            out.append(SetTimer("report", now_ms + self.config.report_interval_ms))
            self._report(now_ms, out)
            if self.out_move is not None and self.role is Role.MASTER:
                self._move_report(now_ms, out)
        elif key == "migrate":
            self._migrate_pump(now_ms, out)
        elif key == "pending":
            self._expire_pending(now_ms, out)

    def _master_tick(self, now_ms: int, out: list[Effect]) -> None:
        if self.map is None or self.shard_id is None:
            return
        shard = self.map.shards.get(self.shard_id)
        if shard is None:
            return
        beat = Heartbeat(
            self.shard_id, self.shard_epoch, self.node_id, self.applied_seq, self.last_epoch, now_ms
        )
        for slave in shard.slaves:
            out.append(Send(self._address(slave), beat))
            acked = self.acks.get(slave, -1)
            # Resend a tail the slave should have by now (lost or reordered messages).
            if (
                0 <= acked < self.applied_seq
                and now_ms - self.ack_at_ms.get(slave, now_ms) >= self.config.heartbeat_interval_ms
            ):
                entries = self._entries_after(acked, self.config.replicate_batch)
                epoch = self._epoch_at(acked)
                if entries and epoch is not None:
                    out.append(
                        Send(
                            self._address(slave),
                            Replicate(
                                self.shard_id, self.shard_epoch, acked, epoch, entries, self.commit_seq
                            ),
                        )
                    )
        if self.fenced or (self.map.replication_mode == "async" and not shard.slaves):
            return
        self._manage_in_sync(shard, now_ms, out)

    def _manage_in_sync(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        remove, add = [], []
        for slave in shard.in_sync:
            if slave in self.removal_requested:
                remove.append(slave)
                continue
            lagging = self.acks.get(slave, -1) < self.applied_seq
            silent = (
                now_ms - self.ack_at_ms.get(slave, self.became_master_at_ms) > self.config.replica_timeout_ms
            )
            if lagging and silent:
                others = [
                    self.acks.get(s, -1)
                    for s in shard.in_sync
                    if s != slave and s not in self.removal_requested
                ]
                # Semi-sync: never drop the only in-sync slave holding a committed write.
                if (
                    self.map.replication_mode == "semi-sync"
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
                            "node": self.node_id,
                            "shard": self.shard_id,
                            "slave": slave,
                            "acked": self.acks.get(slave, -1),
                            "applied": self.applied_seq,
                        },
                    )
                )
        for slave in shard.slaves:
            # Re-admit once the slave holds every committed write; demanding the exact tail would
            # keep it out for ever under a steady write load.
            if (
                slave not in shard.in_sync
                and self.acks.get(slave, -1) >= max(self.commit_seq, 0)
                and self.acks.get(slave, -1) >= 0
            ):
                self.add_requested.add(slave)
                add.append(slave)
        if remove or add:
            change = InSyncChange(
                self.shard_id, self.shard_epoch, self.node_id, sorted(add), sorted(remove), self.map.epoch
            )
            for overlord in self.overlords:
                out.append(Send(overlord, change))
        self._advance_commit(now_ms, out)

    def _report(self, now_ms: int, out: list[Effect]) -> None:
        if not self.overlords:
            return
        report = NodeReport(
            node_id=self.node_id,
            address=self.address,
            incarnation=self.incarnation,
            map_epoch=self.map.epoch if self.map else 0,
            shard_id=self.shard_id if self.shard_id is not None else -1,
            role=self.role.value,
            shard_epoch=self.shard_epoch,
            last_epoch=self.last_epoch,
            applied_seq=self.applied_seq,
            commit_seq=self.commit_seq if self.role is Role.MASTER else 0,
            key_count=self.store.key_count,
            approx_bytes=self.store.approx_bytes,
            replica_acks=dict(sorted(self.acks.items())) if self.role is Role.MASTER else {},
            staleness_ms=self.staleness_ms(now_ms) if self.role is not Role.STARTING else None,
            ops_served=self.ops_served,
            fenced=self.fenced,
            sent_at_ms=now_ms,
            cpu_percent=self.process_stats.cpu_percent if self.process_stats else None,
            rss_bytes=self.process_stats.rss_bytes if self.process_stats else None,
            dedup_clients=len(self.sessions),
            dedup_results=self.sessions.result_count,
            dedup_bytes=self.sessions.bytes,
        )
        for overlord in self.overlords:
            out.append(Send(overlord, report))

    # ================================================================ migration

    def _migration_update(self, now_ms: int, out: list[Effect]) -> None:
        """Align the source and target move state, and the sweep, with the map just installed."""
        cmap = self.map
        if self.role is not Role.MASTER or cmap is None or self.shard_id is None:
            self._abandon_out_move(out, f"role {self.role.value}")
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
                    self._move_trace(
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
                or move.source_epoch != self.shard_epoch
            ):
                self._abandon_out_move(out, "the map moved on")
        if self.out_move is None and rebalance is not None:
            for move in rebalance.moves:
                if (
                    move.source == self.shard_id
                    and move.state == MOVE_COPYING
                    and move.source_epoch == self.shard_epoch
                ):
                    self._start_out_move(
                        rebalance.rebalance_id, move.source, move.target, move.attempt, now_ms, out
                    )
                    break
        elif self.out_move is not None:
            self._migrate_pump(now_ms, out)  # e.g. unfenced again: the copy resumes at once
        # Target side: keep only attempts the map still runs, under our shard epoch.
        live_incoming = set()
        if rebalance is not None:
            live_incoming = {
                move_key(rebalance.rebalance_id, m)
                for m in rebalance.moves
                if m.target == self.shard_id
                and m.state == MOVE_COPYING
                and m.target_epoch == self.shard_epoch
            }
        for key in [k for k in self.in_moves if k not in live_incoming]:
            del self.in_moves[key]
        if self.early_batches:
            early = list(self.early_batches)
            self.early_batches.clear()
            for source, batch in early:
                if (batch.rebalance_id, batch.source, batch.target, batch.attempt) in live_incoming:
                    self._on_migrate_batch(source, batch, now_ms, out)
        if not self.fenced:
            seen = (
                tuple(cmap.placement.shard_ids),
                rebalance.rebalance_id if rebalance is not None else None,
                rebalance.switched if rebalance is not None else frozenset(),
                self.shard_epoch,
            )
            if seen != self._ownership_seen:
                self._ownership_seen = seen
                self._sweep(now_ms, out)

    def _move_trace(self, event: str, key: MoveKey, **fields: Any) -> Trace:
        """One format for every migration trace: which move (and attempt), then what happened."""
        rebalance_id, source, target, attempt = key
        return Trace(
            event,
            {
                "node": self.node_id,
                "rebalance": rebalance_id,
                "source": source,
                "target": target,
                "attempt": attempt,
                **fields,
            },
        )

    def _abandon_out_move(self, out: list[Effect], why: str) -> None:
        move = self.out_move
        if move is None:
            return
        self.out_move = None
        out.append(self._move_trace("move_abandoned", move.key, why=why))

    def _start_out_move(
        self, rebalance_id: int, source: int, target: int, attempt: int, now_ms: int, out: list[Effect]
    ) -> None:
        assert self.map is not None
        selector = MoveSelector.of(self.map, source, target)
        if selector is None:
            return
        keys = self.store.select_keys(selector.mask, now_ms)
        self.out_move = OutgoingMove((rebalance_id, source, target, attempt), selector, keys, now_ms)
        self.out_move.next_send_ms = now_ms
        # The writers' sessions go first, so the target recognises copies of writes made here.
        self.out_move.sessions = self.sessions.ops_for_move(selector.selects)
        out.append(self._move_trace("move_started", (rebalance_id, source, target, attempt), keys=len(keys)))
        self._migrate_pump(now_ms, out)

    def _shard_master_address(self, shard_id: int) -> str | None:
        shard = self.map.shards.get(shard_id) if self.map is not None else None
        if shard is None or shard.master is None:
            return None
        return self._address(shard.master)

    def _migrate_pump(self, now_ms: int, out: list[Effect]) -> None:
        """Send what the window and the rate limit allow; retransmit what went unacknowledged."""
        move = self.out_move
        if move is None or self.role is not Role.MASTER or self.fenced or self.map is None:
            return
        cfg = self.config
        destination = self._shard_master_address(move.key[2])
        if destination is None:
            out.append(SetTimer("migrate", now_ms + cfg.migrate_retry_ms))
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
                    cost = self.store.entry_bytes(key)
                    if cost:  # deleted since selection: its delete travels as a delta
                        chosen.append(key)
                        size += cost
                puts = [
                    ["put", key, tag, _wire_form(value) if isinstance(value, _SEQUENCES) else value, at]
                    for key, tag, value, at in self.store.items(chosen, now_ms)
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
                out.append(self._move_trace("move_frozen", move.key, pending_deltas=len(move.deltas)))
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
            out.append(SetTimer("migrate", min(deadlines)))

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

    def _on_migrate_ack(self, ack: MigrateBatchAck, now_ms: int, out: list[Effect]) -> None:
        move = self.out_move
        if move is None or (ack.rebalance_id, ack.source, ack.target, ack.attempt) != move.key:
            return
        if move.acknowledge(ack.batch_no, now_ms):
            out.append(
                self._move_trace(
                    "move_ready",
                    move.key,
                    keys=move.keys_sent,
                    bytes=move.bytes_sent,
                    deltas=move.deltas_sent,
                    batches=move.next_batch,
                    elapsed_ms=now_ms - move.started_ms,
                )
            )
            self._move_report(now_ms, out)
            return
        self._migrate_pump(now_ms, out)

    def _move_report(self, now_ms: int, out: list[Effect]) -> None:
        move = self.out_move
        if move is None:
            return
        rebalance_id, source, target, attempt = move.key
        report = MoveReport(
            node_id=self.node_id,
            rebalance_id=rebalance_id,
            source=source,
            target=target,
            attempt=attempt,
            shard_epoch=self.shard_epoch,
            state="ready" if move.ready else "copying",
            keys=move.keys_sent,
            bytes=move.bytes_sent,
            deltas=move.deltas_sent,
            batches=move.acked + 1,
            elapsed_ms=now_ms - move.started_ms,
            frozen_ms=now_ms - move.frozen_at_ms if move.frozen_at_ms is not None else 0,
        )
        for overlord in self.overlords:
            out.append(Send(overlord, report))

    def _on_migrate_batch(self, source: str, batch: MigrateBatch, now_ms: int, out: list[Effect]) -> None:
        cmap = self.map
        rebalance = cmap.rebalance if cmap is not None else None
        move = (
            rebalance.move(batch.source, batch.target)
            if rebalance is not None and rebalance.rebalance_id == batch.rebalance_id
            else None
        )
        if (
            self.role is not Role.MASTER
            or self.fenced
            or cmap is None
            or batch.target != self.shard_id
            or move is None
            or move.state != MOVE_COPYING
            or move.attempt != batch.attempt
            or move.target_epoch != self.shard_epoch
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
                or self.role is not Role.MASTER
                or batch.target != self.shard_id
            )
            if ahead:
                self.early_batches.append((source, batch))
            key = (batch.rebalance_id, batch.source, batch.target, batch.attempt)
            out.append(self._move_trace("migrate_batch_ignored", key, batch=batch.batch_no))
            return
        key = (batch.rebalance_id, batch.source, batch.target, batch.attempt)
        incoming = self.in_moves.get(key)
        if incoming is None:
            incoming = self.in_moves[key] = IncomingMove(key)
        if batch.batch_no != incoming.expected:
            if batch.batch_no < incoming.expected and incoming.durable >= 0:
                self._send_migrate_ack(key, incoming.durable, out)  # our ack was lost
            return
        ops: list[Any] = list(batch.ops)
        if batch.batch_no == 0:
            # Whatever an aborted earlier attempt left here must not survive into this copy.
            selector = MoveSelector.of(cmap, batch.source, batch.target)
            assert selector is not None
            ops = [["del", k] for k in self.store.select_keys(selector.mask, None)] + ops
        try:
            # Store ops now; the writers' session ops are merged by _append, with the entry's seq.
            session_ops = [op for op in ops if is_session_op(op)]
            for op in session_ops:
                check_op(op)
            self.store.apply([op for op in ops if not is_session_op(op)] if session_ops else ops, now_ms)
        except RemoteProtocolError as exc:
            out.append(Trace("migrate_batch_rejected", {"node": self.node_id, "error": str(exc)}))
            return
        if ops:
            self._append(ops, now_ms, out, wire_form=True)  # decoded from the batch's frame
        incoming.expected += 1
        incoming.waiting.append((batch.batch_no, self.applied_seq))
        if batch.final:
            incoming.final_batch = batch.batch_no
        self._ack_incoming(out)

    def _durable_seq(self) -> int:
        """The highest log position replicated enough for a migration to count on it.

        The cluster's commit rule, but never weaker than one slave when the shard has in-sync
        slaves: moved data must not live on a single copy even in async mode.
        """
        assert self.map is not None and self.shard_id is not None
        shard = self.map.shards[self.shard_id]
        if self.map.replication_mode == "async":
            if not shard.in_sync:
                return self.applied_seq
            return max(self.acks.get(s, -1) for s in shard.in_sync)
        return self.commit_seq

    def _ack_incoming(self, out: list[Effect]) -> None:
        if self.role is not Role.MASTER or self.fenced or self.map is None or self.shard_id is None:
            return
        durable = self._durable_seq()
        for key, incoming in self.in_moves.items():
            newest = incoming.durable
            while incoming.waiting and incoming.waiting[0][1] <= durable:
                newest = incoming.waiting.pop(0)[0]
            if newest > incoming.durable:
                incoming.durable = newest
                self._send_migrate_ack(key, newest, out)

    def _send_migrate_ack(self, key: MoveKey, batch_no: int, out: list[Effect]) -> None:
        rebalance_id, source, target, attempt = key
        destination = self._shard_master_address(source)
        if destination is not None:
            out.append(
                Send(
                    destination,
                    MigrateBatchAck(rebalance_id, source, target, attempt, batch_no, self.node_id),
                )
            )

    def _sweep(self, now_ms: int, out: list[Effect]) -> None:
        """Delete, through the log, every key this shard neither owns nor is receiving."""
        cmap = self.map
        me = self.shard_id
        if cmap is None or me is None:
            return

        def foreign(hashes: Any) -> Any:
            keep = cmap.owners_of_hashes(hashes) == me
            if cmap.rebalance is not None:
                keep |= cmap.rebalance.target.owners_of_hashes(hashes) == me
            return ~keep

        doomed = self.store.select_keys(foreign, None)
        if not doomed:
            return
        step = self.config.sweep_batch_keys
        for start in range(0, len(doomed), step):
            ops: list[Any] = [["del", key] for key in doomed[start : start + step]]
            self.store.apply(ops, now_ms)
            self._append(ops, now_ms, out, wire_form=True)
        self.keys_swept += len(doomed)
        out.append(Trace("swept", {"node": self.node_id, "shard": me, "keys": len(doomed)}))
