"""The three stateless kinds: modulo (the static baseline), ring (consistent hashing) and rendezvous.

Theory of operation
-------------------
Each is a frozen dataclass over sorted shard ids (and, for the ring, its points): lookups are pure
functions of the key's hash, and ``with_shard`` / ``without_shard`` build a new value rather than
edit one, so a map that holds a placement can be shared freely. The ring's owned hash ranges are
exact, which is what lets ``plan`` describe its moves as ranges (see the package docstring).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from dimint.core.errors import ConfigError
from dimint.core.hashing import HASH_SPACE, MAX_HASH, HashRange, Key, key_hash, label_hash
from dimint.core.placement.base import (
    DEFAULT_VNODES,
    _adding,
    _as_hash_array,
    _batch_hashes,
    _check_shard_ids,
    _check_vnodes,
    _frozen,
    _removing,
    _rendezvous_owner,
    _rendezvous_owners,
    _rendezvous_seed,
    _WireValue,
)


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
