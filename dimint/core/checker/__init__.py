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

from dimint.core.checker.linearizable import KeyVerdict, LinearizabilityResult, check_linearizable
from dimint.core.checker.lost import (
    LOST,
    REPLAYED,
    Execution,
    Executions,
    LostWrite,
    lost_acknowledged_writes,
    request_identity,
)
from dimint.core.checker.sources import (
    DEFAULT_SEARCH_BUDGET,
    DELETE,
    LINEARIZABLE,
    NOT_LINEARIZABLE,
    READ,
    REGISTER_FUNCTIONS,
    UNKNOWN,
    WRITE,
)
from dimint.core.checker.staleness import ReadStaleness, StalenessStats, percentile, weak_read_staleness
from dimint.core.checker.summary import summarise

__all__ = [
    "DEFAULT_SEARCH_BUDGET",
    "DELETE",
    "LINEARIZABLE",
    "LOST",
    "NOT_LINEARIZABLE",
    "READ",
    "REGISTER_FUNCTIONS",
    "REPLAYED",
    "UNKNOWN",
    "WRITE",
    "Execution",
    "Executions",
    "KeyVerdict",
    "LinearizabilityResult",
    "LostWrite",
    "ReadStaleness",
    "StalenessStats",
    "check_linearizable",
    "lost_acknowledged_writes",
    "percentile",
    "request_identity",
    "summarise",
    "weak_read_staleness",
]
