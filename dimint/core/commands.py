"""The command table: every store command, its argument shape and whether it writes.

Theory of operation: one table serves three readers. The protocol codec checks a request's
arguments against it (so a malformed request is refused before it reaches a state machine), the
store dispatches on it, and the client and router use ``is_write``/``key_positions`` (through
``request_keys``) to send a command to the right shard and role. Adding a command means adding a
row here and a method on the store; nothing else has a list of commands to keep in step.

Argument kinds:
``key``    str or bytes, normalised to bytes;
``value``  str, bytes or int (a string value, or an integer for ``set``);
``bytes``  str or bytes, normalised to bytes (hash fields, list items, set members);
``int``    a signed 64-bit integer (bool is refused);
``opt_int`` an int or None;
``cond``   None, "nx" or "xx".
A trailing ``*`` marks a variadic kind that must appear at least once; ``pairs`` means alternating
key/value (``mset``) or field/value (``hset``), at least one pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dimint.core.hashing import as_key


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    args: tuple[str, ...]
    is_write: bool
    #: Positions of key arguments; ``-1`` means every argument is a key (mget, delete, exists),
    #: ``-2`` means every even position is a key (mset).
    key_positions: tuple[int, ...] = (0,)


_SPECS = [
    CommandSpec("get", ("key",), False),
    CommandSpec("set", ("key", "value", "opt_int", "cond"), True),  # key, value, ttl_ms, nx/xx
    CommandSpec("delete", ("key*",), True, (-1,)),
    CommandSpec("exists", ("key*",), False, (-1,)),
    CommandSpec("type", ("key",), False),
    CommandSpec("ttl", ("key",), False),
    CommandSpec("expire", ("key", "int"), True),  # key, ttl_ms
    CommandSpec("persist", ("key",), True),
    CommandSpec("incr", ("key", "int"), True),  # key, by
    CommandSpec("decr", ("key", "int"), True),
    CommandSpec("mget", ("key*",), False, (-1,)),
    CommandSpec("mset", ("pairs",), True, (-2,)),
    CommandSpec("lpush", ("key", "bytes*"), True),
    CommandSpec("rpush", ("key", "bytes*"), True),
    CommandSpec("lpop", ("key",), True),
    CommandSpec("rpop", ("key",), True),
    CommandSpec("lrange", ("key", "int", "int"), False),
    CommandSpec("llen", ("key",), False),
    CommandSpec("hset", ("key", "pairs"), True),
    CommandSpec("hget", ("key", "bytes"), False),
    CommandSpec("hdel", ("key", "bytes*"), True),
    CommandSpec("hgetall", ("key",), False),
    CommandSpec("hlen", ("key",), False),
    CommandSpec("sadd", ("key", "bytes*"), True),
    CommandSpec("srem", ("key", "bytes*"), True),
    CommandSpec("smembers", ("key",), False),
    CommandSpec("sismember", ("key", "bytes"), False),
    CommandSpec("scard", ("key",), False),
]

COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in _SPECS}
WRITE_COMMANDS: frozenset[str] = frozenset(s.name for s in _SPECS if s.is_write)
READ_COMMANDS: frozenset[str] = frozenset(s.name for s in _SPECS if not s.is_write)

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def request_keys(command: str, args: list[Any] | tuple[Any, ...]) -> list[bytes]:
    """The keys a command touches, by the command table (used for routing and ownership checks)."""
    spec = COMMANDS[command]
    if spec.key_positions == (-1,):
        return [as_key(a) for a in args]
    if spec.key_positions == (-2,):
        return [as_key(a) for a in args[0::2]]
    return [as_key(args[i]) for i in spec.key_positions]
