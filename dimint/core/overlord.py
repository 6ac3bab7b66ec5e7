"""The Overlord: coordinator of the cluster map. Three run; one leads.

Theory of operation
-------------------
Election. Each Overlord creates an ephemeral sequential znode under ``/dimint/election``; the owner
of the lowest name leads. Every Overlord watches the election children, so when the leader's
session expires the next one takes over. Because every map change is a *conditional* write against
the map version the leader last read (invariant 1), a deposed leader that still believes it leads
can never overwrite its successor's map: its write fails with BAD_VERSION and it re-reads.

Membership. Data nodes register ephemeral sequential znodes ``/dimint/nodes/<id>_<seq>``. The leader
lists them (with a child watch) and reads each new registration's payload (its address). A node
whose registration vanished is dead. A registration names the process *incarnation*; one that
differs from the incarnation in the map means the node restarted and lost its memory, so it leaves
its shard at once (a master fails over without waiting for the old session to expire) and comes
back as a fresh slave.

Reconciliation. The leader never edits the map piecemeal: on any change (membership, a position
reply, an in-sync request, a timer) it computes the whole successor map from the current one and
writes it in one conditional write; only one write is in flight at a time, and when it lands the
leader reconciles again. Several simultaneous deaths are all handled: their failovers run at once,
and each shard is promoted as soon as its own positions are in (a shard does not wait for another
shard's slow slave), so they may land in successive maps.

Failover. When a shard's master is dead the leader asks the live in-sync slaves for their log
positions (``PositionQuery``), waits for all of them or a timeout, and promotes the one with the
highest ``(last_epoch, applied_seq)``. That slave holds every committed write (semi-sync/sync
commit only what an in-sync slave acknowledged, and slaves apply in order). The shard epoch grows,
which fences the old master. If no in-sync slave answers, the shard stays without a master rather
than silently losing acknowledged writes, unless ``unsafe_failover`` is configured.

Membership changes and rebalancing. Spare processes first fill missing slave slots (``replicas``
per shard); with ``join_policy="fill-then-grow"`` (the original system's policy) enough spares then
form a new shard, otherwise only an administrator's ``add_shard`` does. An administrator's
``remove_shard`` queues a graceful drain in the map. One rebalance runs at a time: its moves
(``plan(placement, target)``) are started ``parallel_moves`` at a time, switched when the source
reports them ready under the attempt and shard epochs the map recorded, and restarted with a new
attempt when either shard changes master or a move makes no progress for ``move_stall_ms``. When
every move has switched the target placement is installed and a drained shard leaves the map, its
processes retired until they restart. Everything the leader decides lives in the map, so a new
leader simply carries on (``dimint.core.node.moves`` describes a move).

Proxying. Every Overlord also forwards data requests to the owning shard's master and relays the
answer (``dimint.core.proxy``); an answer that does not come within ``proxy_timeout_ms`` is reported
to the client as TIMEOUT (outcome unknown), never as failed. ``status()`` is the plain-data view of
all this (``dimint.core.status``).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any

from dimint.core import layout
from dimint.core.clustermap import (
    REPLICATION_MODES,
    ClusterMap,
    NodeInfo,
    ReplicationMode,
    ShardInfo,
    initial_map,
)
from dimint.core.effects import (
    CoordCreate,
    CoordErrorKind,
    CoordList,
    CoordRead,
    CoordResult,
    CoordSet,
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
    WatchKind,
)
from dimint.core.errors import DecodeError, ErrorCode, InvariantViolation
from dimint.core.placement import make_placement
from dimint.core.protocol import (
    AdminReply,
    AdminRequest,
    ErrorReply,
    GetMap,
    InSyncChange,
    MapReply,
    MoveReport,
    NodeReport,
    PositionQuery,
    PositionReply,
    Request,
    Response,
)
from dimint.core.proxy import ProxyTable
from dimint.core.status import overlord_status
from dimint.core.successor import (
    Failover,
    Leadership,
    OverlordTimer,
    Pending,
    Registration,
    next_map,
    usable_spares,
)


class OverlordRole(enum.StrEnum):
    DISCONNECTED = "disconnected"
    FOLLOWER = "follower"
    LEADER = "leader"


JOIN_POLICIES = ("fill-then-grow", "fill-only")


@dataclass(frozen=True, slots=True)
class OverlordConfig:
    """Cluster shape and coordinator timing; durations in milliseconds."""

    initial_shards: int = 3
    replicas: int = 2  # slaves per shard
    placement_kind: str = "ring"
    placement_params: dict[str, Any] = field(default_factory=dict)
    replication_mode: ReplicationMode = ReplicationMode.SEMI_SYNC
    min_in_sync: int = 1
    position_query_timeout_ms: int = 300
    reconcile_interval_ms: int = 500
    unsafe_failover: bool = False
    join_policy: str = "fill-then-grow"  # or "fill-only": new shards only on an admin add_shard
    parallel_moves: int = 1
    move_stall_ms: int = 5_000
    proxy_timeout_ms: int = 1_000
    max_proxied: int = 10_000  # requests in flight through this Overlord before it refuses more

    def __post_init__(self) -> None:
        if self.join_policy not in JOIN_POLICIES:
            raise ValueError(
                f"join_policy must be one of {', '.join(JOIN_POLICIES)}, got {self.join_policy!r}"
            )
        if self.parallel_moves < 1 or self.move_stall_ms < 1:
            raise ValueError("parallel_moves and move_stall_ms must be positive")
        if self.initial_shards < 1:
            raise ValueError("initial_shards must be at least 1")
        if self.replicas < 0:
            raise ValueError("replicas must be >= 0")
        if self.replication_mode not in REPLICATION_MODES:
            raise ValueError(f"unknown replication_mode {self.replication_mode!r}")
        object.__setattr__(self, "replication_mode", ReplicationMode(self.replication_mode))


class Overlord:
    """Coordinator state machine; ``handle(event, now_ms)`` returns effects (see module docstring)."""

    def __init__(
        self,
        overlord_id: str,
        address: str,
        config: OverlordConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.overlord_id = overlord_id
        self.address = address
        self.config = config or OverlordConfig()
        self.rng = rng if rng is not None else random.Random(overlord_id)
        self.role = OverlordRole.DISCONNECTED
        self.session = SessionState.SUSPENDED
        self.election_path: str | None = None
        self.map: ClusterMap | None = None
        self.map_version = -1
        self.map_missing = False
        self._coord_seq = 0
        self._coord_pending: dict[int, tuple[str, Any]] = {}
        self.write_in_flight = False
        # A map write that ended in CONNECTION_LOSS, until a read tells whether it landed.
        self._in_doubt: tuple[ClusterMap, Pending] | None = None
        self.registrations: dict[str, Registration] = {}  # node_id -> current registration
        # A leader judges membership only once it has listed the registrations and read every
        # payload: before that, every node would look dead and every shard would fail over.
        self.nodes_listed = False
        self.payloads_pending: set[str] = set()
        self.failovers: dict[int, Failover] = {}
        self.insync_requests: dict[int, InSyncChange] = {}
        self.reports: dict[str, NodeReport] = {}
        self._query_seq = 0
        self.events: list[dict[str, Any]] = []  # failovers and membership changes, for status
        # Rebalancing: the latest report per move, and when each attempt last made progress.
        self.move_reports: dict[tuple[int, int, int], MoveReport] = {}
        self.move_progress: dict[tuple[int, int, int, int], tuple[int, int]] = {}
        self.drain_requests: set[int] = set()
        self.grow_requests = 0
        self.process_stats: ProcessStats | None = None
        self.proxy = ProxyTable(
            overlord_id, self.config.proxy_timeout_ms, self.config.max_proxied, OverlordTimer.PROXY
        )

    # ================================================================ entry point

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        if isinstance(event, Receive):
            self._on_receive(event.source, event.message, now_ms, out)
        elif isinstance(event, CoordResult):
            self._on_coord_result(event, now_ms, out)
        elif isinstance(event, WatchFired):
            self._on_watch(event, now_ms, out)
        elif isinstance(event, SessionStateChanged):
            self._on_session(event.state, now_ms, out)
        elif isinstance(event, TimerFired):
            self._on_timer(event.key, now_ms, out)
        elif isinstance(event, ProcessStats):
            self.process_stats = event
        elif isinstance(event, Start):
            out.append(SetTimer(OverlordTimer.RECONCILE, now_ms + self.config.reconcile_interval_ms))
        self._check_invariants()
        return out

    def _check_invariants(self) -> None:
        if self.role is OverlordRole.LEADER and self.election_path is None:
            raise InvariantViolation(f"{self.overlord_id} leads without an election znode")

    @property
    def is_leader(self) -> bool:
        return self.role is OverlordRole.LEADER

    # ================================================================ coordination plumbing

    def _coord(self, purpose: str, context: Any = None) -> int:
        self._coord_seq += 1
        self._coord_pending[self._coord_seq] = (purpose, context)
        return self._coord_seq

    def _become(self, role: OverlordRole, now_ms: int, out: list[Effect], why: str) -> None:
        if role is self.role:
            return
        out.append(
            Trace(
                "overlord_role",
                {"overlord": self.overlord_id, "from": self.role.value, "to": role.value, "why": why},
            )
        )
        self.role = role
        if role is OverlordRole.LEADER:
            self.write_in_flight = False
            self.failovers.clear()
            self.nodes_listed = False
            self.payloads_pending.clear()
            out.append(CoordList(self._coord("nodes"), layout.NODES_PATH, watch=True))
            out.append(CoordRead(self._coord("map"), layout.MAP_PATH, watch=True))

    def _on_session(self, state: SessionState, now_ms: int, out: list[Effect]) -> None:
        self.session = state
        out.append(Trace("session", {"overlord": self.overlord_id, "state": state.value}))
        if state is SessionState.SUSPENDED:
            # We may no longer lead; stay put but write nothing (writes would fail anyway).
            return
        if state is SessionState.LOST:
            self.election_path = None
            self._become(OverlordRole.DISCONNECTED, now_ms, out, "session lost")
            return
        if self.election_path is None:
            payload = layout.encode_payload({"overlord_id": self.overlord_id, "address": self.address})
            out.append(
                CoordCreate(
                    self._coord("elect"),
                    f"{layout.ELECTION_PATH}/n_",
                    payload,
                    ephemeral=True,
                    sequential=True,
                )
            )
        else:
            out.append(CoordList(self._coord("election"), layout.ELECTION_PATH, watch=True))
        out.append(CoordRead(self._coord("map"), layout.MAP_PATH, watch=True))
        if self.is_leader:
            out.append(CoordList(self._coord("nodes"), layout.NODES_PATH, watch=True))

    def _on_watch(self, event: WatchFired, now_ms: int, out: list[Effect]) -> None:
        if event.path == layout.ELECTION_PATH:
            out.append(CoordList(self._coord("election"), layout.ELECTION_PATH, watch=True))
        elif event.path == layout.MAP_PATH:
            out.append(CoordRead(self._coord("map"), layout.MAP_PATH, watch=True))
        elif event.path == layout.NODES_PATH and self.is_leader:
            out.append(CoordList(self._coord("nodes"), layout.NODES_PATH, watch=True))
        elif event.kind is WatchKind.DELETED and event.path.startswith(layout.NODES_PATH + "/"):
            pass  # covered by the child watch

    def _on_coord_result(self, result: CoordResult, now_ms: int, out: list[Effect]) -> None:
        purpose, context = self._coord_pending.pop(result.request_id, (None, None))
        if purpose == "elect":
            if result.error is None:
                self.election_path = result.path
                out.append(CoordList(self._coord("election"), layout.ELECTION_PATH, watch=True))
        elif purpose == "election":
            if result.error is None and self.election_path is not None:
                mine = self.election_path.rsplit("/", 1)[-1]
                children = sorted(result.children, key=lambda name: name.rsplit("_", 1)[-1])
                if mine not in children:
                    self.election_path = None
                    self._become(OverlordRole.DISCONNECTED, now_ms, out, "election znode gone")
                elif children[0] == mine:
                    self._become(OverlordRole.LEADER, now_ms, out, "lowest election znode")
                else:
                    self._become(OverlordRole.FOLLOWER, now_ms, out, f"{children[0]} leads")
        elif purpose == "map":
            self._on_map_read(result, now_ms, out)
        elif purpose == "nodes":
            if result.error is None:
                self._on_nodes_listed(result.children, now_ms, out)
            elif result.error is CoordErrorKind.NO_NODE:
                out.append(CoordCreate(self._coord("mkdir"), layout.NODES_PATH, b""))
                out.append(CoordList(self._coord("nodes"), layout.NODES_PATH, watch=True))
        elif purpose == "node_payload":
            node_id, znode = context
            registration = self.registrations.get(node_id)
            self.payloads_pending.discard(znode)  # answered, whatever we now think of it
            if registration is None or registration.znode != znode:
                self._reconcile(now_ms, out)
                return
            if result.error is not None:
                del self.registrations[node_id]
                if result.error is not CoordErrorKind.NO_NODE:
                    # Connection trouble: distrust the listing until it is redone (the reconcile
                    # timer or the next CONNECTED does that), rather than declare the node dead.
                    self.nodes_listed = False
                self._reconcile(now_ms, out)
                return
            payload = layout.decode_payload(result.data)
            address = payload.get("address")
            registration.address = address if isinstance(address, str) else None
            incarnation = payload.get("incarnation")
            registration.incarnation = incarnation if isinstance(incarnation, int) else None
            self._reconcile(now_ms, out)
        elif purpose == "write":
            self._on_write_result(result, context, now_ms, out)

    def _on_map_read(self, result: CoordResult, now_ms: int, out: list[Effect]) -> None:
        if result.error is CoordErrorKind.NO_NODE:
            self.map_missing = True
            self._reconcile(now_ms, out)
            return
        if result.error is not None or result.data is None:
            return
        try:
            cmap = ClusterMap.from_bytes(result.data)
        except DecodeError as exc:
            out.append(Trace("bad_map", {"overlord": self.overlord_id, "error": str(exc)}))
            return
        self.map_missing = False
        if self._in_doubt is not None:
            written, used = self._in_doubt
            self._in_doubt = None
            if result.data == written.to_bytes():
                self._forget(used)
        if self.map is None or cmap.epoch >= self.map.epoch:
            self.map = cmap
            self.map_version = result.version
        self._reconcile(now_ms, out)

    def _on_write_result(
        self, result: CoordResult, context: tuple[ClusterMap, Pending], now_ms: int, out: list[Effect]
    ) -> None:
        new_map, used = context
        self.write_in_flight = False
        if result.error is None:
            self.map = new_map
            self.map_version = result.version
            self.map_missing = False
            self._forget(used)
            out.append(
                Trace(
                    "map_written",
                    {"overlord": self.overlord_id, "epoch": new_map.epoch, "version": result.version},
                )
            )
            for failover in list(self.failovers.values()):
                shard = new_map.shards.get(failover.shard_id)
                if failover.done and shard is not None and shard.master != failover.old_master:
                    del self.failovers[failover.shard_id]
            self._reconcile(now_ms, out)
        else:
            # BAD_VERSION: someone else (a newer leader) wrote; NODE_EXISTS: the map appeared;
            # CONNECTION_LOSS: unknown. In every case: re-read and decide again from the truth.
            # The requests the map took in stay queued (a map that does not exist did not take
            # them), except after CONNECTION_LOSS when the re-read shows the write did land.
            if result.error is CoordErrorKind.CONNECTION_LOSS:
                self._in_doubt = (new_map, used)
            out.append(
                Trace(
                    "map_write_failed",
                    {"overlord": self.overlord_id, "epoch": new_map.epoch, "error": result.error.value},
                )
            )
            # Positions gathered for the failed write may be stale by the time we know the truth:
            # start every failover afresh from the map we are about to re-read.
            self.failovers.clear()
            out.append(CoordRead(self._coord("map"), layout.MAP_PATH, watch=True))

    def _on_nodes_listed(self, children: tuple[str, ...], now_ms: int, out: list[Effect]) -> None:
        latest: dict[str, tuple[int, str]] = {}
        for name in children:
            parsed = layout.parse_node_znode(name)
            if parsed is None:
                continue
            node_id, seq = parsed
            if node_id not in latest or seq > latest[node_id][0]:
                latest[node_id] = (seq, name)
        self.nodes_listed = True
        for node_id in list(self.registrations):
            if node_id not in latest:
                self.payloads_pending.discard(self.registrations[node_id].znode)
                del self.registrations[node_id]
                self._event(now_ms, "node_left", node=node_id)
        for node_id, (seq, name) in sorted(latest.items()):
            current = self.registrations.get(node_id)
            if current is None or current.znode != name:
                if current is not None:
                    self.payloads_pending.discard(current.znode)
                    self._event(now_ms, "node_reregistered", node=node_id)
                else:
                    self._event(now_ms, "node_joined", node=node_id)
                self.registrations[node_id] = Registration(name, seq)
                self.payloads_pending.add(name)
                out.append(
                    CoordRead(self._coord("node_payload", (node_id, name)), f"{layout.NODES_PATH}/{name}")
                )
        self._reconcile(now_ms, out)

    def _event(self, now_ms: int, kind: str, **fields: Any) -> None:
        self.events.append({"time_ms": now_ms, "event": kind, **fields})
        del self.events[:-200]

    # ================================================================ messages

    def _on_receive(self, source: str, message: Any, now_ms: int, out: list[Effect]) -> None:
        if isinstance(message, GetMap):
            if self.map is not None:
                out.append(Reply(source, MapReply(message.request_id, self.map.epoch, self.map.to_bytes())))
            else:
                out.append(
                    Reply(
                        source,
                        ErrorReply(
                            message.request_id, ErrorCode.UNAVAILABLE, "the cluster map does not exist yet"
                        ),
                    )
                )
        elif isinstance(message, NodeReport):
            self.reports[message.node_id] = message
        elif isinstance(message, InSyncChange):
            if self.is_leader:
                self.insync_requests[message.shard_id] = message
                self._reconcile(now_ms, out)
        elif isinstance(message, PositionReply):
            self._on_position_reply(message, now_ms, out)
        elif isinstance(message, MoveReport):
            self._on_move_report(message, now_ms, out)
        elif isinstance(message, AdminRequest):
            self._on_admin(source, message, now_ms, out)
        elif isinstance(message, Request):
            self.proxy.forward(source, message, self.map, now_ms, out)
        elif isinstance(message, (Response, ErrorReply)) and message.request_id in self.proxy.waiting:
            self.proxy.answer(message, out)
        else:
            out.append(Trace("ignored", {"overlord": self.overlord_id, "message": type(message).__name__}))

    def _on_admin(self, source: str, message: AdminRequest, now_ms: int, out: list[Effect]) -> None:
        if message.action == "status":
            out.append(Reply(source, AdminReply(message.request_id, self.status())))
        elif message.action in ("add_shard", "remove_shard"):
            error = self._admin_membership(message, now_ms, out)
            if error is None:
                out.append(Reply(source, AdminReply(message.request_id, {"accepted": True})))
            else:
                code, reason = error
                epoch = self.map.epoch if self.map else 0
                out.append(Reply(source, ErrorReply(message.request_id, code, reason, epoch)))
        else:
            out.append(
                Reply(
                    source,
                    ErrorReply(
                        message.request_id,
                        ErrorCode.BAD_ARGUMENT,
                        f"unknown admin action {message.action!r} (status, add_shard, remove_shard)",
                    ),
                )
            )

    def _admin_membership(
        self, message: AdminRequest, now_ms: int, out: list[Effect]
    ) -> tuple[ErrorCode, str] | None:
        """Queue a shard addition or drain; the error to answer, or None when accepted."""
        if not self.is_leader or self.map is None:
            return ErrorCode.NOT_MASTER, f"overlord {self.overlord_id} does not lead; ask the leader"
        cmap = self.map
        if message.action == "add_shard":
            if message.params:
                return ErrorCode.BAD_ARGUMENT, "add_shard takes no parameters"
            spares = usable_spares(cmap, self._live_nodes())
            needed = 1 + self.config.replicas
            queued = int(cmap.extra.get("grow_requests", 0)) + self.grow_requests
            if len(spares) < needed * (queued + 1):
                return (
                    ErrorCode.UNAVAILABLE,
                    f"a new shard needs {needed} spare processes; {len(spares)} registered"
                    + (f" ({queued} shard(s) already queued)" if queued else ""),
                )
            self.grow_requests += 1
        else:
            shard_id = message.params.get("shard_id")
            if set(message.params) != {"shard_id"} or type(shard_id) is not int:
                return ErrorCode.BAD_ARGUMENT, "remove_shard takes {'shard_id': int}"
            if shard_id not in cmap.shards:
                return ErrorCode.BAD_ARGUMENT, f"no shard {shard_id} (shards: {sorted(cmap.shards)})"
            remaining = set(cmap.placement.shard_ids) | (
                set(cmap.rebalance.target.shard_ids) if cmap.rebalance else set()
            )
            remaining -= {*cmap.draining, *self.drain_requests, shard_id}
            if not remaining:
                return ErrorCode.BAD_ARGUMENT, "cannot remove the last shard that owns keys"
            self.drain_requests.add(shard_id)
        self._event(now_ms, "admin_" + message.action, **message.params)
        out.append(Trace("admin", {"overlord": self.overlord_id, "action": message.action, **message.params}))
        self._reconcile(now_ms, out)
        return None

    def _on_move_report(self, report: MoveReport, now_ms: int, out: list[Effect]) -> None:
        self.move_reports[(report.rebalance_id, report.source, report.target)] = report
        key = (report.rebalance_id, report.source, report.target, report.attempt)
        progress = report.batches + (1 if report.state == "ready" else 0)
        seen = self.move_progress.get(key)
        if seen is None or progress > seen[0]:
            self.move_progress[key] = (progress, now_ms)
        if report.state == "ready" and self.is_leader:
            self._reconcile(now_ms, out)

    def status(self) -> dict[str, Any]:
        """Plain-data view of the cluster for `cluster status`, the dashboard and tests."""
        return overlord_status(self)

    # ================================================================ failover

    def _on_position_reply(self, reply: PositionReply, now_ms: int, out: list[Effect]) -> None:
        failover = self.failovers.get(reply.shard_id)
        if failover is None or failover.done or reply.request_id != failover.request_id:
            return
        if reply.node_id in failover.asked:
            failover.replies[reply.node_id] = (reply.last_epoch, reply.applied_seq)
        if failover.ready(set(self._live_nodes())):
            self._reconcile(now_ms, out)

    # ================================================================ reconciliation

    def _on_timer(self, key: str, now_ms: int, out: list[Effect]) -> None:
        if key == OverlordTimer.PROXY:
            self.proxy.expire(now_ms, out)
        elif key == OverlordTimer.RECONCILE:
            out.append(SetTimer(OverlordTimer.RECONCILE, now_ms + self.config.reconcile_interval_ms))
            if self.is_leader and self.session is SessionState.CONNECTED:
                if not self.nodes_listed:
                    out.append(CoordList(self._coord("nodes"), layout.NODES_PATH, watch=True))
                if self.map is None and not self.map_missing:
                    out.append(CoordRead(self._coord("map"), layout.MAP_PATH, watch=True))
                self._reconcile(now_ms, out)
        elif key.startswith(f"{OverlordTimer.FAILOVER}:"):
            shard_id = int(key.split(":", 1)[1])
            failover = self.failovers.get(shard_id)
            if failover is not None and not failover.done and self.map is not None:
                # A silent in-sync slave may hold the newest acknowledged write: choosing without it
                # could lose that write. Ask again until it answers or its registration vanishes;
                # a partition costs availability here, never safety.
                failover.timed_out = True
                query = PositionQuery(failover.request_id, shard_id, failover.shard_epoch)
                for node_id in sorted(failover.must_hear - set(failover.replies)):
                    if node_id in self.map.nodes:
                        out.append(Send(self.map.nodes[node_id].address, query))
                out.append(SetTimer(key, now_ms + self.config.position_query_timeout_ms))
                self._reconcile(now_ms, out)

    def _live_nodes(self) -> dict[str, Registration]:
        return {n: r for n, r in self.registrations.items() if r.address is not None}

    def _reconcile(self, now_ms: int, out: list[Effect]) -> None:
        if not self.is_leader or self.session is not SessionState.CONNECTED or self.write_in_flight:
            return
        if not self.nodes_listed or self.payloads_pending:
            return
        live = self._live_nodes()
        if self.map is None:
            if self.map_missing:
                self._create_initial_map(live, now_ms, out)
            return
        decision = next_map(
            self.map,
            live,
            Pending(dict(self.insync_requests), frozenset(self.drain_requests), self.grow_requests),
            Leadership(self.failovers, self.move_reports, self.move_progress, self._query_seq),
            self.config,
            self.overlord_id,
            now_ms,
        )
        out.extend(decision.effects)
        self.events.extend(decision.events)
        del self.events[:-200]
        self.failovers = decision.failovers
        self.move_progress = decision.move_progress
        self._query_seq = decision.query_seq
        self._forget(decision.dropped)
        if decision.map is not None:
            self.write_in_flight = True
            out.append(
                CoordSet(
                    self._coord("write", (decision.map, decision.used)),
                    layout.MAP_PATH,
                    decision.map.to_bytes(),
                    self.map_version,
                )
            )

    def _forget(self, requests: Pending) -> None:
        """Drop requests a written map took in, or that can never apply (see ``dimint.core.successor``)."""
        for shard_id, request in requests.insync.items():
            if self.insync_requests.get(shard_id) is request:  # not a newer one that replaced it
                del self.insync_requests[shard_id]
        self.drain_requests -= requests.drains
        self.grow_requests = max(0, self.grow_requests - requests.grows)

    def _create_initial_map(self, live: dict[str, Registration], now_ms: int, out: list[Effect]) -> None:
        cfg = self.config
        needed = cfg.initial_shards * (1 + cfg.replicas)
        if len(live) < needed:
            return
        chosen = sorted(live)[:needed]
        shards = []
        for index in range(cfg.initial_shards):
            group = chosen[index * (1 + cfg.replicas) : (index + 1) * (1 + cfg.replicas)]
            # A brand-new shard is empty, so its slaves are trivially in sync.
            shards.append(ShardInfo(index, group[0], tuple(group[1:]), tuple(group[1:]), 1))
        nodes = [NodeInfo(n, live[n].address or n, live[n].incarnation or 0) for n in sorted(live)]
        placement = make_placement(cfg.placement_kind, range(cfg.initial_shards), **cfg.placement_params)
        cmap = initial_map(
            placement, shards, nodes, replication_mode=cfg.replication_mode, min_in_sync=cfg.min_in_sync
        )
        self.write_in_flight = True
        out.append(
            Trace(
                "map_create",
                {"overlord": self.overlord_id, "shards": cfg.initial_shards, "nodes": len(nodes)},
            )
        )
        out.append(CoordCreate(self._coord("write", (cmap, Pending())), layout.MAP_PATH, cmap.to_bytes()))
