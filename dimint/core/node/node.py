"""The data node: one process holding one replica of one shard, as master or slave.

Theory of operation
-------------------
A node registers itself with an ephemeral sequential znode and watches the cluster map. The map
alone decides its role: master of a shard, slave of a shard, or spare. Roles change only in
``_become_<role>()``, each transition traced in one format, and each role's state lives in an
object built when the role begins (``MasterRole``, ``SlaveRole``; a spare or a node without a map has
none), so nothing is reset by hand and nothing of one role leaks into the next. The node keeps what
every role shares: the replica (store, dedup table, log position), its session and fencing, the
map, the migration state the map governs, and the dispatch of each input to the current role
(etcd-io/raft's ``step = stepLeader``).

Client requests. The checks every role makes alike come first (a known command, keys this node's
shard owns: MOVED otherwise, with the map epoch so the client knows to refresh); then the admission
table (``dimint.core.node.admission``) says, from role, kind of request, fencing and freezing,
whether to serve, execute, or refuse with which code.

Fencing (invariant 2). On SUSPENDED or LOST the master stops acknowledging writes and strong reads
at once; after reconnecting (SUSPENDED) it re-reads the map and resumes only if the map still names
it master at its shard epoch. After LOST it never resumes: it registers again as a new incarnation
with no data, which makes the leader fail it over. A map that names this node id under another
incarnation gives it no role: that process held data this one does not have.

The roles' own rules are in their modules: replication, commits, the in-sync set and at-most-once
execution in ``master``; log matching, resyncs and staleness in ``slave``; online migration in
``migration`` (with the protocol of one move in ``moves``); the log in ``log``.
"""

from __future__ import annotations

import random
from typing import Any

from dimint.core import layout
from dimint.core.clustermap import ClusterMap, ShardInfo
from dimint.core.commands import COMMANDS, request_keys
from dimint.core.dedup import ANONYMOUS, DedupTable
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
from dimint.core.errors import CommandError, DecodeError, ErrorCode, InvariantViolation
from dimint.core.hashing import FULL_RANGE, key_hash
from dimint.core.node.admission import Answer, RequestKind, admit
from dimint.core.node.config import NodeConfig, Role, TimerKey
from dimint.core.node.log import ReplicationLog
from dimint.core.node.master import MasterRole, Pending
from dimint.core.node.migration import Migrations
from dimint.core.node.moves import OutgoingMove
from dimint.core.node.slave import SlaveRole
from dimint.core.protocol import (
    AdminRequest,
    ErrorReply,
    GetMap,
    Heartbeat,
    HeartbeatAck,
    MapReply,
    MigrateBatch,
    MigrateBatchAck,
    NodeReport,
    PositionQuery,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    SyncRequest,
)
from dimint.core.store import Store

__all__ = ["DataNode"]

RoleState = MasterRole | SlaveRole | None

#: Which role handles which peer message, by method name; any other role ignores it silently
#: (a stray ack or stream from a peer that has not seen the latest map yet is no error).
_ROLE_HANDLERS: dict[type, tuple[Role, str]] = {
    ReplicateAck: (Role.MASTER, "on_ack"),
    HeartbeatAck: (Role.MASTER, "on_ack"),
    SyncRequest: (Role.MASTER, "on_sync_request"),
    Replicate: (Role.SLAVE, "on_replicate"),
    SnapshotChunk: (Role.SLAVE, "on_snapshot_chunk"),
    Heartbeat: (Role.SLAVE, "on_heartbeat"),
}


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
        # The replica every role shares: data, dedup table (replicated with it), log position.
        self.store = Store(self.config.store_limits)
        self.sessions = DedupTable(self.config.dedup)
        self.applied_seq = 0
        self.last_epoch = 0
        self.progress_at_ms = 0  # when replication last moved this replica forward
        # Role, map and coordination.
        self.role = Role.STARTING
        self.state: RoleState = None
        self.map: ClusterMap | None = None
        self.shard_id: int | None = None
        self.shard_epoch = 0
        self.session = SessionState.SUSPENDED
        self.fenced = True
        self.registered_path: str | None = None
        self._coord_seq = 0
        self._coord_pending: dict[int, str] = {}
        self._confirm_request: int | None = None
        # Counted across role changes, so no answer to an earlier sync request can match a later one.
        self.sync_token = 0
        self.migration = Migrations(self)
        # Metrics.
        self.ops_served = 0
        self.process_stats: ProcessStats | None = None
        self.duplicates_answered = 0
        self.stale_refused = 0

    # ================================================================ the current role's state

    @property
    def master(self) -> MasterRole:
        """The master role's state; only valid while ``role is Role.MASTER``."""
        assert isinstance(self.state, MasterRole), f"{self.node_id} is {self.role.value}, not master"
        return self.state

    @property
    def commit_seq(self) -> int:
        """The highest log position committed under this mastership (0 unless master)."""
        return self.state.commit_seq if isinstance(self.state, MasterRole) else 0

    @property
    def pending(self) -> tuple[Pending, ...]:
        """Replies held until their writes commit, oldest first (masters only)."""
        return tuple(self.state.pending) if isinstance(self.state, MasterRole) else ()

    @property
    def master_id(self) -> str | None:
        """Whom this replica follows: itself as master, the map's master as slave, nobody otherwise."""
        if isinstance(self.state, MasterRole):
            return self.node_id
        return self.state.master_id if isinstance(self.state, SlaveRole) else None

    @property
    def awaiting_sync(self) -> int | None:
        """The token of the sync request a snapshot may answer (slaves only)."""
        return self.state.awaiting_sync if isinstance(self.state, SlaveRole) else None

    @property
    def out_move(self) -> OutgoingMove | None:
        return self.migration.out_move

    @property
    def keys_swept(self) -> int:
        return self.migration.keys_swept

    def violation(self, problem: str) -> InvariantViolation:
        return InvariantViolation(f"{self.node_id}: {problem}")

    def address_of(self, node_id: str) -> str:
        if self.map is not None and node_id in self.map.nodes:
            return self.map.nodes[node_id].address
        return node_id

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
                self.read_map(out, watch=True)
        elif isinstance(event, ProcessStats):
            self.process_stats = event
        elif isinstance(event, Start):
            out.append(SetTimer(TimerKey.HEARTBEAT, now_ms + self.config.heartbeat_interval_ms))
            out.append(SetTimer(TimerKey.REPORT, now_ms + self.config.report_interval_ms))
        self._check_invariants()
        return out

    def _check_invariants(self) -> None:
        if self.state is not None:
            if self.state.role is not self.role:
                raise self.violation(f"role {self.role.value} runs the state of {self.state.role.value}")
            self.state.check_invariants()
        if len(self.sessions) > self.sessions.config.max_clients:
            raise self.violation("dedup table above max_clients")

    # ================================================================ coordination

    def _coord(self, purpose: str) -> int:
        self._coord_seq += 1
        self._coord_pending[self._coord_seq] = purpose
        return self._coord_seq

    def read_map(self, out: list[Effect], watch: bool) -> int:
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
        self._confirm_request = self.read_map(out, watch=True)

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
        self.migration.update(now_ms, out)

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
                self.migration.update(now_ms, out)
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
                self.master.map_update(shard, now_ms, out)
            else:
                self._become_master(shard, now_ms, out)
        elif not (
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

    def _leave_role(self, out: list[Effect], why: str) -> RoleState:
        """End the current role's state (held replies answered as unknown); return it."""
        previous = self.state
        if previous is not None:
            previous.close(out, why)
        self.state = None
        return previous

    def _become_spare(self, now_ms: int, out: list[Effect]) -> None:
        self._leave_role(out, "node no longer serves this shard; outcome unknown")
        self.shard_id = None
        self._trace_role(Role.SPARE, out)
        self.role = Role.SPARE
        # A spare keeps no data: when it serves a shard again it is rebuilt from a snapshot.
        self.store.drop([FULL_RANGE])
        self.sessions.clear()
        self.applied_seq = 0
        self.last_epoch = 0

    def _become_master(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        previous = self._leave_role(out, "mastership changed; outcome unknown")
        self.shard_id = shard.shard_id
        self.shard_epoch = shard.shard_epoch
        self._trace_role(Role.MASTER, out)
        self.role = Role.MASTER
        # A master confirmed again under a new epoch keeps its log, so its slaves catch up by tail.
        if isinstance(previous, MasterRole) and previous.log:
            log = previous.log
        else:
            log = ReplicationLog((self.applied_seq, self.last_epoch), self.config.log_retention)
        # Nothing is known committed under our mastership until in-sync slaves acknowledge it.
        self.state = MasterRole(self, log, now_ms)
        # Fenced until the session is up and this very map (already read) names us master.
        self.fenced = self.session is not SessionState.CONNECTED
        if self.map is not None and not self.fenced:
            self.fenced = True
            self._maybe_unfence(self.map, out)
        self.state.map_update(shard, now_ms, out)

    def _become_slave(self, shard: ShardInfo, now_ms: int, out: list[Effect]) -> None:
        self._leave_role(out, "node became a slave; outcome unknown")
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
        self.fenced = True
        slave = self.state = SlaveRole(self, shard.master)
        slave.request_sync(now_ms, out)

    # ================================================================ messages

    def _on_receive(self, source: str, message: Any, now_ms: int, out: list[Effect]) -> None:
        kind = type(message)
        if kind is Request:
            self._on_request(source, message, now_ms, out)
        elif kind in _ROLE_HANDLERS:
            role, method = _ROLE_HANDLERS[kind]
            if self.role is role:
                getattr(self.state, method)(source, message, now_ms, out)
        elif kind is PositionQuery:
            if isinstance(self.state, SlaveRole):
                self.state.on_position_query(source, message, now_ms, out)
            else:
                self.ignore_position_query(message, out)
        elif kind is MigrateBatch:
            self.migration.on_batch(source, message, now_ms, out)
        elif kind is MigrateBatchAck:
            self.migration.on_ack(message, now_ms, out)
        elif kind is GetMap:
            if self.map is not None:
                out.append(Reply(source, MapReply(message.request_id, self.map.epoch, self.map.to_bytes())))
            else:
                out.append(Reply(source, ErrorReply(message.request_id, ErrorCode.UNAVAILABLE, "no map yet")))
        else:
            # Answer only requests (a client waits for them); answering a stray *reply* with an
            # error could set two processes bouncing errors at each other.
            if kind is AdminRequest:
                out.append(
                    Reply(
                        source,
                        ErrorReply(
                            message.request_id,
                            ErrorCode.UNKNOWN_COMMAND,
                            f"a data node does not handle {kind.__name__}",
                        ),
                    )
                )
            out.append(Trace("ignored", {"node": self.node_id, "message": kind.__name__}))

    def ignore_position_query(self, query: PositionQuery, out: list[Effect]) -> None:
        """Only a slave of the shard has a position worth promoting; anyone else stays silent."""
        out.append(
            Trace(
                "position_query_ignored",
                {"node": self.node_id, "shard": query.shard_id, "role": self.role.value},
            )
        )

    # ---------------------------------------------------------------- client requests

    def error(self, source: str, request: Request, code: ErrorCode, reason: str, out: list[Effect]) -> None:
        out.append(Reply(source, self.refusal(request, code, reason)))

    def refusal(self, request: Request, code: ErrorCode, reason: str) -> ErrorReply:
        """The ``ErrorReply`` to ``request``, under the map epoch this node holds (0 before any)."""
        return ErrorReply(request.request_id, code, reason, self.map.epoch if self.map is not None else 0)

    def _on_request(self, source: str, request: Request, now_ms: int, out: list[Effect]) -> None:
        spec = COMMANDS.get(request.command)
        if spec is None:
            self.error(
                source, request, ErrorCode.UNKNOWN_COMMAND, f"unknown command {request.command!r}", out
            )
            return
        if self.map is None or self.shard_id is None:
            self.error(source, request, ErrorCode.MOVED, f"node {self.node_id} serves no shard", out)
            return
        try:
            keys = request_keys(request.command, request.args)
        except (TypeError, IndexError) as exc:
            self.error(source, request, ErrorCode.BAD_ARGUMENT, f"bad keys: {exc}", out)
            return
        hashes = [key_hash(key) for key in keys]
        for key, h in zip(keys, hashes, strict=True):
            owner = self.map.owner_of_hash(h)
            if owner != self.shard_id:
                self.error(
                    source,
                    request,
                    ErrorCode.MOVED,
                    f"key {key!r} belongs to shard {owner}, not {self.shard_id}",
                    out,
                )
                return
        if spec.is_write:
            kind = RequestKind.WRITE
            if (
                self.role is Role.MASTER
                and request.client_id != ANONYMOUS
                and self.config.at_most_once
                and self.master.known_write(source, request, now_ms, out)
            ):
                return
        else:
            kind = RequestKind.WEAK_READ if request.consistency == "weak" else RequestKind.STRONG_READ
        move = self.migration.out_move
        frozen = (
            self.role is Role.MASTER
            and kind is not RequestKind.WEAK_READ
            and not self.fenced
            and move is not None
            and move.frozen
            and any(move.selector.selects(h) for h in hashes)
        )
        answer = admit(self.role, kind, self.fenced, frozen)
        if answer is Answer.SERVE_NOW:
            if self.role is Role.SLAVE:
                staleness = self.staleness_ms(now_ms)
                limit = self.config.max_staleness_ms
                if limit is not None and (staleness is None or staleness > limit):
                    self.error(
                        source,
                        request,
                        ErrorCode.TOO_STALE,
                        f"slave lag {staleness} ms exceeds max_staleness_ms={limit}",
                        out,
                    )
                    return
            self.execute(source, request, now_ms, out, wait_commit=False)
        elif answer is Answer.SERVE_COMMITTED:
            self.execute(source, request, now_ms, out, wait_commit=True)
        elif answer is Answer.EXECUTE:
            self.master.on_write(source, request, hashes, now_ms, out)
        elif answer is Answer.NOT_MASTER:
            what = f"a slave of shard {self.shard_id}" if self.role is Role.SLAVE else self.role.value
            self.error(source, request, ErrorCode.NOT_MASTER, f"node {self.node_id} is {what}", out)
        elif answer is Answer.FENCED:
            self.error(
                source,
                request,
                ErrorCode.FENCED,
                f"master {self.node_id} cannot confirm its lease (session {self.session.value})",
                out,
            )
        elif answer is Answer.FROZEN:
            assert move is not None
            self.error(
                source,
                request,
                ErrorCode.FROZEN,
                f"key moves to shard {move.selector.target}; ownership switches in a moment",
                out,
            )
        else:
            self.error(source, request, ErrorCode.MOVED, f"node {self.node_id} serves no shard", out)

    def execute(
        self,
        source: str,
        request: Request,
        now_ms: int,
        out: list[Effect],
        wait_commit: bool,
        hashes: list[int] | None = None,
    ) -> None:
        """Run a command on the local store; a master appends what it changed (a write, or the
        delete of a lazily expired key a read observed) and answers once that is committed. An
        identified client's write goes through the master's at-most-once path instead."""
        master = self.state if isinstance(self.state, MasterRole) else None
        if master is not None and hashes is not None and request.client_id != ANONYMOUS:
            master.execute_identified(source, request, hashes, now_ms, out, wait_commit)
            return
        try:
            outcome = self.store.execute(request.command, request.args, now_ms)
        except CommandError as exc:
            if wait_commit and master is not None:
                # A refusal can depend on state too (WRONG_TYPE of a key an uncommitted write made
                # a list): a strong answer, value or refusal, waits for what it observed to commit.
                master.reply_when_committed(source, self.refusal(request, exc.code, exc.reason), now_ms, out)
            else:
                self.error(source, request, exc.code, exc.reason, out)
            return
        self.ops_served += 1
        if outcome.writes and master is not None:
            # A read that observed a lazily expired key deletes it on the master; slaves learn it too.
            master.append(list(outcome.writes), now_ms, out)
        if wait_commit:
            assert master is not None, "only a master holds replies until commit"
            master.reply_when_committed(source, Response(request.request_id, outcome.value), now_ms, out)
        else:
            out.append(Reply(source, Response(request.request_id, outcome.value)))

    def staleness_ms(self, now_ms: int) -> int | None:
        """Upper bound on how far this replica lags the master: 0 for the master, the slave's bound,
        None when unknown (a slave that never synced, a node that serves no shard)."""
        if self.role is Role.MASTER:
            return 0
        if isinstance(self.state, SlaveRole):
            return self.state.staleness_ms(now_ms)
        return None

    # ================================================================ timers

    def _on_timer(self, key: str, now_ms: int, out: list[Effect]) -> None:
        if key == TimerKey.HEARTBEAT:
            out.append(SetTimer(TimerKey.HEARTBEAT, now_ms + self.config.heartbeat_interval_ms))
            if self.state is not None:
                self.state.tick(now_ms, out)
        elif key == TimerKey.REPORT:
            out.append(SetTimer(TimerKey.REPORT, now_ms + self.config.report_interval_ms))
            self._report(now_ms, out)
            if self.migration.out_move is not None and self.role is Role.MASTER:
                self.migration.report(now_ms, out)
        elif key == TimerKey.MIGRATE:
            self.migration.pump(now_ms, out)
        elif key == TimerKey.PENDING and isinstance(self.state, MasterRole):
            self.state.expire_pending(now_ms, out)

    def _report(self, now_ms: int, out: list[Effect]) -> None:
        if not self.overlords:
            return
        master = self.state if isinstance(self.state, MasterRole) else None
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
            commit_seq=master.commit_seq if master is not None else 0,
            key_count=self.store.key_count,
            approx_bytes=self.store.approx_bytes,
            replica_acks=dict(sorted(master.acks.items())) if master is not None else {},
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
