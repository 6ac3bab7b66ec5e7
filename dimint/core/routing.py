"""Client-side routing: send each command straight to the node that owns its key.

Theory of operation
-------------------
The client knows only Overlord addresses. It fetches the cluster map from any of them, caches it,
and sends each command to the owning shard: writes and strong reads to the master, weak reads to a
slave or the master by read preference. A node that does not own the key (MOVED), is not the
master (NOT_MASTER), is fenced, or is from another epoch makes the client refresh its map and retry
with jittered exponential backoff, until the operation's deadline.

Outcomes are honest. ``ok`` carries the reply. ``fail`` means the command definitely did not take
effect (refused before it was applied, or a client error such as WRONG_TYPE). ``info`` means it may
or may not have taken effect: a write whose attempt timed out, or that a master answered TIMEOUT,
is never reported as failed, because a later read may well observe it.

A write is retried only after a *definite* refusal (MOVED, NOT_MASTER, FENCED, ...), never after an
unknown outcome. Reads are retried freely. A refusal is definite for the copy it answers: on a
network that may duplicate frames (``RouterConfig.network_may_duplicate``) another copy of a refused
attempt may still arrive and run, so there a write that gave up after sending anything is ``info``.

At most once (invariant 8). The router has a random 63-bit identity and numbers its writes: every
attempt of one write carries the same ``(client_id, seq)``, plus the router's *floor*, the lowest
sequence it has not finished with. The shard's master keeps a replicated table of what each
client's writes answered (``dimint.core.dedup``), so a retried or duplicated copy of an executed
write is answered from the table instead of running again, and a copy below the floor (the client
has already reported that write's outcome) is refused unexecuted with ``STALE_REQUEST``. Without
this a plain ``set`` applied twice lands after another client's newer write and undoes it.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from dimint.core.clustermap import ClusterMap
from dimint.core.commands import COMMANDS, Consistency, request_keys
from dimint.core.effects import CancelTimer, Effect, Input, Receive, Send, SetTimer, Start, TimerFired, Trace
from dimint.core.errors import CommandError, DecodeError, ErrorCode
from dimint.core.protocol import ErrorReply, GetMap, MapReply, Request, Response, validate_command

_REFRESH_CODES = frozenset(
    {ErrorCode.MOVED, ErrorCode.NOT_MASTER, ErrorCode.STALE_EPOCH, ErrorCode.FENCED, ErrorCode.UNAVAILABLE}
)
_BACKOFF_CODES = frozenset({ErrorCode.FROZEN, ErrorCode.NOT_ENOUGH_REPLICAS, ErrorCode.TOO_STALE})
#: Answers after which nobody knows whether the write took effect: a master's TIMEOUT, a copy
#: refused as stale (only an earlier copy could have run, and the table had to forget it), and a
#: write that ran once already but whose result was too large to keep.
_UNKNOWN_CODES = frozenset({ErrorCode.TIMEOUT, ErrorCode.STALE_REQUEST, ErrorCode.RESULT_NOT_KEPT})


_UNSEEDED_ROUTERS = itertools.count(1)


def draw_identity(name: str, rng: random.Random) -> int:
    """A non-zero 63-bit client id from the router's name and its random stream.

    Both go in, so two routers differ if either their names or their streams do: a simulated
    client's stream is seeded from the run, a real client's name is a fresh UUID. Two clients with
    one id would have each other's writes taken for duplicates.
    """
    digest = hashlib.blake2b(f"{name}/{rng.getrandbits(64)}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


class ReadPreference(enum.StrEnum):
    MASTER = "master"  # weak reads still go to the master
    SLAVE = "slave"  # weak reads go to a random slave (the master if the shard has none)
    ANY = "any"  # weak reads go to a random member


class RouterTimer(enum.StrEnum):
    """The router's named timers; all but ``map`` carry an operation id (``request:<op id>``)."""

    MAP = "map"  # no usable map yet (or a refresh went unanswered): ask an Overlord again
    REQUEST = "request"  # the attempt in flight had no reply in time: its outcome is unknown
    RETRY = "retry"  # the back-off after a refusal ended: attempt again
    DEADLINE = "deadline"  # the operation's whole deadline ended


_CONSISTENCY_OF: dict[str, Consistency] = {level.value: level for level in Consistency}


@dataclass(frozen=True, slots=True)
class RouterConfig:
    request_timeout_ms: int = 500
    operation_deadline_ms: int = 5_000
    backoff_base_ms: int = 10
    backoff_max_ms: int = 500
    map_retry_ms: int = 200
    read_preference: ReadPreference = ReadPreference.SLAVE
    #: Send every request through an Overlord, which forwards it (the original design), instead of
    #: straight to the owning node: for comparison experiments.
    via_overlord: bool = False
    #: The network may deliver a frame twice (the simulator's ``duplicate`` knob; not TCP). Then a
    #: refusal of one attempt says nothing of another copy of the same frame, which may still arrive
    #: and run once conditions change, so a write that gave up after sending anything ends ``info``.
    network_may_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Submit(Input):
    """Ask the router to run one command. ``op_id`` is the caller's handle for the outcome."""

    op_id: int
    command: str
    args: tuple[Any, ...]
    consistency: Consistency | str = Consistency.STRONG
    #: The caller normalised ``args`` with ``validate_command`` already (the client library does,
    #: to fail a bad call at once): the router then does not check them a second time.
    validated: bool = False


@dataclass(frozen=True, slots=True)
class Completed(Effect):
    """The final outcome of a submitted operation: ``ok``, ``fail`` or ``info`` (unknown)."""

    op_id: int
    outcome: str
    value: Any = None
    code: ErrorCode | None = None
    reason: str = ""
    attempts: int = 0
    node: str | None = None
    #: The write's at-most-once sequence number (0 for reads), for histories and traces.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class _Target:
    """The outcome of routing one attempt: an address and node, or a code and reason why not."""

    address: str | None
    node: str | None
    code: ErrorCode | None = None
    reason: str = ""


@dataclass(slots=True)
class _Operation:
    op_id: int
    command: str
    args: tuple[Any, ...]
    consistency: Consistency
    deadline_ms: int
    seq: int = 0
    attempts: int = 0
    possibly_applied: bool = False
    request_ids: set[int] = field(default_factory=set)
    current_request: int | None = None
    target: str | None = None
    force_master: bool = False
    last_code: ErrorCode | None = None
    last_reason: str = ""


class ClientRouter:
    """Routes operations to shards and reports each one's outcome as a ``Completed`` effect."""

    def __init__(
        self,
        client_id: str,
        overlords: list[str] | tuple[str, ...],
        config: RouterConfig | None = None,
        rng: random.Random | None = None,
        identity: int | None = None,
    ) -> None:
        if not overlords:
            raise ValueError("a client needs at least one Overlord address")
        self.client_id = client_id
        self.overlords = tuple(overlords)
        self.config = config or RouterConfig()
        if identity is not None and not 0 < identity < 1 << 64:
            raise ValueError(f"identity must be a non-zero unsigned 64-bit int, got {identity!r}")
        # Routers built without a stream of their own (tests, notebooks) all get Random(0); their
        # names may coincide too, and two routers with one identity would take each other's writes
        # for duplicates. A count of such routers in this process keeps them apart.
        name = client_id if rng is not None else f"{client_id}#unseeded-{next(_UNSEEDED_ROUTERS)}"
        self.rng = rng or random.Random(0)
        #: The at-most-once client id every request carries (see the module docstring).
        self.identity = identity if identity is not None else draw_identity(name, self.rng)
        self._last_seq = 0
        self._open_seqs: set[int] = set()
        self._seq_heap: list[int] = []
        self.map: ClusterMap | None = None
        self.operations: dict[int, _Operation] = {}
        self._by_request: dict[int, int] = {}
        self._next_request = 0
        self._map_request: int | None = None
        self._waiting_for_map: list[int] = []
        self.map_refreshes = 0

    # ================================================================ entry point

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        if isinstance(event, Submit):
            self._on_submit(event, now_ms, out)
        elif isinstance(event, Receive):
            self._on_receive(event.message, now_ms, out)
        elif isinstance(event, TimerFired):
            self._on_timer(event.key, now_ms, out)
        elif isinstance(event, Start):
            self._refresh_map(now_ms, out)
        return out

    def _request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    # ================================================================ map

    def _refresh_map(self, now_ms: int, out: list[Effect]) -> None:
        if self._map_request is not None:
            return
        self._map_request = self._request_id()
        self.map_refreshes += 1
        overlord = self.overlords[self.rng.randrange(len(self.overlords))]
        out.append(Send(overlord, GetMap(self._map_request, self.map.epoch if self.map else 0)))
        out.append(SetTimer(RouterTimer.MAP, now_ms + self.config.map_retry_ms))

    def _on_map_reply(self, reply: MapReply, now_ms: int, out: list[Effect]) -> None:
        if reply.request_id != self._map_request:
            return
        self._map_request = None
        try:
            cmap = ClusterMap.from_bytes(reply.cluster_map)
        except DecodeError as exc:
            out.append(Trace("bad_map", {"client": self.client_id, "error": str(exc)}))
            return  # like no answer: the map timer stays armed and asks again
        out.append(CancelTimer(RouterTimer.MAP))
        if self.map is None or cmap.epoch > self.map.epoch:
            self.map = cmap
        waiting, self._waiting_for_map = self._waiting_for_map, []
        for op_id in waiting:
            if op_id in self.operations:
                self._attempt(self.operations[op_id], now_ms, out)

    # ================================================================ operations

    def _on_submit(self, submit: Submit, now_ms: int, out: list[Effect]) -> None:
        if submit.validated:
            args = submit.args
        else:
            try:
                args = validate_command(submit.command, list(submit.args))
            except CommandError as exc:
                out.append(Completed(submit.op_id, "fail", code=exc.code, reason=exc.reason))
                return
        consistency = _CONSISTENCY_OF.get(submit.consistency) if isinstance(submit.consistency, str) else None
        if consistency is None:
            out.append(
                Completed(
                    submit.op_id,
                    "fail",
                    code=ErrorCode.BAD_ARGUMENT,
                    reason=f"consistency must be 'strong' or 'weak', not {submit.consistency!r}",
                )
            )
            return
        seq = 0
        if COMMANDS[submit.command].is_write:
            self._last_seq += 1
            seq = self._last_seq
            self._open_seqs.add(seq)
            heapq.heappush(self._seq_heap, seq)
        op = _Operation(
            submit.op_id,
            submit.command,
            tuple(args),
            consistency,
            now_ms + self.config.operation_deadline_ms,
            seq,
        )
        self.operations[op.op_id] = op
        out.append(SetTimer(f"{RouterTimer.DEADLINE}:{op.op_id}", op.deadline_ms))
        self._attempt(op, now_ms, out)

    def _target(self, cluster_map: ClusterMap, op: _Operation) -> _Target:
        """Where this attempt goes, or why it cannot go anywhere (with the code that says so)."""
        owner = cluster_map.owner_of_keys(request_keys(op.command, op.args))
        if owner is None:
            return _Target(
                None,
                None,
                ErrorCode.BAD_ARGUMENT,
                "the keys of one command must belong to one shard; split multi-key commands per shard",
            )
        shard = cluster_map.shards[owner]
        if self.config.via_overlord:
            overlord = self.overlords[self.rng.randrange(len(self.overlords))]
            return _Target(overlord, overlord)
        weak = (
            op.consistency is Consistency.WEAK and not COMMANDS[op.command].is_write and not op.force_master
        )
        preference = self.config.read_preference
        if weak and preference is not ReadPreference.MASTER:
            pool = list(shard.slaves) if preference is ReadPreference.SLAVE else list(shard.members)
            if pool:
                node = pool[self.rng.randrange(len(pool))]
                return _Target(cluster_map.nodes[node].address, node)
        if shard.master is None:
            return _Target(
                None, None, ErrorCode.UNAVAILABLE, f"shard {shard.shard_id} has no master right now"
            )
        return _Target(cluster_map.nodes[shard.master].address, shard.master)

    def _attempt(self, op: _Operation, now_ms: int, out: list[Effect]) -> None:
        if self.map is None:
            self._waiting_for_map.append(op.op_id)
            self._refresh_map(now_ms, out)
            return
        target = self._target(self.map, op)
        if target.address is None or target.node is None:
            if target.code is ErrorCode.BAD_ARGUMENT:
                self._complete(op, "fail", out, code=target.code, reason=target.reason)
                return
            op.last_code, op.last_reason = target.code, target.reason
            self._refresh_map(now_ms, out)
            self._schedule_retry(op, now_ms, out)
            return
        address = target.address
        op.attempts += 1
        request_id = self._request_id()
        op.request_ids.add(request_id)
        op.current_request = request_id
        op.target = target.node
        self._by_request[request_id] = op.op_id
        out.append(
            Send(
                address,
                Request(
                    request_id,
                    op.command,
                    list(op.args),
                    op.consistency,
                    self.map.epoch,
                    self.identity,
                    op.seq,
                    self.floor() if op.seq else 0,
                ),
            )
        )
        out.append(SetTimer(f"{RouterTimer.REQUEST}:{op.op_id}", now_ms + self.config.request_timeout_ms))

    def _schedule_retry(self, op: _Operation, now_ms: int, out: list[Effect]) -> None:
        ceiling = min(self.config.backoff_max_ms, self.config.backoff_base_ms * (2 ** min(op.attempts, 10)))
        delay = self.config.backoff_base_ms + self.rng.randrange(max(1, ceiling))
        op.current_request = None
        out.append(CancelTimer(f"{RouterTimer.REQUEST}:{op.op_id}"))
        out.append(SetTimer(f"{RouterTimer.RETRY}:{op.op_id}", now_ms + delay))

    def _complete(
        self,
        op: _Operation,
        outcome: str,
        out: list[Effect],
        value: Any = None,
        code: ErrorCode | None = None,
        reason: str = "",
    ) -> None:
        self.operations.pop(op.op_id, None)
        self._open_seqs.discard(op.seq)
        for request_id in op.request_ids:
            self._by_request.pop(request_id, None)
        out.append(CancelTimer(f"{RouterTimer.REQUEST}:{op.op_id}"))
        out.append(CancelTimer(f"{RouterTimer.RETRY}:{op.op_id}"))
        out.append(CancelTimer(f"{RouterTimer.DEADLINE}:{op.op_id}"))
        out.append(Completed(op.op_id, outcome, value, code, reason, op.attempts, op.target, op.seq))

    def floor(self) -> int:
        """The lowest write sequence this router has not finished with (the next one if none)."""
        heap = self._seq_heap
        while heap and heap[0] not in self._open_seqs:
            heapq.heappop(heap)
        return heap[0] if heap else self._last_seq + 1

    def _unknown_outcome(
        self, op: _Operation, now_ms: int, out: list[Effect], code: ErrorCode, reason: str
    ) -> None:
        """The attempt may have applied: a write ends as ``info`` (see module docstring), a read retries."""
        if COMMANDS[op.command].is_write:
            op.possibly_applied = True
            self._complete(op, "info", out, code=code, reason=reason)
            # The node may be dead or deposed: learn the current map before the next command.
            self._refresh_map(now_ms, out)
            return
        op.last_code, op.last_reason = code, reason
        self._refresh_map(now_ms, out)
        self._schedule_retry(op, now_ms, out)

    def _on_receive(self, message: Any, now_ms: int, out: list[Effect]) -> None:
        if isinstance(message, MapReply):
            self._on_map_reply(message, now_ms, out)
            return
        if isinstance(message, ErrorReply) and message.request_id == self._map_request:
            self._map_request = None  # the Overlord has no map yet; the map timer retries
            return
        request_id = getattr(message, "request_id", None)
        op_id = self._by_request.get(request_id) if isinstance(request_id, int) else None
        op = self.operations.get(op_id) if op_id is not None else None
        if op is None:
            return  # a late answer to an operation already completed
        if isinstance(message, Response):
            # Any attempt's success completes the operation, even a late one.
            self._complete(op, "ok", out, value=message.value)
        elif isinstance(message, ErrorReply):
            if request_id != op.current_request:
                # A late error for a superseded attempt changes nothing now, but an unknown outcome
                # means that attempt may have run: the write can no longer end as "fail".
                if message.code in _UNKNOWN_CODES and COMMANDS[op.command].is_write:
                    op.possibly_applied = True
                return
            code = message.code
            if code in _UNKNOWN_CODES:
                self._unknown_outcome(op, now_ms, out, code, message.reason)
            elif code in _REFRESH_CODES:
                op.last_code, op.last_reason = code, message.reason
                self._refresh_map(now_ms, out)
                self._schedule_retry(op, now_ms, out)
            elif code in _BACKOFF_CODES:
                op.last_code, op.last_reason = code, message.reason
                if code is ErrorCode.TOO_STALE:
                    op.force_master = True
                self._schedule_retry(op, now_ms, out)
            else:
                self._complete(op, "fail", out, code=code, reason=message.reason)

    def _on_timer(self, key: str, now_ms: int, out: list[Effect]) -> None:
        if key == RouterTimer.MAP:
            self._map_request = None
            self._refresh_map(now_ms, out)
            return
        kind, _, raw = key.partition(":")
        op = self.operations.get(int(raw)) if raw.isdigit() else None
        if op is None:
            return
        # A timer the driver fires late (after a cancel it had already queued) must not act: a
        # request timer with no attempt in flight would report a refused write as "info", and a
        # retry timer with one in flight would send a write whose outcome is still unknown again.
        if kind == RouterTimer.REQUEST and op.current_request is not None:
            self._unknown_outcome(
                op,
                now_ms,
                out,
                ErrorCode.TIMEOUT,
                f"no reply from {op.target} within {self.config.request_timeout_ms} ms",
            )
        elif kind == RouterTimer.RETRY and op.current_request is None:
            self._attempt(op, now_ms, out)
        elif kind == RouterTimer.DEADLINE:
            # A write whose attempt is still in flight may yet apply: that is an unknown outcome too.
            is_write = COMMANDS[op.command].is_write
            in_flight = op.current_request is not None and is_write
            # On a duplicating network any attempt ever sent may have a copy still on its way.
            copies = is_write and op.attempts > 0 and self.config.network_may_duplicate
            outcome = "info" if op.possibly_applied or in_flight or copies else "fail"
            self._complete(
                op,
                outcome,
                out,
                code=op.last_code or ErrorCode.TIMEOUT,
                reason=f"gave up after {op.attempts} attempts: {op.last_reason}",
            )
