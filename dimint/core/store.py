"""The typed in-memory data of one shard replica: commands, replication ops, ranges, accounting.

Theory of operation
-------------------
**Representation.** One dict maps each key (``bytes``) to its value, and the value's Python type *is*
its DiMint type: ``bytes`` is a string, ``int`` an integer, ``deque`` a list, ``dict`` a hash (field
bytes -> value bytes), ``set`` a set of bytes. A second dict holds ``expire_at_ms`` only for keys that
have a TTL. There is no per-key wrapper object and no stored hash: a million small keys cost little
more than a plain dict of the same pairs (``benchmarks/store.py`` holds us to 1.5x). Hashes are
computed when a range is scanned, which is rare (migration, rebalancing) next to get/set.

**Commands.** ``execute(command, args, now_ms)`` is the canonical entry; the table in
``dimint.core.commands`` names the commands and argument kinds. Every command first normalises and
checks all its arguments, then checks the stored value's type and limits, and mutates only after
every check passed: a refused command raises ``CommandError`` and changes nothing.

**Expiry.** A key whose ``expire_at_ms <= now_ms`` is absent to every command. Reads never mutate
(they may run on slaves, and a read must not need replicating). A write that finds an expired key
reclaims it and says so with an explicit ``("del", key)`` op; ``purge_expired`` sweeps the rest and
returns the deletes to replicate. This is Redis's rule: only the master expires, replicas delete
when told.

**Replication invariant.** ``Outcome.writes`` describes the change to the *stored* state (expired
but unreclaimed keys included) in absolute terms: relative TTLs become ``expire_at_ms``, ``incr``
becomes a ``put`` of the resulting integer, collection commands become deltas naming only what
actually changed. ``apply`` runs those ops on stored state without looking at the clock, using the
same mutation primitives as the commands. Hence a replica that starts with the master's stored state
and applies the master's ops in order holds the master's stored state exactly, whatever its own
``now_ms`` - and so ``dump(t)`` agrees on both for every ``t``. For this, every check that can fail
for an *absent* key runs before the key is looked up, so a reclaim is never followed by a refusal
whose ops would be lost; ``execute`` turns any such refusal into ``InvariantViolation``.

**WriteOp** (tuples of str/bytes/int/None; msgpack turns them into lists, and ``apply`` accepts lists):

====================================================  ==============================================
``("put", key, type_tag, value, expire_at_ms|None)``  replace the key (value in snapshot format)
``("del", key)``                                      delete the key if stored
``("expire_at", key, expire_at_ms|None)``             set or clear the TTL of a stored key
``("lpush"|"rpush", key, (item, ...))``               push one by one (as the command), creating the list
``("lpop"|"rpop", key)``                              pop one item; an emptied list vanishes
``("hset", key, (field, value, ...))``                set fields, creating the hash if absent
``("hdel", key, (field, ...))``                       delete fields; an emptied hash vanishes
``("sadd"|"srem", key, (member, ...))``               add / remove members
``("drop", ((start, end), ...))``                     delete every key whose hash is in the ranges
====================================================  ==============================================

**SnapshotItem** is ``(key, type_tag, value, expire_at_ms|None)`` - exactly a ``put`` op without its
name - where ``type_tag`` is ``"string"|"integer"|"list"|"hash"|"set"`` and ``value`` is ``bytes``,
``int``, a tuple of items in list order, a flat tuple ``(field, value, ...)`` sorted by field, or a
sorted tuple of members. ``dump`` uses the same format, so dumps are canonical and msgpack-able.

**Accounting.** ``approx_bytes`` is ``sum(ENTRY_OVERHEAD_BYTES + len(key) + payload)`` where payload
is the string length, ``INTEGER_BYTES``, or the item lengths plus ``ITEM_OVERHEAD_BYTES`` per item,
plus ``TTL_OVERHEAD_BYTES`` for a key with a TTL. It and ``key_count`` count *stored* keys (expired
ones included until reclaimed), are updated by the mutation primitives only, and are O(1) to read;
``check_invariants`` recomputes them. Master and replica agree on them because their stored states
agree.

**Ranges.** A selector is a sequence of ``HashRange`` (or one ``HashRange``), or a predicate on the
64-bit key hash. Range operations are O(stored keys): they hash every key. ``snapshot`` resumes after
``after_key`` in sorted key order, so each batch is one O(n log batch) pass; a migration of a large
store should take large batches.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from dimint.core.commands import COMMANDS, INT64_MAX, INT64_MIN, CommandSpec
from dimint.core.errors import (
    CommandError,
    ConfigError,
    ErrorCode,
    InvariantViolation,
    LocalProtocolError,
    RemoteProtocolError,
)
from dimint.core.hashing import HashRange, Key, as_key, key_hash, key_hashes

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "INTEGER_BYTES",
    "ITEM_OVERHEAD_BYTES",
    "TTL_OVERHEAD_BYTES",
    "TYPE_TAGS",
    "Outcome",
    "Selector",
    "SnapshotItem",
    "Store",
    "StoreLimits",
    "StoreStats",
    "WriteOp",
    "drop_op",
    "restore_ops",
]

WriteOp = tuple[Any, ...]
SnapshotItem = tuple[bytes, str, Any, int | None]
Selector = Sequence[HashRange] | HashRange | Callable[[int], bool]

#: Accounting constants: rough Python costs, chosen so approx_bytes tracks real memory in trend.
ENTRY_OVERHEAD_BYTES = 32
ITEM_OVERHEAD_BYTES = 8
INTEGER_BYTES = 8
TTL_OVERHEAD_BYTES = 16

TYPE_TAGS: tuple[str, ...] = ("string", "integer", "list", "hash", "set")
_TAG_OF_TYPE: dict[type, str] = {bytes: "string", int: "integer", deque: "list", dict: "hash", set: "set"}
_NO_WRITES: tuple[WriteOp, ...] = ()
#: The stored type each delta op works on; a replica holding another type has diverged.
_DELTA_TARGET_TYPE: dict[str, type] = {
    "lpush": deque,
    "rpush": deque,
    "lpop": deque,
    "rpop": deque,
    "hset": dict,
    "hdel": dict,
    "sadd": set,
    "srem": set,
}


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Per-node bounds that keep one bad request from exhausting memory."""

    max_key_bytes: int = 4096
    max_value_bytes: int = 8 * 1024 * 1024
    max_collection_items: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_key_bytes", "max_value_bytes", "max_collection_items"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"StoreLimits.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's reply and the ops that reproduce its state change on a replica."""

    value: Any
    writes: tuple[WriteOp, ...]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Size figures for metrics and rebalancing decisions."""

    keys: int  # stored keys, expired-but-unreclaimed included
    approx_bytes: int
    keys_with_ttl: int
    expired_keys: int  # stored keys already expired at now_ms (reclaimable by purge_expired)


def restore_ops(items: Sequence[SnapshotItem]) -> tuple[WriteOp, ...]:
    """The ops that restore snapshot items, to replicate a restore to the target's slaves."""
    return tuple(("put", *item) for item in items)


def drop_op(ranges: Sequence[HashRange]) -> WriteOp:
    """The op that drops hash ranges, so a migration source's slaves drop what it dropped."""
    return ("drop", tuple((r.start, r.end) for r in ranges))


# --------------------------------------------------------------------------------------------
# Value helpers (pure functions on the internal representation)
# --------------------------------------------------------------------------------------------


def _payload_bytes(value: Any) -> int:
    kind = type(value)
    if kind is bytes:
        return len(value)
    if kind is int:
        return INTEGER_BYTES
    if kind is dict:
        return sum(len(f) + len(v) for f, v in value.items()) + ITEM_OVERHEAD_BYTES * len(value)
    return sum(map(len, value)) + ITEM_OVERHEAD_BYTES * len(value)


def _wire_value(value: Any) -> Any:
    """Internal value -> canonical plain data (snapshot, dump and put format)."""
    kind = type(value)
    if kind is bytes or kind is int:
        return value
    if kind is deque:
        return tuple(value)
    if kind is dict:
        return tuple(part for field in sorted(value) for part in (field, value[field]))
    return tuple(sorted(value))


def _parse_canonical_int(text: bytes) -> int | None:
    """The integer a string spells in canonical decimal ("12", "-3", "0"), else None.

    Canonical only ("012", "+1", "-0", " 1" are refused) so that incr never silently rewrites a
    string into a different spelling of the same number.
    """
    digits = text[1:] if text.startswith(b"-") else text
    if not digits or len(digits) > 19 or not digits.isdigit():
        return None
    if digits.startswith(b"0") and text != b"0":
        return None
    number = int(text)
    return number if INT64_MIN <= number <= INT64_MAX else None


def _predicate(selector: Selector) -> Callable[[int], bool]:
    if isinstance(selector, HashRange):
        ranges: tuple[HashRange, ...] = (selector,)
    elif callable(selector):
        return selector
    else:
        ranges = tuple(selector)
        if not all(isinstance(r, HashRange) for r in ranges):
            raise LocalProtocolError("a selector is HashRanges or a predicate on the key hash")
    if len(ranges) == 1:
        start, end = ranges[0].start, ranges[0].end
        return lambda h: start <= h < end
    bounds = tuple((r.start, r.end) for r in ranges)
    return lambda h: any(start <= h < end for start, end in bounds)


# --------------------------------------------------------------------------------------------
# Wire (op / snapshot) validation: peers' data is checked in full before anything changes
# --------------------------------------------------------------------------------------------


def _bad_op(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad write op: {reason}")


def _wire_bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise _bad_op(f"{what} must be bytes, got {type(value).__name__}")
    return value


def _wire_items(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _bad_op(f"{what} must be a non-empty sequence of bytes")
    for item in value:
        _wire_bytes(item, what)
    return list(value)


def _wire_expire(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise _bad_op(f"expire_at_ms must be an int64 or None, got {value!r}")
    return value


def _internal_value(tag: Any, value: Any) -> Any:
    """Snapshot-format value -> internal representation, refusing anything non-canonical."""
    if tag == "string":
        return _wire_bytes(value, "string value")
    if tag == "integer":
        if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
            raise _bad_op(f"integer value must be an int64, got {value!r}")
        return value
    if tag == "list":
        return deque(_wire_items(value, "list items"))
    if tag == "hash":
        flat = _wire_items(value, "hash fields and values")
        mapping = dict(zip(flat[::2], flat[1::2], strict=False))
        if len(flat) % 2 or len(mapping) * 2 != len(flat):
            raise _bad_op("hash value must be distinct field/value pairs")
        return mapping
    if tag == "set":
        items = _wire_items(value, "set members")
        members = set(items)
        if len(members) != len(items):
            raise _bad_op("set members must be distinct")
        return members
    raise _bad_op(f"unknown type tag {tag!r}")


def _check_op(op: Any) -> tuple[Any, ...]:
    """One op in wire form -> a normalised tuple, or RemoteProtocolError."""
    if not isinstance(op, (list, tuple)) or not op or type(op[0]) is not str:
        raise _bad_op(f"not an op: {op!r}")
    name, arity = op[0], len(op)
    if name == "put" and arity == 5:
        return ("put", _wire_bytes(op[1], "key"), op[2], _internal_value(op[2], op[3]), _wire_expire(op[4]))
    if name in ("del", "lpop", "rpop") and arity == 2:
        return (name, _wire_bytes(op[1], "key"))
    if name == "expire_at" and arity == 3:
        return (name, _wire_bytes(op[1], "key"), _wire_expire(op[2]))
    if name in ("lpush", "rpush", "hdel", "sadd", "srem") and arity == 3:
        return (name, _wire_bytes(op[1], "key"), _wire_items(op[2], name))
    if name == "hset" and arity == 3:
        flat = _wire_items(op[2], "hset pairs")
        if len(flat) % 2:
            raise _bad_op("hset needs field/value pairs")
        return (name, _wire_bytes(op[1], "key"), flat)
    if name == "drop" and arity == 2:
        if not isinstance(op[1], (list, tuple)):
            raise _bad_op("drop needs a sequence of (start, end) ranges")
        try:
            ranges = tuple(HashRange(start, end) for start, end in op[1])
        except (TypeError, ValueError) as error:
            raise _bad_op(f"drop ranges: {error}") from None
        return (name, ranges)
    raise _bad_op(f"unknown op {name!r} with {arity} fields")


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    """A command compiled from its CommandSpec: the handler and one closure checking all arguments."""

    handler: Callable[..., Any]
    is_write: bool
    normalise: Callable[[Sequence[Any]], tuple[Any, ...]]


def _argument_normalisers(limits: StoreLimits) -> dict[str, Callable[[Any], Any]]:
    """One closure per argument kind of ``dimint.core.commands``, with the limits baked in.

    Closures rather than methods because these run for every argument of every command.
    """
    max_key_bytes, max_value_bytes = limits.max_key_bytes, limits.max_value_bytes

    def key(arg: Any) -> bytes:
        if type(arg) is not bytes:
            arg = _to_bytes(arg, "key")
        if len(arg) > max_key_bytes:
            raise CommandError(ErrorCode.KEY_TOO_LARGE, f"key of {len(arg)} bytes > {max_key_bytes}")
        return arg

    def data(arg: Any) -> bytes:
        if type(arg) is not bytes:
            arg = _to_bytes(arg, "value")
        if len(arg) > max_value_bytes:
            raise CommandError(ErrorCode.VALUE_TOO_LARGE, f"value of {len(arg)} bytes > {max_value_bytes}")
        return arg

    def value(arg: Any) -> bytes | int:
        if isinstance(arg, int) and not isinstance(arg, bool):
            return _norm_int(arg)
        return data(arg)

    return {
        "key": key,
        "value": value,
        "bytes": data,
        "int": _norm_int,
        "opt_int": _norm_opt_int,
        "cond": _norm_cond,
    }


def _arity_error(command: str, expected: str, got: int) -> CommandError:
    return CommandError(ErrorCode.BAD_ARGUMENT, f"{command} takes {expected} arguments, got {got}")


def _compile_normaliser(
    spec: CommandSpec, kinds: dict[str, Callable[[Any], Any]]
) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A closure that checks a command's arity and normalises its arguments left to right.

    The result is the handler's positional arguments; a variadic tail arrives as one list.
    Arities 1-4 are unrolled because get/set sit on every benchmark's hot path.
    """
    name = spec.name
    fixed = [kinds[kind] for kind in spec.args if not kind.endswith("*") and kind != "pairs"]
    tail_kind = spec.args[-1]
    count = len(fixed)
    if tail_kind.endswith("*") or tail_kind == "pairs":
        if tail_kind == "pairs":
            tail = (kinds["key"], kinds["value"]) if spec.key_positions == (-2,) else (kinds["bytes"],) * 2
        else:
            tail = (kinds[tail_kind[:-1]],)
        step = len(tail)
        expected = f"{count} + {'pairs of' if step == 2 else 'one or more'}"

        def normalise_variadic(args: Sequence[Any]) -> tuple[Any, ...]:
            rest = len(args) - count
            if rest < step or rest % step:
                raise _arity_error(name, expected, len(args))
            head = [norm(arg) for norm, arg in zip(fixed, args, strict=False)]
            if step == 1:
                norm = tail[0]
                head.append([norm(arg) for arg in args[count:]])
            else:
                first, second = tail
                head.append([second(arg) if i % 2 else first(arg) for i, arg in enumerate(args[count:])])
            return tuple(head)

        return normalise_variadic
    expected = str(count)
    if count == 1:
        (n0,) = fixed

        def normalise_1(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 1:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]),)

        return normalise_1
    if count == 2:
        n0, n1 = fixed

        def normalise_2(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 2:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]), n1(args[1]))

        return normalise_2
    if count == 3:
        n0, n1, n2 = fixed

        def normalise_3(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 3:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]), n1(args[1]), n2(args[2]))

        return normalise_3
    if count == 4:
        n0, n1, n2, n3 = fixed

        def normalise_4(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 4:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]), n1(args[1]), n2(args[2]), n3(args[3]))

        return normalise_4
    raise ConfigError(f"command {name} has {count} fixed arguments; teach _compile_normaliser")


class Store:
    """Typed key-value data of one shard replica. Not thread-safe: one driver loop owns it."""

    def __init__(self, limits: StoreLimits = StoreLimits()) -> None:
        if not isinstance(limits, StoreLimits):
            raise ConfigError(f"limits must be StoreLimits, got {type(limits).__name__}")
        self.limits = limits
        self._data: dict[bytes, Any] = {}
        self._expire_at_ms: dict[bytes, int] = {}
        self._approx_bytes = 0
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


# --------------------------------------------------------------------------------------------
# Stateless normalisers
# --------------------------------------------------------------------------------------------


def _to_bytes(arg: Any, what: str) -> bytes:
    if isinstance(arg, str):
        try:
            return arg.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{what} is not valid UTF-8 text") from None
    if isinstance(arg, bytes):
        return bytes(arg)
    raise CommandError(ErrorCode.BAD_ARGUMENT, f"{what} must be str or bytes, got {type(arg).__name__}")


def _norm_int(arg: Any) -> int:
    if type(arg) is not int:
        if not isinstance(arg, int) or isinstance(arg, bool):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"expected an int, got {type(arg).__name__}")
        arg = int(arg)
    if not INT64_MIN <= arg <= INT64_MAX:
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"{arg} is outside signed 64 bits")
    return arg


def _norm_opt_int(arg: Any) -> int | None:
    return None if arg is None else _norm_int(arg)


def _norm_cond(arg: Any) -> str | None:
    if arg is None or arg == "nx" or arg == "xx":
        return arg
    raise CommandError(ErrorCode.BAD_ARGUMENT, f'condition must be None, "nx" or "xx", got {arg!r}')


def _wrong_type(command: str, value: Any) -> CommandError:
    return CommandError(ErrorCode.WRONG_TYPE, f"{command} does not apply to a {_TAG_OF_TYPE[type(value)]}")
