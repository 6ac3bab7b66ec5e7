"""Consistent hashing with bounded loads over a known key set.

Theory of operation
-------------------
Keys are assigned clockwise on a ring to the first shard with room under ``ceil((1+eps) K/n)``;
``BoundedPlacement`` documents the assignment rule, the incremental updates and the proof of the
bound. Keys outside the given set follow the plain ring it is built on.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from dimint.core.errors import ConfigError, InvariantViolation
from dimint.core.hashing import HashRange, Key, key_hash
from dimint.core.placement.base import _as_hash_array, _batch_hashes, _check_shard_id, _frozen, _WireValue
from dimint.core.placement.kinds import RingPlacement


def _capacity(epsilon: float, key_count: int, shard_count: int) -> int:
    """``ceil((1 + eps) * K / n)`` in exact rational arithmetic on eps as written (0.1 is 1/10).

    Float arithmetic would make the bound depend on rounding (``1.1 * 10`` is ``11.000000000000002``,
    whose ceiling is 12); a hard invariant deserves an exact definition.
    """
    return math.ceil((1 + Fraction(repr(epsilon))) * key_count / shard_count)


class BoundedPlacement(_WireValue):
    """Consistent hashing with bounded loads over a ring, for a given set of keys.

    Units: a placement sees only hashes, so two keys with the same 64-bit hash are one unit (they
    cannot be placed apart); ``K`` counts distinct hashes of the given keys. ``capacity`` is
    ``ceil((1+eps) * K/n)``.

    Assignment (``assign``, construction): keys in ascending hash order each go to the first shard
    clockwise from their ring position whose load is below ``capacity``.

    ``without_shard(s)``: the ring loses ``s``'s points and the capacity becomes ``C' >= C``; only
    ``s``'s keys are reassigned, in hash order, each clockwise on the new ring to the first shard
    below ``C'``.

    ``with_shard(t)``: the ring gains ``t``'s points and the capacity becomes ``C' <= C``. First
    every shard above ``C'`` sheds its excess to ``t``, preferring keys whose new ring owner is
    ``t``, then the highest hashes. Then ``t``'s natural ring keys move to it while it is below
    ``C'``. Only keys that go to ``t`` move. If rounding ever makes the total excess exceed ``C'``,
    the rest spills clockwise to shards below ``C'`` (keys then move between old shards too); the
    bound wins over minimal movement.

    Proof of the bound. Let ``C`` be the capacity of the placement being built (``n`` its shards).
    (1) A key is only ever given to a shard whose load is below ``C``, so no load grows past ``C``.
    (2) Loads carried over never start above ``C``: after a removal ``C`` is at least the old
    capacity, which bounded every old load; after an addition, shedding brings each old shard down
    to exactly ``C`` before anything else. (3) A shard below ``C`` always exists when a key is
    placed: the key itself is uncounted, so at most ``K - 1`` keys are counted, while ``n`` shards
    all at ``C`` would hold ``n*C >= (1+eps)*K > K - 1``. The clockwise walk visits every shard's
    points, so it finds one. ``_from_assignment`` checks the bound on every result anyway and
    raises ``InvariantViolation`` if this argument were ever wrong.

    Storage: the sorted given hashes (8 bytes per key), the (hash, shard) pairs that differ from the
    ring owner, and per-shard loads; the full assignment is rebuilt on demand by a ring lookup.
    """

    kind = "bounded"
    __slots__ = (
        "_capacity",
        "_key_hashes",
        "_loads",
        "_override_hashes",
        "_override_shards",
        "_overrides",
        "epsilon",
        "ring",
    )

    ring: RingPlacement
    epsilon: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("build a BoundedPlacement with make_placement('bounded', ...) or placement_from_dict")

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def _from_assignment(
        cls, ring: RingPlacement, epsilon: float, key_hashes_sorted: np.ndarray, assigned: np.ndarray
    ) -> BoundedPlacement:
        """Freeze an explicit assignment, checking it against the bound."""
        self = object.__new__(cls)
        shard_ids = ring.shard_ids
        ids_array = np.array(shard_ids, dtype=np.int64)
        positions = np.searchsorted(ids_array, assigned)
        if assigned.size and (
            positions.max() >= ids_array.shape[0] or not np.array_equal(ids_array[positions], assigned)
        ):
            raise InvariantViolation("bounded assignment names a shard that is not placed")
        loads = (
            np.bincount(positions, minlength=len(shard_ids)).tolist()
            if assigned.size
            else [0] * len(shard_ids)
        )
        capacity = _capacity(epsilon, int(key_hashes_sorted.shape[0]), len(shard_ids))
        if max(loads) > capacity:
            raise InvariantViolation(f"bounded assignment exceeds capacity {capacity}: loads {loads}")
        differs = assigned != ring.owners_of_hashes(key_hashes_sorted)
        override_hashes = key_hashes_sorted[differs]
        override_shards = assigned[differs]
        setter = object.__setattr__
        setter(self, "ring", ring)
        setter(self, "epsilon", epsilon)
        setter(self, "_capacity", capacity)
        setter(self, "_key_hashes", _frozen(key_hashes_sorted))
        setter(self, "_override_hashes", _frozen(override_hashes))
        setter(self, "_override_shards", _frozen(override_shards))
        setter(self, "_overrides", dict(zip(override_hashes.tolist(), override_shards.tolist(), strict=True)))
        setter(self, "_loads", tuple(loads))
        return self

    @classmethod
    def _build(cls, ring: RingPlacement, epsilon: float, key_hashes_sorted: np.ndarray) -> BoundedPlacement:
        shard_ids = ring.shard_ids
        capacity = _capacity(epsilon, int(key_hashes_sorted.shape[0]), len(shard_ids))
        natural = ring.owners_of_hashes(key_hashes_sorted)
        index_of = {s: i for i, s in enumerate(shard_ids)}
        natural_counts = np.bincount(
            np.searchsorted(np.array(shard_ids, dtype=np.int64), natural), minlength=len(shard_ids)
        )
        if key_hashes_sorted.size == 0 or int(natural_counts.max()) <= capacity:
            return cls._from_assignment(ring, epsilon, key_hashes_sorted, natural)
        loads = [0] * len(shard_ids)
        assigned = natural.copy()
        for position, (h, shard) in enumerate(zip(key_hashes_sorted.tolist(), natural.tolist(), strict=True)):
            index = index_of[shard]
            if loads[index] < capacity:
                loads[index] += 1
                continue
            chosen = _walk_clockwise(ring, h, loads, capacity, index_of)
            loads[index_of[chosen]] += 1
            assigned[position] = chosen
        return cls._from_assignment(ring, epsilon, key_hashes_sorted, assigned)

    def assign(self, keys: Iterable[Key]) -> BoundedPlacement:
        """A fresh assignment of a new key set on the same shards, ring and epsilon."""
        return BoundedPlacement._build(self.ring, self.epsilon, _unique_sorted_hashes(keys))

    # -- queries -----------------------------------------------------------------------------

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return self.ring.shard_ids

    @property
    def vnodes(self) -> int:
        return self.ring.vnodes

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def key_count(self) -> int:
        """``K``: the number of distinct key hashes the bound is about."""
        return int(self._key_hashes.shape[0])

    @property
    def loads(self) -> dict[int, int]:
        return dict(zip(self.ring.shard_ids, self._loads, strict=True))

    @property
    def key_hashes(self) -> np.ndarray:
        """The sorted distinct hashes of the given keys (read-only)."""
        return self._key_hashes

    def owner(self, key: Key) -> int:
        return self.owner_of_hash(key_hash(key))

    def owner_of_hash(self, h: int) -> int:
        shard = self._overrides.get(h)
        if shard is None:
            ring = self.ring
            return ring._point_owners[bisect_left(ring._points, h)]
        return shard

    def owners(self, keys: Sequence[Key]) -> list[int]:
        return self.owners_of_hashes(_batch_hashes(keys)).tolist()

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        hashes = _as_hash_array(hashes)
        result = self.ring.owners_of_hashes(hashes)
        if self._override_hashes.size and hashes.size:
            positions = np.searchsorted(self._override_hashes, hashes)
            clipped = np.minimum(positions, self._override_hashes.shape[0] - 1)
            hit = self._override_hashes[clipped] == hashes
            result[hit] = self._override_shards[clipped[hit]]
        return result

    def ranges_of(self, shard_id: int) -> tuple[HashRange, ...] | None:
        return None

    # -- changes -----------------------------------------------------------------------------

    def _assignment(self) -> np.ndarray:
        assigned = self.ring.owners_of_hashes(self._key_hashes)
        if self._override_hashes.size:
            assigned[np.searchsorted(self._key_hashes, self._override_hashes)] = self._override_shards
        return assigned

    def without_shard(self, shard_id: int) -> BoundedPlacement:
        ring = self.ring.without_shard(shard_id)
        hashes = self._key_hashes
        capacity = _capacity(self.epsilon, hashes.shape[0], len(ring.shard_ids))
        index_of = {s: i for i, s in enumerate(ring.shard_ids)}
        old_loads = self.loads
        loads = [old_loads[s] for s in ring.shard_ids]
        assigned = self._assignment()
        for position in np.flatnonzero(assigned == shard_id).tolist():
            chosen = _walk_clockwise(ring, int(hashes[position]), loads, capacity, index_of)
            loads[index_of[chosen]] += 1
            assigned[position] = chosen
        return BoundedPlacement._from_assignment(ring, self.epsilon, hashes, assigned)

    def with_shard(self, shard_id: int) -> BoundedPlacement:
        ring = self.ring.with_shard(shard_id)
        new_id = _check_shard_id(shard_id)
        hashes = self._key_hashes
        capacity = _capacity(self.epsilon, hashes.shape[0], len(ring.shard_ids))
        index_of = {s: i for i, s in enumerate(ring.shard_ids)}
        old_loads = self.loads
        loads = [old_loads.get(s, 0) for s in ring.shard_ids]
        new_index = index_of[new_id]
        assigned = self._assignment()
        natural = ring.owners_of_hashes(hashes)

        for shard in self.ring.shard_ids:
            excess = loads[index_of[shard]] - capacity
            if excess <= 0:
                continue
            mine = np.flatnonzero(assigned == shard)
            # Keys whose new ring home is the new shard first (they stop being exceptions), then the
            # highest hashes: lexsort's last key is primary, and reversing an ascending sort gives
            # descending hashes within each class.
            order = np.lexsort((hashes[mine], natural[mine] == new_id))[::-1]
            for position in mine[order[:excess]].tolist():
                loads[index_of[shard]] -= 1  # uncounted while placed, as the proof requires
                if loads[new_index] < capacity:
                    target = new_id
                else:  # the rounding corner case: keep the bound, give up minimal movement
                    target = _walk_clockwise(ring, int(hashes[position]), loads, capacity, index_of)
                loads[index_of[target]] += 1
                assigned[position] = target
        for position in np.flatnonzero((natural == new_id) & (assigned != new_id)).tolist():
            if loads[new_index] >= capacity:
                break
            loads[index_of[int(assigned[position])]] -= 1
            loads[new_index] += 1
            assigned[position] = new_id
        return BoundedPlacement._from_assignment(ring, self.epsilon, hashes, assigned)

    # -- values ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "shard_ids": list(self.ring.shard_ids),
            "vnodes": self.ring.vnodes,
            "epsilon": self.epsilon,
            "key_hashes": self._key_hashes.astype("<u8").tobytes(),
            "override_hashes": self._override_hashes.astype("<u8").tobytes(),
            "override_shards": self._override_shards.tolist(),
        }

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"BoundedPlacement is immutable; cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"BoundedPlacement is immutable; cannot delete {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundedPlacement):
            return NotImplemented
        return (
            self.ring == other.ring
            and self.epsilon == other.epsilon
            and np.array_equal(self._key_hashes, other._key_hashes)
            and np.array_equal(self._override_hashes, other._override_hashes)
            and np.array_equal(self._override_shards, other._override_shards)
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.ring, self.epsilon, self.key_count, self._loads))

    def __repr__(self) -> str:
        return (
            f"BoundedPlacement(shard_ids={self.ring.shard_ids}, vnodes={self.ring.vnodes}, "
            f"epsilon={self.epsilon}, keys={self.key_count}, capacity={self._capacity}, "
            f"overrides={self._override_hashes.shape[0]})"
        )


def _walk_clockwise(
    ring: RingPlacement, h: int, loads: list[int], capacity: int, index_of: Mapping[int, int]
) -> int:
    """The first shard clockwise from ``h`` on ``ring`` whose load is below ``capacity``."""
    points_owners = ring._point_owners
    point_count = len(ring._points)
    start = bisect_left(ring._points, h)
    for step in range(point_count):
        shard = points_owners[(start + step) % point_count]
        if loads[index_of[shard]] < capacity:
            return shard
    raise InvariantViolation(
        f"no shard below capacity {capacity} for hash {h}: loads {loads}; the bounded-load proof is broken"
    )


def _unique_sorted_hashes(keys: Iterable[Key]) -> np.ndarray:
    if isinstance(keys, str | bytes):
        raise ConfigError("bounded keys must be a collection of keys, not a single str or bytes")
    try:
        return np.unique(_batch_hashes(list(keys)))
    except (TypeError, UnicodeEncodeError) as exc:
        raise ConfigError(f"bounded keys must be str or bytes: {exc}") from exc
