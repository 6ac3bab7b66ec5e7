"""Wire messages of DiMint: frozen dataclasses, their validation, and the msgpack codec.

Theory of operation
-------------------
Every message is a frozen, slotted dataclass registered with ``@message(tag=N)``. The tag is a
small integer that names the message on the wire; the dataclass annotations are the schema, and the
decoder validates against exactly those annotations, so a message's Python definition is the only
description of its wire form. The wire form is a msgpack array ``[tag, field1, field2, ...]`` in
field order: positional, so a frame carries no field names.

Adding a message means writing::

    @message(tag=42)
    @dataclass(frozen=True, slots=True)
    class Thing(Message):  # plus a docstring: when it is sent, and why
        shard_id: int
        note: str | None = None

Supported field types: ``int``, ``bool``, ``str``, ``bytes``, ``float``, ``X | None`` and other unions,
``list[X]``, ``tuple[X, ...]``, ``tuple[A, B]``, ``dict[str, X]``, ``Any`` (msgpack-native data),
``ErrorCode`` and other str/int enums, and nested frozen dataclasses (sent as positional arrays).
Checks that types cannot express go in a ``_refine`` classmethod (see ``Message._refine``).

Wire compatibility rules (tests pin the tag table):

* A tag never changes meaning and is never reused, even after its message is retired.
* Fields are never reordered or retyped. A new field may only be appended, with a default; the
  decoder fills in trailing defaulted fields that an older peer left out. A frame with more fields
  than this process knows is refused, because silently dropping data is worse than an error.

The decoder is the trust boundary (invariant 7: bad input never kills a process). For *any* byte
string ``decode`` returns a fully validated message or raises ``DecodeError``, never anything else
and never a half-built message. Validation is strict and small: a ``bool`` is not an ``int``;
integers must fit msgpack's range (signed or unsigned 64-bit); strings must be valid UTF-8; maps
have ``str``/``bytes`` keys only; nesting depth, container sizes and the frame size are capped;
msgpack extension types are refused. A frame that is shaped like a request (a request tag and an
integer ``request_id``) carries that id on the ``DecodeError``, so the shell can still answer with an
``ErrorReply`` the client can match to its request.

``Request`` is validated further against the command table (``dimint.core.commands``) and is
*normalised* on decode: keys, fields and string values become ``bytes`` and omitted optional
trailing arguments become ``None``. Handlers therefore see one canonical shape whatever a client
sent. ``validate_command`` is the same check for the client library, which should send the
normalised arguments it returns.

``encode`` checks the message against the same schema before packing (``check=True``), with one
extra rule: a value must survive the trip unchanged, so a ``tuple`` where the schema (or ``Any``
data) implies a list is refused. This keeps the simulation, which may hand messages over as
objects, and the real runtime, which sends bytes, from seeing different values.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from dimint.core.commands import COMMANDS, INT64_MAX, INT64_MIN, CommandSpec
from dimint.core.errors import CommandError, DecodeError, ErrorCode, LocalProtocolError

__all__ = [
    "ADMIN_ACTIONS",
    "CONSISTENCY_LEVELS",
    "MAX_CONTAINER_LEN",
    "MAX_FRAME_BYTES",
    "MAX_NESTING_DEPTH",
    "REGISTRY",
    "AdminReply",
    "AdminRequest",
    "ErrorReply",
    "Frame",
    "GetMap",
    "Heartbeat",
    "HeartbeatAck",
    "MapReply",
    "Message",
    "MessageRegistry",
    "MigrateBatch",
    "MigrateBatchAck",
    "MoveReport",
    "Replicate",
    "ReplicateAck",
    "Request",
    "Response",
    "SnapshotChunk",
    "SyncRequest",
    "check",
    "decode",
    "encode",
    "message",
    "message_types",
    "tag_of",
    "validate_command",
]

#: Largest frame ``decode`` accepts by default (and ``encode`` produces): big enough for a
#: snapshot chunk, small enough that one bad peer cannot make a process allocate without bound.
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Most elements in one array or map. Every element costs at least one wire byte, but a pointer
#: per element in memory; this cap keeps an array of a million nils from costing a gigabyte.
MAX_CONTAINER_LEN = 1 << 20
#: Deepest nesting of arrays and maps inside one field. Store data is a few levels deep at most;
#: the cap keeps the recursive validation far below Python's recursion limit.
MAX_NESTING_DEPTH = 32

#: Read consistency a client may ask for: ``strong`` reads go to the master, ``weak`` may be
#: served by a slave (possibly stale, staleness measured).
CONSISTENCY_LEVELS: frozenset[str] = frozenset({"strong", "weak"})
#: Administrative actions an Overlord understands.
ADMIN_ACTIONS: frozenset[str] = frozenset({"status", "add_shard", "remove_shard", "add_node"})

#: What ``decode`` accepts: any contiguous byte buffer (a zmq frame's ``bytes``, a slice, ...).
Frame = bytes | bytearray | memoryview

_UINT64_MAX = (1 << 64) - 1
_MAX_TAG = 0xFFFF

_MessageT = TypeVar("_MessageT", bound="Message")


# --------------------------------------------------------------------------------------------
# Validation of field values against their annotations
# --------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A value does not match its schema; ``path`` locates it (innermost segment first)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []

    def at(self, segment: str) -> _Invalid:
        self.path.append(segment)
        return self

    def render(self, root: str) -> str:
        return f"{root}{''.join(reversed(self.path))} {self.problem}"


def _describe(value: Any) -> str:
    """Name a value's type for an error message ("got str", "got None")."""
    if value is None:
        return "None"
    return type(value).__name__


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _show(value: Any, limit: int = 40) -> str:
    """A short repr of a peer-supplied value: enough to recognise it, never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_wire_int(value: Any) -> bool:
    """An int (not a bool) that msgpack can carry: signed or unsigned 64-bit."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= _UINT64_MAX


class _Checker:
    """Validates one annotated type.

    ``check(value, decoding, depth)`` returns the value to store. When ``decoding`` the value came
    from msgpack (lists, plain str/int/...) and is converted to the annotated form (tuples, enums,
    nested dataclasses). When encoding the value comes from a message object and must already be in
    that form, so that it arrives unchanged.
    """

    __slots__ = ("expected",)

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        raise NotImplementedError

    def _fail(self, value: Any) -> _Invalid:
        return _Invalid(f"must be {self.expected}, got {_describe(value)}")


class _IntChecker(_Checker):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("an int")

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(value)
        if not INT64_MIN <= value <= _UINT64_MAX:
            raise _Invalid(f"must fit in 64 bits, got {_show(value)}")
        return value


class _TypeChecker(_Checker):
    """bool, float, str, bytes and None: one Python type, no conversion."""

    __slots__ = ("python_type",)

    def __init__(self, python_type: type, expected: str) -> None:
        super().__init__(expected)
        self.python_type = python_type

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if not isinstance(value, self.python_type):
            raise self._fail(value)
        return value


class _BoolChecker(_Checker):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("a bool")

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if type(value) is not bool:
            raise self._fail(value)
        return value


class _NoneChecker(_Checker):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("None")

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if value is not None:
            raise self._fail(value)
        return value


class _OptionalChecker(_Checker):
    """``X | None``: kept apart from general unions so errors inside X stay specific."""

    __slots__ = ("inner",)

    def __init__(self, inner: _Checker) -> None:
        super().__init__(f"{inner.expected} or None")
        self.inner = inner

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if value is None:
            return None
        return self.inner.check(value, decoding, depth)


class _UnionChecker(_Checker):
    __slots__ = ("options",)

    def __init__(self, options: list[_Checker]) -> None:
        super().__init__(" or ".join(option.expected for option in options))
        self.options = options

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        for option in self.options:
            try:
                return option.check(value, decoding, depth)
            except _Invalid:
                continue
        raise self._fail(value)


def _check_size(value: Sized, depth: int) -> None:
    if depth >= MAX_NESTING_DEPTH:
        raise _Invalid(f"nests deeper than {MAX_NESTING_DEPTH} levels")
    if len(value) > MAX_CONTAINER_LEN:
        raise _Invalid(f"has {len(value)} elements, more than the limit of {MAX_CONTAINER_LEN}")


class _ListChecker(_Checker):
    __slots__ = ("item",)

    def __init__(self, item: _Checker) -> None:
        super().__init__(f"a list of {item.expected}")
        self.item = item

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if type(value) is not list:
            raise self._fail(value)
        _check_size(value, depth)
        item = self.item
        result = []
        for index, element in enumerate(value):
            try:
                result.append(item.check(element, decoding, depth + 1))
            except _Invalid as exc:
                raise exc.at(f"[{index}]") from None
        return result


class _TupleChecker(_Checker):
    """``tuple[X, ...]`` or ``tuple[A, B]``: an array on the wire, a tuple in Python."""

    __slots__ = ("items", "variadic")

    def __init__(self, items: list[_Checker], variadic: bool) -> None:
        if variadic:
            expected = f"a tuple of {items[0].expected}"
        else:
            expected = f"a tuple of {len(items)} ({', '.join(i.expected for i in items)})"
        super().__init__(expected)
        self.items = items
        self.variadic = variadic

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if type(value) is not (list if decoding else tuple):
            raise self._fail(value)
        _check_size(value, depth)
        if not self.variadic and len(value) != len(self.items):
            raise _Invalid(f"must have {len(self.items)} elements, got {len(value)}")
        result = []
        for index, element in enumerate(value):
            checker = self.items[0] if self.variadic else self.items[index]
            try:
                result.append(checker.check(element, decoding, depth + 1))
            except _Invalid as exc:
                raise exc.at(f"[{index}]") from None
        return tuple(result)


class _DictChecker(_Checker):
    __slots__ = ("item", "key")

    def __init__(self, key: _Checker, item: _Checker) -> None:
        super().__init__(f"a map of {key.expected} to {item.expected}")
        self.key = key
        self.item = item

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if type(value) is not dict:
            raise self._fail(value)
        _check_size(value, depth)
        result = {}
        for key, element in value.items():
            try:
                checked_key = self.key.check(key, decoding, depth + 1)
            except _Invalid as exc:
                raise exc.at(" key") from None
            try:
                result[checked_key] = self.item.check(element, decoding, depth + 1)
            except _Invalid as exc:
                raise exc.at(f"[{_show(key)}]") from None
        return result


_NATIVE_SCALARS = (bool, str, bytes, float)
_NATIVE_DESCRIPTION = "msgpack-native data (None, bool, int, float, str, bytes, list, map)"


def _check_native(value: Any, depth: int) -> None:
    """Walk ``Any`` data: only what msgpack round-trips unchanged, depth and size capped."""
    if value is None or isinstance(value, _NATIVE_SCALARS):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= _UINT64_MAX:
            raise _Invalid(f"must fit in 64 bits, got {_show(value)}")
        return
    kind = type(value)
    if kind is list:
        _check_size(value, depth)
        for index, element in enumerate(value):
            try:
                _check_native(element, depth + 1)
            except _Invalid as exc:
                raise exc.at(f"[{index}]") from None
        return
    if kind is dict:
        _check_size(value, depth)
        for key, element in value.items():
            if not isinstance(key, (str, bytes)):
                raise _Invalid(f"map keys must be str or bytes, got {_describe(key)}").at(" key")
            try:
                _check_native(element, depth + 1)
            except _Invalid as exc:
                raise exc.at(f"[{_show(key)}]") from None
        return
    hint = " (a tuple arrives as a list: send a list)" if kind is tuple else ""
    raise _Invalid(f"must be {_NATIVE_DESCRIPTION}, got {_describe(value)}{hint}")


class _AnyChecker(_Checker):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(_NATIVE_DESCRIPTION)

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        _check_native(value, depth)
        return value


class _EnumChecker(_Checker):
    """An enum travels as its value (``ErrorCode.MOVED`` as ``"MOVED"``)."""

    __slots__ = ("enum_type",)

    def __init__(self, enum_type: type[enum.Enum]) -> None:
        super().__init__(f"{_a(enum_type.__name__)} value")
        self.enum_type = enum_type

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if not decoding:
            if not isinstance(value, self.enum_type):
                raise self._fail(value)
            return value
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise self._fail(value)
        try:
            return self.enum_type(value)
        except ValueError:
            raise _Invalid(f"must be {self.expected}, got {_show(value)}") from None


class _DataclassChecker(_Checker):
    """A dataclass travels as the positional array of its fields (messages add a tag in front).

    Trailing fields with defaults may be missing on the wire (an older sender); they are filled in.
    """

    __slots__ = ("data_type", "defaults", "fields", "min_fields", "names")

    def __init__(self, data_type: type) -> None:
        super().__init__(_a(data_type.__name__))
        self.data_type = data_type
        self.names: tuple[str, ...] = ()
        self.fields: tuple[_Checker, ...] = ()
        self.defaults: tuple[Callable[[], Any] | None, ...] = ()
        self.min_fields = 0

    def arity_text(self) -> str:
        if self.min_fields == len(self.names):
            return f"{len(self.names)}"
        return f"{self.min_fields} to {len(self.names)}"

    def decode_values(self, wire: list[Any], start: int, depth: int) -> list[Any]:
        """Check ``wire[start:]`` as this dataclass's fields; return all field values."""
        count = len(wire) - start
        after = " after the tag" if start else ""
        if not self.min_fields <= count <= len(self.names):
            raise _Invalid(f"must have {self.arity_text()} fields{after}, got {count}")
        values: list[Any] = []
        for position, (name, checker) in enumerate(zip(self.names, self.fields, strict=True)):
            if position < count:
                try:
                    values.append(checker.check(wire[start + position], True, depth))
                except _Invalid as exc:
                    raise exc.at(f".{name}") from None
            else:
                make_default = self.defaults[position]
                assert make_default is not None  # guaranteed by min_fields
                values.append(make_default())
        return values

    def check_object(self, value: Any, depth: int) -> None:
        for name, checker in zip(self.names, self.fields, strict=True):
            try:
                checker.check(getattr(value, name), False, depth)
            except _Invalid as exc:
                raise exc.at(f".{name}") from None

    def check(self, value: Any, decoding: bool, depth: int) -> Any:
        if not decoding:
            if type(value) is not self.data_type:
                raise self._fail(value)
            self.check_object(value, depth + 1)
            return value
        if type(value) is not list:
            raise _Invalid(
                f"must be {self.expected} (an array of {self.arity_text()} fields), got {_describe(value)}"
            )
        _check_size(value, depth)
        return self.data_type(*self.decode_values(value, 0, depth + 1))


def _compile(annotation: Any, owner: str, cache: dict[type, _DataclassChecker]) -> _Checker:
    """Turn one field annotation into its checker; refuse anything the codec cannot carry."""
    if annotation is Any:
        return _AnyChecker()
    if annotation is bool:
        return _BoolChecker()
    if annotation is int:
        return _IntChecker()
    if annotation is float:
        return _TypeChecker(float, "a float")
    if annotation is str:
        return _TypeChecker(str, "a str")
    if annotation is bytes:
        return _TypeChecker(bytes, "bytes")
    if annotation is None or annotation is type(None):
        return _NoneChecker()
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in arguments if a is not type(None)]
        checkers = [_compile(a, owner, cache) for a in options]
        if len(checkers) > 1:
            optional = len(options) < len(arguments)
            return _UnionChecker([*checkers, _NoneChecker()] if optional else checkers)
        return _OptionalChecker(checkers[0]) if len(options) < len(arguments) else checkers[0]
    if origin is list and len(arguments) == 1:
        return _ListChecker(_compile(arguments[0], owner, cache))
    if origin is tuple and arguments:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return _TupleChecker([_compile(arguments[0], owner, cache)], variadic=True)
        if Ellipsis not in arguments:
            return _TupleChecker([_compile(a, owner, cache) for a in arguments], variadic=False)
    if origin is dict and len(arguments) == 2 and arguments[0] in (str, bytes):
        return _DictChecker(_compile(arguments[0], owner, cache), _compile(arguments[1], owner, cache))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if not all(isinstance(member.value, str | int) for member in annotation):
            raise LocalProtocolError(f"{owner}: enum {annotation.__name__} must have str or int values")
        return _EnumChecker(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass_checker(annotation, cache)
    raise LocalProtocolError(f"{owner}: field type {annotation!r} cannot be carried on the wire")


def _dataclass_checker(data_type: type, cache: dict[type, _DataclassChecker]) -> _DataclassChecker:
    if data_type in cache:  # also ends the recursion of a self-referential type
        return cache[data_type]
    checker = _DataclassChecker(data_type)
    cache[data_type] = checker
    try:
        _fill_dataclass_checker(checker, cache)
    except BaseException:
        del cache[data_type]  # never leave a half-built layout behind for a later registration
        raise
    return checker


def _fill_dataclass_checker(checker: _DataclassChecker, cache: dict[type, _DataclassChecker]) -> None:
    data_type = checker.data_type
    owner = data_type.__name__
    params = getattr(data_type, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise LocalProtocolError(f"{owner}: wire types must be frozen dataclasses")
    try:
        hints = typing.get_type_hints(data_type)
    except Exception as exc:  # a name the annotations use is not resolvable at module level
        raise LocalProtocolError(f"{owner}: cannot resolve field annotations: {exc}") from exc
    names, checkers, defaults = [], [], []
    for field in dataclasses.fields(data_type):
        if not field.init or field.kw_only:
            raise LocalProtocolError(f"{owner}.{field.name}: wire fields must be positional init fields")
        names.append(field.name)
        checkers.append(_compile(hints[field.name], f"{owner}.{field.name}", cache))
        if field.default is not dataclasses.MISSING:
            defaults.append(_constant(field.default))
        elif field.default_factory is not dataclasses.MISSING:
            defaults.append(field.default_factory)
        else:
            defaults.append(None)
    checker.names = tuple(names)
    checker.fields = tuple(checkers)
    checker.defaults = tuple(defaults)
    checker.min_fields = len(names)
    while checker.min_fields and defaults[checker.min_fields - 1] is not None:
        checker.min_fields -= 1
    for name, field_checker, make_default in zip(names, checkers, defaults, strict=True):
        if make_default is not None:
            try:
                field_checker.check(make_default(), False, 1)
            except _Invalid as exc:
                raise LocalProtocolError(f"{owner}.{name}: default {exc.problem}") from None


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


_FLAT_NATIVE = frozenset({bytes, str, int, float, bool, type(None)})


def _within_depth(container: list[Any] | dict[Any, Any], depth: int) -> bool:
    """Whether unpacked msgpack data satisfies ``_check_native`` (for a container at ``depth``).

    The unpacker already guarantees everything else ``_check_native`` asks: only native types,
    ints within 64 bits, str/bytes map keys, no container longer than ``MAX_CONTAINER_LEN``
    (``_decode`` passes those limits). Only the nesting depth is left to look at.
    """
    if depth >= MAX_NESTING_DEPTH:
        return False
    items = container.values() if type(container) is dict else container
    for item in items:
        kind = type(item)
        if (kind is list or kind is dict) and not _within_depth(item, depth + 1):
            return False
    return True


class _Reject(Exception):
    """Raised by a fast converter: not plainly valid, let the general checkers decide."""


_REJECT = _Reject()


def _fast_converter(checker: _Checker) -> Callable[[Any], Any]:
    """A function that returns the decoded value of a plainly valid field or raises ``_Reject``:
    scalar checks done directly, anything else by the general checker."""
    if isinstance(checker, _IntChecker):

        def convert_int(value: Any) -> Any:
            if type(value) is not int or not INT64_MIN <= value <= _UINT64_MAX:
                raise _REJECT
            return value

        return convert_int
    if isinstance(checker, _TypeChecker | _BoolChecker):
        python_type = checker.python_type if isinstance(checker, _TypeChecker) else bool

        def convert_type(value: Any) -> Any:
            if type(value) is not python_type:
                raise _REJECT
            return value

        return convert_type
    if isinstance(checker, _EnumChecker):
        members = {member.value: member for member in checker.enum_type}

        def convert_enum(value: Any) -> Any:
            # The type test keeps True from meeting the member whose value is 1.
            member = members.get(value) if type(value) is str or type(value) is int else None
            if member is None:
                raise _REJECT
            return member

        return convert_enum
    if isinstance(checker, _OptionalChecker) and isinstance(checker.inner, _IntChecker | _TypeChecker):
        inner = _fast_converter(checker.inner)

        def convert_optional(value: Any) -> Any:
            return None if value is None else inner(value)

        return convert_optional
    if isinstance(checker, _AnyChecker) or (
        isinstance(checker, _ListChecker) and isinstance(checker.item, _AnyChecker)
    ):
        outer = list if isinstance(checker, _ListChecker) else None

        def convert_native(value: Any) -> Any:
            if outer is not None and type(value) is not outer:
                raise _REJECT
            kind = type(value)
            if kind in _FLAT_NATIVE or ((kind is list or kind is dict) and _within_depth(value, 0)):
                return value
            raise _REJECT

        return convert_native

    def convert_general(value: Any) -> Any:
        return checker.check(value, True, 0)

    return convert_general


def _fast_decoder(
    layout: _DataclassChecker,
    message_type: type,
    refine: Callable[[dict[str, Any]], None] | None,
) -> Callable[[list[Any]], Any]:
    """A decoder for one message layout that does per field only what a valid field needs.

    Why: the general checkers walk a tree of objects per field and cost more than the rest of a
    node's request path together. The fast decoder only ever *accepts*: it returns None for
    anything short of a plainly valid frame (a missing trailing field, a wrong type, a refinement
    that refuses), and the general path then decides and words the error. So what is accepted, what
    is refused and every error message stay exactly as the general checkers define them.
    """
    converters = tuple(_fast_converter(checker) for checker in layout.fields)
    size = len(converters) + 1
    names = layout.names

    def fast(wire: list[Any]) -> Any:
        if len(wire) != size:
            return None
        try:
            values = [convert(value) for convert, value in zip(converters, wire[1:])]  # noqa: B905
            if refine is None:
                return message_type(*values)
            fields = dict(zip(names, values))  # noqa: B905
            refine(fields)
            return message_type(*fields.values())
        except Exception:  # _Reject, _Invalid, CommandError: the general path words it
            return None

    return fast


# --------------------------------------------------------------------------------------------
# The registry and the codec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Base class of every wire message. Subclasses are registered with ``@message(tag=N)``."""

    @classmethod
    def _refine(cls, fields: dict[str, Any]) -> None:
        """Hook for checks the field types cannot express, run after the type checks.

        It may replace values in ``fields`` with a normalised form (decode keeps the result; encode
        only checks) and refuses a message by raising ``CommandError`` whose code becomes the
        ``DecodeError``'s code. The default accepts everything.
        """


@dataclass(frozen=True, slots=True)
class _Schema:
    tag: int
    message_type: type[Message]
    layout: _DataclassChecker
    is_request: bool
    refine: Callable[[dict[str, Any]], None] | None
    #: ``wire -> message``, or None whenever the frame is anything but plainly valid (see
    #: ``_fast_decoder``); the general checkers then decide, and word the error.
    fast: Callable[[list[Any]], Message | None]

    @property
    def name(self) -> str:
        return self.message_type.__name__


class MessageRegistry:
    """Maps message classes to wire tags and back, and encodes/decodes with that mapping.

    DiMint's messages live in the module-level ``REGISTRY``; a separate instance is only useful to
    exercise the codec with throwaway message types (tests) without claiming real tags.
    """

    def __init__(self) -> None:
        self._by_tag: dict[int, _Schema] = {}
        self._by_type: dict[type, _Schema] = {}
        self._nested: dict[type, _DataclassChecker] = {}

    # registration --------------------------------------------------------------------------

    def message(self, *, tag: int, request: bool = False) -> Callable[[type[_MessageT]], type[_MessageT]]:
        """Class decorator registering a frozen, slotted ``Message`` dataclass under ``tag``.

        ``request=True`` marks a client request whose first field is ``request_id: int``: a frame
        with that tag that fails validation still yields its request id, so it can be answered.
        """

        def register(message_type: type[_MessageT]) -> type[_MessageT]:
            owner = getattr(message_type, "__name__", repr(message_type))
            if type(tag) is not int or not 0 < tag <= _MAX_TAG:
                raise LocalProtocolError(f"{owner}: tag must be an int in 1..{_MAX_TAG}, got {tag!r}")
            if tag in self._by_tag:
                raise LocalProtocolError(f"{owner}: tag {tag} already belongs to {self._by_tag[tag].name}")
            if not (isinstance(message_type, type) and issubclass(message_type, Message)):
                raise LocalProtocolError(f"{owner}: a message must subclass Message")
            if message_type in self._by_type:
                raise LocalProtocolError(f"{owner}: already registered")
            if not dataclasses.is_dataclass(message_type) or "__slots__" not in vars(message_type):
                raise LocalProtocolError(f"{owner}: use @dataclass(frozen=True, slots=True) under @message")
            layout = _dataclass_checker(message_type, self._nested)
            if request and (
                not layout.names
                or layout.names[0] != "request_id"
                or not isinstance(layout.fields[0], _IntChecker)
            ):
                raise LocalProtocolError(f"{owner}: a request's first field must be request_id: int")
            overrides_refine = message_type._refine.__func__ is not Message._refine.__func__
            refine = message_type._refine if overrides_refine else None
            fast = _fast_decoder(layout, message_type, refine)
            schema = _Schema(tag, message_type, layout, request, refine, fast)
            self._by_tag[tag] = schema
            self._by_type[message_type] = schema
            return message_type

        return register

    def types(self) -> Mapping[int, type[Message]]:
        """Tag -> message class, for every registered message."""
        return types.MappingProxyType({tag: s.message_type for tag, s in self._by_tag.items()})

    def tag_of(self, message_type: type[Message]) -> int:
        schema = self._by_type.get(message_type)
        if schema is None:
            raise LocalProtocolError(f"{message_type!r} is not a registered message")
        return schema.tag

    # encoding ------------------------------------------------------------------------------

    def check(self, message: Message) -> None:
        """Raise ``LocalProtocolError`` unless ``message`` is valid and would arrive intact.

        "Intact" means equal after ``decode``, except that ``Request.args`` arrive normalised.
        """
        schema = self._schema_of(message)
        try:
            schema.layout.check_object(message, 0)
        except _Invalid as exc:
            raise LocalProtocolError(exc.render(schema.name)) from None
        if schema.refine is not None:
            fields = {name: getattr(message, name) for name in schema.layout.names}
            try:
                schema.refine(fields)
            except CommandError as exc:
                raise LocalProtocolError(f"{schema.name}: {exc.code.value}: {exc.reason}") from exc

    def encode(self, message: Message, *, check: bool = True, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
        """The frame for ``message``: ``[tag, *fields]`` in msgpack. Deterministic for equal input.

        With ``check`` (the default) the message is first validated as the receiver would; turn it
        off only on a measured hot path whose messages are known good. Raises ``LocalProtocolError``.
        """
        schema = self._schema_of(message)
        if check:
            self.check(message)
        wire = [schema.tag, *(getattr(message, name) for name in schema.layout.names)]
        try:
            frame = msgpack.packb(wire, use_bin_type=True, default=self._to_wire)
        except Exception as exc:  # msgpack raises TypeError, OverflowError, ValueError, ...
            raise LocalProtocolError(f"{schema.name} cannot be packed: {exc}") from exc
        if len(frame) > max_bytes:
            raise LocalProtocolError(
                f"{schema.name} encodes to {len(frame)} bytes, more than the limit of {max_bytes}"
            )
        return frame

    def _schema_of(self, message: Message) -> _Schema:
        schema = self._by_type.get(type(message))
        if schema is None:
            raise LocalProtocolError(f"{_describe(message)} is not a registered message")
        return schema

    def _to_wire(self, value: Any) -> Any:
        """msgpack's fallback: nested dataclasses become arrays, enums their values."""
        nested = self._nested.get(type(value))
        if nested is not None:
            return [getattr(value, name) for name in nested.names]
        if isinstance(value, enum.Enum):
            return value.value
        raise TypeError(f"cannot pack {_describe(value)}")

    # decoding ------------------------------------------------------------------------------

    def decode(self, data: Frame, *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
        """Decode one frame. Returns a fully validated message or raises ``DecodeError``, only."""
        try:
            return self._decode(data, max_bytes)
        except DecodeError:
            raise
        except Exception as exc:  # the contract is "DecodeError or a message" for *any* input
            raise DecodeError(f"frame could not be decoded ({type(exc).__name__}: {exc})") from exc

    def _decode(self, data: Frame, max_bytes: int) -> Message:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"a frame must be bytes, got {_describe(data)}")
        size = memoryview(data).nbytes
        if size > max_bytes:
            raise DecodeError(f"frame of {size} bytes is larger than the limit of {max_bytes}")
        if size == 0:
            raise DecodeError("empty frame")
        try:
            wire = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=max_bytes,
                max_bin_len=max_bytes,
                max_array_len=MAX_CONTAINER_LEN,
                max_map_len=MAX_CONTAINER_LEN,
                max_ext_len=0,  # no extension types (nor msgpack timestamps) in DiMint's wire form
                ext_hook=_refuse_extension,  # ... not even empty ones, which max_ext_len lets through
            )
        except msgpack.ExtraData as exc:
            raise DecodeError(
                f"{len(exc.extra)} trailing byte(s) after the message",
                request_id=self._request_id_of(exc.unpacked),
            ) from None
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"a string is not valid UTF-8 ({exc.reason} at byte {exc.start} of the string)",
                request_id=self._request_id_of(self._lenient_unpack(data, max_bytes)),
            ) from None
        except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, TypeError, ...
            raise DecodeError(
                _msgpack_failure(exc),
                request_id=self._request_id_of(self._lenient_unpack(data, max_bytes)),
            ) from None
        return self._build(wire)

    def _build(self, wire: Any) -> Message:
        if type(wire) is not list or not wire:
            raise DecodeError(f"a frame must be a non-empty array [tag, fields...], got {_describe(wire)}")
        tag = wire[0]
        if type(tag) is not int:
            raise DecodeError(f"message tag must be an int, got {_describe(tag)}")
        schema = self._by_tag.get(tag)
        if schema is None:
            raise DecodeError(f"unknown message tag {_show(tag)}")
        built = schema.fast(wire)
        if built is not None:
            return built
        request_id = wire[1] if schema.is_request and len(wire) > 1 and _is_wire_int(wire[1]) else None
        try:
            values = schema.layout.decode_values(wire, 1, 0)
            if schema.refine is not None:
                fields = dict(zip(schema.layout.names, values, strict=True))
                schema.refine(fields)
                values = list(fields.values())
        except _Invalid as exc:
            raise DecodeError(exc.render(schema.name), request_id=request_id) from None
        except CommandError as exc:
            raise DecodeError(exc.reason, code=exc.code, request_id=request_id) from None
        return schema.message_type(*values)

    def _request_id_of(self, wire: Any) -> int | None:
        """The request id of a request-shaped value, to answer a frame we cannot accept."""
        if type(wire) is not list or len(wire) < 2 or type(wire[0]) is not int:
            return None
        schema = self._by_tag.get(wire[0])
        if schema is None or not schema.is_request or not _is_wire_int(wire[1]):
            return None
        return wire[1]

    @staticmethod
    def _lenient_unpack(data: Frame, max_bytes: int) -> Any:
        """Unpack forgivingly (bad UTF-8 replaced, extensions and odd map keys let through), only to
        recover the request id of a refused frame so that its sender still gets an answer."""
        try:
            return msgpack.unpackb(
                data,
                raw=False,
                unicode_errors="replace",
                strict_map_key=False,
                max_str_len=max_bytes,
                max_bin_len=max_bytes,
                max_array_len=MAX_CONTAINER_LEN,
                max_map_len=MAX_CONTAINER_LEN,
                ext_hook=_ignore_extension,
            )
        except msgpack.ExtraData as exc:
            return exc.unpacked
        except Exception:  # the frame is refused either way; only the request id is at stake
            return None


_EXTENSIONS_REFUSED = "msgpack extension types (including timestamps) are not allowed"


def _refuse_extension(code: int, data: bytes) -> Any:
    raise ValueError(_EXTENSIONS_REFUSED)


def _ignore_extension(code: int, data: bytes) -> Any:
    return None


def _msgpack_failure(exc: Exception) -> str:
    """A readable reason for msgpack's exceptions, several of which have empty messages."""
    if isinstance(exc, msgpack.StackError):
        return "not valid msgpack: nested too deeply"
    if isinstance(exc, msgpack.FormatError):
        return "not valid msgpack: reserved or invalid type byte"
    text = str(exc)
    if "max_ext_len" in text or text == _EXTENSIONS_REFUSED:
        return _EXTENSIONS_REFUSED
    if "incomplete input" in text:
        return "not valid msgpack: frame is truncated"
    return f"not valid msgpack: {text or type(exc).__name__}"


#: The registry of DiMint's messages.
REGISTRY = MessageRegistry()


def message(*, tag: int, request: bool = False) -> Callable[[type[_MessageT]], type[_MessageT]]:
    """Register a message with DiMint's registry (see ``MessageRegistry.message``)."""
    return REGISTRY.message(tag=tag, request=request)


def encode(msg: Message, *, check: bool = True, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Encode ``msg`` to one frame (see ``MessageRegistry.encode``)."""
    return REGISTRY.encode(msg, check=check, max_bytes=max_bytes)


def decode(data: Frame, *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode one frame: a validated message, or ``DecodeError`` and nothing else."""
    return REGISTRY.decode(data, max_bytes=max_bytes)


def check(msg: Message) -> None:
    """Raise ``LocalProtocolError`` unless ``msg`` would arrive unchanged and valid."""
    REGISTRY.check(msg)


def tag_of(message_type: type[Message]) -> int:
    """The wire tag of a registered message class."""
    return REGISTRY.tag_of(message_type)


def message_types() -> Mapping[int, type[Message]]:
    """Tag -> message class for every DiMint message (read-only)."""
    return REGISTRY.types()


# --------------------------------------------------------------------------------------------
# Command argument validation (the argument kinds of dimint.core.commands)
# --------------------------------------------------------------------------------------------


class _BadArgument(Exception):
    def __init__(self, expected: str, got: str) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got


def _as_bytes(value: Any, expected: str) -> bytes:
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadArgument(expected + " (valid UTF-8 text)", "a str with lone surrogates") from None
    raise _BadArgument(expected, _describe(value))


def _kind_key(value: Any) -> bytes:
    return _as_bytes(value, "a key (str or bytes)")


def _kind_bytes(value: Any) -> bytes:
    return _as_bytes(value, "str or bytes")


def _kind_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadArgument("an int", _describe(value))
    if not INT64_MIN <= value <= INT64_MAX:
        raise _BadArgument("a signed 64-bit int", _show(value))
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
    got = _show(value) if isinstance(value, str) else _describe(value)
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
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"command name must be a str, got {_describe(command)}")
    shape = _SHAPES.get(command)
    if shape is None:
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {_show(command)}")
    if not isinstance(args, (list, tuple)):
        raise CommandError(
            ErrorCode.BAD_ARGUMENT, f"arguments of {command!r} must be a list, got {_describe(args)}"
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


# --------------------------------------------------------------------------------------------
# Messages. Tags are wire constants: never change or reuse one (see the module docstring).
# 1-19 client <-> node/overlord, 20-39 replication, 40-59 migration.
# --------------------------------------------------------------------------------------------


@message(tag=1, request=True)
@dataclass(frozen=True, slots=True)
class Request(Message):
    """A client command, sent to the node that owns the key (or to an Overlord in proxy mode).

    ``args`` arrive normalised (see ``validate_command``). ``consistency="weak"`` lets a slave serve
    a read; ``map_epoch`` is the client's cluster-map epoch, so a node can tell a client whose map is
    stale (MOVED) from one that is ahead of it.
    """

    request_id: int
    command: str
    args: list[Any]
    consistency: str = "strong"
    map_epoch: int = 0
    #: At-most-once identity (``dimint.core.dedup``): the client's random id (0: anonymous, not
    #: deduplicated), the write's sequence number (0 for reads) and the client's floor, the lowest
    #: sequence it has not finished with. Every attempt of one operation carries the same ``seq``.
    client_id: int = 0
    seq: int = 0
    floor: int = 0

    @classmethod
    def _refine(cls, fields: dict[str, Any]) -> None:
        fields["args"] = list(validate_command(fields["command"], fields["args"]))
        if fields["consistency"] not in CONSISTENCY_LEVELS:
            raise CommandError(
                ErrorCode.BAD_ARGUMENT,
                f"consistency must be 'strong' or 'weak', got {_show(fields['consistency'])}",
            )
        check_identity(fields["command"], fields["client_id"], fields["seq"], fields["floor"])


@message(tag=2)
@dataclass(frozen=True, slots=True)
class Response(Message):
    """The successful result of a ``Request``, matched by ``request_id``."""

    request_id: int
    value: Any


@message(tag=3)
@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """A refused or failed request (or an undecodable request-shaped frame), with code and reason.

    ``map_epoch`` is the replier's map epoch when it matters (MOVED, STALE_EPOCH), so the client
    knows whether refreshing its map can help.
    """

    request_id: int
    code: ErrorCode
    reason: str
    map_epoch: int = 0

    @classmethod
    def from_error(
        cls, request_id: int, error: CommandError | DecodeError, *, map_epoch: int = 0
    ) -> ErrorReply:
        """The reply that tells a client exactly why its request ``request_id`` was refused."""
        return cls(request_id, ErrorCode(error.code), error.reason, map_epoch)


@message(tag=4, request=True)
@dataclass(frozen=True, slots=True)
class GetMap(Message):
    """A client (or node) asks an Overlord for the cluster map, on start-up or after MOVED.

    ``known_epoch`` lets the Overlord answer cheaply when the asker is already up to date.
    """

    request_id: int
    known_epoch: int = 0


@message(tag=5)
@dataclass(frozen=True, slots=True)
class MapReply(Message):
    """The cluster map at ``map_epoch``, serialised by ``dimint.core.clustermap`` (opaque here)."""

    request_id: int
    map_epoch: int
    cluster_map: bytes


@message(tag=6, request=True)
@dataclass(frozen=True, slots=True)
class AdminRequest(Message):
    """An operator's action sent to the Overlord leader: status, or a membership/shard change."""

    request_id: int
    action: str
    params: dict[str, Any]

    @classmethod
    def _refine(cls, fields: dict[str, Any]) -> None:
        if fields["action"] not in ADMIN_ACTIONS:
            raise CommandError(
                ErrorCode.UNKNOWN_COMMAND,
                f"unknown admin action {_show(fields['action'])}; expected one of {sorted(ADMIN_ACTIONS)}",
            )


@message(tag=7)
@dataclass(frozen=True, slots=True)
class AdminReply(Message):
    """The result of an ``AdminRequest`` (a status document, or the new map epoch)."""

    request_id: int
    result: Any


@message(tag=20)
@dataclass(frozen=True, slots=True)
class Replicate(Message):
    """The master streams numbered writes to a slave of its shard.

    ``entries`` are ``[seq, epoch, writes]`` triples in sequence order: ``epoch`` is the shard epoch
    under which the master appended the entry, ``writes`` the store's write operations.
    ``(prev_seq, prev_epoch)`` is the log position just before the first entry: the slave extends
    its log only if its own position matches (log matching), otherwise it asks for a resync.
    ``commit_seq`` is the highest sequence the master considers acknowledged. ``shard_epoch``
    fences a deposed master.
    """

    shard_id: int
    shard_epoch: int
    prev_seq: int
    prev_epoch: int
    entries: list[Any]
    commit_seq: int

    @classmethod
    def _refine(cls, fields: dict[str, Any]) -> None:
        for index, entry in enumerate(fields["entries"]):
            if not (
                type(entry) is list
                and len(entry) == 3
                and _is_wire_int(entry[0])
                and _is_wire_int(entry[1])
                and type(entry[2]) is list
            ):
                raise CommandError(
                    ErrorCode.MALFORMED,
                    f"Replicate.entries[{index}] must be a [seq: int, epoch: int, writes: list] triple, "
                    f"got {_show(entry)}",
                )


@message(tag=21)
@dataclass(frozen=True, slots=True)
class ReplicateAck(Message):
    """A slave reports its log position, so the master can count a write as replicated.

    The position is ``(applied_seq, applied_epoch)``; the master counts it only if its own log has
    that very entry, so a slave whose tail diverged under a dead master cannot be counted.
    """

    shard_id: int
    shard_epoch: int
    node_id: str
    applied_seq: int
    applied_epoch: int


@message(tag=22)
@dataclass(frozen=True, slots=True)
class SyncRequest(Message):
    """A slave that is new, saw a gap or diverged asks its master for the tail after its position,
    or a snapshot when the master's log no longer matches or reaches back that far."""

    shard_id: int
    shard_epoch: int
    node_id: str
    applied_seq: int
    applied_epoch: int
    #: Echoed by the snapshot that answers this request: a slave installs only the snapshot that
    #: answers its latest request, so a duplicated or late one can never roll it back.
    sync_token: int = 0


@message(tag=23)
@dataclass(frozen=True, slots=True)
class SnapshotChunk(Message):
    """One piece of a shard snapshot taken at log position ``(snapshot_seq, snapshot_epoch)``.

    Chunks are numbered from 0 and ``last`` marks the final one; the slave installs the snapshot
    only when it holds every chunk, then applies the ``Replicate`` entries after ``snapshot_seq``.
    """

    shard_id: int
    shard_epoch: int
    snapshot_seq: int
    snapshot_epoch: int
    chunk_no: int
    items: list[Any]
    last: bool
    sync_token: int = 0
    #: The shard's dedup table (``dimint.core.dedup`` session ops), spread over the chunks like
    #: ``items``: a slave installs it with the data, so a promoted slave recognises duplicates.
    sessions: list[Any] = dataclasses.field(default_factory=list)


@message(tag=24)
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """A master's periodic liveness signal to its slaves, even when no writes flow.

    It carries the master's log position ``(seq, last_epoch)`` so a slave detects a gap or a
    divergence, and ``sent_at_ms`` so a slave that caught up to ``seq`` knows it is fresh as of
    that time (the basis of the staleness bound on weak reads).
    """

    shard_id: int
    shard_epoch: int
    sender: str
    seq: int
    last_epoch: int
    sent_at_ms: int


@message(tag=25)
@dataclass(frozen=True, slots=True)
class HeartbeatAck(Message):
    """A slave's answer to a ``Heartbeat``: alive, at position ``(applied_seq, applied_epoch)``."""

    shard_id: int
    shard_epoch: int
    node_id: str
    applied_seq: int
    applied_epoch: int


@message(tag=26)
@dataclass(frozen=True, slots=True)
class PositionQuery(Message):
    """The Overlord leader asks a slave for its log position before choosing whom to promote."""

    request_id: int
    shard_id: int
    shard_epoch: int


@message(tag=27)
@dataclass(frozen=True, slots=True)
class PositionReply(Message):
    """A slave's log position ``(last_epoch, applied_seq)``: promotion picks the highest."""

    request_id: int
    node_id: str
    shard_id: int
    shard_epoch: int
    last_epoch: int
    applied_seq: int


@message(tag=28)
@dataclass(frozen=True, slots=True)
class InSyncChange(Message):
    """A master asks the Overlords to change its shard's in-sync set through the map.

    ``remove`` names slaves that stopped acknowledging, ``add`` slaves that caught up. Only the
    leader acts, and only if ``master`` still masters the shard at ``shard_epoch``.
    """

    shard_id: int
    shard_epoch: int
    master: str
    add: list[str]
    remove: list[str]
    #: The map the request was computed from: the leader applies it only to that very map, so a
    #: duplicated or delayed request can never undo a later change.
    map_epoch: int = 0


@message(tag=29)
@dataclass(frozen=True, slots=True)
class NodeReport(Message):
    """A node's periodic state report to every Overlord: for status, the dashboard and metrics.

    ``shard_id`` is -1 for a spare. ``replica_acks`` (masters only) maps each slave to the highest
    sequence it acknowledged; ``staleness_ms`` is a slave's bound on its lag (None: unknown).
    """

    node_id: str
    address: str
    incarnation: int
    map_epoch: int
    shard_id: int
    role: str
    shard_epoch: int
    last_epoch: int
    applied_seq: int
    commit_seq: int
    key_count: int
    approx_bytes: int
    replica_acks: dict[str, int]
    staleness_ms: int | None
    ops_served: int
    fenced: bool
    sent_at_ms: int
    #: The process's CPU share and resident memory, when its driver measures them (real processes).
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    #: The dedup table's size: client sessions, saved results and their accounted bytes.
    dedup_clients: int = 0
    dedup_results: int = 0
    dedup_bytes: int = 0


@message(tag=40)
@dataclass(frozen=True, slots=True)
class MigrateBatch(Message):
    """One batch of a range move, from the source shard's master to the target shard's master.

    A move is identified by ``(rebalance_id, source, target)`` and restarted with a new ``attempt``
    whenever either shard's master changes. Batches are numbered from 0 per attempt and applied in
    order; batch 0 first clears whatever an earlier attempt left on the target. ``ops`` are store
    write ops: the deltas that hit the moving keys since the previous batch, then ``put`` ops of
    snapshot items (values read when the batch was built), so applying them in order converges.
    ``final`` is sent after the source froze the moving keys: once it is acknowledged the target
    holds every write the source ever acknowledged for them.
    """

    rebalance_id: int
    source: int
    target: int
    attempt: int
    batch_no: int
    ops: list[Any]
    final: bool


@message(tag=41)
@dataclass(frozen=True, slots=True)
class MigrateBatchAck(Message):
    """Cumulative: every batch up to ``batch_no`` is applied *and* replicated on the target shard."""

    rebalance_id: int
    source: int
    target: int
    attempt: int
    batch_no: int
    node_id: str


@message(tag=42)
@dataclass(frozen=True, slots=True)
class MoveReport(Message):
    """A source master's progress on one move attempt, sent to every Overlord.

    ``state`` is ``"copying"`` or ``"ready"`` (frozen and fully acknowledged: the leader may switch
    ownership). ``shard_epoch`` is the source's shard epoch, so a report from a deposed master cannot
    switch a move. Keys and bytes count snapshot items sent; ``deltas`` counts forwarded write ops.
    """

    node_id: str
    rebalance_id: int
    source: int
    target: int
    attempt: int
    shard_epoch: int
    state: str
    keys: int
    bytes: int
    deltas: int
    batches: int
    elapsed_ms: int
    frozen_ms: int
