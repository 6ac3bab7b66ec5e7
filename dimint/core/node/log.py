"""A master's bounded replication log, and the wire form of what goes into it.

Theory of operation: the master numbers every entry ``(seq, epoch)``: ``seq`` grows by one per
entry, ``epoch`` is the shard epoch under which it was appended. The log keeps the most recent
``retention`` entries; ``base`` is the position just before the first one kept. A slave at a
position the log still holds gets the tail after it (``entries_after``); one whose position the log
no longer reaches, or that is not a position of this log at all (``epoch_at`` disagrees: its tail
diverged under a dead master), gets a snapshot instead. The log outlives one mastership: a master
re-confirmed under a new shard epoch keeps it, so its slaves catch up by tail, not by snapshot.

Entries are kept in wire form (lists all through, as msgpack delivers them), because the codec
refuses a message that would not arrive unchanged and the slaves must see exactly what is logged.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["ReplicationLog", "wire_form", "wire_ops"]

_SEQUENCES = (tuple, list)  # a tuple of types: ``tuple | list`` would build a union on every call
_SCALAR_VALUES = frozenset({bytes, int})


def wire_form(value: Any) -> Any:
    """Write ops and snapshot items with every tuple turned into a list.

    The store speaks tuples, but msgpack delivers lists, and the codec refuses a message that would
    not arrive unchanged; the store accepts either form, so the log keeps what the slaves will see.
    """
    if isinstance(value, _SEQUENCES):
        # Scalars are most items (a put is five of them): test them here rather than in a call each.
        return [wire_form(item) if isinstance(item, _SEQUENCES) else item for item in value]
    return value


def wire_ops(writes: list[Any] | tuple[Any, ...]) -> list[Any]:
    """``wire_form`` of a list of write ops, a string ``put`` (all scalars) copied straight."""
    return [list(op) if op[0] == "put" and type(op[3]) in _SCALAR_VALUES else wire_form(op) for op in writes]


def is_sequence(value: Any) -> bool:
    return isinstance(value, _SEQUENCES)


class ReplicationLog:
    """The retained entries ``(seq, epoch, writes)`` after ``base``, oldest first."""

    __slots__ = ("base", "entries", "retention")

    def __init__(self, base: tuple[int, int], retention: int) -> None:
        self.base = base  # (seq, epoch) of the entry just before the first retained one
        self.entries: deque[tuple[int, int, list[Any]]] = deque()
        self.retention = retention

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def last_seq(self) -> int:
        return self.entries[-1][0] if self.entries else self.base[0]

    def append(self, seq: int, epoch: int, writes: list[Any]) -> None:
        self.entries.append((seq, epoch, writes))
        while len(self.entries) > self.retention:
            old_seq, old_epoch, _ = self.entries.popleft()
            self.base = (old_seq, old_epoch)

    def entries_after(self, seq: int, limit: int) -> list[list[Any]] | None:
        """Entries after ``seq`` (at most ``limit``), or None when the log no longer reaches back."""
        base_seq = self.base[0]
        if seq < base_seq:
            return None
        start = seq - base_seq
        return [[s, e, w] for s, e, w in list(self.entries)[start : start + limit]]

    def epoch_at(self, seq: int) -> int | None:
        """The epoch of the entry at ``seq`` (of ``base`` itself), None when the log does not hold it."""
        if seq == self.base[0]:
            return self.base[1]
        index = seq - self.base[0] - 1
        if 0 <= index < len(self.entries):
            return self.entries[index][1]
        return None
