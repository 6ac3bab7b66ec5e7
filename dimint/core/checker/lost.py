"""Acknowledged writes that a later read shows were lost, and writes that were applied twice.

Theory of operation
-------------------
An acknowledged write is lost when a strong read that began after it completed sees an older
value that was definitely replaced. When the execution log (``Execution``: what each node ran,
with log positions) shows the old value's request executed again after the newer write, the loss
is named for what it is, a replayed request, with both positions; otherwise it is ``lost``.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dimint.core.checker.sources import (
    WRITE,
    _by_key,
    _freeze,
    _is_strong_ok_read,
    _Source,
    _sources_by_value,
)
from dimint.core.history import OK, Operation


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution of a client's write by a master: where it landed in its shard's log.

    A run's trace has one per ``write_executed`` event; the checker keys them by the write's
    at-most-once identity ``(client_id, seq)``, which histories record on the operation.
    """

    node: str
    shard: int
    log_seq: int
    shard_epoch: int
    time_ms: float

    def describe(self) -> str:
        where = f"{self.node}, epoch {self.shard_epoch}, {self.time_ms:g} ms"
        return f"shard {self.shard} log seq {self.log_seq} ({where})"


Executions = Mapping[tuple[int, int], Sequence[Execution]]


REPLAYED = "replayed"


LOST = "lost"


@dataclass(frozen=True, slots=True)
class LostWrite:
    """An acknowledged write that a later strong read proves is gone.

    ``kind`` says how: ``"lost"`` (the write itself vanished, e.g. a failover to a replica without
    it) or ``"replayed"`` (an older write's value came back after the write had replaced it: a
    request executed twice; ``executions`` lists both log positions when the trace had them).
    """

    key: str
    write: Operation
    witness: Operation
    reason: str
    kind: str = LOST
    origin: Operation | None = None
    executions: tuple[Execution, ...] = ()

    def __str__(self) -> str:
        return f"{self.key!r}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "write": self.write.to_dict(),
            "witness": self.witness.to_dict(),
            "origin": self.origin.to_dict() if self.origin is not None else None,
            "executions": [dataclasses.asdict(item) for item in self.executions],
            "reason": self.reason,
        }


def request_identity(operation: Operation) -> tuple[int, int] | None:
    """The ``(client_id, seq)`` a history recorded for a write, if it did."""
    client_id, seq = operation.extra.get("client_id"), operation.extra.get("seq")
    if type(client_id) is int and type(seq) is int and seq > 0:
        return (client_id, seq)
    return None


def lost_acknowledged_writes(
    operations: Iterable[Operation], *, initial: Any = None, executions: Executions | None = None
) -> list[LostWrite]:
    """Acknowledged writes that a later strong read shows were lost, one witness read each.

    An ``ok`` write ``w`` of key ``k`` is lost when an ``ok`` strong read ``r`` of ``k``, invoked after
    ``w`` completed (``r.invoke_ms > w.complete_ms``), returns a value that only something *definitely
    older than w* could have left there: every operation that could have produced the value read,
    and been invoked before ``r`` completed, had taken effect before ``w`` was invoked. That is:

    * the value of ``ok`` write(s) that all completed before ``w`` was invoked (an ``info`` write
      counts only once a strong read showed its unique value, by that read's completion);
    * ``None`` when every delete invoked before ``r`` completed had completed before ``w`` was
      invoked (an ``info`` delete never qualifies: it could land after ``w``), and the key started
      absent or was deleted;
    * the initial value, never written since.

    A final readback (an operation with ``"readback": true``) is judged the same way; in addition, a
    readback returning a value that no operation could have produced (never written, written only
    by failed writes, or first written after it) shows every acknowledged write before it is gone.
    Mid-run such a read is left to ``check_linearizable``: there, a write that wrongly reported
    failure would explain it without any acknowledged write being lost.

    Weak reads never count (a slave may lag). Reads name writes by value: see the module docstring.
    Each lost write is reported once, with the read showing the oldest state. Sorted by the write's
    completion.

    Each is classified (``LostWrite.kind``). With ``executions`` (from a run's trace, keyed by the
    writes' ``(client_id, seq)``), a value whose write was executed twice is ``"replayed"``: a late
    copy of that request ran again and undid the write, and both log positions are named.
    Without a trace, a value that reappears after a strong read showed it overwritten is reported
    as replayed too (a lost write would more often show the older state without that read).
    """
    lost: list[LostWrite] = []
    for key, key_operations in _by_key(operations).items():
        lost += _lost_writes_of_key(key, key_operations, initial, executions)
    lost.sort(key=lambda item: (item.write.complete_ms, item.write.index))
    return lost


def _lost_writes_of_key(
    key: str, operations: list[Operation], initial: Any, executions: Executions | None
) -> list[LostWrite]:
    acknowledged = [
        operation
        for operation in operations
        if operation.f == WRITE and operation.outcome == OK and operation.value is not None
    ]
    reads = sorted(
        (operation for operation in operations if _is_strong_ok_read(operation)),
        key=lambda operation: operation.invoke_ms,
    )
    if not acknowledged or not reads:
        return []
    # Per value: producers in invoke order with the running latest effect time (and who had it).
    table: dict[Any, tuple[list[float], list[_Source]]] = {}
    for value, sources in _sources_by_value(operations, initial).items():
        latest: list[_Source] = []
        for source in sources:
            latest.append(
                source if not latest or source.effective_ms > latest[-1].effective_ms else latest[-1]
            )
        table[value] = ([source.invoke_ms for source in sources], latest)
    # bounds[i]: whatever reads[i] saw had taken effect by then, so a write invoked later is newer.
    bounds: list[float] = []
    origins: list[_Source | None] = []
    for read in reads:
        invokes, latest = table.get(_freeze(read.value), ([], []))
        position = bisect_right(invokes, read.complete_ms)
        if position:
            bounds.append(latest[position - 1].effective_ms)
            origins.append(latest[position - 1])
        else:
            bounds.append(-math.inf if read.is_readback else math.inf)
            origins.append(None)
    # Suffix argmin over reads in invoke order: the read showing the oldest state after a time.
    suffix_best = [-1] * (len(reads) + 1)
    for position in range(len(reads) - 1, -1, -1):
        later = suffix_best[position + 1]
        suffix_best[position] = position if later == -1 or bounds[position] <= bounds[later] else later
    read_invokes = [read.invoke_ms for read in reads]
    found: list[LostWrite] = []
    for write in acknowledged:
        best = suffix_best[bisect_right(read_invokes, write.complete_ms)]
        if best != -1 and bounds[best] < write.invoke_ms:
            witness, origin = reads[best], origins[best]
            replay = _replay_of(write, witness, origin, reads, executions)
            if replay is not None:
                found.append(replay)
            else:
                found.append(LostWrite(key, write, witness, _lost_reason(witness, origin, initial)))
    return found


def _replay_of(
    write: Operation,
    witness: Operation,
    origin: _Source | None,
    reads: list[Operation],
    executions: Executions | None,
) -> LostWrite | None:
    """The report of a write undone by a replayed request, if that is what the evidence shows."""
    producer = origin.operation if origin is not None else None
    if producer is None:
        return None
    identity = request_identity(producer)
    ran = tuple(executions.get(identity, ())) if executions is not None and identity is not None else ()
    what = (
        f"a write applied twice (replayed request): {producer.describe()} came back after "
        f"{write.describe()} had replaced it"
    )
    said = f"{witness.describe()} returned its value"
    if executions is not None and identity is not None:
        if len(ran) < 2:
            return None  # executed once: the later write itself was lost
        positions = " and again at ".join(item.describe() for item in ran)
        reason = f"{what}; it was executed at {positions}; {said}"
        return LostWrite(write.key, write, witness, reason, REPLAYED, producer, ran)
    frozen = _freeze(witness.value)
    overwritten = next(
        (
            read
            for read in reads
            if read.invoke_ms > origin.effective_ms  # type: ignore[union-attr]
            and read.complete_ms is not None
            and read.complete_ms < witness.invoke_ms
            and _freeze(read.value) != frozen
        ),
        None,
    )
    if overwritten is None:
        return None
    reason = (
        f"{what}: {overwritten.describe()} had shown it overwritten, then {said} "
        "(no trace of executions: log positions unknown)"
    )
    return LostWrite(write.key, write, witness, reason, REPLAYED, producer)


def _lost_reason(witness: Operation, origin: _Source | None, initial: Any) -> str:
    kind = "final readback" if witness.is_readback else "strong read"
    said = f"{kind} {witness.describe()}, invoked after the write completed, returned"
    if origin is None:
        return f"{said} {witness.value!r}, which no operation could have produced"
    if origin.operation is None:
        state = "nothing (key absent)" if witness.value is None else f"the initial value {witness.value!r}"
        return f"{said} {state}, as before any write"
    what = "nothing (key absent), last explained by" if witness.value is None else f"{witness.value!r}, from"
    return f"{said} {what} {origin.operation.describe()}, which took effect before the write was invoked"
