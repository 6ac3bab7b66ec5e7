"""Everything the checkers say about a history, as the JSON a run writes to ``summary.json``.

Theory of operation
-------------------
One function calls each checker once and turns their results into plain data, so the simulator,
the real runtime and the experiments report the same fields; a history the register model cannot
check still gets its other figures, with the reason in place of a verdict.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from dimint.core.checker.linearizable import check_linearizable
from dimint.core.checker.lost import REPLAYED, Executions, lost_acknowledged_writes
from dimint.core.checker.sources import DEFAULT_SEARCH_BUDGET
from dimint.core.checker.staleness import weak_read_staleness
from dimint.core.history import FAIL, INFO, OK, HistoryError, Operation


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
