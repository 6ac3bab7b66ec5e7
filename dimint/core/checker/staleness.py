"""How stale weak reads were: the age of the value a slave served, and one percentile rule.

Theory of operation
-------------------
A weak read may be served by a lagging slave, so it is not held to linearizability; instead its
staleness is the time since the value it returned was first replaced before the read began (zero
if it was current). ``percentile`` is the one rank rule every report in the project uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dimint.core.checker.sources import READ, _by_key, _judge_reads
from dimint.core.history import OK, Operation


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
