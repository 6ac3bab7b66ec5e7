"""Jump consistent hashing over a slot table with tombstones, so any shard can leave.

Theory of operation
-------------------
Removal tombstones a slot instead of shrinking the table, so every key's sequence of candidate
slots is unchanged and only the keys whose first live candidate was the removed slot move; adding
refills the lowest tombstone or appends a slot (see the package docstring for the whole argument).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dimint.core.errors import ConfigError
from dimint.core.hashing import HashRange, Key, key_hash
from dimint.core.placement.base import (
    _GOLDEN_GAMMA,
    _JUMP_MULTIPLIER,
    _MASK64,
    _MAX_JUMP_ATTEMPTS,
    _TOMBSTONE,
    _as_hash_array,
    _batch_hashes,
    _check_shard_id,
    _check_shard_ids,
    _frozen,
    _mix64,
    _mix64_array,
    _removing,
    _rendezvous_owner,
    _rendezvous_owners,
    _rendezvous_seed,
    _WireValue,
)


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
