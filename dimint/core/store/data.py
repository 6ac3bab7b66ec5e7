"""The stored state of a store and its mutation primitives: the only code that changes either.

Theory of operation
-------------------
One dict of values whose Python type is the DiMint type, one dict of expiry times, and a running
byte count. Every change goes through a ``_*_raw`` primitive that keeps the count exact, used
alike by commands and by ``apply``, so master and replica account identically.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dimint.core.commands import INT64_MAX
from dimint.core.errors import (
    CommandError,
    ConfigError,
    ErrorCode,
)
from dimint.core.store.ops import (
    ENTRY_OVERHEAD_BYTES,
    ITEM_OVERHEAD_BYTES,
    TTL_OVERHEAD_BYTES,
    StoreLimits,
    WriteOp,
    _payload_bytes,
)


class _StoreData:
    """The stored state and the only code that changes it, so accounting cannot drift.

    Commands (``_Commands``) and replication (``Store.apply``) both go through these primitives;
    that is what makes a replica that applies a master's ops hold the master's stored state.
    """

    def __init__(self, limits: StoreLimits = StoreLimits()) -> None:
        if not isinstance(limits, StoreLimits):
            raise ConfigError(f"limits must be StoreLimits, got {type(limits).__name__}")
        self.limits = limits
        self._data: dict[bytes, Any] = {}
        self._expire_at_ms: dict[bytes, int] = {}
        self._approx_bytes = 0

    # ---- the mutation primitives: the only code that changes state or accounting -------------

    def _entry_bytes(self, key: bytes, value: Any) -> int:
        ttl = TTL_OVERHEAD_BYTES if key in self._expire_at_ms else 0
        return ENTRY_OVERHEAD_BYTES + len(key) + _payload_bytes(value) + ttl

    def _put_raw(self, key: bytes, value: Any, expire_at_ms: int | None) -> None:
        # Overwrites in place (no delete + insert): a hot path, and dict order stays as the ops made it.
        data = self._data
        old = data.get(key)
        delta = _payload_bytes(value)
        if old is None:
            delta += ENTRY_OVERHEAD_BYTES + len(key)
        else:
            delta -= _payload_bytes(old)
        data[key] = value
        ttls = self._expire_at_ms
        if expire_at_ms is not None:
            if key not in ttls:
                delta += TTL_OVERHEAD_BYTES
            ttls[key] = expire_at_ms
        elif ttls and key in ttls:
            del ttls[key]
            delta -= TTL_OVERHEAD_BYTES
        self._approx_bytes += delta

    def _delete_raw(self, key: bytes) -> bool:
        value = self._data.get(key)
        if value is None:
            return False
        self._approx_bytes -= self._entry_bytes(key, value)
        del self._data[key]
        self._expire_at_ms.pop(key, None)
        return True

    def _set_expire_raw(self, key: bytes, expire_at_ms: int | None) -> None:
        had_ttl = key in self._expire_at_ms
        if expire_at_ms is None:
            if had_ttl:
                del self._expire_at_ms[key]
                self._approx_bytes -= TTL_OVERHEAD_BYTES
        else:
            self._expire_at_ms[key] = expire_at_ms
            if not had_ttl:
                self._approx_bytes += TTL_OVERHEAD_BYTES

    def _create_raw(self, key: bytes, empty: Any) -> Any:
        """Store an empty collection that the caller fills at once (empties never outlive an op)."""
        self._data[key] = empty
        self._approx_bytes += ENTRY_OVERHEAD_BYTES + len(key)
        return empty

    def _push_raw(self, key: bytes, items: list[bytes], left: bool) -> int:
        items_list = self._data.get(key)
        if items_list is None:
            items_list = self._create_raw(key, deque())
        if left:
            items_list.extendleft(items)
        else:
            items_list.extend(items)
        self._approx_bytes += sum(map(len, items)) + ITEM_OVERHEAD_BYTES * len(items)
        return len(items_list)

    def _pop_raw(self, key: bytes, left: bool) -> bytes:
        items_list = self._data[key]
        item = items_list.popleft() if left else items_list.pop()
        self._approx_bytes -= len(item) + ITEM_OVERHEAD_BYTES
        if not items_list:
            self._delete_raw(key)
        return item

    def _hset_raw(self, key: bytes, flat: list[bytes]) -> None:
        mapping = self._data.get(key)
        if mapping is None:
            mapping = self._create_raw(key, {})
        delta = 0
        for i in range(0, len(flat), 2):
            field, value = flat[i], flat[i + 1]
            old = mapping.get(field)
            if old is None:
                delta += len(field) + len(value) + ITEM_OVERHEAD_BYTES
            else:
                delta += len(value) - len(old)
            mapping[field] = value
        self._approx_bytes += delta

    def _hdel_raw(self, key: bytes, fields: list[bytes]) -> None:
        mapping = self._data.get(key)
        if mapping is None:
            return
        for field in fields:
            old = mapping.pop(field, None)
            if old is not None:
                self._approx_bytes -= len(field) + len(old) + ITEM_OVERHEAD_BYTES
        if not mapping:
            self._delete_raw(key)

    def _sadd_raw(self, key: bytes, members: list[bytes]) -> None:
        existing = self._data.get(key)
        if existing is None:
            existing = self._create_raw(key, set())
        for member in members:
            if member not in existing:
                existing.add(member)
                self._approx_bytes += len(member) + ITEM_OVERHEAD_BYTES

    def _srem_raw(self, key: bytes, members: list[bytes]) -> None:
        existing = self._data.get(key)
        if existing is None:
            return
        for member in members:
            if member in existing:
                existing.remove(member)
                self._approx_bytes -= len(member) + ITEM_OVERHEAD_BYTES
        if not existing:
            self._delete_raw(key)

    # ---- lookups -----------------------------------------------------------------------------

    def _read(self, key: bytes, now_ms: int) -> Any:
        """The live value or None; never mutates, so reads are safe on slaves."""
        value = self._data.get(key)
        if value is not None and self._expire_at_ms:
            expire_at_ms = self._expire_at_ms.get(key)
            if expire_at_ms is not None and expire_at_ms <= now_ms:
                return None
        return value

    def _read_for_write(self, key: bytes, now_ms: int, writes: list[WriteOp]) -> Any:
        """The live value or None; an expired key is reclaimed here and the delete replicated.

        Callers run every check that can refuse an absent key before calling this.
        """
        value = self._data.get(key)
        if value is not None and self._expire_at_ms:
            expire_at_ms = self._expire_at_ms.get(key)
            if expire_at_ms is not None and expire_at_ms <= now_ms:
                self._delete_raw(key)
                writes.append(("del", key))
                return None
        return value

    def _check_item_count(self, command: str, count: int) -> None:
        if count > self.limits.max_collection_items:
            raise CommandError(
                ErrorCode.BAD_ARGUMENT,
                f"{command}: {count} items > max_collection_items {self.limits.max_collection_items}",
            )

    def _expire_at(self, now_ms: int, ttl_ms: int) -> int:
        expire_at_ms = now_ms + ttl_ms
        if expire_at_ms > INT64_MAX:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"ttl_ms {ttl_ms} overflows the clock")
        return expire_at_ms
