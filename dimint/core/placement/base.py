"""What every placement shares: the protocol, shard-id checks and the 64-bit mixes.

Theory of operation
-------------------
A placement is an immutable value with single and batched lookups that must agree; the helpers
here are the only hashing and mixing the kinds use, so that a key's owner is the same function of
its hash in every process. Nothing here imports a placement kind: the kinds stand on this module
and ``plan`` and ``factory`` stand on the kinds.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xxhash

from dimint.core.errors import ConfigError
from dimint.core.hashing import HashRange, Key, key_hashes, label_hash

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


class _WireValue:
    """Copy and pickle through ``to_dict``: the one validated form, and cheap to rebuild caches from."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[dict]]:
        from dimint.core.placement.factory import placement_from_dict  # the factory stands on the kinds

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
