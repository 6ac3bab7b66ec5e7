"""The register model every checker shares: verdict names, and where a read's value can have come from.

Theory of operation
-------------------
Every key is a read/write/delete register, and a strong read names the write it saw by its value.
``_sources_by_value`` lists, per value, the operations that could have produced it; ``_Supersession``
answers "was this value definitely replaced before time t" with sorted arrays and binary search;
``_judge_reads`` combines the two into the O(n log n) direct witnesses that the linearizability
check tries before any search and that the lost-write check reports (see the package docstring).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dimint.core.history import FAIL, OK, HistoryError, Operation

READ = "read"


WRITE = "write"


DELETE = "delete"


REGISTER_FUNCTIONS: frozenset[str] = frozenset({READ, WRITE, DELETE})


LINEARIZABLE = "linearizable"


NOT_LINEARIZABLE = "not_linearizable"


UNKNOWN = "unknown"


#: Configurations one key's search may visit before answering ``"unknown"``. A linearizable history
#: needs about one per operation (2,000 operations from 16 clients: a few thousand); the rest is
#: room for backtracking on failing histories, a few seconds of work at most.
DEFAULT_SEARCH_BUDGET = 500_000


_UNREAD = -1  # the register value of writes whose value no included read returns


_ABSENT = 0  # the register value None


_NOTHING = object()  # "no value": never equal to any value a history can hold


_LAST_PLACED_SHOWN = 3


_CANDIDATES_SHOWN = 5


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a value, so JSON lists and objects can name register states."""
    if isinstance(value, (list, tuple)):
        return ("__sequence__", tuple(_freeze(item) for item in value))
    if isinstance(value, dict):
        return ("__mapping__", tuple(sorted((repr(name), _freeze(item)) for name, item in value.items())))
    if isinstance(value, (set, frozenset)):
        return ("__set__", frozenset(_freeze(item) for item in value))
    try:
        hash(value)
    except TypeError:
        return ("__repr__", repr(value))
    return value


def _by_key(operations: Iterable[Operation]) -> dict[str, list[Operation]]:
    groups: dict[str, list[Operation]] = defaultdict(list)
    for operation in operations:
        if not isinstance(operation, Operation):
            raise HistoryError(f"expected an Operation, got {type(operation).__name__}")
        groups[operation.key].append(operation)
    return groups


def _is_mutation(operation: Operation) -> bool:
    return operation.f in (WRITE, DELETE)


def _result_of(mutation: Operation) -> Any:
    """The register value a mutation leaves behind (a write of None is a delete)."""
    return None if mutation.f == DELETE else _freeze(mutation.value)


def _non_failed_mutations(operations: Iterable[Operation]) -> list[Operation]:
    """Writes and deletes that took effect or may have: everything that could explain a value."""
    return [operation for operation in operations if _is_mutation(operation) and operation.outcome != FAIL]


def _is_strong_ok_read(operation: Operation) -> bool:
    return operation.f == READ and operation.outcome == OK and not operation.is_weak


def _require_register_functions(key: str, operations: Sequence[Operation]) -> None:
    for operation in operations:
        if operation.f not in REGISTER_FUNCTIONS:
            raise HistoryError(
                f"key {key!r}: {operation.describe()}: the register model checks only read, write and "
                f"delete; filter other functions out of the history before checking it"
            )


@dataclass(frozen=True, slots=True)
class _Source:
    """A possible producer of a value: a non-failed mutation, or the initial value (``operation`` None)."""

    invoke_ms: float
    effective_ms: float  # it had taken effect by then; +inf when unknown
    operation: Operation | None


def _sources_by_value(operations: list[Operation], initial: Any) -> dict[Any, list[_Source]]:
    """For each value, its possible producers in invoke order.

    The initial value is produced at ``-inf``. An ``ok`` mutation took effect by its completion. An
    ``info`` write that alone produces its value took effect by the time the first strong read
    returning that value completed (the same deadline the search gives it); any other info
    mutation's effect time is unbounded.
    """
    mutations = _non_failed_mutations(operations)
    initial_frozen = _freeze(initial)
    producers = Counter(_result_of(mutation) for mutation in mutations)
    producers[initial_frozen] += 1
    first_read_done: dict[Any, float] = {}
    for operation in operations:
        if _is_strong_ok_read(operation):
            frozen = _freeze(operation.value)
            first_read_done[frozen] = min(first_read_done.get(frozen, math.inf), operation.complete_ms)
    sources: dict[Any, list[_Source]] = defaultdict(list)
    sources[initial_frozen].append(_Source(-math.inf, -math.inf, None))
    for mutation in mutations:
        result = _result_of(mutation)
        effective = math.inf
        if mutation.outcome == OK:
            effective = mutation.complete_ms
        elif producers[result] == 1 and first_read_done.get(result, math.inf) >= mutation.invoke_ms:
            effective = first_read_done.get(result, math.inf)
        sources[result].append(_Source(mutation.invoke_ms, effective, mutation))
    for listed in sources.values():
        listed.sort(key=lambda source: source.invoke_ms)
    return sources


# (earliest completion, its value, its mutation, earliest completion to another value, its mutation)
_SuffixEntry = tuple[float, Any, "Operation | None", float, "Operation | None"]


class _Supersession:
    """Which acknowledged mutation to another value, invoked after a time, completed first?

    A suffix table over acknowledged mutations in invoke order keeps the earliest completion and,
    separately, the earliest completion to a value other than that one's, so a rewrite of the same
    value is never mistaken for a replacement.
    """

    def __init__(self, operations: list[Operation]) -> None:
        acknowledged = sorted(
            (operation for operation in operations if _is_mutation(operation) and operation.outcome == OK),
            key=lambda operation: operation.invoke_ms,
        )
        self._invokes = [mutation.invoke_ms for mutation in acknowledged]
        suffix: list[_SuffixEntry] = [(math.inf, _NOTHING, None, math.inf, None)] * (len(acknowledged) + 1)
        for position in range(len(acknowledged) - 1, -1, -1):
            best, best_value, best_by, other, other_by = suffix[position + 1]
            mutation = acknowledged[position]
            done, result = mutation.complete_ms, _result_of(mutation)
            if done < best:
                if result != best_value:
                    other, other_by = best, best_by
                best, best_value, best_by = done, result, mutation
            elif result != best_value and done < other:
                other, other_by = done, mutation
            suffix[position] = (best, best_value, best_by, other, other_by)
        self._suffix = suffix

    def first_after(self, after_ms: float, frozen: Any) -> tuple[float, Operation | None]:
        """Earliest completion of an acknowledged mutation to a value other than ``frozen``,
        among those invoked strictly after ``after_ms``; ``(inf, None)`` if there is none."""
        best, best_value, best_by, other, other_by = self._suffix[bisect_right(self._invokes, after_ms)]
        return (other, other_by) if best_value == frozen else (best, best_by)


@dataclass(frozen=True, slots=True)
class _ReadJudgement:
    """How a read's value relates to what could have been current when the read began."""

    read: Operation
    staleness_ms: float | None  # None: nothing could have produced the value before the read completed
    source: _Source | None  # the least stale possible producer of the value
    replaced_by: Operation | None  # what had definitely replaced it before the read began


def _judge_reads(operations: list[Operation], reads: list[Operation], initial: Any) -> list[_ReadJudgement]:
    """Staleness of each read: 0 if its value could be current when it was invoked, else how long it
    had been definitely replaced (for several possible producers, the least stale is assumed)."""
    supersession = _Supersession(operations)
    table: dict[Any, tuple[list[float], list[tuple[float, _Source, Operation | None]]]] = {}
    for value, sources in _sources_by_value(operations, initial).items():
        invokes: list[float] = []
        running: list[tuple[float, _Source, Operation | None]] = []
        for source in sources:
            replaced_ms, replaced_by = supersession.first_after(source.effective_ms, value)
            if not running or replaced_ms > running[-1][0]:
                running.append((replaced_ms, source, replaced_by))
            else:
                running.append(running[-1])
            invokes.append(source.invoke_ms)
        table[value] = (invokes, running)
    judgements = []
    for read in reads:
        invokes, running = table.get(_freeze(read.value), ([], []))
        position = bisect_right(invokes, read.complete_ms)
        if not position:
            judgements.append(_ReadJudgement(read, None, None, None))
            continue
        replaced_ms, source, replaced_by = running[position - 1]
        if replaced_ms < read.invoke_ms:
            judgements.append(_ReadJudgement(read, read.invoke_ms - replaced_ms, source, replaced_by))
        else:
            judgements.append(_ReadJudgement(read, 0.0, source, None))
    return judgements
