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

``validate_command`` is the check of a call against this table: the codec runs it on every
decoded ``Request`` (no schema can say what a command's arguments are), the client library before
sending. It normalises as it checks, so every handler sees one canonical shape.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dimint.core.errors import CommandError, ErrorCode, LocalProtocolError
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


class Consistency(enum.StrEnum):
    """What a read may be served from: ``strong`` reads go to the master (linearizable), ``weak``
    ones may be served by a slave (possibly stale, staleness measured)."""

    STRONG = "strong"
    WEAK = "weak"


#: The level names as they arrive from users and files, for membership checks.
CONSISTENCIES: tuple[str, ...] = tuple(level.value for level in Consistency)


#: Read consistency a client may ask for (``Consistency``'s values, as they travel).
CONSISTENCY_LEVELS: frozenset[str] = frozenset(Consistency)
#: Administrative actions an Overlord understands.
ADMIN_ACTIONS: frozenset[str] = frozenset({"status", "add_shard", "remove_shard", "add_node"})


def request_keys(command: str, args: list[Any] | tuple[Any, ...]) -> list[bytes]:
    """The keys a command touches, by the command table (used for routing and ownership checks)."""
    spec = COMMANDS[command]
    if spec.key_positions == (-1,):
        return [as_key(a) for a in args]
    if spec.key_positions == (-2,):
        return [as_key(a) for a in args[0::2]]
    return [as_key(args[i]) for i in spec.key_positions]


# --------------------------------------------------------------------------------------------
# Checking a call against the table
# --------------------------------------------------------------------------------------------


def describe(value: Any) -> str:
    """Name a value's type for an error message ("got str", "got None")."""
    if value is None:
        return "None"
    return type(value).__name__


def show(value: Any, limit: int = 40) -> str:
    """A short repr of a peer-supplied value: enough to recognise it, never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _BadArgument(Exception):
    def __init__(self, expected: str, got: str) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got


def _as_bytes(value: Any, expected: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadArgument(expected + " (valid UTF-8 text)", "a str with lone surrogates") from None
    raise _BadArgument(expected, describe(value))


def _kind_key(value: Any) -> bytes:
    return _as_bytes(value, "a key (str or bytes)")


def _kind_bytes(value: Any) -> bytes:
    return _as_bytes(value, "str or bytes")


def _kind_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadArgument("an int", describe(value))
    if not INT64_MIN <= value <= INT64_MAX:
        raise _BadArgument("a signed 64-bit int", show(value))
    return int(value)


def _kind_value(value: Any) -> bytes | int:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return _kind_int(value)
        except _BadArgument as exc:
            raise _BadArgument("str, bytes or a signed 64-bit int", exc.got) from None
    return _as_bytes(value, "str, bytes or int")


def _kind_opt_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return _kind_int(value)
    except _BadArgument as exc:
        raise _BadArgument(exc.expected + " or None", exc.got) from None


def _kind_cond(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value in ("nx", "xx")):
        return None if value is None else str(value)
    got = show(value) if isinstance(value, str) else describe(value)
    raise _BadArgument("None, 'nx' or 'xx'", got)


_KINDS: dict[str, Callable[[Any], Any]] = {
    "key": _kind_key,
    "bytes": _kind_bytes,
    "value": _kind_value,
    "int": _kind_int,
    "opt_int": _kind_opt_int,
    "cond": _kind_cond,
}
#: Kinds that accept None and so may be left off the end of a request.
_OPTIONAL_KINDS = frozenset({"opt_int", "cond"})


@dataclass(frozen=True, slots=True)
class _CommandShape:
    """A command's argument kinds, split into fixed arguments and an optional repeating tail."""

    name: str
    fixed: tuple[str, ...]
    required: int  # fixed arguments before the optional trailing ones
    repeat: tuple[str, ...]  # () for none, one kind for ``kind*``, two kinds for ``pairs``
    pair_names: str = ""
    #: ``_KINDS`` of ``fixed`` and of ``repeat``, looked up once: every request runs them.
    fixed_normalisers: tuple[Callable[[Any], Any], ...] = ()
    repeat_normalisers: tuple[Callable[[Any], Any], ...] = ()

    def arity_error(self, count: int) -> str:
        name, fixed = repr(self.name), len(self.fixed)
        if not self.repeat:
            if self.required == fixed:
                return f"{name} takes {fixed} argument{'' if fixed == 1 else 's'}, got {count}"
            return f"{name} takes {self.required} to {fixed} arguments, got {count}"
        if len(self.repeat) == 1:
            least = fixed + 1
            return f"{name} takes at least {least} argument{'' if least == 1 else 's'}, got {count}"
        parity = "an even" if fixed % 2 == 0 else "an odd"
        lead = f"{fixed} argument{'' if fixed == 1 else 's'} then " if fixed else ""
        return (
            f"{name} takes {lead}{self.pair_names} pairs ({parity} number of arguments, "
            f"at least {fixed + 2}), got {count}"
        )

    def kind_at(self, index: int) -> str:
        if index < len(self.fixed):
            return self.fixed[index]
        return self.repeat[(index - len(self.fixed)) % len(self.repeat)]

    def accepts_count(self, count: int) -> bool:
        fixed = len(self.fixed)
        if not self.repeat:
            return self.required <= count <= fixed
        extra = count - fixed
        return extra >= len(self.repeat) and extra % len(self.repeat) == 0


def _shape_of(spec: CommandSpec) -> _CommandShape:
    fixed: list[str] = []
    repeat: tuple[str, ...] = ()
    pair_names = ""
    for position, kind in enumerate(spec.args):
        if position != len(spec.args) - 1 and (kind.endswith("*") or kind == "pairs"):
            raise LocalProtocolError(f"command {spec.name!r}: {kind!r} must be the last argument kind")
        if kind == "pairs":
            # mset pairs are key/value (its keys route the request); hset pairs are field/value,
            # and a hash field's value is a byte string like any other hash member.
            if spec.key_positions == (-2,):
                repeat, pair_names = ("key", "value"), "key/value"
            else:
                repeat, pair_names = ("bytes", "bytes"), "field/value"
        elif kind.endswith("*"):
            repeat = (kind[:-1],)
        else:
            fixed.append(kind)
    for kind in (*fixed, *repeat):
        if kind not in _KINDS:
            raise LocalProtocolError(f"command {spec.name!r}: unknown argument kind {kind!r}")
    required = len(fixed)
    if not repeat:
        while required and fixed[required - 1] in _OPTIONAL_KINDS:
            required -= 1
    normalisers = tuple(_KINDS[kind] for kind in fixed)
    repeat_normalisers = tuple(_KINDS[kind] for kind in repeat)
    return _CommandShape(
        spec.name, tuple(fixed), required, repeat, pair_names, normalisers, repeat_normalisers
    )


_SHAPES: dict[str, _CommandShape] = {name: _shape_of(spec) for name, spec in COMMANDS.items()}


def validate_command(command: str, args: Sequence[Any]) -> tuple[Any, ...]:
    """Check a command and its arguments against the command table; return normalised arguments.

    Keys, hash fields, members and string values become ``bytes``; optional trailing arguments a
    caller left off (``set``'s ttl and nx/xx) become ``None``. Raises ``CommandError`` with
    ``UNKNOWN_COMMAND`` or ``BAD_ARGUMENT`` and a reason naming the argument (counted from 0, as in
    ``args[2]``). The codec runs this on every ``Request``; the client library runs it before
    sending, so a bad call fails at once and locally.
    """
    if not isinstance(command, str):
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"command name must be a str, got {describe(command)}")
    shape = _SHAPES.get(command)
    if shape is None:
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {show(command)}")
    if not isinstance(args, (list, tuple)):
        raise CommandError(
            ErrorCode.BAD_ARGUMENT, f"arguments of {command!r} must be a list, got {describe(args)}"
        )
    if not shape.accepts_count(len(args)):
        raise CommandError(ErrorCode.BAD_ARGUMENT, shape.arity_error(len(args)))
    # The usual case in one pass; a refusal is worded by the loop below.
    normalisers: Iterable[Callable[[Any], Any]] = shape.fixed_normalisers
    if shape.repeat:
        normalisers = itertools.chain(normalisers, itertools.cycle(shape.repeat_normalisers))
    try:
        fast = [normalise(value) for normalise, value in zip(normalisers, args)]  # noqa: B905
    except _BadArgument:
        pass
    else:
        if not shape.repeat:
            fast.extend([None] * (len(shape.fixed) - len(args)))
        return tuple(fast)
    normalised = []
    for index, value in enumerate(args):
        try:
            normalised.append(_KINDS[shape.kind_at(index)](value))
        except _BadArgument as exc:
            raise CommandError(
                ErrorCode.BAD_ARGUMENT,
                f"argument {index} of {command!r} must be {exc.expected}, got {exc.got}",
            ) from None
    if not shape.repeat:
        normalised.extend([None] * (len(shape.fixed) - len(args)))
    return tuple(normalised)


def check_identity(command: str, client_id: int, seq: int, floor: int) -> None:
    """Refuse an at-most-once identity that cannot be right: negative numbers, a write of an
    identified client without a sequence number, or a floor above the request's own sequence
    (the client cannot have finished with a request it is still sending)."""
    if client_id < 0 or seq < 0 or floor < 0:
        raise CommandError(
            ErrorCode.BAD_ARGUMENT,
            f"client_id, seq and floor must be >= 0, got {client_id}, {seq}, {floor}",
        )
    if client_id and COMMANDS[command].is_write:
        if seq < 1:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"a write of client {client_id} needs a seq >= 1")
        if floor > seq:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"floor {floor} is above the request's own seq {seq}")
