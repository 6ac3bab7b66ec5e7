"""Placement: which shard owns a key, and which keys move when the shard set changes.

Theory of operation
-------------------
Every placement maps a key to a shard through the key's 64-bit hash (``hashing.key_hash``, xxh3_64
of the UTF-8 bytes), so an owner is a pure function of (placement, key): the same in every process,
on every machine, in simulation and for real. Placements are immutable values; a membership change
produces a new placement (``with_shard`` / ``without_shard``) and ``plan(old, new)`` describes the
keys that change owner as a list of ``RangeMove``s that migration executes.

The five kinds trade balance against movement:

* ``modulo``: ``shard_ids[h % n]``. Perfectly balanced and trivial, but changing ``n`` moves about
  ``n/(n+1)`` of all keys. It is the static-sharding baseline that the others are measured against.
* ``ring``: consistent hashing. Each shard puts ``vnodes`` points on the hash circle at
  ``label_hash(f"{shard_id}#{i}")``; a key belongs to the first point at or after its hash,
  wrapping. Adding or removing a shard only adds or removes that shard's points, so only the arcs
  in front of them change owner: keys move only to (add) or from (remove) the changed shard. Each
  shard owns a set of arcs, so its keys are exact hash ranges, which migration can stream without
  scanning. Load imbalance shrinks like ``1/sqrt(vnodes)``.
* ``rendezvous``: highest random weight. Each shard scores a key with a 64-bit mix of
  ``h ^ seed(shard)``; the highest score wins, ties to the lowest shard id. A key changes owner only
  if the winner leaves or a new shard beats it, so again only keys of the changed shard move, and
  balance is as good as the hash. Cost is ``O(n)`` per key (vectorised for batches).
* ``jump``: Lamping and Veach's jump consistent hash over a table of slots. Jump hashing alone can
  only grow or shrink at the end; to remove an arbitrary shard its slot becomes a tombstone, and a
  key that lands on a tombstone jumps again with a derived hash (``h`` mixed with the attempt
  number) until it lands on a live slot. Because the table size never changes on removal, every
  key's sequence of candidate slots is unchanged, so only the keys whose first live candidate was
  the removed slot move. Adding fills the lowest tombstone (again the table size is unchanged, so
  only keys that now stop earlier, at the refilled slot, move, all of them to the new shard); with
  no tombstone it appends a slot, where jump's own property applies (a key either stays or moves to
  the new slot). Slots are never trimmed. After ``_MAX_JUMP_ATTEMPTS`` tombstones in a row a key
  falls back to rendezvous among the live shards, which keeps lookups bounded in time and keeps the
  movement property (rendezvous has it too).
* ``bounded``: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam) over a
  ring, for a known set of ``K`` keys: no shard holds more than ``capacity = ceil((1+eps) * K/n)``
  of them. See ``BoundedPlacement`` for the assignment rule, the incremental updates and the proof of
  the bound. Keys outside the given set follow the plain ring. Adding a shard moves only keys to it,
  except in a rounding corner case (tiny ``K/n`` or ``eps``) where no such assignment respects the
  bound; the bound is the hard invariant, so keys then spill clockwise between old shards too.

A ``RangeMove`` selects the hashes that go from ``source`` to ``target``. For range-based kinds
(``ring`` on both sides) it carries the exact hash ranges; otherwise ``ranges`` is ``None`` and the
move is the predicate "old owner is source and new owner is target". ``plan`` guarantees that every
hash whose owner differs is selected by exactly one move and every other hash by none.

Invariants: shard ids are non-negative ``int``s that fit in a signed 64-bit integer; ``shard_ids`` is
sorted and non-empty; every owner a placement names is in its ``shard_ids``; the batched
lookups return exactly what the single lookups return.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xxhash

from dimint.core.errors import ConfigError, InvariantViolation
from dimint.core.hashing import HASH_SPACE, MAX_HASH, HashRange, Key, key_hash, key_hashes, label_hash

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_VNODES",
    "KINDS",
    "MAX_VNODES",
    "BoundedPlacement",
    "JumpPlacement",
    "ModuloPlacement",
    "Placement",
    "RangeMove",
    "RendezvousPlacement",
    "RingPlacement",
    "make_placement",
    "placement_from_dict",
    "plan",
]

# Chosen from a sweep (10 shards with random ids, 20 seeds; load = exact share of the hash space;
# times are the best of several runs on the 2-core CI machine):
#   vnodes                 40     80    160    256    512   1024
#   load relative std   14.7%  10.1%   7.8%   5.8%   3.7%   2.9%   (theory ~1/sqrt(vnodes))
#   hottest / mean load  1.26   1.18   1.13   1.10   1.07   1.05
#   single lookup       341ns  369ns  394ns  416ns  447ns  476ns   (batched: ~105ns at every size)
#   build, 100 shards   2.9ms  5.9ms   12ms   21ms   37ms   74ms
#   memory, 100 shards  1.0MB  1.9MB  3.8MB  6.5MB   11MB   20MB   (points, lookup table, ranges)
# 256 is the knee: the hottest shard carries ~10% more than its share (13% at 160) while lookups stay
# flat and a 100-shard ring still builds in ~20 ms, which matters because the overlord and every
# simulated client rebuild the placement on each membership change. Past 256, each further halving
# of the imbalance costs four times the points.
DEFAULT_VNODES = 256
#: Guard against configuration typos that would allocate gigabytes (a ring holds n * vnodes points).
MAX_VNODES = 1 << 16
DEFAULT_EPSILON = 0.25
KINDS = ("modulo", "ring", "rendezvous", "jump", "bounded")

_MASK64 = (1 << 64) - 1
_MAX_SHARD_ID = (1 << 63) - 1  # owners travel in int64 arrays
_TOMBSTONE = -1  # a jump slot whose shard was removed; shard ids are non-negative so it is unambiguous
_MAX_JUMP_ATTEMPTS = 16
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment: consecutive attempts land far apart
_MIX_MULTIPLIER_1 = 0xBF58476D1CE4E5B9
_MIX_MULTIPLIER_2 = 0x94D049BB133111EB
_JUMP_MULTIPLIER = 2862933555777941757
_RENDEZVOUS_BLOCK_CELLS = 1 << 20  # keys x shards scored at once: bounds the temporary to ~8 MB

# The function ``hashing.key_hash`` applies; used directly so the batched path can map C functions
# over the keys (~90 ns/key instead of ~150 ns through a Python-level generator). The tests check
# that both paths agree.
_xxh3_64 = xxhash.xxh3_64_intdigest


# --------------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Placement(Protocol):
    """What every placement offers. Implementations are frozen and safe to hash and compare."""

    kind: str

    @property
    def shard_ids(self) -> tuple[int, ...]: ...

    def owner(self, key: Key) -> int: ...

    def owner_of_hash(self, h: int) -> int: ...

    def owners(self, keys: Sequence[Key]) -> list[int]: ...

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray: ...

    def with_shard(self, shard_id: int) -> Placement: ...

    def without_shard(self, shard_id: int) -> Placement: ...

    def ranges_of(self, shard_id: int) -> tuple[HashRange, ...] | None: ...

    def to_dict(self) -> dict: ...


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


class _WireValue:
    """Copy and pickle through ``to_dict``: the one validated form, and cheap to rebuild caches from."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[dict]]:
        return (placement_from_dict, (self.to_dict(),))  # type: ignore[attr-defined]


def _batch_hashes(keys: Sequence[Key]) -> np.ndarray:
    """Hashes of a batch of keys; the all-``str`` case (the common one) takes the fast C path."""
    if not isinstance(keys, list | tuple):
        keys = list(keys)
    try:
        return np.fromiter(map(_xxh3_64, map(str.encode, keys)), dtype=np.uint64, count=len(keys))
    except TypeError:  # some key is bytes (or not a key at all: key_hashes reports that clearly)
        return key_hashes(keys)


def _as_hash_array(hashes: np.ndarray | Sequence[int]) -> np.ndarray:
    return np.asarray(hashes, dtype=np.uint64)


def _frozen(array: np.ndarray) -> np.ndarray:
    """Placements are values: their arrays must not be writable by whoever reads them."""
    array.flags.writeable = False
    return array


def _check_shard_id(shard_id: Any, what: str = "shard id") -> int:
    if isinstance(shard_id, bool):
        raise ConfigError(f"{what} must be an int, not bool ({shard_id!r})")
    try:
        value = operator.index(shard_id)
    except TypeError:
        raise ConfigError(f"{what} must be an int, not {type(shard_id).__name__} ({shard_id!r})") from None
    if value < 0:
        raise ConfigError(f"{what} {value} is negative; shard ids are non-negative ints")
    if value > _MAX_SHARD_ID:
        raise ConfigError(f"{what} {value} does not fit in a signed 64-bit integer")
    return value


def _check_shard_ids(shard_ids: Iterable[Any]) -> tuple[int, ...]:
    """Validate a shard set and return it sorted: placements must not depend on listing order."""
    if isinstance(shard_ids, str | bytes | Mapping) or not isinstance(shard_ids, Iterable):
        raise ConfigError(f"shard_ids must be an iterable of ints, not {type(shard_ids).__name__}")
    ids = [_check_shard_id(s) for s in shard_ids]
    if not ids:
        raise ConfigError("a placement needs at least one shard; shard_ids is empty")
    ids.sort()
    for previous, current in pairwise(ids):
        if previous == current:
            raise ConfigError(f"duplicate shard id {current} in shard_ids")
    return tuple(ids)


def _check_vnodes(vnodes: Any) -> int:
    if isinstance(vnodes, bool) or not isinstance(vnodes, int):
        raise ConfigError(f"vnodes must be an int, not {type(vnodes).__name__} ({vnodes!r})")
    if vnodes < 1:
        raise ConfigError(f"vnodes must be >= 1, got {vnodes}")
    if vnodes > MAX_VNODES:
        raise ConfigError(f"vnodes must be <= {MAX_VNODES}, got {vnodes}")
    return vnodes


def _check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise ConfigError(f"epsilon must be a number, not {type(epsilon).__name__} ({epsilon!r})")
    value = float(epsilon)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    return value


def _adding(shard_ids: tuple[int, ...], shard_id: Any) -> tuple[int, ...]:
    new_id = _check_shard_id(shard_id)
    if new_id in shard_ids:
        raise ConfigError(f"cannot add shard {new_id}: it is already placed")
    return tuple(sorted((*shard_ids, new_id)))


def _removing(shard_ids: tuple[int, ...], shard_id: Any) -> tuple[int, ...]:
    old_id = _check_shard_id(shard_id)
    if old_id not in shard_ids:
        raise ConfigError(f"cannot remove shard {old_id}: it is not placed (shards: {list(shard_ids)})")
    if len(shard_ids) == 1:
        raise ConfigError(f"cannot remove shard {old_id}: it is the last shard")
    return tuple(s for s in shard_ids if s != old_id)


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64 bits whose every output bit depends on every input."""
    x = ((x ^ (x >> 30)) * _MIX_MULTIPLIER_1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX_MULTIPLIER_2) & _MASK64
    return x ^ (x >> 31)


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """``_mix64`` element-wise, in place on ``x`` (a fresh uint64 array), with uint64 wraparound."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(_MIX_MULTIPLIER_1)
        x ^= x >> np.uint64(27)
        x *= np.uint64(_MIX_MULTIPLIER_2)
        x ^= x >> np.uint64(31)
    return x


def _rendezvous_seed(shard_id: int) -> int:
    return label_hash(f"rendezvous#{shard_id}")


def _rendezvous_owner(h: int, seeded_ids: Sequence[tuple[int, int]]) -> int:
    """Highest score wins; ``seeded_ids`` is in ascending shard order so ``>`` gives ties to the lowest.

    ``_mix64`` is inlined: this loop runs once per shard per lookup and a call costs a third of it.
    """
    best_score = -1
    best_id = -1
    mask = _MASK64
    for seed, shard_id in seeded_ids:
        x = h ^ seed
        x = ((x ^ (x >> 30)) * _MIX_MULTIPLIER_1) & mask
        x = ((x ^ (x >> 27)) * _MIX_MULTIPLIER_2) & mask
        x ^= x >> 31
        if x > best_score:
            best_score = x
            best_id = shard_id
    return best_id


def _rendezvous_owners(hashes: np.ndarray, seeds: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Vectorised ``_rendezvous_owner``: ``argmax`` returns the first maximum, i.e. the lowest id."""
    result = np.empty(hashes.shape[0], dtype=np.int64)
    block = max(1, _RENDEZVOUS_BLOCK_CELLS // max(1, seeds.shape[0]))
    for start in range(0, hashes.shape[0], block):
        chunk = hashes[start : start + block]
        scores = _mix64_array(chunk[:, None] ^ seeds[None, :])
        result[start : start + chunk.shape[0]] = ids[np.argmax(scores, axis=1)]
    return result


# --------------------------------------------------------------------------------------------
# modulo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuloPlacement(_WireValue):
    """``shard_ids[h % n]``: the static-sharding baseline; nearly every key moves when ``n`` changes."""

    kind = "modulo"
    shard_ids: tuple[int, ...]
    _ids_array: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shard_ids", _check_shard_ids(self.shard_ids))
        object.__setattr__(self, "_ids_array", _frozen(np.array(self.shard_ids, dtype=np.int64)))

    def owner(self, key: Key) -> int:
        ids = self.shard_ids
        return ids[key_hash(key) % len(ids)]

    def owner_of_hash(self, h: int) -> int:
        ids = self.shard_ids
        return ids[h % len(ids)]

    def owners(self, keys: Sequence[Key]) -> list[int]:
        return self.owners_of_hashes(_batch_hashes(keys)).tolist()

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        positions = _as_hash_array(hashes) % np.uint64(len(self.shard_ids))
        return self._ids_array[positions.astype(np.intp)]

    def with_shard(self, shard_id: int) -> ModuloPlacement:
        return ModuloPlacement(_adding(self.shard_ids, shard_id))

    def without_shard(self, shard_id: int) -> ModuloPlacement:
        return ModuloPlacement(_removing(self.shard_ids, shard_id))

    def ranges_of(self, shard_id: int) -> tuple[HashRange, ...] | None:
        return None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shard_ids": list(self.shard_ids)}


# --------------------------------------------------------------------------------------------
# ring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingPlacement(_WireValue):
    """Consistent hashing: ``vnodes`` points per shard; a key belongs to the first point at or after it.

    Lookups: the points are a sorted tuple of Python ints, so a single lookup is one ``bisect`` plus
    one tuple index (the owner tuple repeats the first owner at the end, so "past the last point"
    wraps without a branch). Batches go through a bucket table indexed by the top bits of the hash:
    a bucket that holds no point has one owner for all of its hashes, so most keys are resolved by
    one array gather; only keys in the few buckets that contain points need ``np.searchsorted``.

    Two shards whose points collide: the lowest shard id keeps the point. Any fixed rule would do;
    this one keeps "only the changed shard's keys move", because adding or removing a shard can
    only hand a contested point to or take it from that shard.
    """

    kind = "ring"
    shard_ids: tuple[int, ...]
    vnodes: int = DEFAULT_VNODES
    _points: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _point_owners: tuple[int, ...] = field(init=False, repr=False, compare=False)  # len(_points) + 1
    _points_array: np.ndarray = field(init=False, repr=False, compare=False)
    _point_owners_array: np.ndarray = field(init=False, repr=False, compare=False)
    _bucket_shift: np.uint64 = field(init=False, repr=False, compare=False)
    _bucket_owners: np.ndarray = field(init=False, repr=False, compare=False)  # -1: bucket holds a point

    def __post_init__(self) -> None:
        shard_ids = _check_shard_ids(self.shard_ids)
        vnodes = _check_vnodes(self.vnodes)
        object.__setattr__(self, "shard_ids", shard_ids)
        points = np.fromiter(
            (label_hash(f"{shard_id}#{i}") for shard_id in shard_ids for i in range(vnodes)),
            dtype=np.uint64,
            count=len(shard_ids) * vnodes,
        )
        owners = np.repeat(np.array(shard_ids, dtype=np.int64), vnodes)
        order = np.lexsort((owners, points))  # by point, then lowest shard id first
        points, owners = points[order], owners[order]
        first_of_run = np.ones(points.shape[0], dtype=bool)
        first_of_run[1:] = points[1:] != points[:-1]
        points, owners = points[first_of_run], owners[first_of_run]
        owners_wrapped = np.append(owners, owners[0])
        object.__setattr__(self, "_points", tuple(points.tolist()))
        object.__setattr__(self, "_point_owners", tuple(owners_wrapped.tolist()))
        object.__setattr__(self, "_points_array", _frozen(points))
        object.__setattr__(self, "_point_owners_array", _frozen(owners_wrapped))
        # About 8 buckets per point: ~1 key in 8 falls in a bucket with a point and needs a search.
        bucket_bits = min(18, max(8, math.ceil(math.log2(points.shape[0])) + 3))
        shift = np.uint64(64 - bucket_bits)
        bucket_starts = np.arange(1 << bucket_bits, dtype=np.uint64) << shift
        bucket_owners = owners_wrapped[np.searchsorted(points, bucket_starts, side="left")]
        bucket_owners[np.unique(points >> shift).astype(np.intp)] = -1
        object.__setattr__(self, "_bucket_shift", shift)
        object.__setattr__(self, "_bucket_owners", _frozen(bucket_owners))

    def owner(self, key: Key) -> int:
        return self._point_owners[bisect_left(self._points, key_hash(key))]

    def owner_of_hash(self, h: int) -> int:
        return self._point_owners[bisect_left(self._points, h)]

    def owners(self, keys: Sequence[Key]) -> list[int]:
        return self.owners_of_hashes(_batch_hashes(keys)).tolist()

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        hashes = _as_hash_array(hashes)
        result = self._bucket_owners[(hashes >> self._bucket_shift).astype(np.intp)]
        unresolved = np.flatnonzero(result < 0)
        if unresolved.size:
            positions = np.searchsorted(self._points_array, hashes[unresolved], side="left")
            result[unresolved] = self._point_owners_array[positions]
        return result

    def with_shard(self, shard_id: int) -> RingPlacement:
        return RingPlacement(_adding(self.shard_ids, shard_id), self.vnodes)

    def without_shard(self, shard_id: int) -> RingPlacement:
        return RingPlacement(_removing(self.shard_ids, shard_id), self.vnodes)

    def ranges_of(self, shard_id: int) -> tuple[HashRange, ...] | None:
        if shard_id not in self.shard_ids:
            raise ConfigError(f"shard {shard_id} is not placed (shards: {list(self.shard_ids)})")
        return self._ranges_by_shard.get(shard_id, ())

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shard_ids": list(self.shard_ids), "vnodes": self.vnodes}

    @cached_property
    def _range_starts(self) -> tuple[int, ...]:
        """Hashes at which ownership may change: 0 and one past every point (a point owns itself)."""
        starts = [0]
        starts.extend(p + 1 for p in self._points if p < MAX_HASH)
        return tuple(starts)

    @cached_property
    def _ranges_by_shard(self) -> dict[int, tuple[HashRange, ...]]:
        """Each shard's arcs as non-wrapping ``[start, end)`` ranges, adjacent arcs coalesced."""
        starts = self._range_starts
        by_shard: dict[int, list[HashRange]] = {}
        for index, start in enumerate(starts):
            end = starts[index + 1] if index + 1 < len(starts) else HASH_SPACE
            shard = self.owner_of_hash(start)
            ranges = by_shard.setdefault(shard, [])
            if ranges and ranges[-1].end == start:
                ranges[-1] = HashRange(ranges[-1].start, end)
            else:
                ranges.append(HashRange(start, end))
        return {shard: tuple(ranges) for shard, ranges in by_shard.items()}


# --------------------------------------------------------------------------------------------
# rendezvous
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RendezvousPlacement(_WireValue):
    """Highest random weight: every shard scores every key; only the winner's changes move keys."""

    kind = "rendezvous"
    shard_ids: tuple[int, ...]
    _seeded_ids: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    _seeds_array: np.ndarray = field(init=False, repr=False, compare=False)
    _ids_array: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shard_ids = _check_shard_ids(self.shard_ids)
        object.__setattr__(self, "shard_ids", shard_ids)
        seeds = tuple(_rendezvous_seed(s) for s in shard_ids)
        object.__setattr__(self, "_seeded_ids", tuple(zip(seeds, shard_ids, strict=True)))
        object.__setattr__(self, "_seeds_array", _frozen(np.array(seeds, dtype=np.uint64)))
        object.__setattr__(self, "_ids_array", _frozen(np.array(shard_ids, dtype=np.int64)))

    def owner(self, key: Key) -> int:
        return _rendezvous_owner(key_hash(key), self._seeded_ids)

    def owner_of_hash(self, h: int) -> int:
        return _rendezvous_owner(h, self._seeded_ids)

    def owners(self, keys: Sequence[Key]) -> list[int]:
        return self.owners_of_hashes(_batch_hashes(keys)).tolist()

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        return _rendezvous_owners(_as_hash_array(hashes), self._seeds_array, self._ids_array)

    def with_shard(self, shard_id: int) -> RendezvousPlacement:
        return RendezvousPlacement(_adding(self.shard_ids, shard_id))

    def without_shard(self, shard_id: int) -> RendezvousPlacement:
        return RendezvousPlacement(_removing(self.shard_ids, shard_id))

    def ranges_of(self, shard_id: int) -> tuple[HashRange, ...] | None:
        return None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shard_ids": list(self.shard_ids)}


# --------------------------------------------------------------------------------------------
# jump
# --------------------------------------------------------------------------------------------


def _jump(h: int, slot_count: int) -> int:
    """Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).

    ``2.0**31 / ((h >> 33) + 1)`` converts the int exactly (it is below 2**53), so this is the
    paper's ``double`` arithmetic, which ``_jump_array`` repeats operation for operation.
    """
    bucket, candidate = -1, 0
    while candidate < slot_count:
        bucket = candidate
        h = (h * _JUMP_MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * (2147483648.0 / ((h >> 33) + 1)))
    return bucket


def _jump_array(hashes: np.ndarray, slot_count: int) -> np.ndarray:
    """``_jump`` element-wise: the same float64 operations in the same order, so identical results."""
    h = hashes.copy()
    bucket = np.zeros(h.shape[0], dtype=np.int64)
    active = np.arange(h.shape[0])
    candidate = np.zeros(h.shape[0], dtype=np.int64)
    with np.errstate(over="ignore"):
        while active.size:
            bucket[active] = candidate[active]
            state = h[active] * np.uint64(_JUMP_MULTIPLIER) + np.uint64(1)
            h[active] = state
            ratio = np.float64(1 << 31) / ((state >> np.uint64(33)) + np.uint64(1)).astype(np.float64)
            step = ((bucket[active] + 1).astype(np.float64) * ratio).astype(np.int64)
            candidate[active] = step
            active = active[step < slot_count]
    return bucket


def _derived_hash(h: int, attempt: int) -> int:
    return _mix64((h + attempt * _GOLDEN_GAMMA) & _MASK64)


def _derived_hashes(hashes: np.ndarray, attempt: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix64_array(hashes + np.uint64((attempt * _GOLDEN_GAMMA) & _MASK64))


@dataclass(frozen=True)
class JumpPlacement(_WireValue):
    """Jump consistent hashing over a slot table with tombstones (see the module docstring).

    ``slots[i]`` is the shard in slot ``i`` or ``-1`` for a tombstone. What holds after a change:
    only keys of the added or removed shard move. Remove-then-add of the same shard restores the
    identical table when the removed slot is the lowest tombstone. Add-then-remove restores the
    identical table when the add refilled a tombstone; when the add appended a slot, removing it
    leaves a trailing tombstone (slots are never trimmed), so about ``1/(slots+1)`` of the keys end
    up on other live shards than before the add; adding any shard again refills that slot and
    restores the earlier owners of all other keys.
    """

    kind = "jump"
    slots: tuple[int, ...]
    _live_ids: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _slots_array: np.ndarray = field(init=False, repr=False, compare=False)
    _seeded_ids: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    _seeds_array: np.ndarray = field(init=False, repr=False, compare=False)
    _ids_array: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.slots, str | bytes | Mapping) or not isinstance(self.slots, Iterable):
            raise ConfigError(f"jump slots must be a list of ints, not {type(self.slots).__name__}")
        slots = tuple(
            _TOMBSTONE if (not isinstance(s, bool) and s == _TOMBSTONE) else _check_shard_id(s, "jump slot")
            for s in self.slots
        )
        live = [s for s in slots if s != _TOMBSTONE]
        if not live:
            raise ConfigError("a jump placement needs at least one live slot; every slot is a tombstone")
        live_ids = _check_shard_ids(live)
        seeds = tuple(_rendezvous_seed(s) for s in live_ids)
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "_live_ids", live_ids)
        object.__setattr__(self, "_slots_array", _frozen(np.array(slots, dtype=np.int64)))
        object.__setattr__(self, "_seeded_ids", tuple(zip(seeds, live_ids, strict=True)))
        object.__setattr__(self, "_seeds_array", _frozen(np.array(seeds, dtype=np.uint64)))
        object.__setattr__(self, "_ids_array", _frozen(np.array(live_ids, dtype=np.int64)))

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return self._live_ids

    def owner(self, key: Key) -> int:
        return self.owner_of_hash(key_hash(key))

    def owner_of_hash(self, h: int) -> int:
        slots = self.slots
        shard = slots[_jump(h, len(slots))]
        if shard != _TOMBSTONE:
            return shard
        for attempt in range(1, _MAX_JUMP_ATTEMPTS + 1):
            shard = slots[_jump(_derived_hash(h, attempt), len(slots))]
            if shard != _TOMBSTONE:
                return shard
        return _rendezvous_owner(_derived_hash(h, _MAX_JUMP_ATTEMPTS + 1), self._seeded_ids)

    def owners(self, keys: Sequence[Key]) -> list[int]:
        return self.owners_of_hashes(_batch_hashes(keys)).tolist()

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        hashes = _as_hash_array(hashes)
        slot_count = len(self.slots)
        result = self._slots_array[_jump_array(hashes, slot_count)]
        pending = np.flatnonzero(result == _TOMBSTONE)
        attempt = 1
        while pending.size and attempt <= _MAX_JUMP_ATTEMPTS:
            landed = self._slots_array[_jump_array(_derived_hashes(hashes[pending], attempt), slot_count)]
            result[pending] = landed
            pending = pending[landed == _TOMBSTONE]
            attempt += 1
        if pending.size:
            fallback = _derived_hashes(hashes[pending], _MAX_JUMP_ATTEMPTS + 1)
            result[pending] = _rendezvous_owners(fallback, self._seeds_array, self._ids_array)
        return result

    def with_shard(self, shard_id: int) -> JumpPlacement:
        new_id = _check_shard_id(shard_id)
        if new_id in self._live_ids:
            raise ConfigError(f"cannot add shard {new_id}: it is already placed")
        slots = list(self.slots)
        try:
            slots[slots.index(_TOMBSTONE)] = new_id
        except ValueError:
            slots.append(new_id)
        return JumpPlacement(tuple(slots))

    def without_shard(self, shard_id: int) -> JumpPlacement:
        _removing(self._live_ids, shard_id)
        return JumpPlacement(tuple(_TOMBSTONE if s == shard_id else s for s in self.slots))

    def ranges_of(self, shard_id: int) -> tuple[HashRange, ...] | None:
        return None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "slots": list(self.slots)}


# --------------------------------------------------------------------------------------------
# bounded
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# construction and wire form
# --------------------------------------------------------------------------------------------

_PARAMS: dict[str, frozenset[str]] = {
    "modulo": frozenset(),
    "ring": frozenset({"vnodes"}),
    "rendezvous": frozenset(),
    "jump": frozenset(),
    "bounded": frozenset({"vnodes", "epsilon", "keys"}),
}


def make_placement(kind: str, shard_ids: Iterable[int], **params: Any) -> Placement:
    """Build a placement of ``kind`` over ``shard_ids`` (any order: the result depends on the set)."""
    if not isinstance(kind, str) or kind not in _PARAMS:
        raise ConfigError(f"unknown placement kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = sorted(set(params) - _PARAMS[kind])
    if unknown:
        accepted = ", ".join(sorted(_PARAMS[kind])) or "none"
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for placement kind {kind!r}; accepted: {accepted}"
        )
    ids = _check_shard_ids(shard_ids)
    if kind == "modulo":
        return ModuloPlacement(ids)
    if kind == "ring":
        return RingPlacement(ids, _check_vnodes(params.get("vnodes", DEFAULT_VNODES)))
    if kind == "rendezvous":
        return RendezvousPlacement(ids)
    if kind == "jump":
        return JumpPlacement(ids)
    ring = RingPlacement(ids, _check_vnodes(params.get("vnodes", DEFAULT_VNODES)))
    epsilon = _check_epsilon(params.get("epsilon", DEFAULT_EPSILON))
    return BoundedPlacement._build(ring, epsilon, _unique_sorted_hashes(params.get("keys", ())))


_FIELDS: dict[str, frozenset[str]] = {
    "modulo": frozenset({"kind", "shard_ids"}),
    "ring": frozenset({"kind", "shard_ids", "vnodes"}),
    "rendezvous": frozenset({"kind", "shard_ids"}),
    "jump": frozenset({"kind", "slots"}),
    "bounded": frozenset(
        {"kind", "shard_ids", "vnodes", "epsilon", "key_hashes", "override_hashes", "override_shards"}
    ),
}


def placement_from_dict(d: dict) -> Placement:
    """Rebuild a placement from ``to_dict`` output, validating everything (it may come off the wire)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a placement dict must be a mapping, not {type(d).__name__}")
    kind = d.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ConfigError(f"unknown placement kind {kind!r}; expected one of {', '.join(KINDS)}")
    present = set(d)
    missing = sorted(_FIELDS[kind] - present)
    if missing:
        raise ConfigError(f"placement dict of kind {kind!r} is missing field {missing[0]!r}")
    extra = sorted(map(str, present - _FIELDS[kind]))
    if extra:
        raise ConfigError(f"placement dict of kind {kind!r} has unknown field {extra[0]!r}")
    for name in ("shard_ids", "slots", "override_shards"):
        if name in d and not isinstance(d[name], list | tuple):
            raise ConfigError(f"placement field {name!r} must be a list, not {type(d[name]).__name__}")
    if kind == "modulo":
        return ModuloPlacement(_check_shard_ids(d["shard_ids"]))
    if kind == "ring":
        return RingPlacement(_check_shard_ids(d["shard_ids"]), _check_vnodes(d["vnodes"]))
    if kind == "rendezvous":
        return RendezvousPlacement(_check_shard_ids(d["shard_ids"]))
    if kind == "jump":
        return JumpPlacement(tuple(d["slots"]))
    return _bounded_from_dict(d)


def _hashes_from_bytes(d: Mapping, name: str) -> np.ndarray:
    blob = d[name]
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ConfigError(f"placement field {name!r} must be bytes, not {type(blob).__name__}")
    if len(blob) % 8:
        raise ConfigError(f"placement field {name!r} must hold 8-byte hashes; got {len(blob)} bytes")
    hashes = np.frombuffer(bytes(blob), dtype="<u8").astype(np.uint64)
    if hashes.size > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
        raise ConfigError(f"placement field {name!r} must be strictly ascending")
    return hashes


def _bounded_from_dict(d: Mapping) -> BoundedPlacement:
    ring = RingPlacement(_check_shard_ids(d["shard_ids"]), _check_vnodes(d["vnodes"]))
    epsilon = _check_epsilon(d["epsilon"])
    hashes = _hashes_from_bytes(d, "key_hashes")
    override_hashes = _hashes_from_bytes(d, "override_hashes")
    override_shards = [_check_shard_id(s, "override shard") for s in d["override_shards"]]
    if len(override_shards) != override_hashes.shape[0]:
        raise ConfigError(
            f"bounded placement has {override_hashes.shape[0]} override hashes "
            f"but {len(override_shards)} override shards"
        )
    unknown = sorted(set(override_shards) - set(ring.shard_ids))
    if unknown:
        raise ConfigError(f"bounded override names shard {unknown[0]}, which is not placed")
    positions = np.searchsorted(hashes, override_hashes)
    if override_hashes.size and (
        positions.max() >= hashes.shape[0] or not np.array_equal(hashes[positions], override_hashes)
    ):
        raise ConfigError("bounded override hashes must be among key_hashes")
    assigned = ring.owners_of_hashes(hashes)
    shards = np.array(override_shards, dtype=np.int64)
    if np.any(assigned[positions] == shards):
        raise ConfigError("bounded overrides must differ from the ring owner")
    assigned[positions] = shards
    try:
        return BoundedPlacement._from_assignment(ring, epsilon, hashes, assigned)
    except InvariantViolation as exc:  # from the wire, an over-full assignment is bad data, not a bug
        raise ConfigError(f"bounded placement violates its load bound: {exc}") from exc
