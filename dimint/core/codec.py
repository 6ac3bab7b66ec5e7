"""The codec: ``Message`` Structs to frames and back, with the checks no schema can make.

Theory of operation
-------------------
Every wire message is a ``msgspec.Struct`` subclass of ``Message`` (``array_like``, ``frozen``,
``forbid_unknown_fields``) that names its tag in its class line, registered with ``@message()``.
msgspec decodes a frame into the tagged union of every registered message and checks it against
the field annotations (and their ``msgspec.Meta`` constraints) in C. The wire form is the msgpack
array ``[tag, field1, field2, ...]``: positional, so a frame carries no field names.

The decoder is the trust boundary (invariant 7: bad input never kills a process). For *any* byte
string ``decode`` returns a fully validated message or raises ``DecodeError``, never anything else
and never a half-built message. Validation is strict: a ``bool`` is not an ``int`` (an int is a valid
``float``, as in msgpack and JSON); integers fit msgpack's 64 bits; strings are valid UTF-8; maps in
``Any`` data have ``str``/``bytes`` keys only; nesting depth, container sizes and the frame size are
capped (a frame bigger than ``MAX_CONTAINER_LEN`` bytes has its container headers checked before
anything is built, so no frame makes a process allocate more than its size warrants); msgpack
extension types are refused. A frame shaped like a request (a request tag and an integer
``request_id``) carries that id on the ``DecodeError``, so the shell can still answer with an
``ErrorReply`` the client can match to its request.

What msgspec cannot check is written here, and kept small: the walk of ``Any`` data (depth, sizes,
map keys, no extension types: what msgpack round-trips unchanged), a message's ``refined`` step
(``Request`` normalises its command's arguments by the command table), request-id recovery from
bad frames, and the wording of refusals (``dimint.core.refusals``). A frame that is not even valid
msgpack is worded by msgpack's own unpacker, which checks the same limits.

``encode`` checks the message before packing (``check=True``) by decoding what it packed: it must
decode, and arrive unchanged (a ``tuple`` where the schema or ``Any`` data implies a list is refused,
as is a plain string where an enum member belongs). This keeps the simulation, which hands messages
over as objects, and the real runtime, which sends bytes, from seeing different values.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack
import msgspec

from dimint.core.commands import describe, show
from dimint.core.errors import CommandError, DecodeError, ErrorCode, LocalProtocolError
from dimint.core.refusals import (
    NATIVE_DESCRIPTION,
    difference,
    expected,
    explain,
    fits,
    out_of_range,
    strip,
    struct_fields,
)

__all__ = [
    "MAX_CONTAINER_LEN",
    "MAX_FRAME_BYTES",
    "MAX_NESTING_DEPTH",
    "REGISTRY",
    "Frame",
    "Message",
    "MessageRegistry",
    "Op",
    "check",
    "decode",
    "encode",
    "message",
    "message_types",
    "tag_of",
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

#: What ``decode`` accepts: any contiguous byte buffer (a zmq frame's ``bytes``, a slice, ...).
Frame = bytes | bytearray | memoryview

_MAX_TAG = 0xFFFF
_MessageT = TypeVar("_MessageT", bound="Message")
_EXTENSIONS_REFUSED = "msgpack extension types (including timestamps) are not allowed"

#: A store op, snapshot item or dedup record: a list of msgpack-native data (typed as far as msgspec
#: can: its unions cannot mix ``str`` and ``bytes``, which ops do).
Op = list[Any]


class Message(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base class of every wire message; a subclass names its tag: ``class Thing(Message, tag=42)``.

    Messages were frozen dataclasses before msgspec carried the schema, and code that treats them
    as such (``dataclasses.replace``, ``fields``, ``asdict``) keeps working: registration gives each
    class the dataclass field table those functions read. ``msgspec.structs.replace`` is the
    native (and faster) way.
    """

    #: Fields the receiver's ``refined`` normalises (so a sender may send them un-normalised).
    normalised_on_arrival: ClassVar[frozenset[str]] = frozenset()

    def refined(self) -> Message:
        """The message as it must be handled: checks the field types cannot express, run after
        them, returning a normalised copy where needed. Refuses by raising ``CommandError``, whose
        code becomes the ``DecodeError``'s. The default accepts everything as it is."""
        return self


# --------------------------------------------------------------------------------------------
# Any data: what msgpack round-trips unchanged, depth and sizes capped
# --------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A value does not fit its schema; ``path`` locates it, outermost segment first."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}".strip())
        self.path = path
        self.problem = problem


_FLAT = frozenset({bytes, str, int, float, bool, type(None)})


def _check_native(value: Any, depth: int, path: str) -> None:
    """Raise ``_Invalid`` unless ``value`` is msgpack-native data within the limits."""
    kind = type(value)
    if kind in _FLAT:
        return
    if kind is list or kind is dict:
        if depth >= MAX_NESTING_DEPTH:
            raise _Invalid(path, f"nests deeper than {MAX_NESTING_DEPTH} levels")
        if len(value) > MAX_CONTAINER_LEN:
            name = "max_array_len" if kind is list else "max_map_len"
            raise _Invalid(path, f"has {len(value)} elements, which exceeds {name}({MAX_CONTAINER_LEN})")
        if kind is list:
            for index, item in enumerate(value):
                if type(item) not in _FLAT:
                    _check_native(item, depth + 1, f"{path}[{index}]")
            return
        for key, item in value.items():
            if type(key) is not str and type(key) is not bytes:
                raise _Invalid(
                    f"{path} key:",
                    f"map keys must be str or bytes, got {describe(key)} "
                    f"({describe(key)} is not allowed for map key)",
                )
            if type(item) not in _FLAT:
                _check_native(item, depth + 1, f"{path}[{show(key)}]")
        return
    if isinstance(value, msgspec.msgpack.Ext) or kind.__module__ == "datetime":  # a msgpack timestamp
        raise _Invalid(path, f"is not allowed: {_EXTENSIONS_REFUSED}")
    hint = " (a tuple arrives as a list: send a list)" if kind is tuple else ""
    raise _Invalid(path, f"must be {NATIVE_DESCRIPTION}, got {describe(value)}{hint}")


_KEY_TYPES = frozenset({str, bytes})


def _native_ok(container: list[Any] | dict[Any, Any], depth: int) -> bool:
    """Whether a list or map at ``depth`` holds only native data within the limits. The fast
    answer, in C where it can be (a set's ``issuperset`` over the items' types); when it is no,
    ``_check_native`` finds the culprit and words the refusal."""
    if depth >= MAX_NESTING_DEPTH or len(container) > MAX_CONTAINER_LEN:
        return False
    if type(container) is dict:
        if not _KEY_TYPES.issuperset(map(type, container)):
            return False
        items: Any = container.values()
    else:
        items = container
    if _FLAT.issuperset(map(type, items)):
        return True
    for item in items:
        kind = type(item)
        if kind in _FLAT or ((kind is list or kind is dict) and _native_ok(item, depth + 1)):
            continue
        return False
    return True


def _walker(annotation: Any, depth: int) -> Callable[[Any], bool] | None:
    """The fast check of the ``Any`` data inside a field of ``annotation`` whose value sits at
    ``depth``; None when the annotation holds no ``Any`` (msgspec alone decides such a field).

    Typed levels count towards the depth as ``Any`` ones do, so a refusal is the same whether a
    level is typed or not; a walker only says yes or no, and ``_check_native`` words a no.
    """
    annotation = strip(annotation)
    if annotation is Any:

        def any_value(value: Any) -> bool:
            kind = type(value)
            return kind in _FLAT or ((kind is list or kind is dict) and _native_ok(value, depth))

        return any_value
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and arguments[1:] == (Any,):
        return lambda value: _native_ok(value, depth)
    if origin is list and arguments == (Any,):
        return lambda value: _native_ok(value, depth)
    if origin is list and strip(arguments[0]) == list[Any]:  # ops, items: the bulk of the traffic

        def lists(value: Any) -> bool:
            # Most ops hold scalars only: one pass in C over every op's items says so at once.
            if _FLAT.issuperset(map(type, itertools.chain.from_iterable(value))):
                return True
            inner = depth + 1
            return all(_FLAT.issuperset(map(type, item)) or _native_ok(item, inner) for item in value)

        return lists
    if origin is list and strip(arguments[0]) == list[int | list[Op]]:  # replication entries

        def entries(value: Any) -> bool:
            # [seq, epoch, writes] each: gather every op of every entry and look at their items in C.
            ops = list(itertools.chain.from_iterable(i for entry in value for i in entry if type(i) is list))
            if _FLAT.issuperset(map(type, itertools.chain.from_iterable(ops))):
                return True
            op_depth = depth + 3
            return all(_FLAT.issuperset(map(type, op)) or _native_ok(op, op_depth) for op in ops)

        return entries
    if origin is list:
        item_walker = _walker(arguments[0], depth + 1)
        return None if item_walker is None else lambda value: all(map(item_walker, value))
    if origin is typing.Union or origin is types.UnionType:
        containers = [walker for option in arguments if (walker := _walker(option, depth)) is not None]
        if len(containers) != 1:
            return None if not containers else lambda value: any(walker(value) for walker in containers)
        (walker,) = containers
        return lambda value: type(value) is not list or walker(value)
    return None


# --------------------------------------------------------------------------------------------
# The registry and the codec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Schema:
    tag: int
    message_type: type[Message]
    is_request: bool
    #: Fields holding ``Any`` data, which msgspec lets through unchecked, with their position on the
    #: wire and their fast check (see ``_walker``): walked after msgspec decoded.
    natives: tuple[tuple[int, str, Callable[[Any], bool]], ...]
    refines: bool
    #: Enum-typed fields: equality cannot tell a member from its plain value, the check must.
    enums: tuple[tuple[str, type], ...] = ()

    @property
    def name(self) -> str:
        return self.message_type.__name__


_CARRIED = frozenset({int, bool, float, str, bytes, type(None)})


def _carried(annotation: Any, where: str) -> None:
    """Raise ``TypeError`` unless msgpack carries ``annotation`` as it is (no hooks, no guesses)."""
    annotation = strip(annotation)
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation in _CARRIED or annotation is None:
        return
    if origin in (typing.Union, types.UnionType, list, tuple):
        for argument in arguments:
            if argument is not Ellipsis:
                _carried(argument, where)
        return
    if origin is dict and arguments and arguments[0] in (str, bytes):
        _carried(arguments[1], where)
        return
    is_type = isinstance(annotation, type)
    if (
        is_type
        and issubclass(annotation, enum.Enum)
        and all(isinstance(m.value, str | int) for m in annotation)
    ):
        return
    if is_type and issubclass(annotation, msgspec.Struct) and annotation.__struct_config__.array_like:
        return
    raise TypeError(f"{where}: {annotation!r} has no msgpack form")


def _as_dataclass(message_type: type) -> None:
    """Give a message class the field table ``dataclasses`` reads (see ``Message``)."""
    table = {}
    for item in msgspec.structs.fields(message_type):
        if item.default is not msgspec.NODEFAULT:
            entry = dataclasses.field(default=item.default)
        elif item.default_factory is not msgspec.NODEFAULT:
            entry = dataclasses.field(default_factory=item.default_factory)
        else:
            entry = dataclasses.field()
        entry.name, entry.type = item.name, item.type
        entry._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what fields() selects
        table[item.name] = entry
    message_type.__dataclass_fields__ = table  # type: ignore[attr-defined]


class _ExtensionRefused(Exception):
    """Raised inside the decoder for any msgpack extension type (see ``_EXTENSIONS_REFUSED``)."""


def _refuse_extension(code: int, data: memoryview) -> Any:
    raise _ExtensionRefused(_EXTENSIONS_REFUSED)


def _refuse_extension_msgpack(code: int, data: bytes) -> Any:
    raise ValueError(_EXTENSIONS_REFUSED)


_ENCODER = msgspec.msgpack.Encoder()


class MessageRegistry:
    """Maps message classes to wire tags and back, and encodes/decodes with that mapping.

    DiMint's messages live in the module-level ``REGISTRY``; a separate instance is only useful to
    exercise the codec with throwaway message types (tests) without claiming real tags.
    """

    def __init__(self) -> None:
        self._by_tag: dict[int, _Schema] = {}
        self._by_type: dict[type, _Schema] = {}
        self._decoder: msgspec.msgpack.Decoder[Any] | None = None

    # registration --------------------------------------------------------------------------

    def register(self, message_type: type[_MessageT], *, request: bool = False) -> type[_MessageT]:
        """Register a ``Message`` subclass under the tag its class line names.

        ``request=True`` marks a client request whose first field is ``request_id: int``: a frame
        with that tag that fails validation still yields its request id, so it can be answered.
        """
        owner = getattr(message_type, "__name__", repr(message_type))
        if not (isinstance(message_type, type) and issubclass(message_type, Message)):
            raise LocalProtocolError(f"{owner}: a message must subclass Message")
        tag = message_type.__struct_config__.tag
        if type(tag) is not int or not 0 < tag <= _MAX_TAG:
            raise LocalProtocolError(
                f"{owner}: tag must be an int in 1..{_MAX_TAG} (class {owner}(Message, tag=N)), got {tag!r}"
            )
        if message_type in self._by_type:
            raise LocalProtocolError(f"{owner}: already registered")
        if tag in self._by_tag:
            raise LocalProtocolError(f"{owner}: tag {tag} already belongs to {self._by_tag[tag].name}")
        try:
            msgspec.msgpack.Decoder(message_type)
            fields = struct_fields(message_type)
            for name, annotation, _ in fields:
                _carried(annotation, f"{owner}.{name}")
        except (TypeError, NameError) as exc:
            raise LocalProtocolError(f"{owner}: a field type cannot be carried on the wire: {exc}") from None
        if request and (not fields or fields[0][0] != "request_id" or fields[0][1] is not int):
            raise LocalProtocolError(f"{owner}: a request's first field must be request_id: int")
        info = {f.name: f for f in msgspec.inspect.type_info(message_type).fields}  # type: ignore[attr-defined]
        for name, annotation, required in fields:
            default = info[name].default
            if not required and default is not msgspec.NODEFAULT and not fits(default, annotation):
                raise LocalProtocolError(
                    f"{owner}.{name}: default must be {expected(annotation)}, got {default!r}"
                )
        natives = tuple(
            (index, name, walker)
            for index, (name, annotation, _) in enumerate(fields, start=1)
            if (walker := _walker(annotation, 0)) is not None
        )
        refines = message_type.refined is not Message.refined
        _as_dataclass(message_type)
        enums = tuple(
            (name, strip(annotation))
            for name, annotation, _ in fields
            if isinstance(strip(annotation), type) and issubclass(strip(annotation), enum.Enum)
        )
        schema = _Schema(tag, message_type, request, natives, refines, enums)
        self._by_tag[tag] = schema
        self._by_type[message_type] = schema
        self._decoder = None
        return message_type

    def message(self, *, request: bool = False) -> Callable[[type[_MessageT]], type[_MessageT]]:
        """Class decorator form of ``register``."""
        return lambda message_type: self.register(message_type, request=request)

    def types(self) -> Mapping[int, type[Message]]:
        """Tag -> message class, for every registered message."""
        return types.MappingProxyType({tag: s.message_type for tag, s in self._by_tag.items()})

    def tag_of(self, message_type: type[Message]) -> int:
        schema = self._by_type.get(message_type)
        if schema is None:
            raise LocalProtocolError(f"{message_type!r} is not a registered message")
        return schema.tag

    def _schema_of(self, message: Any) -> _Schema:
        schema = self._by_type.get(type(message))
        if schema is None:
            raise LocalProtocolError(f"{describe(message)} is not a registered message")
        return schema

    def _message_decoder(self) -> msgspec.msgpack.Decoder[Any]:
        if self._decoder is None:
            union = typing.Union[tuple(s.message_type for s in self._by_tag.values())]  # noqa: UP007
            self._decoder = msgspec.msgpack.Decoder(union, ext_hook=_refuse_extension)
        return self._decoder

    # encoding ------------------------------------------------------------------------------

    def check(self, message: Message) -> None:
        """Raise ``LocalProtocolError`` unless ``message`` is valid and would arrive intact.

        "Intact" means equal after ``decode`` (types included), except that ``Request.args``
        arrive normalised.
        """
        schema = self._schema_of(message)
        try:  # Any data first, in the sender's terms (a set, a tuple, an int map key, ...)
            for _, name, walker in schema.natives:
                value = getattr(message, name)
                if not walker(value):
                    _check_native(value, 0, f"{schema.name}.{name}")
        except _Invalid as exc:
            raise LocalProtocolError(str(exc)) from None
        frame = self._pack(schema, message)
        try:
            arrived = self.decode(frame, max_bytes=max(MAX_FRAME_BYTES, len(frame)))
        except DecodeError as exc:
            detail = (
                exc.reason
                if exc.code is ErrorCode.MALFORMED
                else f"{schema.name}: {exc.code.value}: {exc.reason}"
            )
            raise LocalProtocolError(detail) from None
        normalised = message.normalised_on_arrival
        expected: Any = message
        if normalised and all(type(getattr(message, name)) is list for name in normalised):
            refined = message.refined()  # cannot refuse: the receiver's decode just accepted it
            expected = msgspec.structs.replace(
                message, **{name: getattr(refined, name) for name in normalised}
            )
        if arrived == expected and all(
            isinstance(getattr(message, name), enum_type) for name, enum_type in schema.enums
        ):
            return  # equal in C, and every enum field a member (a plain str equals a StrEnum member)
        problem = difference(message, arrived, schema.message_type, schema.name, skip=normalised)
        for name in sorted(normalised):
            if problem:
                break
            sent = getattr(message, name)
            if type(sent) is not list:
                return self._refusedifference(difference(sent, [], list[Any], f"{schema.name}.{name}"))
            try:
                expected = getattr(message.refined(), name)
            except CommandError as exc:
                raise LocalProtocolError(f"{schema.name}: {exc.code.value}: {exc.reason}") from None
            problem = difference(expected, getattr(arrived, name), list[Any], f"{schema.name}.{name}")
        self._refusedifference(problem)

    @staticmethod
    def _refusedifference(problem: str | None) -> None:
        if problem:
            raise LocalProtocolError(problem)

    def _pack(self, schema: _Schema, message: Message) -> bytes:
        try:
            return _ENCODER.encode(message)
        except OverflowError:
            where = out_of_range(message, schema.name) or schema.name
            raise LocalProtocolError(f"{where} must fit in 64 bits, got a larger int") from None
        except Exception as exc:  # msgspec raises TypeError, EncodeError, ValueError, ...
            raise LocalProtocolError(f"{schema.name} cannot be packed: {exc}") from None

    def encode(self, message: Message, *, check: bool = True, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
        """The frame for ``message``: ``[tag, *fields]`` in msgpack. Deterministic for equal input.

        With ``check`` (the default) the message is first validated as the receiver would; turn it
        off only on a measured hot path whose messages are known good. Raises ``LocalProtocolError``.
        """
        schema = self._schema_of(message)
        if check:
            self.check(message)
        try:
            frame = _ENCODER.encode(message)
        except Exception as exc:  # msgspec raises OverflowError, TypeError, EncodeError, ...
            raise LocalProtocolError(f"{schema.name} cannot be packed: {exc}") from None
        if len(frame) > max_bytes:
            raise LocalProtocolError(
                f"{schema.name} encodes to {len(frame)} bytes, more than the limit of {max_bytes}"
            )
        return frame

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
        if type(data) is bytes:
            size = len(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            size = memoryview(data).nbytes
        else:
            raise DecodeError(f"a frame must be bytes, got {describe(data)}")
        if size > max_bytes:
            raise DecodeError(f"frame of {size} bytes is larger than the limit of {max_bytes}")
        if size == 0:
            raise DecodeError("empty frame")
        if size > MAX_CONTAINER_LEN:
            # Only a frame this big can declare containers past the limit: check the headers before
            # msgspec builds them, so no frame costs more memory than its size.
            self._unpack(data, max_bytes)
        decoder = self._decoder or self._message_decoder()
        try:
            decoded = decoder.decode(data)
        except (msgspec.DecodeError, _ExtensionRefused, RecursionError) as exc:
            raise self._refusal(data, max_bytes, exc) from None
        schema = self._by_type[type(decoded)]
        try:
            for index, name, walker in schema.natives:
                if not walker(getattr(decoded, name)):
                    # msgpack's own complaint, when it has one, comes first; then the data's, worded
                    # along the frame exactly as it came.
                    wire = self._unpack(data, max_bytes)
                    _check_native(wire[index], 0, f"{schema.name}.{name}")
                    raise _Invalid(f"{schema.name}.{name}", f"must be {NATIVE_DESCRIPTION}")
            if schema.refines:
                decoded = decoded.refined()
        except _Invalid as exc:
            raise DecodeError(str(exc), request_id=self._request_id_of(decoded, schema)) from None
        except CommandError as exc:
            raise DecodeError(
                exc.reason, code=exc.code, request_id=self._request_id_of(decoded, schema)
            ) from None
        return decoded

    @staticmethod
    def _request_id_of(decoded: Any, schema: _Schema) -> int | None:
        return decoded.request_id if schema.is_request else None

    def _refusal(self, data: Frame, max_bytes: int, exc: BaseException) -> DecodeError:
        """Word a frame msgspec refused: msgpack's own complaint first, then the schema's."""
        wire = self._unpack(data, max_bytes)
        if type(wire) is not list or not wire:
            return DecodeError(f"a frame must be a non-empty array [tag, fields...], got {describe(wire)}")
        tag = wire[0]
        if type(tag) is not int:
            return DecodeError(f"message tag must be an int, got {describe(tag)}")
        schema = self._by_tag.get(tag)
        if schema is None:
            return DecodeError(f"unknown message tag {show(tag)}")
        request_id = self._wire_request_id(wire)
        if isinstance(exc, msgspec.ValidationError):
            return DecodeError(explain(exc, schema.message_type, wire), request_id=request_id)
        return DecodeError(f"not valid msgpack: {exc}", request_id=request_id)

    def _unpack(self, data: Frame, max_bytes: int) -> Any:
        """msgpack's strict unpack of ``data`` with the codec's limits; raises its refusal worded."""
        try:
            return msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=max_bytes,
                max_bin_len=max_bytes,
                max_array_len=MAX_CONTAINER_LEN,
                max_map_len=MAX_CONTAINER_LEN,
                max_ext_len=0,  # no extension types (nor msgpack timestamps) in DiMint's wire form
                ext_hook=_refuse_extension_msgpack,  # ... not even empty ones, which max_ext_len lets through
            )
        except msgpack.ExtraData as exc:
            raise DecodeError(
                f"{len(exc.extra)} trailing byte(s) after the message",
                request_id=self._wire_request_id(exc.unpacked),
            ) from None
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"a string is not valid UTF-8 ({exc.reason} at byte {exc.start} of the string)",
                request_id=self._wire_request_id(_lenient_unpack(data, max_bytes)),
            ) from None
        except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, TypeError, ...
            raise DecodeError(
                _msgpack_failure(exc), request_id=self._wire_request_id(_lenient_unpack(data, max_bytes))
            ) from None

    def _wire_request_id(self, wire: Any) -> int | None:
        """The request id of a request-shaped value, to answer a frame we cannot accept."""
        if type(wire) is not list or len(wire) < 2 or type(wire[0]) is not int:
            return None
        schema = self._by_tag.get(wire[0])
        if schema is None or not schema.is_request or type(wire[1]) is not int:
            return None
        return wire[1] if -(1 << 63) <= wire[1] < 1 << 64 else None


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
            ext_hook=lambda code, data: None,
        )
    except msgpack.ExtraData as exc:
        return exc.unpacked
    except Exception:  # the frame is refused either way; only the request id is at stake
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


def message(*, request: bool = False) -> Callable[[type[_MessageT]], type[_MessageT]]:
    """Register a message with DiMint's registry (see ``MessageRegistry.register``)."""
    return REGISTRY.message(request=request)


def encode(msg: Message, *, check: bool = True, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Encode ``msg`` to one frame (see ``MessageRegistry.encode``)."""
    return REGISTRY.encode(msg, check=check, max_bytes=max_bytes)


def decode(data: Frame, *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode one frame: a validated message, or ``DecodeError`` and nothing else."""
    return REGISTRY.decode(data, max_bytes=max_bytes)


def check(msg: Message) -> None:
    """Raise ``LocalProtocolError`` unless ``msg`` is valid and would arrive intact."""
    REGISTRY.check(msg)


def tag_of(message_type: type[Message]) -> int:
    return REGISTRY.tag_of(message_type)


def message_types() -> Mapping[int, type[Message]]:
    """Tag -> message class for every DiMint message."""
    return REGISTRY.types()
