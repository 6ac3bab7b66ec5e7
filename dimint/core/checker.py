"""Checkers for client histories: per-key linearizability, lost acknowledged writes, weak-read staleness.

Theory of operation
-------------------
Every key is an independent read/write/delete register (``delete`` leaves ``None``, "absent"; so does
a write of ``None``). Linearizability is local (Herlihy & Wing's P-compositionality), so
``check_linearizable`` splits the history by key and decides each key alone; a failure names its key
and does not taint the others. Functions other than read/write/delete are rejected with
``HistoryError`` rather than ignored: silently skipping a mutation such as ``incr`` would make the
verdict meaningless. What each operation contributes:

* ``ok`` read or mutation: must take effect between its invoke and its completion (required);
* ``fail``: definitely did not take effect, so it is dropped;
* ``info`` read: its result is unknown, so it tells nothing and is dropped;
* ``info`` mutation: may take effect at any time after its invoke, or never (optional);
* weak reads (``consistency == "weak"``) may be served by a stale slave: they are excluded, and
  ``weak_read_staleness`` measures them instead. A read without ``consistency`` counts as strong.

Op A precedes op B in real time only if ``A.complete_ms < B.invoke_ms``: equal times count as
concurrent, so coarse clocks can hide a violation but never invent one.

Deciding a key takes two steps. First a direct witness, O(n log n): a strong read whose value nothing
could have produced in time (never written, written only by failed writes, or first written after the
read completed), or whose value was *definitely* replaced before the read began (every possible
writer of it was followed by an acknowledged write of another value that completed before the read
was invoked). Either proves the key is not linearizable, with a one-line reason, and is how the
common bugs (stale reads, lost writes, reads of failed writes) are reported. Otherwise a search.

The search is Wing & Gong's, with Lowe's memoisation, laid out like Porcupine: a doubly linked list
of call and return entries in time order (calls first at equal times). The calls before the first
return entry are the operations that may go next (the "minimal" ones: none was invoked after an
unplaced required operation completed); placing one lifts its entries out, and reaching a return
entry means its operation is overdue, so the search backtracks. A configuration is (placed
operations as a bitmask, register value), visited once. Each rule below keeps the verdict exact:

* Unique values. An info mutation whose value no included read returns is dropped ("never happened"
  explains it). An info write whose unique value is read must take effect before the first such
  read completes, so it becomes required with that deadline. Writes whose value no read returns
  share one register value, ``_UNREAD``.
* Forced moves. A read of the current value is placed at once, without branching: moving a read
  earlier breaks nothing (it changes no state and nothing must precede it), so if the configuration
  with it placed fails, so does the one without it. The same holds for an unread write while the
  register already holds an unread value.
* Stranded reads. A mutation that would overwrite a value some unplaced read still needs, when no
  unplaced operation can produce that value again, leads only to dead ends and is not tried.
* Interchangeable mutations. Of candidate mutations to the same value, only the one due first is
  tried (any order using a later-due one works with the earlier-due one in its place).
* Unknown outcomes last. An optional mutation is only ever needed just before a read of its value
  (otherwise dropping it changes nothing), never while a required mutation to the same value is a
  candidate, and it is tried after every required candidate. A configuration that used a superset
  of another visited configuration's optional operations, with the same required ones and value,
  is skipped: optional operations are only options, so it cannot succeed where that one failed.

A budget of configurations bounds the search; when it runs out the verdict is ``"unknown"``, never a
hang. A failing key's explanation describes the deepest configuration reached: what had been placed,
what the register held, and why nothing could go next.

``lost_acknowledged_writes`` and ``weak_read_staleness`` are not searches: they compare intervals
using sorted arrays and binary search, O(n log n) per key. They name the write a read saw by its
value, so workloads should write unique values; a value written several times is attributed to
whichever of its writers makes the read look least suspicious, so repeated values can hide a
problem but never invent one.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dimint.core.errors import InvariantViolation
from dimint.core.history import FAIL, INFO, OK, HistoryError, Operation

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


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Where a value can have come from, and when it was definitely replaced
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Linearizability
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """The verdict for one key, with a human-readable reason when it is not ``linearizable``."""

    key: str
    verdict: str
    operations: int  # operations that constrain the key (fail, info reads and weak reads dropped)
    states_explored: int  # search configurations visited (0 when a direct witness decided)
    explanation: str = ""
    involved: tuple[Operation, ...] = ()

    @property
    def ok(self) -> bool:
        return self.verdict == LINEARIZABLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "verdict": self.verdict,
            "operations": self.operations,
            "states_explored": self.states_explored,
            "explanation": self.explanation,
            "involved": [operation.to_dict() for operation in self.involved],
        }


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """Overall verdict: ``not_linearizable`` if any key is, else ``unknown`` if any key is, else ok."""

    verdict: str
    keys: Mapping[str, KeyVerdict] = field(hash=False)

    @property
    def ok(self) -> bool:
        return self.verdict == LINEARIZABLE

    @property
    def failures(self) -> tuple[KeyVerdict, ...]:
        return tuple(verdict for verdict in self.keys.values() if verdict.verdict == NOT_LINEARIZABLE)

    @property
    def unknown(self) -> tuple[KeyVerdict, ...]:
        return tuple(verdict for verdict in self.keys.values() if verdict.verdict == UNKNOWN)

    def explain(self) -> str:
        """Every failing or undecided key's explanation, e.g. for a test's assertion message."""
        texts = [verdict.explanation for verdict in (*self.failures, *self.unknown)]
        return "\n\n".join(texts) if texts else "linearizable"

    def to_dict(self, *, max_keys_listed: int = 10) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "keys_checked": len(self.keys),
            "keys_not_linearizable": len(self.failures),
            "keys_unknown": len(self.unknown),
            "states_explored": sum(verdict.states_explored for verdict in self.keys.values()),
            "failures": [verdict.to_dict() for verdict in self.failures[:max_keys_listed]],
            "unknown": [verdict.to_dict() for verdict in self.unknown[:max_keys_listed]],
        }


@dataclass(slots=True)
class _Problem:
    """One key's search input, as parallel lists indexed by position in invoke order."""

    operations: list[Operation]
    invoke: list[float]
    deadline: list[float]  # math.inf: optional (an info mutation that may never take effect)
    is_read: list[bool]
    value: list[int]  # reads: the value returned; mutations: the value left behind
    initial_state: int


@dataclass(slots=True)
class _SearchOutcome:
    verdict: str
    explored: int
    deepest_path: list[int]
    deepest_state: int


def check_linearizable(
    operations: Iterable[Operation],
    *,
    initial: Any = None,
    budget: int = DEFAULT_SEARCH_BUDGET,
) -> LinearizabilityResult:
    """Decide, key by key, whether the history is linearizable for a read/write/delete register.

    ``initial`` is the value every key holds before the history starts (``None``: absent).
    ``budget`` caps the configurations explored per key; a key that exhausts it is ``"unknown"``.
    Raises ``HistoryError`` for an operation whose ``f`` is not read, write or delete.
    """
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise HistoryError(f"budget must be a positive int, got {budget!r}")
    verdicts: dict[str, KeyVerdict] = {}
    for key, key_operations in _by_key(operations).items():
        verdicts[key] = _check_key(key, key_operations, initial, budget)
    found = {verdict.verdict for verdict in verdicts.values()}
    overall = NOT_LINEARIZABLE if NOT_LINEARIZABLE in found else UNKNOWN if UNKNOWN in found else LINEARIZABLE
    return LinearizabilityResult(overall, verdicts)


def _check_key(key: str, operations: list[Operation], initial: Any, budget: int) -> KeyVerdict:
    _require_register_functions(key, operations)
    reads = [operation for operation in operations if _is_strong_ok_read(operation)]
    mutations = _non_failed_mutations(operations)
    considered = len(reads) + len(mutations)
    witnesses = [
        judgement
        for judgement in _judge_reads(operations, reads, initial)
        if judgement.staleness_ms is None or judgement.staleness_ms > 0
    ]
    if witnesses:
        first = min(witnesses, key=lambda judgement: (judgement.read.invoke_ms, judgement.read.index))
        explanation, involved = _explain_witness(key, first, operations, initial)
        return KeyVerdict(key, NOT_LINEARIZABLE, considered, 0, explanation, involved)

    problem = _build_problem(reads, mutations, initial)
    outcome = _search(problem, budget)
    if outcome.verdict == LINEARIZABLE:
        return KeyVerdict(key, LINEARIZABLE, considered, outcome.explored)
    if outcome.verdict == UNKNOWN:
        explanation = (
            f"key {key!r}: unknown: the search budget of {budget} configurations ran out before a "
            f"verdict ({len(problem.operations)} operations to order; the longest consistent order found "
            f"placed {len(outcome.deepest_path)}). Raise budget= or check a shorter history."
        )
        return KeyVerdict(key, UNKNOWN, considered, outcome.explored, explanation)
    explanation, involved = _explain_failure(key, problem, outcome, initial)
    return KeyVerdict(key, NOT_LINEARIZABLE, considered, outcome.explored, explanation, involved)


def _build_problem(reads: list[Operation], mutations: list[Operation], initial: Any) -> _Problem:
    """Apply the unique-value rules of the module docstring and number the register's values."""
    initial_frozen = _freeze(initial)
    observed = {_freeze(read.value) for read in reads}
    writers = Counter(_result_of(mutation) for mutation in mutations)
    first_read_done: dict[Any, float] = {}
    for read in reads:
        frozen = _freeze(read.value)
        first_read_done[frozen] = min(first_read_done.get(frozen, math.inf), read.complete_ms)

    included: list[tuple[Operation, float]] = [(read, read.complete_ms) for read in reads]
    for mutation in mutations:
        result = _result_of(mutation)
        if mutation.outcome == OK:
            included.append((mutation, mutation.complete_ms))
        elif result not in observed:
            continue  # nothing could observe it, so "it never took effect" explains it
        elif (
            result is not None
            and writers[result] == 1
            and result != initial_frozen
            and first_read_done[result] >= mutation.invoke_ms
        ):
            included.append((mutation, first_read_done[result]))
        else:
            included.append((mutation, math.inf))
    included.sort(key=lambda item: (item[0].invoke_ms, item[0].index))

    ids: dict[Any, int] = {None: _ABSENT}

    def state_id(frozen: Any) -> int:
        return ids.setdefault(frozen, len(ids)) if frozen in observed else _UNREAD

    return _Problem(
        operations=[operation for operation, _ in included],
        invoke=[operation.invoke_ms for operation, _ in included],
        deadline=[deadline for _, deadline in included],
        is_read=[operation.f == READ for operation, _ in included],
        value=[
            state_id(_freeze(operation.value) if operation.f == READ else _result_of(operation))
            for operation, _ in included
        ],
        initial_state=state_id(initial_frozen),
    )


def _describe_source(source: _Source, initial: Any) -> str:
    if source.operation is None:
        return f"the initial value {initial!r}"
    return source.operation.describe()


def _explain_witness(
    key: str, judgement: _ReadJudgement, operations: list[Operation], initial: Any
) -> tuple[str, tuple[Operation, ...]]:
    read = judgement.read
    head = f"key {key!r}: not linearizable: {read.describe()} returned {read.value!r}"
    if judgement.staleness_ms is not None:
        source = judgement.source
        replaced_by = judgement.replaced_by
        if source is None or replaced_by is None:
            raise InvariantViolation(f"a stale read without a replaced source: {judgement}")
        text = (
            f"{head}, but that value (from {_describe_source(source, initial)}) had been replaced by "
            f"{replaced_by.describe()}, which was invoked after it took effect and completed "
            f"{judgement.staleness_ms:g} ms before the read was invoked."
        )
        involved = (read, replaced_by) if source.operation is None else (read, source.operation, replaced_by)
        return text, involved
    frozen = _freeze(read.value)
    producers = [
        operation for operation in _non_failed_mutations(operations) if _result_of(operation) == frozen
    ]
    if producers:
        first = min(producers, key=lambda operation: operation.invoke_ms)
        return (
            f"{head}, but the first operation that could produce it, {first.describe()}, was invoked "
            f"only after the read completed.",
            (read, first),
        )
    failed = [
        operation
        for operation in operations
        if _is_mutation(operation) and operation.outcome == FAIL and _result_of(operation) == frozen
    ][:_CANDIDATES_SHOWN]
    if failed:
        why = "it was written only by operations that failed: " + "; ".join(op.describe() for op in failed)
    elif read.value is None:
        why = "the key did not start absent and nothing deleted it"
    else:
        why = "no operation ever wrote it"
    return f"{head}, a value no operation could have produced ({why}).", (read, *failed)


def _search(problem: _Problem, budget: int) -> _SearchOutcome:
    """Depth-first search for a linearization; the module docstring says why each rule is sound."""
    count = len(problem.invoke)
    invoke, deadline, is_read, value = problem.invoke, problem.deadline, problem.is_read, problem.value
    required = [due != math.inf for due in deadline]
    # Two doubly linked lists share the pointer arrays. The main one holds the calls (0..count-1)
    # and returns (count..2*count-1) of required operations in time order; the optional one holds
    # the calls of unknown-outcome mutations in invoke order, tried only after the main window, so
    # configurations that use fewer of them are met first and make the others redundant.
    end = -1
    head, optional_head = 2 * count, 2 * count + 1
    entries = [(invoke[index], 0, index) for index in range(count) if required[index]]
    entries += [(deadline[index], 1, count + index) for index in range(count) if required[index]]
    entries.sort()
    following = [end] * (2 * count + 2)
    preceding = [end] * (2 * count + 2)
    entry_time = [0.0] * (2 * count)
    for sentinel, listed in (
        (head, entries),
        (optional_head, [(invoke[index], 0, index) for index in range(count) if not required[index]]),
    ):
        previous = sentinel
        for time_ms, _, entry in listed:
            following[previous] = entry
            preceding[entry] = previous
            entry_time[entry] = time_ms
            previous = entry
    # Per register value (offset by one, for _UNREAD): reads still to place, and operations still
    # able to produce the value.
    slots = max([problem.initial_state, *value]) + 2
    reads_left = [0] * slots
    producers_left = [0] * slots
    for index in range(count):
        (reads_left if is_read[index] else producers_left)[value[index] + 1] += 1
    shared = [producers > 1 for producers in producers_left]

    state = problem.initial_state
    placed = 0  # bitmask over required operations placed
    optional_placed = 0  # bitmask over unknown-outcome operations placed
    remaining = sum(required)
    stack: list[tuple[int, int, bool]] = []  # (operation, register value before it, forced)
    # (required placed, register value) -> optional-placed masks visited with them. Optional
    # operations are only options, so a configuration is redundant once one with the same required
    # part and a subset of its optional part has been visited (and, not being an ancestor, failed).
    seen: dict[tuple[int, int], list[int]] = {}
    explored = 0

    def lift(entry: int) -> None:
        before, after = preceding[entry], following[entry]
        following[before] = after
        if after != end:
            preceding[after] = before

    def unlift(entry: int) -> None:
        before, after = preceding[entry], following[entry]
        following[before] = entry
        if after != end:
            preceding[after] = entry

    def window() -> Iterator[int]:
        """Required operations that may take effect next: calls before the first return entry."""
        entry = following[head]
        while entry != end and entry < count:
            yield entry
            entry = following[entry]

    def window_limit() -> float:
        """The earliest deadline of an unplaced required operation: nothing invoked later can go next."""
        entry = following[head]
        while entry != end and entry < count:
            entry = following[entry]
        return math.inf if entry == end else entry_time[entry]

    def place(operation: int, forced: bool) -> bool:
        """Take ``operation`` as the next one, unless an equivalent configuration was visited."""
        nonlocal state, placed, optional_placed, remaining, explored
        new_placed, new_optional = placed, optional_placed
        if required[operation]:
            new_placed |= 1 << operation
        else:
            new_optional |= 1 << operation
        new_state = state if is_read[operation] else value[operation]
        visited = seen.setdefault((new_placed, new_state), [])
        if any(earlier & ~new_optional == 0 for earlier in visited):
            return False
        visited.append(new_optional)
        explored += 1
        stack.append((operation, state, forced))
        lift(operation)
        if required[operation]:
            lift(count + operation)
            remaining -= 1
        (reads_left if is_read[operation] else producers_left)[value[operation] + 1] -= 1
        placed, optional_placed, state = new_placed, new_optional, new_state
        return True

    def unplace() -> tuple[int, bool]:
        nonlocal state, placed, optional_placed, remaining
        operation, state, forced = stack.pop()
        if required[operation]:
            unlift(count + operation)
            remaining += 1
            placed ^= 1 << operation
        else:
            optional_placed ^= 1 << operation
        unlift(operation)
        (reads_left if is_read[operation] else producers_left)[value[operation] + 1] += 1
        return operation, forced

    def forced_move() -> int:
        """A move that loses nothing: a read of the current value, or an unread write over an unread one."""
        for operation in window():
            if value[operation] == state and (is_read[operation] or state == _UNREAD):
                return operation
        return end

    def worth_trying(operation: int) -> bool:
        if is_read[operation]:
            return False  # a read of the current value would have been forced; others cannot go
        new = value[operation]
        if new != state and reads_left[state + 1] and not producers_left[state + 1]:
            return False  # it would strand reads of the current value for good
        if not required[operation]:
            # An unknown-outcome mutation only ever needs to happen just before a read of its value,
            # and never while a required mutation to the same value could do the job instead.
            wanted = False
            for other in window():
                if value[other] == new:
                    if not is_read[other]:
                        return False
                    wanted = True
            if not wanted or new == state:
                return False
        if shared[new + 1]:
            # Of interchangeable mutations (same value) at hand, only the one due first is tried.
            due = (deadline[operation], operation)
            for other in window():
                if not is_read[other] and value[other] == new and (deadline[other], other) < due:
                    return False
            if not required[operation]:
                other = following[optional_head]
                while other != operation:
                    if value[other] == new:
                        return False
                    other = following[other]
        return True

    candidate = end  # next optional operation to try, once the required ones at hand are exhausted
    limit = math.inf  # optional operations invoked after this cannot go next

    def try_required(entry: int) -> bool:
        """Place the first worthwhile required operation from ``entry`` on; else queue the optional ones."""
        nonlocal candidate, limit
        while entry != end and entry < count:
            if worth_trying(entry) and place(entry, False):
                return True
            entry = following[entry]
        limit = math.inf if entry == end else entry_time[entry]
        candidate = following[optional_head]
        return False

    def try_optional() -> bool:
        nonlocal candidate
        while candidate != end and invoke[candidate] <= limit:
            if worth_trying(candidate) and place(candidate, False):
                return True
            candidate = following[candidate]
        return False

    deepest_path: list[int] = []
    deepest_state = state
    fresh = True  # just placed an operation: at a configuration not looked at yet
    while True:
        if fresh:
            fresh = False
            if len(stack) > len(deepest_path):
                deepest_path = [operation for operation, _, _ in stack]
                deepest_state = state
            if remaining == 0:
                return _SearchOutcome(LINEARIZABLE, explored, deepest_path, deepest_state)
            if explored > budget:
                return _SearchOutcome(UNKNOWN, explored, deepest_path, deepest_state)
            move = forced_move()
            if move != end:
                fresh = place(move, True)
                if fresh:
                    continue
                candidate = end  # the forced successor already failed, so this configuration fails
            elif try_required(following[head]):
                fresh = True
                continue
        if try_optional():
            fresh = True
            continue
        # Resume the nearest unforced ancestor at the choice after the one that failed; a forced
        # move had no alternative, so its configuration failed with it.
        forced = True
        while forced:
            if not stack:
                return _SearchOutcome(NOT_LINEARIZABLE, explored, deepest_path, deepest_state)
            operation, forced = unplace()
        if not required[operation]:
            limit = window_limit()
            candidate = following[operation]
        elif try_required(following[operation]):
            fresh = True


def _explain_failure(
    key: str, problem: _Problem, outcome: _SearchOutcome, initial: Any
) -> tuple[str, tuple[Operation, ...]]:
    """Describe the deepest configuration the search reached: the smallest honest story.

    Every move from there was refused or failed, so the story is "after these operations the
    register holds X; this operation must take effect by T, and neither it nor anything allowed
    before it can go next", with the reason for each: a read of another value, or a mutation that
    would destroy a value a pending read still needs.
    """
    operations = problem.operations
    placed = set(outcome.deepest_path)
    unplaced = [index for index in range(len(operations)) if index not in placed]
    required = [index for index in unplaced if problem.deadline[index] != math.inf]
    blocking = min(required, key=lambda index: (problem.deadline[index], problem.invoke[index]))
    limit = problem.deadline[blocking]
    candidates = [blocking] + [
        index for index in required if index != blocking and problem.invoke[index] <= limit
    ]
    last_mutation = next(
        (operations[index] for index in reversed(outcome.deepest_path) if not problem.is_read[index]), None
    )
    if last_mutation is None:
        current: Any = initial
        holding = f"its initial value {initial!r}"
    else:
        current = None if last_mutation.f == DELETE else last_mutation.value
        verb = "written" if current is not None else "deleted"
        holding = f"{current!r} ({verb} by #{last_mutation.index})"
    # Why a mutation cannot go next: a read still needs the current value and nothing unplaced could
    # put it back.
    waiting_read = next(
        (
            operations[index]
            for index in required
            if problem.is_read[index] and problem.value[index] == outcome.deepest_state
        ),
        None,
    )
    can_restore = any(
        not problem.is_read[index] and problem.value[index] == outcome.deepest_state for index in unplaced
    )

    def reason(index: int) -> str:
        if problem.is_read[index]:
            if problem.value[index] != outcome.deepest_state:
                return f"it returned {operations[index].value!r}, not {current!r}"
        elif waiting_read is not None and not can_restore:
            return f"it would overwrite {current!r}, which {waiting_read.describe()} has yet to return"
        return "every order placing it next fails further on"

    shown_placed = [operations[index] for index in outcome.deepest_path[-_LAST_PLACED_SHOWN:]]
    shown = candidates[:_CANDIDATES_SHOWN]
    lines = [
        f"key {key!r}: not linearizable: no order of its {len(operations)} operations respects both real "
        f"time and register semantics.",
    ]
    if shown_placed:
        lines.append(
            f"The longest consistent order found places {len(outcome.deepest_path)} operation(s), "
            "ending with:"
        )
        lines += [f"    {operation.describe()}" for operation in shown_placed]
        lines.append(f"after which the register holds {holding}.")
    else:
        lines.append(f"Nothing can even come first: the register holds {holding}.")
    due = f"{limit:g} ms"
    if operations[blocking].outcome == INFO:
        due += " (when the first read of its value completes)"
    lines.append(
        f"Next, {operations[blocking].describe()} must take effect by {due}, but {reason(blocking)}."
    )
    if len(shown) > 1:
        lines.append("Nor can anything else that may come before it go next:")
        lines += [f"    {operations[index].describe()}: {reason(index)}" for index in shown[1:]]
    return "\n".join(lines), (*shown_placed, *(operations[index] for index in shown))


# --------------------------------------------------------------------------------------------
# Lost acknowledged writes
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Weak-read staleness
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadStaleness:
    """One weak read and how stale it was when invoked (0: its value could have been current)."""

    operation: Operation
    staleness_ms: float


@dataclass(frozen=True, slots=True)
class StalenessStats:
    """How far behind weak reads were. Time fields are ``None`` when there were no weak reads.

    ``unexplained`` counts weak reads whose value nothing could have produced before the read
    completed: they are wrong rather than stale, and are left out of every other figure.
    ``per_read`` is in invoke order.
    """

    count: int
    stale_count: int
    stale_fraction: float
    mean_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    unexplained: int
    per_read: tuple[ReadStaleness, ...] = field(default=(), hash=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The figures without ``per_read``: plain JSON-able data."""
        return {
            "count": self.count,
            "stale_count": self.stale_count,
            "stale_fraction": self.stale_fraction,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "unexplained": self.unexplained,
        }


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank ``q``-quantile (``q`` in [0, 1]) of ``values``: always an observed value, None if empty.

    The one definition the checker, the simulator's summaries and the experiments report with.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def weak_read_staleness(operations: Iterable[Operation], *, initial: Any = None) -> StalenessStats:
    """Measure how stale each ``ok`` weak read was when it was invoked.

    A weak read returning ``v`` has staleness 0 if ``v`` could still be current when the read was
    invoked: some operation that could have produced ``v`` (invoked before the read completed) had
    not been definitely replaced, that is, no acknowledged mutation to another value was invoked
    after that producer took effect and completed before the read was invoked. Otherwise the
    staleness is ``read.invoke_ms`` minus the earliest completion among the mutations that
    definitely replaced ``v``; with several possible producers, the least stale is assumed.
    Acknowledged deletes replace values; acknowledged writes replace absence.
    """
    per_read: list[ReadStaleness] = []
    unexplained = 0
    for key_operations in _by_key(operations).values():
        weak_reads = [
            operation
            for operation in key_operations
            if operation.f == READ and operation.outcome == OK and operation.is_weak
        ]
        for judgement in _judge_reads(key_operations, weak_reads, initial) if weak_reads else ():
            if judgement.staleness_ms is None:
                unexplained += 1
            else:
                per_read.append(ReadStaleness(judgement.read, judgement.staleness_ms))
    per_read.sort(key=lambda item: (item.operation.invoke_ms, item.operation.index))
    values = sorted(item.staleness_ms for item in per_read)
    if not values:
        return StalenessStats(0, 0, 0.0, None, None, None, None, unexplained, ())
    stale = sum(1 for value in values if value > 0)
    return StalenessStats(
        count=len(values),
        stale_count=stale,
        stale_fraction=stale / len(values),
        mean_ms=sum(values) / len(values),
        p50_ms=percentile(values, 0.5),
        p99_ms=percentile(values, 0.99),
        max_ms=values[-1],
        unexplained=unexplained,
        per_read=tuple(per_read),
    )


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarise(
    operations: Iterable[Operation],
    *,
    initial: Any = None,
    budget: int = DEFAULT_SEARCH_BUDGET,
    max_examples: int = 10,
    executions: Executions | None = None,
) -> dict[str, Any]:
    """Everything the checkers say about a history, as plain JSON-able data for ``summary.json``.

    A history the register model cannot check (an ``f`` other than read/write/delete) gets the
    linearizability verdict ``"error"`` with the reason, instead of losing the rest of the summary.
    """
    operations = list(operations)
    by_outcome = Counter(operation.outcome for operation in operations)
    by_function: dict[str, Counter[str]] = defaultdict(Counter)
    for operation in operations:
        by_function[operation.f][operation.outcome] += 1
    try:
        linearizability = check_linearizable(operations, initial=initial, budget=budget).to_dict(
            max_keys_listed=max_examples
        )
    except HistoryError as error:
        linearizability = {"verdict": "error", "reason": str(error)}
    lost = lost_acknowledged_writes(operations, initial=initial, executions=executions)
    return {
        "operations": len(operations),
        "keys": len({operation.key for operation in operations}),
        "by_outcome": {outcome: by_outcome.get(outcome, 0) for outcome in (OK, FAIL, INFO)},
        "by_f": {name: dict(sorted(counts.items())) for name, counts in sorted(by_function.items())},
        "linearizability": linearizability,
        "lost_writes": {
            "count": len(lost),
            "replayed": sum(item.kind == REPLAYED for item in lost),
            "examples": [item.to_dict() for item in lost[:max_examples]],
        },
        "weak_read_staleness": weak_read_staleness(operations, initial=initial).to_dict(),
    }
