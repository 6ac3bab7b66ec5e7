"""What a write leaves behind: the WriteOp and SnapshotItem formats, limits and accounting sizes.

Theory of operation
-------------------
Ops are what replication, snapshots and migration carry, so they are plain tuples of
str/bytes/int/None (msgpack turns them into lists) in absolute terms (see the package docstring for
the table). Ops arriving from the wire are checked here (``_check_op``) before ``Store.apply`` runs
them, because a replica must refuse a malformed op rather than corrupt its accounting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dimint.core.commands import INT64_MAX, INT64_MIN
from dimint.core.errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
)
from dimint.core.hashing import HashRange

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
