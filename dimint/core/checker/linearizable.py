"""Per-key linearizability: direct witnesses first, then a memoised Wing & Gong search.

Theory of operation
-------------------
Linearizability is local, so each key is decided alone. A direct witness (a read of a value
nothing could have produced in time, or that was definitely replaced) settles a key in O(n log n)
with a one-line reason; otherwise the search of the package docstring places operations one at a
time over (placed set, register value) configurations, within a budget that answers ``unknown``
rather than hang, and explains a failure by the deepest configuration it reached.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dimint.core.checker.sources import (
    _ABSENT,
    _CANDIDATES_SHOWN,
    _LAST_PLACED_SHOWN,
    _UNREAD,
    DEFAULT_SEARCH_BUDGET,
    DELETE,
    LINEARIZABLE,
    NOT_LINEARIZABLE,
    READ,
    UNKNOWN,
    _by_key,
    _freeze,
    _is_mutation,
    _is_strong_ok_read,
    _judge_reads,
    _non_failed_mutations,
    _ReadJudgement,
    _require_register_functions,
    _result_of,
    _Source,
)
from dimint.core.errors import InvariantViolation
from dimint.core.history import FAIL, INFO, OK, HistoryError, Operation


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
