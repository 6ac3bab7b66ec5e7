"""One handler per command: check everything, then mutate, then say what changed as ops.

Theory of operation
-------------------
A write handler appends the absolute ops that reproduce its change on a replica (a relative TTL
becomes ``expire_at``, ``incr`` a ``put`` of the result, collections deltas of what really changed);
every check that can fail for an absent key runs before the key is read, so a reclaim of an expired
key is never followed by a refusal.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any

from dimint.core.commands import INT64_MAX, INT64_MIN
from dimint.core.errors import (
    CommandError,
    ErrorCode,
)
from dimint.core.store.args import _wrong_type
from dimint.core.store.data import _StoreData
from dimint.core.store.ops import _TAG_OF_TYPE, WriteOp, _parse_canonical_int


class _Commands(_StoreData):
    """One handler per command in ``dimint.core.commands.COMMANDS``, found by name (``_cmd_<name>``).

    A handler receives arguments already normalised by its route, checks types and limits before it
    mutates, and appends the absolute ops a replica must apply to ``writes``.
    """

    # ---- command handlers: reads (now_ms, *args), writes (now_ms, writes, *args) -------------

    def _cmd_get(self, now_ms: int, key: bytes) -> bytes | int | None:
        value = self._read(key, now_ms)
        if value is None or type(value) is bytes or type(value) is int:
            return value
        raise _wrong_type("get", value)

    def _cmd_set(
        self,
        now_ms: int,
        writes: list[WriteOp],
        key: bytes,
        value: bytes | int,
        ttl_ms: int | None,
        cond: str | None,
    ) -> bool:
        expire_at_ms = None
        if ttl_ms is not None:
            if ttl_ms <= 0:
                raise CommandError(ErrorCode.BAD_ARGUMENT, f"set: ttl_ms must be > 0, got {ttl_ms}")
            expire_at_ms = self._expire_at(now_ms, ttl_ms)
        if cond is not None:
            exists = self._read_for_write(key, now_ms, writes) is not None
            if exists == (cond == "nx"):
                return False
        self._put_raw(key, value, expire_at_ms)
        writes.append(("put", key, "integer" if type(value) is int else "string", value, expire_at_ms))
        return True

    def _cmd_delete(self, now_ms: int, writes: list[WriteOp], keys: list[bytes]) -> int:
        deleted = 0
        for key in keys:
            if self._read_for_write(key, now_ms, writes) is not None:
                self._delete_raw(key)
                writes.append(("del", key))
                deleted += 1
        return deleted

    def _cmd_exists(self, now_ms: int, keys: list[bytes]) -> int:
        return sum(1 for key in keys if self._read(key, now_ms) is not None)

    def _cmd_type(self, now_ms: int, key: bytes) -> str:
        value = self._read(key, now_ms)
        return "none" if value is None else _TAG_OF_TYPE[type(value)]

    def _cmd_ttl(self, now_ms: int, key: bytes) -> int:
        if self._read(key, now_ms) is None:
            return -2
        expire_at_ms = self._expire_at_ms.get(key)
        return -1 if expire_at_ms is None else expire_at_ms - now_ms

    def _cmd_expire(self, now_ms: int, writes: list[WriteOp], key: bytes, ttl_ms: int) -> bool:
        expire_at_ms = self._expire_at(now_ms, ttl_ms) if ttl_ms > 0 else None
        if self._read_for_write(key, now_ms, writes) is None:
            return False
        if expire_at_ms is None:
            self._delete_raw(key)
            writes.append(("del", key))
        else:
            self._set_expire_raw(key, expire_at_ms)
            writes.append(("expire_at", key, expire_at_ms))
        return True

    def _cmd_persist(self, now_ms: int, writes: list[WriteOp], key: bytes) -> bool:
        if self._read_for_write(key, now_ms, writes) is None or key not in self._expire_at_ms:
            return False
        self._set_expire_raw(key, None)
        writes.append(("expire_at", key, None))
        return True

    def _add_to_integer(self, command: str, now_ms: int, writes: list[WriteOp], key: bytes, by: int) -> int:
        value = self._read_for_write(key, now_ms, writes)
        if value is None:
            current = 0
        elif type(value) is int:
            current = value
        elif type(value) is bytes:
            parsed = _parse_canonical_int(value)
            if parsed is None:
                raise CommandError(ErrorCode.NOT_INTEGER, f"{command}: value is not a canonical int64")
            current = parsed
        else:
            raise _wrong_type(command, value)
        result = current + by
        if not INT64_MIN <= result <= INT64_MAX:
            raise CommandError(ErrorCode.OVERFLOW, f"{command}: {current} {by:+} leaves int64")
        expire_at_ms = self._expire_at_ms.get(key) if value is not None else None
        self._put_raw(key, result, expire_at_ms)
        writes.append(("put", key, "integer", result, expire_at_ms))
        return result

    def _cmd_incr(self, now_ms: int, writes: list[WriteOp], key: bytes, by: int) -> int:
        return self._add_to_integer("incr", now_ms, writes, key, by)

    def _cmd_decr(self, now_ms: int, writes: list[WriteOp], key: bytes, by: int) -> int:
        if by == INT64_MIN:
            # -by is outside int64; Redis refuses it outright, and it must fail before the lookup.
            raise CommandError(ErrorCode.OVERFLOW, "decr: the decrement itself overflows int64")
        return self._add_to_integer("decr", now_ms, writes, key, -by)

    def _cmd_mget(self, now_ms: int, keys: list[bytes]) -> list[bytes | int | None]:
        # Redis MGET answers nil for a key of another type rather than failing the whole batch.
        values = (self._read(key, now_ms) for key in keys)
        return [v if type(v) is bytes or type(v) is int else None for v in values]

    def _cmd_mset(self, now_ms: int, writes: list[WriteOp], pairs: list[Any]) -> bool:
        for i in range(0, len(pairs), 2):
            key, value = pairs[i], pairs[i + 1]
            self._put_raw(key, value, None)
            writes.append(("put", key, "integer" if type(value) is int else "string", value, None))
        return True

    def _push(self, command: str, now_ms: int, writes: list[WriteOp], key: bytes, items: list[bytes]) -> int:
        self._check_item_count(command, len(items))
        current = self._read_for_write(key, now_ms, writes)
        if current is not None:
            if type(current) is not deque:
                raise _wrong_type(command, current)
            self._check_item_count(command, len(current) + len(items))
        writes.append((command, key, tuple(items)))
        return self._push_raw(key, items, command == "lpush")

    def _cmd_lpush(self, now_ms: int, writes: list[WriteOp], key: bytes, items: list[bytes]) -> int:
        return self._push("lpush", now_ms, writes, key, items)

    def _cmd_rpush(self, now_ms: int, writes: list[WriteOp], key: bytes, items: list[bytes]) -> int:
        return self._push("rpush", now_ms, writes, key, items)

    def _pop(self, command: str, now_ms: int, writes: list[WriteOp], key: bytes) -> bytes | None:
        current = self._read_for_write(key, now_ms, writes)
        if current is None:
            return None
        if type(current) is not deque:
            raise _wrong_type(command, current)
        writes.append((command, key))
        return self._pop_raw(key, command == "lpop")

    def _cmd_lpop(self, now_ms: int, writes: list[WriteOp], key: bytes) -> bytes | None:
        return self._pop("lpop", now_ms, writes, key)

    def _cmd_rpop(self, now_ms: int, writes: list[WriteOp], key: bytes) -> bytes | None:
        return self._pop("rpop", now_ms, writes, key)

    def _typed(self, command: str, now_ms: int, key: bytes, kind: type) -> Any:
        value = self._read(key, now_ms)
        if value is not None and type(value) is not kind:
            raise _wrong_type(command, value)
        return value

    def _cmd_lrange(self, now_ms: int, key: bytes, start: int, stop: int) -> list[bytes]:
        items = self._typed("lrange", now_ms, key, deque)
        if items is None:
            return []
        length = len(items)
        start = max(start + length, 0) if start < 0 else start
        stop = stop + length if stop < 0 else min(stop, length - 1)
        if start > stop:
            return []
        return list(islice(items, start, stop + 1))

    def _cmd_llen(self, now_ms: int, key: bytes) -> int:
        items = self._typed("llen", now_ms, key, deque)
        return 0 if items is None else len(items)

    def _cmd_hset(self, now_ms: int, writes: list[WriteOp], key: bytes, flat: list[bytes]) -> int:
        self._check_item_count("hset", len(flat) // 2)
        current = self._read_for_write(key, now_ms, writes)
        fields = dict.fromkeys(flat[::2])
        if current is None:
            added = len(fields)
        elif type(current) is dict:
            added = sum(1 for field in fields if field not in current)
            self._check_item_count("hset", len(current) + added)
        else:
            raise _wrong_type("hset", current)
        self._hset_raw(key, flat)
        writes.append(("hset", key, tuple(flat)))
        return added

    def _cmd_hget(self, now_ms: int, key: bytes, field: bytes) -> bytes | None:
        mapping = self._typed("hget", now_ms, key, dict)
        return None if mapping is None else mapping.get(field)

    def _cmd_hdel(self, now_ms: int, writes: list[WriteOp], key: bytes, fields: list[bytes]) -> int:
        mapping = self._read_for_write(key, now_ms, writes)
        if mapping is None:
            return 0
        if type(mapping) is not dict:
            raise _wrong_type("hdel", mapping)
        removed = [field for field in dict.fromkeys(fields) if field in mapping]
        if removed:
            writes.append(("hdel", key, tuple(removed)))
            self._hdel_raw(key, removed)
        return len(removed)

    def _cmd_hgetall(self, now_ms: int, key: bytes) -> dict[bytes, bytes]:
        mapping = self._typed("hgetall", now_ms, key, dict)
        return {} if mapping is None else dict(mapping)

    def _cmd_hlen(self, now_ms: int, key: bytes) -> int:
        mapping = self._typed("hlen", now_ms, key, dict)
        return 0 if mapping is None else len(mapping)

    def _cmd_sadd(self, now_ms: int, writes: list[WriteOp], key: bytes, members: list[bytes]) -> int:
        self._check_item_count("sadd", len(members))
        current = self._read_for_write(key, now_ms, writes)
        distinct = dict.fromkeys(members)
        if current is None:
            added = list(distinct)
        elif type(current) is set:
            added = [member for member in distinct if member not in current]
            self._check_item_count("sadd", len(current) + len(added))
        else:
            raise _wrong_type("sadd", current)
        if added:
            writes.append(("sadd", key, tuple(added)))
            self._sadd_raw(key, added)
        return len(added)

    def _cmd_srem(self, now_ms: int, writes: list[WriteOp], key: bytes, members: list[bytes]) -> int:
        current = self._read_for_write(key, now_ms, writes)
        if current is None:
            return 0
        if type(current) is not set:
            raise _wrong_type("srem", current)
        removed = [member for member in dict.fromkeys(members) if member in current]
        if removed:
            writes.append(("srem", key, tuple(removed)))
            self._srem_raw(key, removed)
        return len(removed)

    def _cmd_smembers(self, now_ms: int, key: bytes) -> list[bytes]:
        members = self._typed("smembers", now_ms, key, set)
        return [] if members is None else sorted(members)

    def _cmd_sismember(self, now_ms: int, key: bytes, member: bytes) -> bool:
        members = self._typed("sismember", now_ms, key, set)
        return members is not None and member in members

    def _cmd_scard(self, now_ms: int, key: bytes) -> int:
        members = self._typed("scard", now_ms, key, set)
        return 0 if members is None else len(members)
