"""At-most-once client writes: client sessions and the shard's replicated dedup table.

Theory of operation
-------------------
A network that duplicates or delays a frame, a client that retries a refused write that did apply,
a proxying Overlord: each can hand a master the same write twice. Executed again, the late copy
lands after newer writes and silently undoes them (invariant 8). The cure is Raft's (dissertation
section 6.3) and Kafka's idempotent producer: every client has a random 63-bit ``client_id`` and
numbers its writes ``seq = 1, 2, ...``; each request also carries the client's ``floor``, the lowest
seq it has not finished with (every seq below it has an outcome at the client, so no copy of it
may still take effect). A client may have many writes outstanding (pipelines, several shards), so
the table remembers a *set* of executed seqs per client, not only the newest.

For a write from client ``c`` with sequence ``s`` the master asks ``lookup``:

* ``DUPLICATE``: ``s`` was executed here (or on a former master of this shard, or on the shard a
  migration brought the key from). The saved outcome is answered (once its log entry commits) and
  nothing executes.
* ``STALE``: ``s`` is below the client's floor, or below what the table had to forget. The client
  has finished with it, so this is a late copy: refused with ``STALE_REQUEST``, never executed.
* ``NEW``: execute. The outcome (a value, or the error that refused it: a refused write is an
  outcome too, and a late copy must not turn it into a success) is appended to the same log entry
  as the write's own ops, as a ``session`` op.

The table is state of the replicated state machine, never local bookkeeping: it changes only by
``apply`` of ``session`` ops, on the master when it appends them and on every slave when it applies
the entry, so all replicas hold the same table at the same log position and a promoted slave
answers duplicates exactly as the old master would. Snapshots carry it (``snapshot``/``restore``),
and a migration source sends the sessions of the moving keys' writers to the target as ``session``
ops among its batch ops (``ops_for_move``), so a duplicate reaching the new owner is answered too.

A ``session`` op (plain lists: it travels in log entries, snapshots and migration batches)::

    ["session", client_id, floor, forgotten_below, at_ms, [[seq, outcome, hashes], ...]]

``outcome`` is ``["ok", value]``, ``["error", code, reason]`` or ``["done", size]`` (executed, result
too large to keep); ``hashes`` are the key hashes the write touched (``None``: too many to list), so
a move can pick the results that concern its keys. A master's own record has one result and
``forgotten_below = 0``; a snapshot or a move sends whole sessions. Merging is by maximum (floors)
and union (results, the first execution kept), so the order ops arrive in does not matter.

Imported outcomes. A migration source ships outcomes of writes its log may not have committed yet
(as it ships their data). If the move restarts (a failover on either side), what the target
imported may describe writes that exist nowhere any more, so the target tags what a move brings
with the move, ``[rebalance_id, source, target]``, as a seventh element of the op, and batch 0 of
every attempt first logs ``["session_drop", rebalance_id, source, target]``, which drops the
outcomes the earlier attempts imported (the store's copies of the moving keys go the same way);
the new attempt then sends the source's current table again. Floors are never dropped: a floor is
the client's own word. A snapshot keeps each outcome's tag as a fourth element of its entry.

Bounds (say how big it can grow). Per client, results below the client's low mark (its floor, or
what the table had to forget) are dropped at once and at most ``max_results_per_client`` are kept
(the oldest beyond that are forgotten: ``forgotten_below`` then refuses their copies, and any older
seq, as stale). A session whose last write is older than ``retention_ms`` is expired, and at most
``max_clients`` sessions and ``max_bytes`` of saved results are kept, least recently written first
out. So the table never exceeds ``max_clients`` sessions and about ``max_bytes`` of results.
Expiry and eviction run inside ``apply``, so every replica expires at the same log position; only a
master's own records expire anything, by that master's clock (an imported op carries another
master's clock, which must not age this shard's sessions). Replicas of a shard must therefore
share these bounds, and masters' clocks must agree to well within ``retention_ms``. The guarantee
holds for copies that arrive within ``retention_ms`` of the client's last write and for clients the
table did not have to evict; both are counted (``expired``, ``evicted``).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dimint.core.errors import ErrorCode, InvariantViolation, RemoteProtocolError

SESSION_OP = "session"
SESSION_DROP_OP = "session_drop"
_SESSION_KINDS = frozenset({SESSION_OP, SESSION_DROP_OP})

#: Where an imported outcome came from: ``(rebalance_id, source shard, target shard)``.
Origin = tuple[int, int, int]

#: Client id 0 means "no identity": such a request is executed without deduplication (an old
#: client, a hand-made frame). Every DiMint client draws a random non-zero id.
ANONYMOUS = 0

#: The most key hashes a saved result lists; a write touching more keys is sent with every move.
MAX_HASHES_LISTED = 16

#: Accounting: what one saved result costs besides its value (the dict slot, the record, the ints).
RESULT_OVERHEAD_BYTES = 160
#: Accounting: what one client session costs besides its results.
SESSION_OVERHEAD_BYTES = 240

_UINT64_MAX = (1 << 64) - 1


class Verdict(enum.StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class DedupConfig:
    """Bounds of the table (see the module docstring); every duration in milliseconds.

    ``retention_ms`` must comfortably exceed the longest time a copy of a request can still arrive:
    the client's operation deadline (5 s by default) plus network delay and a paused process.
    """

    retention_ms: int = 60_000
    max_clients: int = 65_536
    max_results_per_client: int = 1_024
    max_result_bytes: int = 4_096
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "retention_ms",
            "max_clients",
            "max_results_per_client",
            "max_result_bytes",
            "max_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DedupConfig.{name} must be a positive int, got {value!r}")


@dataclass(slots=True)
class SavedResult:
    """What an executed write answered, and the log position that must commit before it is repeated.

    ``origin`` names the move that imported it (None: executed on this shard).
    """

    log_seq: int
    outcome: list[Any]
    hashes: list[int] | None
    cost: int
    origin: Origin | None = None


@dataclass(slots=True)
class ClientSession:
    floor: int = 0
    forgotten_below: int = 0
    last_ms: int = 0
    results: dict[int, SavedResult] = field(default_factory=dict)

    @property
    def low(self) -> int:
        """Seqs below this that are not in ``results`` are refused as stale."""
        return max(self.floor, self.forgotten_below)


@dataclass(frozen=True, slots=True)
class Lookup:
    verdict: Verdict
    saved: SavedResult | None = None


_NEW = Lookup(Verdict.NEW)
_STALE = Lookup(Verdict.STALE)


def value_bytes(value: Any, depth: int = 0) -> int:
    """Approximate wire size of a result value, for the table's byte accounting."""
    if isinstance(value, (bytes, str)):
        return len(value) + 8
    if isinstance(value, (list, tuple)) and depth < 8:
        return 8 + sum(value_bytes(item, depth + 1) for item in value)
    if isinstance(value, dict) and depth < 8:
        return 8 + sum(value_bytes(k, depth + 1) + value_bytes(v, depth + 1) for k, v in value.items())
    return 9


def ok_outcome(value: Any, max_result_bytes: int) -> list[Any]:
    """The saved form of a successful write's reply value (only its size, when too big to keep)."""
    size = value_bytes(value)
    if size > max_result_bytes:
        return ["done", size]
    return ["ok", value]


def error_outcome(code: ErrorCode, reason: str) -> list[Any]:
    return ["error", code.value, reason]


def record_op(
    client_id: int, seq: int, floor: int, at_ms: int, outcome: list[Any], hashes: list[int] | None
) -> list[Any]:
    """The ``session`` op a master appends with the write it executed."""
    listed = hashes if hashes is not None and len(hashes) <= MAX_HASHES_LISTED else None
    return [SESSION_OP, client_id, floor, 0, at_ms, [[seq, outcome, listed]]]


def is_session_op(op: Any) -> bool:
    """Whether a log or batch op belongs to the dedup table (``session`` or ``session_drop``)."""
    return type(op) is list and len(op) > 0 and op[0] in _SESSION_KINDS


def imported(op: list[Any], origin: Origin) -> list[Any]:
    """A migration target's form of a source's op: ``session`` ops tagged with the move, as logged."""
    if op[0] != SESSION_OP:
        return op
    return [*op[:6], list(origin)]


def drop_op(origin: Origin) -> list[Any]:
    """The op batch 0 of a move attempt logs: forget what earlier attempts of the move imported."""
    return [SESSION_DROP_OP, *origin]


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad session op: {reason}")


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _UINT64_MAX


def _check_outcome(outcome: Any) -> None:
    if type(outcome) is not list or not outcome:
        raise _bad(f"outcome must be a non-empty list, got {outcome!r:.60}")
    kind = outcome[0]
    if kind == "ok" and len(outcome) == 2:
        return
    if kind == "error" and len(outcome) == 3 and isinstance(outcome[2], str):
        try:
            ErrorCode(outcome[1])
        except ValueError:
            raise _bad(f"unknown error code {outcome[1]!r:.40}") from None
        return
    if kind == "done" and len(outcome) == 2 and _is_uint(outcome[1]):
        return
    raise _bad(
        f"outcome must be ['ok', value], ['error', code, reason] or ['done', size], got {outcome!r:.60}"
    )


def _check_origin(origin: Any, where: str) -> None:
    if origin is None:
        return
    if not (type(origin) is list and len(origin) == 3 and all(_is_uint(v) for v in origin)):
        raise _bad(f"{where} must be None or [rebalance_id, source, target], got {origin!r:.60}")


def check_op(op: Any) -> None:
    """Raise ``RemoteProtocolError`` unless ``op`` is a well-formed dedup op (changes nothing)."""
    if type(op) is list and len(op) == 4 and op[0] == SESSION_DROP_OP:
        _check_origin(op[1:], "session_drop")
        return
    if not (type(op) is list and len(op) in (6, 7) and op[0] == SESSION_OP):
        raise _bad(f"expected ['session', client_id, floor, forgotten_below, at_ms, results], got {op!r:.80}")
    _, client_id, floor, forgotten, at_ms, results, *origin = op
    if not (_is_uint(client_id) and client_id != ANONYMOUS):
        raise _bad(f"client_id must be a non-zero unsigned int, got {client_id!r:.30}")
    for name, value in (("floor", floor), ("forgotten_below", forgotten)):
        if not _is_uint(value):
            raise _bad(f"{name} must be an unsigned int, got {value!r:.30}")
    if type(at_ms) is not int:
        raise _bad(f"at_ms must be an int, got {at_ms!r:.30}")
    if origin:
        _check_origin(origin[0], "origin")
    if type(results) is not list:
        raise _bad("results must be a list")
    for result in results:
        if not (type(result) is list and len(result) in (3, 4) and _is_uint(result[0]) and result[0] > 0):
            raise _bad(f"a result must be [seq > 0, outcome, hashes(, origin)], got {result!r:.60}")
        _check_outcome(result[1])
        hashes = result[2]
        if hashes is not None and not (type(hashes) is list and all(_is_uint(h) for h in hashes)):
            raise _bad(f"hashes must be None or a list of unsigned ints, got {hashes!r:.60}")
        if len(result) == 4:
            _check_origin(result[3], "a result's origin")


class DedupTable:
    """The per-shard table of client sessions; see the module docstring for its rules and bounds."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        # Least recently written first: expiry and eviction take from the front.
        self.sessions: OrderedDict[int, ClientSession] = OrderedDict()
        self.result_count = 0
        self.bytes = 0
        #: Sessions dropped for age (``expired``) or to stay within bounds (``evicted``), and results
        #: forgotten to keep a client within ``max_results_per_client``: copies of those requests
        #: are no longer recognised, so these counters say how often the guarantee was stretched.
        self.expired = 0
        self.evicted = 0
        self.results_forgotten = 0

    # ---------------------------------------------------------------- queries

    def lookup(self, client_id: int, seq: int) -> Lookup:
        """Whether the write ``(client_id, seq)`` is new, a duplicate (with its outcome) or stale."""
        session = self.sessions.get(client_id)
        if session is None:
            return _NEW
        saved = session.results.get(seq)
        if saved is not None:
            return Lookup(Verdict.DUPLICATE, saved)
        if seq < session.low:
            return _STALE
        return _NEW

    def __len__(self) -> int:
        return len(self.sessions)

    # ---------------------------------------------------------------- replicated changes

    def apply(self, op: list[Any], log_seq: int) -> None:
        """Apply one well-formed dedup op (``check_op`` first) found in the entry at ``log_seq``; a
        master's own record then expires and evicts as its time and the bounds say."""
        if op[0] == SESSION_DROP_OP:
            self._drop_origin((op[1], op[2], op[3]))
            return
        self._merge(op, log_seq)
        if len(op) == 6:  # not imported: this shard's master wrote it, by its own clock
            self._expire(op[4] - self.config.retention_ms)
        self._evict()

    def _evict(self) -> None:
        while len(self.sessions) > self.config.max_clients or (
            self.bytes > self.config.max_bytes and len(self.sessions) > 1
        ):
            self._drop_oldest()
            self.evicted += 1

    def _merge(self, op: list[Any], log_seq: int) -> None:
        _, client_id, floor, forgotten, at_ms, results, *tag = op
        default_origin = tuple(tag[0]) if tag and tag[0] is not None else None
        session = self.sessions.get(client_id)
        if session is None:
            session = self.sessions[client_id] = ClientSession()
            self.bytes += SESSION_OVERHEAD_BYTES
        else:
            self.sessions.move_to_end(client_id)
        session.floor = max(session.floor, floor)
        session.forgotten_below = max(session.forgotten_below, forgotten)
        session.last_ms = max(session.last_ms, at_ms)
        low = session.low
        saved_results = session.results
        for seq, outcome, hashes, *own_origin in results:
            if seq >= low and seq not in saved_results:
                origin = tuple(own_origin[0]) if own_origin and own_origin[0] is not None else default_origin
                cost = RESULT_OVERHEAD_BYTES + value_bytes(outcome) + 8 * len(hashes or ())
                saved_results[seq] = SavedResult(log_seq, outcome, hashes, cost, origin)  # type: ignore[arg-type]
                self.result_count += 1
                self.bytes += cost
        self._trim(session)

    def _drop_origin(self, origin: Origin) -> None:
        for session in self.sessions.values():
            for seq in [s for s, saved in session.results.items() if saved.origin == origin]:
                self._forget(session.results.pop(seq))

    def _trim(self, session: ClientSession) -> None:
        """Drop results below the client's low mark, and the oldest beyond the per-client cap.

        Below the low mark a copy is refused as stale whether or not its outcome is kept; dropping
        it at once keeps every replica's table the same whatever order its ops came in.
        """
        results = session.results
        if not results:
            return
        low = session.low
        for seq in [s for s in results if s < low]:
            self._forget(results.pop(seq))
        excess = len(results) - self.config.max_results_per_client
        if excess > 0:
            cut = sorted(results)[excess - 1]
            session.forgotten_below = max(session.forgotten_below, cut + 1)
            self.results_forgotten += excess
            for seq in [s for s in results if s <= cut]:
                self._forget(results.pop(seq))

    def _forget(self, saved: SavedResult) -> None:
        self.result_count -= 1
        self.bytes -= saved.cost

    def _expire(self, cutoff_ms: int) -> None:
        sessions = self.sessions
        while sessions:
            first = next(iter(sessions.values()))
            if first.last_ms >= cutoff_ms:
                return
            self._drop_oldest()
            self.expired += 1

    def _drop_oldest(self) -> None:
        _, session = self.sessions.popitem(last=False)
        self.bytes -= SESSION_OVERHEAD_BYTES
        for saved in session.results.values():
            self._forget(saved)

    def clear(self) -> None:
        self.sessions.clear()
        self.result_count = 0
        self.bytes = 0

    # ---------------------------------------------------------------- snapshots and moves

    def _session_ops(self, keep: Callable[[SavedResult], bool], with_origin: bool) -> Iterator[list[Any]]:
        for client_id, session in self.sessions.items():
            entries = []
            for seq, saved in session.results.items():
                if keep(saved):
                    entry = [seq, saved.outcome, saved.hashes]
                    if with_origin and saved.origin is not None:
                        entry.append(list(saved.origin))
                    entries.append(entry)
            yield [SESSION_OP, client_id, session.floor, session.forgotten_below, session.last_ms, entries]

    def snapshot(self) -> list[list[Any]]:
        """The whole table as ``session`` ops, least recently written first (``restore`` inverts it)."""
        return list(self._session_ops(lambda saved: True, with_origin=True))

    def ops_for_move(self, selects: Callable[[int], bool]) -> list[list[Any]]:
        """What a migration target needs to recognise copies of writes to the moving keys.

        Every session goes, with its floor (a client's copies below it are stale wherever they
        land), but only the results whose keys the move ``selects`` (or that list no keys).
        """
        return list(
            self._session_ops(
                lambda saved: saved.hashes is None or any(selects(h) for h in saved.hashes), with_origin=False
            )
        )

    def restore(self, ops: list[Any], log_seq: int) -> None:
        """Replace the table by a snapshot's ``session`` ops (each checked before anything changes).

        Results get ``log_seq``, the snapshot's position: their own entries are at or before it, so
        waiting for it to commit before repeating a result is never too early. Nothing expires
        here (the master's table already did, by its clock); the bounds are enforced as ``apply``
        enforces them, so a snapshot from a master with larger bounds cannot overflow this table.
        """
        for op in ops:
            check_op(op)
            if op[0] != SESSION_OP:
                raise _bad(f"a snapshot holds only session ops, got {op[0]!r:.30}")
        self.clear()
        for op in ops:
            self._merge(op, log_seq)
        self._evict()

    # ---------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Recompute the counters and bounds from the sessions (tests call it; it is O(table))."""
        count = sum(len(s.results) for s in self.sessions.values())
        size = SESSION_OVERHEAD_BYTES * len(self.sessions) + sum(
            saved.cost for s in self.sessions.values() for saved in s.results.values()
        )
        if count != self.result_count or size != self.bytes:
            raise InvariantViolation(
                f"dedup table counters drifted: {self.result_count} results / {self.bytes} bytes recorded, "
                f"{count} / {size} actual"
            )
        if len(self.sessions) > self.config.max_clients:
            raise InvariantViolation(f"dedup table holds {len(self.sessions)} sessions > max_clients")
        for client_id, session in self.sessions.items():
            if len(session.results) > self.config.max_results_per_client:
                raise InvariantViolation(f"client {client_id} has {len(session.results)} saved results")
            if any(seq < session.low for seq in session.results):
                raise InvariantViolation(
                    f"client {client_id} keeps a result below its low mark {session.low}"
                )
