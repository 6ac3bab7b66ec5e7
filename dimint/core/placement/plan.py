"""Which hashes change owner between two placements, as moves that migration can execute.

Theory of operation
-------------------
``plan(old, new)`` selects every hash whose owner differs by exactly one ``RangeMove`` and every other
hash by none. Between two rings the moves carry exact hash ranges (streamable without a scan);
otherwise a move is the predicate "old owner is source and new owner is target", restricted to the
(source, target) pairs that can occur at all.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from dimint.core.errors import ConfigError
from dimint.core.hashing import HASH_SPACE, HashRange
from dimint.core.placement.base import _TOMBSTONE, Placement, _as_hash_array
from dimint.core.placement.bounded import BoundedPlacement
from dimint.core.placement.jump import JumpPlacement
from dimint.core.placement.kinds import RendezvousPlacement, RingPlacement


@dataclass(frozen=True)
class RangeMove:
    """The hashes that move from ``source`` to ``target``: exact ranges, or (``None``) a predicate."""

    source: int
    target: int
    ranges: tuple[HashRange, ...] | None
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _starts_array: np.ndarray | None = field(init=False, repr=False, compare=False)
    _lasts_array: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ranges is None:
            object.__setattr__(self, "_starts", ())
            object.__setattr__(self, "_starts_array", None)
            object.__setattr__(self, "_lasts_array", None)
            return
        ranges = tuple(sorted(self.ranges))
        for previous, current in pairwise(ranges):
            if previous.end > current.start:
                raise ConfigError(f"move ranges overlap: {previous} and {current}")
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "_starts", tuple(r.start for r in ranges))
        object.__setattr__(self, "_starts_array", np.array([r.start for r in ranges], dtype=np.uint64))
        # Inclusive last hashes: an end of 2**64 does not fit in uint64, its last hash does.
        object.__setattr__(self, "_lasts_array", np.array([r.end - 1 for r in ranges], dtype=np.uint64))

    def selects_hash(self, h: int, old: Placement, new: Placement) -> bool:
        """Whether the key with hash ``h`` is moved by this move between ``old`` and ``new``."""
        if self.ranges is None:
            return old.owner_of_hash(h) == self.source and new.owner_of_hash(h) == self.target
        index = bisect_right(self._starts, h) - 1
        return index >= 0 and h < self.ranges[index].end

    def selects_hashes(self, hashes: np.ndarray, old: Placement, new: Placement) -> np.ndarray:
        """``selects_hash`` for a batch, as a boolean array (migration scans a shard's keys with it)."""
        hashes = _as_hash_array(hashes)
        if self.ranges is None:
            from_source = old.owners_of_hashes(hashes) == self.source
            return from_source & (new.owners_of_hashes(hashes) == self.target)
        assert self._starts_array is not None and self._lasts_array is not None
        index = np.searchsorted(self._starts_array, hashes, side="right") - 1
        clipped = np.maximum(index, 0)
        return (index >= 0) & (hashes <= self._lasts_array[clipped])


def plan(old: Placement, new: Placement) -> list[RangeMove]:
    """The moves that turn ``old`` ownership into ``new`` ownership, sorted by (source, target).

    Ring to ring: exact ranges, found by evaluating both placements at every hash where either
    could change owner. Otherwise predicate moves, one per (source, target) pair that can occur,
    narrowed by what each kind guarantees (see ``_possible_pairs``); a pair that turns out to hold
    no key costs one empty scan, a missing pair would lose keys, so the narrowing only ever uses
    proven facts.
    """
    if old == new:
        return []
    if isinstance(old, RingPlacement) and isinstance(new, RingPlacement):
        return _range_plan(old, new)
    pairs = _possible_pairs(old, new)
    return [RangeMove(source, target, None) for source, target in sorted(pairs)]


def _range_transitions(old: RingPlacement, new: RingPlacement) -> dict[tuple[int, int], list[HashRange]]:
    starts = sorted(set(old._range_starts) | set(new._range_starts))
    starts_array = np.array(starts, dtype=np.uint64)
    old_owners = old.owners_of_hashes(starts_array).tolist()
    new_owners = new.owners_of_hashes(starts_array).tolist()
    moves: dict[tuple[int, int], list[HashRange]] = {}
    for index, start in enumerate(starts):
        source, target = old_owners[index], new_owners[index]
        if source == target:
            continue
        end = starts[index + 1] if index + 1 < len(starts) else HASH_SPACE
        ranges = moves.setdefault((source, target), [])
        if ranges and ranges[-1].end == start:
            ranges[-1] = HashRange(ranges[-1].start, end)
        else:
            ranges.append(HashRange(start, end))
    return moves


def _range_plan(old: RingPlacement, new: RingPlacement) -> list[RangeMove]:
    moves = _range_transitions(old, new)
    return [RangeMove(source, target, tuple(moves[source, target])) for source, target in sorted(moves)]


def _possible_pairs(old: Placement, new: Placement) -> set[tuple[int, int]]:
    """Every (source, target) pair that some hash can take from ``old`` to ``new`` (a superset)."""
    old_ids, new_ids = set(old.shard_ids), set(new.shard_ids)
    if isinstance(old, RendezvousPlacement) and isinstance(new, RendezvousPlacement):
        # Scores do not depend on the shard set: if a and b are both in both sets, the same one wins.
        return {(a, b) for a in old_ids for b in new_ids if a != b and (a not in new_ids or b not in old_ids)}
    if isinstance(old, JumpPlacement) and isinstance(new, JumpPlacement):
        pairs = _jump_pairs(old, new)
        if pairs is not None:
            return pairs
    old_ring = _ring_view(old)
    new_ring = _ring_view(new)
    if old_ring is not None and new_ring is not None:
        # Off the given keys both follow their rings, whose transitions are exact; on the given keys
        # (finitely many) evaluate both placements.
        pairs = set(_range_transitions(old_ring, new_ring))
        given = [p.key_hashes for p in (old, new) if isinstance(p, BoundedPlacement)]
        if given:
            hashes = np.unique(np.concatenate(given))
            sources = old.owners_of_hashes(hashes).tolist()
            targets = new.owners_of_hashes(hashes).tolist()
            pairs.update((a, b) for a, b in zip(sources, targets, strict=True) if a != b)
        return pairs
    return {(a, b) for a in old_ids for b in new_ids if a != b}


def _ring_view(placement: Placement) -> RingPlacement | None:
    if isinstance(placement, RingPlacement):
        return placement
    if isinstance(placement, BoundedPlacement):
        return placement.ring
    return None


def _jump_pairs(old: JumpPlacement, new: JumpPlacement) -> set[tuple[int, int]] | None:
    """Pairs for two slot tables, or ``None`` when nothing better than "all pairs" is proven.

    Same table size: every key visits the same candidate slots in both, so if its owner changes,
    the slot it stops at in one of them changed; the move's source or target sits in a changed slot
    (the rendezvous fallback agrees: its live set changes only through changed slots).
    Pure append to a table without tombstones: jump's own property, a key stays or goes to a new slot.
    """
    old_ids, new_ids = set(old.shard_ids), set(new.shard_ids)
    a, b = old.slots, new.slots
    if len(a) == len(b):
        changed = [i for i in range(len(a)) if a[i] != b[i]]
        sources = {a[i] for i in changed if a[i] != _TOMBSTONE}
        targets = {b[i] for i in changed if b[i] != _TOMBSTONE}
        return {(s, t) for s in old_ids for t in new_ids if s != t and (s in sources or t in targets)}
    if len(b) > len(a) and _TOMBSTONE not in a and b[: len(a)] == a and _TOMBSTONE not in b[len(a) :]:
        appended = set(b[len(a) :])
        return {(s, t) for s in old_ids for t in appended if s != t}
    return None
