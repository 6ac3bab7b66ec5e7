"""The ``Store``: the command entry point, replication, ranges and snapshots, and accounting.

Theory of operation
-------------------
``execute`` looks the command up in routes built once (handler, is-write, compiled normaliser), so
dispatch is one dict lookup; ``apply`` replays ops without reading the clock; range operations hash
every key because hashes are not stored (see the package docstring for the memory reasoning).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from dimint.core.commands import COMMANDS, INT64_MAX, INT64_MIN
from dimint.core.errors import (
    CommandError,
    ErrorCode,
    InvariantViolation,
    LocalProtocolError,
)
from dimint.core.hashing import Key, as_key, key_hash, key_hashes
from dimint.core.store.args import _argument_normalisers, _compile_normaliser, _Route
from dimint.core.store.handlers import _Commands
from dimint.core.store.ops import (
    _DELTA_TARGET_TYPE,
    _NO_WRITES,
    _TAG_OF_TYPE,
    Outcome,
    Selector,
    SnapshotItem,
    StoreLimits,
    StoreStats,
    WriteOp,
    _bad_op,
    _check_op,
    _predicate,
    _wire_value,
)


class Store(_Commands):
    """Typed key-value data of one shard replica. Not thread-safe: one driver loop owns it."""

    def __init__(self, limits: StoreLimits = StoreLimits()) -> None:
        super().__init__(limits)
        kinds = _argument_normalisers(limits)
        self._routes = {
            name: _Route(getattr(self, f"_cmd_{name}"), spec.is_write, _compile_normaliser(spec, kinds))
            for name, spec in COMMANDS.items()
        }

    # ---- dispatch ----------------------------------------------------------------------------

    def execute(self, command: str, args: Sequence[Any], now_ms: int) -> Outcome:
        """Validate and run one command; the reply plus the ops a replica must apply.

        Raises ``CommandError`` (UNKNOWN_COMMAND, BAD_ARGUMENT, WRONG_TYPE, ...) with nothing changed.
        """
        route = self._routes.get(command) if type(command) is str else None
        if route is None:
            raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {command!r}")
        kind = type(args)
        if kind is not tuple and kind is not list and not isinstance(args, (list, tuple)):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{command}: arguments must be a list")
        if route.is_write:
            normalised = route.normalise(args)
            writes: list[WriteOp] = []
            try:
                value = route.handler(now_ms, writes, *normalised)
            except CommandError:
                if writes:  # a reclaim went ahead of a refusal: the replica would never hear of it
                    raise InvariantViolation(f"{command} refused after changing state: {writes!r}") from None
                raise
            return Outcome(value, tuple(writes))
        return Outcome(route.handler(now_ms, *route.normalise(args)), _NO_WRITES)

    def _direct(self, command: str, args: tuple[Any, ...], now_ms: int) -> Any:
        """Run a command for its reply only; its ops are dropped, so never use this on a master."""
        route = self._routes[command]
        if route.is_write:
            normalised = route.normalise(args)
            return route.handler(now_ms, [], *normalised)
        return route.handler(now_ms, *route.normalise(args))

    # ---- direct methods: replies only, for single-copy use (tests, notebooks, benchmarks) ----

    def get(self, key: Key, *, now_ms: int) -> bytes | int | None:
        return self._direct("get", (key,), now_ms)

    def set(
        self,
        key: Key,
        value: str | bytes | int,
        ttl_ms: int | None = None,
        cond: str | None = None,
        *,
        now_ms: int,
    ) -> bool:
        return self._direct("set", (key, value, ttl_ms, cond), now_ms)

    def delete(self, *keys: Key, now_ms: int) -> int:
        return self._direct("delete", keys, now_ms)

    def exists(self, *keys: Key, now_ms: int) -> int:
        return self._direct("exists", keys, now_ms)

    def type(self, key: Key, *, now_ms: int) -> str:
        return self._direct("type", (key,), now_ms)

    def ttl(self, key: Key, *, now_ms: int) -> int:
        return self._direct("ttl", (key,), now_ms)

    def expire(self, key: Key, ttl_ms: int, *, now_ms: int) -> bool:
        return self._direct("expire", (key, ttl_ms), now_ms)

    def persist(self, key: Key, *, now_ms: int) -> bool:
        return self._direct("persist", (key,), now_ms)

    def incr(self, key: Key, by: int = 1, *, now_ms: int) -> int:
        return self._direct("incr", (key, by), now_ms)

    def decr(self, key: Key, by: int = 1, *, now_ms: int) -> int:
        return self._direct("decr", (key, by), now_ms)

    def mget(self, *keys: Key, now_ms: int) -> list[bytes | int | None]:
        return self._direct("mget", keys, now_ms)

    def mset(self, *pairs: Any, now_ms: int) -> bool:
        return self._direct("mset", pairs, now_ms)

    def lpush(self, key: Key, *items: str | bytes, now_ms: int) -> int:
        return self._direct("lpush", (key, *items), now_ms)

    def rpush(self, key: Key, *items: str | bytes, now_ms: int) -> int:
        return self._direct("rpush", (key, *items), now_ms)

    def lpop(self, key: Key, *, now_ms: int) -> bytes | None:
        return self._direct("lpop", (key,), now_ms)

    def rpop(self, key: Key, *, now_ms: int) -> bytes | None:
        return self._direct("rpop", (key,), now_ms)

    def lrange(self, key: Key, start: int, stop: int, *, now_ms: int) -> list[bytes]:
        return self._direct("lrange", (key, start, stop), now_ms)

    def llen(self, key: Key, *, now_ms: int) -> int:
        return self._direct("llen", (key,), now_ms)

    def hset(self, key: Key, *pairs: str | bytes, now_ms: int) -> int:
        return self._direct("hset", (key, *pairs), now_ms)

    def hget(self, key: Key, field: str | bytes, *, now_ms: int) -> bytes | None:
        return self._direct("hget", (key, field), now_ms)

    def hdel(self, key: Key, *fields: str | bytes, now_ms: int) -> int:
        return self._direct("hdel", (key, *fields), now_ms)

    def hgetall(self, key: Key, *, now_ms: int) -> dict[bytes, bytes]:
        return self._direct("hgetall", (key,), now_ms)

    def hlen(self, key: Key, *, now_ms: int) -> int:
        return self._direct("hlen", (key,), now_ms)

    def sadd(self, key: Key, *members: str | bytes, now_ms: int) -> int:
        return self._direct("sadd", (key, *members), now_ms)

    def srem(self, key: Key, *members: str | bytes, now_ms: int) -> int:
        return self._direct("srem", (key, *members), now_ms)

    def smembers(self, key: Key, *, now_ms: int) -> list[bytes]:
        return self._direct("smembers", (key,), now_ms)

    def sismember(self, key: Key, member: str | bytes, *, now_ms: int) -> bool:
        return self._direct("sismember", (key, member), now_ms)

    def scard(self, key: Key, *, now_ms: int) -> int:
        return self._direct("scard", (key,), now_ms)

    # ---- replication -------------------------------------------------------------------------

    def apply(self, writes: Sequence[WriteOp], now_ms: int) -> None:
        """Apply a master's ops (from ``Outcome.writes``, ``purge_expired``, ``restore_ops``, ``drop_op``).

        ``now_ms`` is deliberately unused: ops carry absolute times, so the result cannot depend on
        the replica's clock. A malformed op raises ``RemoteProtocolError`` before anything changes.
        An op that does not fit the stored type means this replica has diverged from its master (a
        DiMint bug): ``InvariantViolation`` is raised before that op, the earlier ones stay applied,
        and the replica must be resynchronised from a snapshot.
        """
        del now_ms
        if not isinstance(writes, (list, tuple)):
            raise _bad_op("writes must be a sequence of ops")
        for op in [_check_op(op) for op in writes]:
            self._apply_one(op)

    def _apply_one(self, op: tuple[Any, ...]) -> None:
        name = op[0]
        if name == "put":
            _, key, _, value, expire_at_ms = op
            self._put_raw(key, value, expire_at_ms)
        elif name == "del":
            self._delete_raw(op[1])
        elif name == "drop":
            self._drop_predicate(_predicate(op[1]))
        else:
            key = op[1]
            current = self._data.get(key)
            if name == "expire_at":
                if current is not None:
                    self._set_expire_raw(key, op[2])
                return
            if current is not None and type(current) is not _DELTA_TARGET_TYPE[name]:
                raise InvariantViolation(
                    f"replica diverged: {name} on {key!r} which holds a {_TAG_OF_TYPE[type(current)]}"
                )
            if name in ("lpush", "rpush"):
                self._push_raw(key, op[2], name == "lpush")
            elif name in ("lpop", "rpop"):
                if current is not None:
                    self._pop_raw(key, name == "lpop")
            elif name == "hset":
                self._hset_raw(key, op[2])
            elif name == "hdel":
                self._hdel_raw(key, op[2])
            elif name == "sadd":
                self._sadd_raw(key, op[2])
            else:
                self._srem_raw(key, op[2])

    def purge_expired(self, now_ms: int, max_keys: int | None = None) -> Outcome:
        """Reclaim stored keys that have expired (Redis's active expiry), in TTL-table order.

        Returns the number reclaimed and the deletes a replica must apply; call it on the master only.
        O(keys with a TTL) per call, so a driver calls it now and then with a ``max_keys`` budget.
        """
        if max_keys is not None and (type(max_keys) is not int or max_keys < 0):
            raise LocalProtocolError(f"max_keys must be a non-negative int or None, got {max_keys!r}")
        expired = list(islice((key for key, at in self._expire_at_ms.items() if at <= now_ms), max_keys))
        for key in expired:
            self._delete_raw(key)
        return Outcome(len(expired), tuple(("del", key) for key in expired))

    # ---- ranges, snapshots -------------------------------------------------------------------

    def _live_keys(self, selector: Selector, now_ms: int) -> Iterator[bytes]:
        selected = _predicate(selector)
        expire_at = self._expire_at_ms
        for key in self._data:
            if selected(key_hash(key)):
                at = expire_at.get(key) if expire_at else None
                if at is None or at > now_ms:
                    yield key

    def scan(self, selector: Selector, now_ms: int) -> Iterator[bytes]:
        """Live keys whose hash is selected, in sorted order (collected first: safe to mutate after)."""
        return iter(sorted(self._live_keys(selector, now_ms)))

    def count(self, selector: Selector, now_ms: int) -> int:
        """Live keys in the selection (O(stored keys): every key is hashed)."""
        return sum(1 for _ in self._live_keys(selector, now_ms))

    def range_stats(self, selector: Selector, now_ms: int) -> tuple[int, int]:
        """(live keys, their approx_bytes) in the selection: what moving this range would cost."""
        keys = total = 0
        for key in self._live_keys(selector, now_ms):
            keys += 1
            total += self._entry_bytes(key, self._data[key])
        return keys, total

    def snapshot(
        self, selector: Selector, now_ms: int, max_items: int | None = None, after_key: Key | None = None
    ) -> list[SnapshotItem]:
        """Live selected keys as plain items in key order, resuming strictly after ``after_key``.

        Batches taken as ``snapshot(..., max_items=n, after_key=last_key_of_previous_batch)`` cover
        every key that stayed in the selection throughout; concurrent writes must reach the target
        by another path (the migration delta stream).
        """
        if max_items is not None and (type(max_items) is not int or max_items < 1):
            raise LocalProtocolError(f"max_items must be a positive int or None, got {max_items!r}")
        keys: Iterator[bytes] = self._live_keys(selector, now_ms)
        if after_key is not None:
            after = as_key(after_key)
            keys = (key for key in keys if key > after)
        chosen = sorted(keys) if max_items is None else heapq.nsmallest(max_items, keys)
        return [self._snapshot_item(key) for key in chosen]

    def select_keys(self, mask: Callable[[np.ndarray], np.ndarray], now_ms: int | None) -> list[bytes]:
        """Live keys whose hashes ``mask`` selects, sorted; ``mask`` maps a uint64 hash array to bools.

        ``now_ms=None`` selects every *stored* key, expired ones included (for deletes).
        Vectorised because a migration source selects its moving keys among millions: hashing is one
        pass and the placement lookups run in numpy.
        """
        keys = list(self._data)
        if not keys:
            return []
        chosen = mask(key_hashes(keys))
        expire_at = self._expire_at_ms
        selected = [key for key, keep in zip(keys, chosen.tolist(), strict=True) if keep]
        if expire_at and now_ms is not None:
            selected = [k for k in selected if (at := expire_at.get(k)) is None or at > now_ms]
        selected.sort()
        return selected

    def items(self, keys: Sequence[bytes], now_ms: int) -> list[SnapshotItem]:
        """Snapshot items of those ``keys`` that are live now (absent or expired ones are skipped)."""
        data = self._data
        expire_at = self._expire_at_ms
        out = []
        for key in keys:
            if key in data:
                at = expire_at.get(key)
                if at is None or at > now_ms:
                    out.append(self._snapshot_item(key))
        return out

    def entry_bytes(self, key: bytes) -> int:
        """Accounted bytes of one stored key (0 when absent): what moving it costs."""
        value = self._data.get(key)
        return 0 if value is None else self._entry_bytes(key, value)

    def _snapshot_item(self, key: bytes) -> SnapshotItem:
        value = self._data[key]
        return (key, _TAG_OF_TYPE[type(value)], _wire_value(value), self._expire_at_ms.get(key))

    def restore(self, items: Sequence[SnapshotItem]) -> int:
        """Overwrite the keys of snapshot items (all checked first); replicate with ``restore_ops``."""
        if not isinstance(items, (list, tuple)):
            raise _bad_op("items must be a sequence of snapshot items")
        ops = [_check_op(("put", *item) if isinstance(item, (list, tuple)) else item) for item in items]
        for op in ops:
            self._apply_one(op)
        return len(ops)

    def drop(self, selector: Selector) -> int:
        """Delete every stored key whose hash is selected (expired ones too); returns how many.

        Replicate to slaves with ``apply([drop_op(ranges)])``.
        """
        return self._drop_predicate(_predicate(selector))

    def _drop_predicate(self, selected: Callable[[int], bool]) -> int:
        doomed = [key for key in self._data if selected(key_hash(key))]
        for key in doomed:
            self._delete_raw(key)
        return len(doomed)

    def dump(self, now_ms: int) -> dict[bytes, tuple[str, Any, int | None]]:
        """Every live key -> (type_tag, value, expire_at_ms), canonical and sorted by key.

        Equal stores give equal dumps (and equal msgpack bytes), so tests and replica checks compare
        dumps. O(n log n): not for hot paths.
        """
        expire_at = self._expire_at_ms
        result = {}
        for key in sorted(self._data):
            at = expire_at.get(key)
            if at is None or at > now_ms:
                value = self._data[key]
                result[key] = (_TAG_OF_TYPE[type(value)], _wire_value(value), at)
        return result

    # ---- accounting --------------------------------------------------------------------------

    @property
    def key_count(self) -> int:
        """Stored keys, including expired ones not yet reclaimed. O(1)."""
        return len(self._data)

    @property
    def approx_bytes(self) -> int:
        """Approximate payload plus overhead of stored keys (formula in the module doc). O(1)."""
        return self._approx_bytes

    def stats(self, now_ms: int) -> StoreStats:
        """Size figures; O(keys with a TTL) for the expired count, O(1) for the rest."""
        expired = sum(1 for at in self._expire_at_ms.values() if at <= now_ms)
        return StoreStats(len(self._data), self._approx_bytes, len(self._expire_at_ms), expired)

    def check_invariants(self) -> None:
        """Recompute the bookkeeping from scratch; raise InvariantViolation on any drift. O(n)."""
        total = 0
        for key, value in self._data.items():
            kind = type(value)
            if type(key) is not bytes or kind not in _TAG_OF_TYPE:
                raise InvariantViolation(f"bad entry {key!r}: {kind.__name__}")
            if kind in (deque, dict, set) and not value:
                raise InvariantViolation(f"empty collection stored under {key!r}")
            if kind is int and not INT64_MIN <= value <= INT64_MAX:
                raise InvariantViolation(f"integer out of int64 under {key!r}")
            total += self._entry_bytes(key, value)
        stray = self._expire_at_ms.keys() - self._data.keys()
        if stray:
            raise InvariantViolation(f"TTLs for keys that are not stored: {sorted(stray)[:5]!r}")
        if total != self._approx_bytes:
            raise InvariantViolation(f"approx_bytes {self._approx_bytes} != recomputed {total}")
