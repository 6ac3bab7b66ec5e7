"""Wire messages of DiMint: what each one says, when it is sent, and its tag.

Theory of operation
-------------------
Every message is a ``msgspec.Struct`` (see ``dimint.core.codec``) that names its tag in its class
line; the field annotations are its schema, checked by msgspec in C, so a message's definition is
the only description of its wire form, the positional array ``[tag, field1, field2, ...]``.
Adding a message means writing::

    @message()
    class Thing(Message, tag=42):  # plus a docstring: when it is sent, and why
        shard_id: int
        note: str | None = None

Wire compatibility rules (tests pin the tag table):

* A tag never changes meaning and is never reused, even after its message is retired.
* Fields are never reordered or retyped. A new field may only be appended, with a default; the
  decoder fills in trailing defaulted fields that an older peer left out. A frame with more fields
  than this process knows is refused, because silently dropping data is worse than an error.

``Request`` is refined further against the command table (``dimint.core.commands``) and is
*normalised* on decode: keys, fields and string values become ``bytes`` and omitted optional
trailing arguments become ``None``. Handlers therefore see one canonical shape whatever a client
sent. ``validate_command`` is the same check for the client library, which should send the
normalised arguments it returns. The codec (``encode``, ``decode``, ``check``) lives in
``dimint.core.codec`` and is named here too, so a message and its codec are one import away.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from dimint.core.codec import (
    MAX_CONTAINER_LEN,
    MAX_FRAME_BYTES,
    MAX_NESTING_DEPTH,
    REGISTRY,
    Frame,
    Message,
    MessageRegistry,
    Op,
    check,
    decode,
    encode,
    message,
    message_types,
    tag_of,
)
from dimint.core.commands import (
    ADMIN_ACTIONS,
    CONSISTENCY_LEVELS,
    check_identity,
    show,
    validate_command,
)
from dimint.core.errors import CommandError, DecodeError, ErrorCode

__all__ = [
    "ADMIN_ACTIONS",
    "CONSISTENCY_LEVELS",
    "MAX_CONTAINER_LEN",
    "MAX_FRAME_BYTES",
    "MAX_NESTING_DEPTH",
    "REGISTRY",
    "AdminReply",
    "AdminRequest",
    "ErrorReply",
    "Frame",
    "GetMap",
    "Heartbeat",
    "HeartbeatAck",
    "InSyncChange",
    "MapReply",
    "Message",
    "MessageRegistry",
    "MigrateBatch",
    "MigrateBatchAck",
    "MoveReport",
    "NodeReport",
    "PositionQuery",
    "PositionReply",
    "Replicate",
    "ReplicateAck",
    "Request",
    "Response",
    "SnapshotChunk",
    "SyncRequest",
    "check",
    "check_identity",
    "decode",
    "encode",
    "message",
    "message_types",
    "tag_of",
    "validate_command",
]

_ENTRY = "msgpack-native data: a [seq: int, epoch: int, writes: list of ops] triple"


# --------------------------------------------------------------------------------------------
# Messages. Tags are wire constants: never change or reuse one (see the module docstring).
# 1-19 client <-> node/overlord, 20-39 replication, 40-59 migration.
# --------------------------------------------------------------------------------------------


@message(request=True)
class Request(Message, tag=1):
    """A client command, sent to the node that owns the key (or to an Overlord in proxy mode).

    ``args`` arrive normalised (see ``validate_command``). ``consistency="weak"`` lets a slave serve
    a read; ``map_epoch`` is the client's cluster-map epoch, so a node can tell a client whose map is
    stale (MOVED) from one that is ahead of it.
    """

    request_id: int
    command: str
    args: list[Any]
    consistency: str = "strong"
    map_epoch: int = 0
    #: At-most-once identity (``dimint.core.dedup``): the client's random id (0: anonymous, not
    #: deduplicated), the write's sequence number (0 for reads) and the client's floor, the lowest
    #: sequence it has not finished with. Every attempt of one operation carries the same ``seq``.
    client_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    floor: Annotated[int, msgspec.Meta(ge=0)] = 0

    normalised_on_arrival: ClassVar[frozenset[str]] = frozenset({"args"})

    def refined(self) -> Request:
        """Arguments normalised by the command table; consistency and identity checked."""
        args = list(validate_command(self.command, self.args))
        if self.consistency not in CONSISTENCY_LEVELS:
            raise CommandError(
                ErrorCode.BAD_ARGUMENT,
                f"consistency must be 'strong' or 'weak', got {show(self.consistency)}",
            )
        check_identity(self.command, self.client_id, self.seq, self.floor)
        return self if args == self.args else msgspec.structs.replace(self, args=args)


@message()
class Response(Message, tag=2):
    """The successful result of a ``Request``, matched by ``request_id``."""

    request_id: int
    value: Any


@message()
class ErrorReply(Message, tag=3):
    """A refused or failed request (or an undecodable request-shaped frame), with code and reason.

    ``map_epoch`` is the replier's map epoch when it matters (MOVED, STALE_EPOCH), so the client
    knows whether refreshing its map can help.
    """

    request_id: int
    code: ErrorCode
    reason: str
    map_epoch: int = 0

    @classmethod
    def from_error(
        cls, request_id: int, error: CommandError | DecodeError, *, map_epoch: int = 0
    ) -> ErrorReply:
        """The reply that tells a client exactly why its request ``request_id`` was refused."""
        return cls(request_id, ErrorCode(error.code), error.reason, map_epoch)


@message(request=True)
class GetMap(Message, tag=4):
    """A client (or node) asks an Overlord for the cluster map, on start-up or after MOVED.

    ``known_epoch`` lets the Overlord answer cheaply when the asker is already up to date.
    """

    request_id: int
    known_epoch: int = 0


@message()
class MapReply(Message, tag=5):
    """The cluster map at ``map_epoch``, serialised by ``dimint.core.clustermap`` (opaque here)."""

    request_id: int
    map_epoch: int
    cluster_map: bytes


@message(request=True)
class AdminRequest(Message, tag=6):
    """An operator's action sent to the Overlord leader: status, or a membership/shard change."""

    request_id: int
    action: str
    params: dict[str, Any]

    def refined(self) -> AdminRequest:
        if self.action not in ADMIN_ACTIONS:
            raise CommandError(
                ErrorCode.UNKNOWN_COMMAND,
                f"unknown admin action {show(self.action)}; expected one of {sorted(ADMIN_ACTIONS)}",
            )
        return self


@message()
class AdminReply(Message, tag=7):
    """The result of an ``AdminRequest`` (a status document, or the new map epoch)."""

    request_id: int
    result: Any


@message()
class Replicate(Message, tag=20):
    """The master streams numbered writes to a slave of its shard.

    ``entries`` are ``[seq, epoch, writes]`` triples in sequence order: ``epoch`` is the shard epoch
    under which the master appended the entry, ``writes`` the store's write operations.
    ``(prev_seq, prev_epoch)`` is the log position just before the first entry: the slave extends
    its log only if its own position matches (log matching), otherwise it asks for a resync.
    ``commit_seq`` is the highest sequence the master considers acknowledged. ``shard_epoch``
    fences a deposed master.
    """

    shard_id: int
    shard_epoch: int
    prev_seq: int
    prev_epoch: int
    #: Each entry is a list whose items are ints (seq, epoch) or lists of ops: msgspec checks that
    #: much in C, ``refined`` the positions.
    entries: list[Annotated[list[int | list[Op]], msgspec.Meta(description=_ENTRY)]]
    commit_seq: int

    def refined(self) -> Replicate:
        for index, entry in enumerate(self.entries):
            if not (
                len(entry) == 3 and type(entry[0]) is int and type(entry[1]) is int and type(entry[2]) is list
            ):
                raise CommandError(
                    ErrorCode.MALFORMED,
                    f"Replicate.entries[{index}] must be a [seq: int, epoch: int, writes: list] triple, "
                    f"got {show(entry)}",
                )
        return self


@message()
class ReplicateAck(Message, tag=21):
    """A slave reports its log position, so the master can count a write as replicated.

    The position is ``(applied_seq, applied_epoch)``; the master counts it only if its own log has
    that very entry, so a slave whose tail diverged under a dead master cannot be counted.
    """

    shard_id: int
    shard_epoch: int
    node_id: str
    applied_seq: int
    applied_epoch: int


@message()
class SyncRequest(Message, tag=22):
    """A slave that is new, saw a gap or diverged asks its master for the tail after its position,
    or a snapshot when the master's log no longer matches or reaches back that far."""

    shard_id: int
    shard_epoch: int
    node_id: str
    applied_seq: int
    applied_epoch: int
    #: Echoed by the snapshot that answers this request: a slave installs only the snapshot that
    #: answers its latest request, so a duplicated or late one can never roll it back.
    sync_token: int = 0


@message()
class SnapshotChunk(Message, tag=23):
    """One piece of a shard snapshot taken at log position ``(snapshot_seq, snapshot_epoch)``.

    Chunks are numbered from 0 and ``last`` marks the final one; the slave installs the snapshot
    only when it holds every chunk, then applies the ``Replicate`` entries after ``snapshot_seq``.
    """

    shard_id: int
    shard_epoch: int
    snapshot_seq: int
    snapshot_epoch: int
    chunk_no: int
    items: list[Op]
    last: bool
    sync_token: int = 0
    #: The shard's dedup table (``dimint.core.dedup`` session ops), spread over the chunks like
    #: ``items``: a slave installs it with the data, so a promoted slave recognises duplicates.
    sessions: list[Op] = msgspec.field(default_factory=list)


@message()
class Heartbeat(Message, tag=24):
    """A master's periodic liveness signal to its slaves, even when no writes flow.

    It carries the master's log position ``(seq, last_epoch)`` so a slave detects a gap or a
    divergence, and ``sent_at_ms`` so a slave that caught up to ``seq`` knows it is fresh as of
    that time (the basis of the staleness bound on weak reads).
    """

    shard_id: int
    shard_epoch: int
    sender: str
    seq: int
    last_epoch: int
    sent_at_ms: int


@message()
class HeartbeatAck(Message, tag=25):
    """A slave's answer to a ``Heartbeat``: alive, at position ``(applied_seq, applied_epoch)``."""

    shard_id: int
    shard_epoch: int
    node_id: str
    applied_seq: int
    applied_epoch: int


@message()
class PositionQuery(Message, tag=26):
    """The Overlord leader asks a slave for its log position before choosing whom to promote."""

    request_id: int
    shard_id: int
    shard_epoch: int


@message()
class PositionReply(Message, tag=27):
    """A slave's log position ``(last_epoch, applied_seq)``: promotion picks the highest."""

    request_id: int
    node_id: str
    shard_id: int
    shard_epoch: int
    last_epoch: int
    applied_seq: int


@message()
class InSyncChange(Message, tag=28):
    """A master asks the Overlords to change its shard's in-sync set through the map.

    ``remove`` names slaves that stopped acknowledging, ``add`` slaves that caught up. Only the
    leader acts, and only if ``master`` still masters the shard at ``shard_epoch``.
    """

    shard_id: int
    shard_epoch: int
    master: str
    add: list[str]
    remove: list[str]
    #: The map the request was computed from: the leader applies it only to that very map, so a
    #: duplicated or delayed request can never undo a later change.
    map_epoch: int = 0


@message()
class NodeReport(Message, tag=29):
    """A node's periodic state report to every Overlord: for status, the dashboard and metrics.

    ``shard_id`` is -1 for a spare. ``replica_acks`` (masters only) maps each slave to the highest
    sequence it acknowledged; ``staleness_ms`` is a slave's bound on its lag (None: unknown).
    """

    node_id: str
    address: str
    incarnation: int
    map_epoch: int
    shard_id: int
    role: str
    shard_epoch: int
    last_epoch: int
    applied_seq: int
    commit_seq: int
    key_count: int
    approx_bytes: int
    replica_acks: dict[str, int]
    staleness_ms: int | None
    ops_served: int
    fenced: bool
    sent_at_ms: int
    #: The process's CPU share and resident memory, when its driver measures them (real processes).
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    #: The dedup table's size: client sessions, saved results and their accounted bytes.
    dedup_clients: int = 0
    dedup_results: int = 0
    dedup_bytes: int = 0


@message()
class MigrateBatch(Message, tag=40):
    """One batch of a range move, from the source shard's master to the target shard's master.

    A move is identified by ``(rebalance_id, source, target)`` and restarted with a new ``attempt``
    whenever either shard's master changes. Batches are numbered from 0 per attempt and applied in
    order; batch 0 first clears whatever an earlier attempt left on the target. ``ops`` are store
    write ops: the deltas that hit the moving keys since the previous batch, then ``put`` ops of
    snapshot items (values read when the batch was built), so applying them in order converges.
    ``final`` is sent after the source froze the moving keys: once it is acknowledged the target
    holds every write the source ever acknowledged for them.
    """

    rebalance_id: int
    source: int
    target: int
    attempt: int
    batch_no: int
    ops: list[Op]
    final: bool


@message()
class MigrateBatchAck(Message, tag=41):
    """Cumulative: every batch up to ``batch_no`` is applied *and* replicated on the target shard."""

    rebalance_id: int
    source: int
    target: int
    attempt: int
    batch_no: int
    node_id: str


@message()
class MoveReport(Message, tag=42):
    """A source master's progress on one move attempt, sent to every Overlord.

    ``state`` is ``"copying"`` or ``"ready"`` (frozen and fully acknowledged: the leader may switch
    ownership). ``shard_epoch`` is the source's shard epoch, so a report from a deposed master cannot
    switch a move. Keys and bytes count snapshot items sent; ``deltas`` counts forwarded write ops.
    """

    node_id: str
    rebalance_id: int
    source: int
    target: int
    attempt: int
    shard_epoch: int
    state: str
    keys: int
    bytes: int
    deltas: int
    batches: int
    elapsed_ms: int
    frozen_ms: int
