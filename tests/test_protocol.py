"""The wire codec is total, faithful and strict.

What this proves:

* every message type survives ``decode(encode(m)) == m`` and encoding is deterministic;
* ``decode`` is total: for random bytes, truncated and mutated frames and well-formed msgpack of the
  wrong shape it returns a valid message (which re-encodes to the same bytes) or raises exactly
  ``DecodeError``, never another exception;
* request-shaped bad frames carry their ``request_id`` and the right ``ErrorCode``, and command
  arguments are refused per argument kind with a reason naming the argument;
* the tag table is pinned, so a change of wire meaning cannot slip through unnoticed.

How: hypothesis strategies are derived from each message's annotations (with hand-written ones
where validation is semantic: commands, admin actions, replication entries), plus exhaustive
prefix and byte-mutation sweeps over sample frames and a table of hand-made bad frames.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimint.core import protocol
from dimint.core.commands import COMMANDS, INT64_MAX, INT64_MIN
from dimint.core.errors import CommandError, DecodeError, ErrorCode, LocalProtocolError
from dimint.core.protocol import (
    ADMIN_ACTIONS,
    MAX_CONTAINER_LEN,
    MAX_NESTING_DEPTH,
    AdminReply,
    AdminRequest,
    ErrorReply,
    GetMap,
    Heartbeat,
    HeartbeatAck,
    InSyncChange,
    MapReply,
    Message,
    MessageRegistry,
    MigrateBatch,
    MigrateBatchAck,
    MoveReport,
    NodeReport,
    PositionQuery,
    PositionReply,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    SyncRequest,
    decode,
    encode,
    message_types,
    tag_of,
    validate_command,
)

UINT64_MAX = (1 << 64) - 1
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

wire_ints = st.integers(INT64_MIN, UINT64_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)
# NaN is valid on the wire but never equal to itself, which would make equality assertions lie.
native_scalars = (
    st.none()
    | st.booleans()
    | wire_ints
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
native = st.recursive(
    native_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy for any value the annotation allows (the codec's supported field types)."""
    if annotation is Any:
        return native
    simple = {
        int: wire_ints,
        bool: st.booleans(),
        str: st.text(max_size=12),
        bytes: st.binary(max_size=12),
        float: st.floats(allow_nan=False),
        type(None): st.none(),
    }
    if annotation in simple:
        return simple[annotation]
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in arguments])
    if origin is list:
        return st.lists(strategy_for(arguments[0]), max_size=4)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return st.lists(strategy_for(arguments[0]), max_size=4).map(tuple)
        return st.tuples(*[strategy_for(a) for a in arguments])
    if origin is dict:
        return st.dictionaries(strategy_for(arguments[0]), strategy_for(arguments[1]), max_size=4)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return dataclass_strategy(annotation)
    raise AssertionError(f"no strategy for {annotation!r}")


def kind_strategy(kind: str) -> st.SearchStrategy[Any]:
    """Normalised values of one command argument kind (what decode hands to a handler)."""
    return {
        "key": st.binary(max_size=8),
        "bytes": st.binary(max_size=8),
        "value": st.binary(max_size=8) | int64s,
        "int": int64s,
        "opt_int": st.none() | int64s,
        "cond": st.sampled_from([None, "nx", "xx"]),
    }[kind]


def kinds_of(name: str, repeats: int) -> list[str]:
    """The argument kinds of a command call with ``repeats`` copies of its repeating tail.

    Written from the command table's documentation, not from the codec, so the two are checked
    against each other.
    """
    kinds: list[str] = []
    for kind in COMMANDS[name].args:
        if kind == "pairs":
            pair = ["key", "value"] if name == "mset" else ["bytes", "bytes"]
            kinds += pair * repeats
        elif kind.endswith("*"):
            kinds += [kind[:-1]] * repeats
        else:
            kinds.append(kind)
    return kinds


@st.composite
def normalised_args(draw: st.DrawFn, name: str) -> list[Any]:
    kinds = kinds_of(name, draw(st.integers(1, 3)))
    return [draw(kind_strategy(kind)) for kind in kinds]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    name = draw(st.sampled_from(sorted(COMMANDS)))
    return Request(
        draw(wire_ints),
        name,
        draw(normalised_args(name)),
        draw(st.sampled_from(["strong", "weak"])),
        draw(wire_ints),
    )


replication_entries = st.lists(
    st.tuples(wire_ints, wire_ints, st.lists(st.lists(native, max_size=3), max_size=3)).map(list), max_size=4
)

#: Fields whose validity is semantic, not just a type.
OVERRIDES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (AdminRequest, "action"): st.sampled_from(sorted(ADMIN_ACTIONS)),
    (Replicate, "entries"): replication_entries,
}


def dataclass_strategy(data_type: type) -> st.SearchStrategy[Any]:
    if data_type is Request:
        return requests()
    hints = typing.get_type_hints(data_type)
    names = [field.name for field in msgspec.structs.fields(data_type)]
    fields = {name: OVERRIDES.get((data_type, name), strategy_for(hints[name])) for name in names}
    return st.builds(data_type, **fields)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def decode_or_refuse(data: Any, **options: Any) -> Message | None:
    """Decode; a refusal must be exactly DecodeError with a code and a reason, a success valid."""
    try:
        decoded = decode(data, **options)
    except BaseException as exc:
        assert type(exc) is DecodeError, f"{type(exc).__name__}: {exc}"
        assert isinstance(exc.code, ErrorCode)
        assert exc.reason
        assert exc.request_id is None or isinstance(exc.request_id, int)
        return None
    assert type(decoded) in message_types().values()
    frame = encode(decoded)  # checks it, too: a decoded message is always valid
    assert encode(decode(frame)) == frame
    return decoded


def refusal(data: bytes, **options: Any) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode(data, **options)
    assert type(caught.value) is DecodeError
    return caught.value


def frame(*wire: Any) -> bytes:
    return msgpack.packb(list(wire), use_bin_type=True)


SAMPLES: list[Message] = [
    Request(7, "set", [b"k", b"v", 1000, "nx"], "weak", 3),
    Request(8, "mset", [b"a", b"1", b"b", 2]),
    Response(7, {"x": [1, b"y", None, 2.5, True]}),
    ErrorReply(7, ErrorCode.MOVED, "key 'k' moved", 4),
    GetMap(9, 2),
    MapReply(9, 3, b"\x00\x01map"),
    AdminRequest(10, "add_shard", {"shard_id": 3, "nodes": ["n1", "n2"]}),
    AdminReply(10, {"map_epoch": 5}),
    Replicate(1, 2, 4, 1, [[5, 2, [["set", b"k", b"v"]]], [6, 2, []]], 5),
    ReplicateAck(1, 2, "node:2", 6, 2),
    SyncRequest(1, 2, "node:3", 0, 0),
    SnapshotChunk(1, 2, 6, 2, 0, [[b"k", "string", b"v", None]], True),
    Heartbeat(1, 2, "node:1", 6, 2, 123456),
    HeartbeatAck(1, 2, "node:2", 6, 2),
    PositionQuery(11, 1, 2),
    PositionReply(11, "node:2", 1, 2, 2, 6),
    InSyncChange(1, 2, "node:1", ["node:3"], ["node:2"]),
    NodeReport(
        "node:1",
        "tcp://127.0.0.1:7001",
        99,
        4,
        1,
        "master",
        2,
        2,
        6,
        6,
        10,
        800,
        {"node:2": 6},
        None,
        40,
        False,
        123456,
    ),
    MigrateBatch(7, 1, 0, 1, 0, [["put", b"k", "string", b"v", None], ["del", b"j"]], False),
    MigrateBatchAck(7, 1, 0, 1, 0, "node:4"),
    MoveReport("node:1", 7, 1, 0, 1, 3, "ready", 10, 2000, 4, 2, 150, 12),
]
SAMPLE_FRAMES = [encode(m) for m in SAMPLES]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: The wire tags. Changing a row here breaks compatibility with every deployed peer: add rows only.
EXPECTED_TAGS = {
    1: "Request",
    2: "Response",
    3: "ErrorReply",
    4: "GetMap",
    5: "MapReply",
    6: "AdminRequest",
    7: "AdminReply",
    20: "Replicate",
    21: "ReplicateAck",
    22: "SyncRequest",
    23: "SnapshotChunk",
    24: "Heartbeat",
    25: "HeartbeatAck",
    26: "PositionQuery",
    27: "PositionReply",
    28: "InSyncChange",
    29: "NodeReport",
    40: "MigrateBatch",
    41: "MigrateBatchAck",
    42: "MoveReport",
}


def test_tags_are_stable_and_unique() -> None:
    registered = message_types()
    assert {tag: cls.__name__ for tag, cls in registered.items()} == EXPECTED_TAGS
    assert len(set(registered.values())) == len(registered)
    for tag, cls in registered.items():
        assert tag_of(cls) == tag
        # The frame is a msgpack array whose first element is the tag.
        assert msgpack.unpackb(encode(next(m for m in SAMPLES if type(m) is cls)))[0] == tag


def test_samples_cover_every_message() -> None:
    assert {type(m) for m in SAMPLES} == set(message_types().values())


def test_field_order_is_pinned() -> None:
    """Fields are positional on the wire: reordering them would silently swap values."""
    assert frame(1, 7, "get", ["k"], "strong", 0, 0, 0, 0) == encode(Request(7, "get", ["k"]))
    assert frame(1, 7, "set", ["k", "v", None, None], "strong", 3, 99, 5, 4) == encode(
        Request(7, "set", ["k", "v", None, None], "strong", 3, 99, 5, 4)
    )
    assert frame(3, 7, "MOVED", "why", 2) == encode(ErrorReply(7, ErrorCode.MOVED, "why", 2))
    assert frame(23, 1, 2, 3, 9, 4, [], True, 0, []) == encode(SnapshotChunk(1, 2, 3, 9, 4, [], True))


def test_frames_from_before_the_at_most_once_fields_decode_as_anonymous() -> None:
    """A peer that predates client identity sends shorter frames; they mean what they meant."""
    old = decode(frame(1, 7, "set", ["k", "v", None, None], "strong", 3))
    assert old == Request(7, "set", [b"k", b"v", None, None], "strong", 3)
    assert (old.client_id, old.seq, old.floor) == (0, 0, 0)
    chunk = decode(frame(23, 1, 2, 3, 9, 4, [], True, 5))
    assert chunk == SnapshotChunk(1, 2, 3, 9, 4, [], True, 5) and chunk.sessions == []


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ((-1, 1, 0), "Request.client_id must be >= 0"),
        ((9, 0, 0), "needs a seq >= 1"),
        ((9, 3, 4), "above the request's own seq"),
        ((9, 1, -2), "Request.floor must be >= 0"),
    ],
)
def test_an_impossible_write_identity_is_refused_with_its_request_id(
    fields: tuple[int, int, int], problem: str
) -> None:
    with pytest.raises(DecodeError, match=problem) as caught:
        decode(frame(1, 7, "set", ["k", "v", None, None], "strong", 0, *fields))
    # A negative number is no identity at all (the schema refuses it); a write without a sequence,
    # or with a floor above it, is a client's mistake about identity (the command check refuses it).
    negative = min(fields) < 0
    assert caught.value.request_id == 7
    assert caught.value.code is (ErrorCode.MALFORMED if negative else ErrorCode.BAD_ARGUMENT)


def test_reads_need_no_sequence_number() -> None:
    assert decode(frame(1, 7, "get", ["k"], "strong", 0, 9, 0, 0)).client_id == 9


def test_protocol_module_is_pure() -> None:
    forbidden = {"time", "os", "threading", "socket", "subprocess", "asyncio", "simpy", "zmq", "kazoo"}
    tree = ast.parse(Path(protocol.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & forbidden


# A private registry exercises every supported field type without claiming a real tag.
class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class Point(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    x: int
    y: float


class Everything(Message, tag=1):
    number: int
    flag: bool
    ratio: float
    text: str
    blob: bytes
    maybe: int | None
    pair: tuple[int, str]
    many: tuple[bytes, ...]
    points: list[Point]
    table: dict[str, list[int]]
    color: Color
    code: ErrorCode
    anything: Any
    either: int | str | None
    added_later: int = 7


class Small(Message, tag=5):
    a: int


class SameTag(Message, tag=5):
    b: int


class Opaque:
    """A Python object msgpack has no form for."""


class Unsupported(Message, tag=10):
    members: Opaque


class BadDefault(Message, tag=11):
    a: int = "zero"  # type: ignore[assignment]


PRIVATE = MessageRegistry()
PRIVATE.register(Everything)


@FAST
@given(dataclass_strategy(Everything))
def test_every_supported_field_type_round_trips(value: Everything) -> None:
    frame_bytes = PRIVATE.encode(value)
    assert PRIVATE.decode(frame_bytes) == value
    assert PRIVATE.encode(PRIVATE.decode(frame_bytes)) == frame_bytes


def test_older_sender_may_omit_trailing_defaults_but_not_more() -> None:
    full = Everything(
        1,
        True,
        0.5,
        "t",
        b"b",
        None,
        (1, "x"),
        (b"m",),
        [Point(1, 2.0)],
        {"k": [1]},
        Color.RED,
        ErrorCode.FENCED,
        [1],
        "s",
    )
    wire = msgpack.unpackb(PRIVATE.encode(full))
    assert PRIVATE.decode(msgpack.packb(wire[:-1])) == full  # added_later filled in
    with pytest.raises(DecodeError, match="fields after the tag"):
        PRIVATE.decode(msgpack.packb(wire[:-2]))
    with pytest.raises(DecodeError, match="fields after the tag"):
        PRIVATE.decode(msgpack.packb([*wire, 0]))


@pytest.mark.parametrize(
    ("index", "bad", "reason"),
    [
        (1, "one", "number must be an int, got str"),
        (2, 1, "flag must be a bool, got int"),
        (3, "1.5", "ratio must be a float, got str"),
        (7, [1, "x", 3], "pair must have 2 elements"),
        (8, [1], "many[0] must be bytes, got int"),
        (9, [[1]], "points[0] must have 2 fields"),
        (9, [[1, "y"]], "points[0].y must be a float"),
        (10, {"k": [True]}, "table['k'][0] must be an int, got bool"),
        (11, 3, "color must be a Color value, got 3"),
        (12, "NOPE", "code must be an ErrorCode value"),
        (14, 1.5, "either must be an int or a str or None, got float"),
    ],
)
def test_field_type_errors_name_the_field(index: int, bad: Any, reason: str) -> None:
    good = [1, 1, True, 0.5, "t", b"b", None, [1, "x"], [], [], {}, 1, "MOVED", None, None]
    assert PRIVATE.decode(msgpack.packb(good, use_bin_type=True))
    good[index] = bad
    with pytest.raises(DecodeError) as caught:
        PRIVATE.decode(msgpack.packb(good, use_bin_type=True))
    assert reason in caught.value.reason
    assert caught.value.code is ErrorCode.MALFORMED


def test_an_int_is_a_float_on_the_wire_and_arrives_as_one() -> None:
    """msgpack (like JSON) lets an integer stand for a float: it decodes as the float it means.
    (The hand-written codec before msgspec refused it; no DiMint message relied on that.)"""
    good = [1, 1, True, 1, "t", b"b", None, [1, "x"], [], [], {}, 1, "MOVED", None, None]
    decoded = PRIVATE.decode(msgpack.packb(good, use_bin_type=True))
    assert isinstance(decoded, Everything) and type(decoded.ratio) is float and decoded.ratio == 1.0


def test_registration_refuses_bad_definitions() -> None:
    registry = MessageRegistry()
    registry.register(Small)
    with pytest.raises(LocalProtocolError, match="already belongs"):
        registry.register(SameTag)
    with pytest.raises(LocalProtocolError, match="already registered"):
        registry.register(Small)
    for bad_tag in (0, -1, 1 << 16, "five"):

        class Tagged(Message, tag=bad_tag):
            a: int

        with pytest.raises(LocalProtocolError, match="tag must be"):
            registry.register(Tagged)
    with pytest.raises(LocalProtocolError, match="subclass Message"):
        registry.register(Point)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="request_id"):
        registry.register(Everything, request=True)
    with pytest.raises(LocalProtocolError, match="cannot be carried on the wire"):
        registry.register(Unsupported)
    with pytest.raises(LocalProtocolError, match="cannot be carried on the wire"):
        registry.register(Unsupported)  # a failed attempt leaves nothing half-registered
    with pytest.raises(LocalProtocolError, match="default must be an int"):
        registry.register(BadDefault)
    assert dict(registry.types()) == {5: Small}


def test_messages_still_answer_the_dataclass_functions() -> None:
    """They were frozen dataclasses before msgspec; code that treats them so keeps working."""
    request = Request(1, "get", [b"k"])
    assert dataclasses.is_dataclass(request)
    assert [f.name for f in dataclasses.fields(request)][:3] == ["request_id", "command", "args"]
    assert dataclasses.replace(request, request_id=2) == Request(2, "get", [b"k"])
    assert dataclasses.asdict(ErrorReply(1, ErrorCode.MOVED, "r"))["reason"] == "r"
    with pytest.raises(AttributeError):
        request.request_id = 5  # type: ignore[misc]  # frozen, as before


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", list(message_types().values()), ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_every_message_round_trips(message_type: type[Message], data: st.DataObject) -> None:
    value = data.draw(dataclass_strategy(message_type))
    frame_bytes = encode(value)
    decoded = decode(frame_bytes)
    assert type(decoded) is message_type
    assert decoded == value
    assert encode(value) == frame_bytes  # deterministic
    assert encode(decoded) == frame_bytes


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda m: type(m).__name__)
def test_samples_round_trip(sample: Message) -> None:
    assert decode(encode(sample)) == sample
    assert decode(bytearray(encode(sample))) == sample
    assert decode(memoryview(encode(sample))) == sample


def test_error_code_arrives_as_the_enum() -> None:
    decoded = decode(encode(ErrorReply(1, ErrorCode.FROZEN, "retry")))
    assert isinstance(decoded, ErrorReply)
    assert decoded.code is ErrorCode.FROZEN


@FAST
@given(data=st.data())
def test_requests_are_normalised_on_decode(data: st.DataObject) -> None:
    """What a client may send (str or bytes keys and values) arrives in one shape: bytes."""
    name = data.draw(st.sampled_from(sorted(COMMANDS)))
    kinds = kinds_of(name, data.draw(st.integers(1, 3)))
    expected, sent = [], []
    for kind in kinds:
        value = data.draw(kind_strategy(kind))
        expected.append(value)
        as_text = isinstance(value, bytes) and data.draw(st.booleans())
        sent.append(value.decode("latin-1") if as_text else value)
        if as_text:
            expected[-1] = sent[-1].encode("utf-8")
    decoded = decode(encode(Request(1, name, sent)))
    assert isinstance(decoded, Request)
    assert decoded.args == expected
    assert list(validate_command(name, sent)) == expected
    assert list(validate_command(name, decoded.args)) == decoded.args  # a fixpoint


def test_set_pads_omitted_options() -> None:
    decoded = decode(encode(Request(1, "set", ["k", "v"])))
    assert isinstance(decoded, Request)
    assert decoded.args == [b"k", b"v", None, None]
    assert validate_command("set", ("k", 5, 100)) == (b"k", 5, 100, None)


# --------------------------------------------------------------------------------------------
# Totality of decode
# --------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_refuse(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(st.sampled_from(sorted(EXPECTED_TAGS)), st.integers(0, 8), st.binary(max_size=80))
def test_random_bodies_behind_a_real_tag_decode_or_refuse(tag: int, arity: int, body: bytes) -> None:
    decode_or_refuse(bytes([0x90 | (arity + 1), tag]) + body)


@FUZZ
@given(st.sampled_from([*EXPECTED_TAGS, 0, 99, -1, "1", True, None, 1.0]), st.lists(native, max_size=7))
def test_wrong_shapes_decode_or_refuse(tag: Any, fields: list[Any]) -> None:
    decode_or_refuse(frame(tag, *fields))


@FUZZ
@given(data=st.data())
def test_valid_frames_with_one_wrong_field_decode_or_refuse(data: st.DataObject) -> None:
    wire = msgpack.unpackb(data.draw(st.sampled_from(SAMPLE_FRAMES)))
    position = data.draw(st.integers(1, len(wire) - 1))
    wire[position] = data.draw(native)
    decode_or_refuse(msgpack.packb(wire, use_bin_type=True))


@pytest.mark.parametrize("depth", [30, 31, 32, 33, 34])
def test_the_nesting_limit_holds_in_every_kind_of_any_field(depth: int) -> None:
    """Any data sits at depth 0 in a plain ``Any`` field, at 1 inside a list or map field."""
    for wire, limit in (
        ([tag_of(Response), 7, nested(depth)], MAX_NESTING_DEPTH),
        ([tag_of(Response), 7, {"k": nested(depth)}], MAX_NESTING_DEPTH - 1),
        ([tag_of(MigrateBatch), 1, 0, 2, 1, 0, [nested(depth)], False], MAX_NESTING_DEPTH - 1),
    ):
        if depth <= limit:
            assert decode_or_refuse(frame(*wire)) is not None
        else:
            assert "nests deeper than" in refusal(frame(*wire)).reason


@FUZZ
@given(data=st.data())
def test_a_decoded_message_is_exactly_what_its_frame_said(data: st.DataObject) -> None:
    """Mutated valid frames: what decodes re-encodes to the same message, field for field."""
    wire = msgpack.unpackb(data.draw(st.sampled_from(SAMPLE_FRAMES)))
    for _ in range(data.draw(st.integers(0, 2))):
        position = data.draw(st.integers(1, len(wire) - 1))
        wire[position] = data.draw(native | wire_ints | st.sampled_from([True, "strong", "MOVED", [1, []]]))
    if data.draw(st.booleans()):
        del wire[data.draw(st.integers(1, len(wire) - 1)) :]
    decoded = decode_or_refuse(msgpack.packb(wire, use_bin_type=True))
    if decoded is not None and not isinstance(decoded, Request):  # a request's args arrive normalised
        assert msgpack.unpackb(encode(decoded))[: len(wire)] == wire


@pytest.mark.parametrize("frame_bytes", SAMPLE_FRAMES, ids=[type(m).__name__ for m in SAMPLES])
def test_every_truncation_is_refused(frame_bytes: bytes) -> None:
    for end in range(len(frame_bytes)):
        refusal(frame_bytes[:end])


@pytest.mark.parametrize("frame_bytes", SAMPLE_FRAMES[:4], ids=[type(m).__name__ for m in SAMPLES[:4]])
def test_every_single_byte_mutation_decodes_or_is_refused(frame_bytes: bytes) -> None:
    for position in range(len(frame_bytes)):
        for byte in range(256):
            if byte != frame_bytes[position]:
                mutated = frame_bytes[:position] + bytes([byte]) + frame_bytes[position + 1 :]
                decode_or_refuse(mutated)


@FUZZ
@given(st.sampled_from(SAMPLE_FRAMES), st.data())
def test_random_mutations_decode_or_refuse(frame_bytes: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    decode_or_refuse(bytes(mutated))


def nested(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


INVALID_UTF8_REQUEST = b"\x93\x01\x05\xa3g\xffe"  # [1, 5, "g\xffe"]

BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty frame"),
    ("reserved byte", b"\xc1", "invalid type byte"),
    ("not an array", msgpack.packb({"tag": 1}), "must be a non-empty array"),
    ("scalar", msgpack.packb(5), "must be a non-empty array"),
    ("empty array", msgpack.packb([]), "must be a non-empty array"),
    ("unknown tag", frame(99, 1), "unknown message tag 99"),
    ("negative tag", frame(-1, 1), "unknown message tag -1"),
    ("str tag", frame("1", 7, "get", ["k"]), "tag must be an int, got str"),
    ("bool tag", frame(True, 7, "get", ["k"]), "tag must be an int, got bool"),
    ("float tag", frame(1.0, 7, "get", ["k"]), "tag must be an int, got float"),
    ("too few fields", frame(2, 7), "Response must have 2 fields after the tag, got 1"),
    ("too many fields", frame(2, 7, None, None), "must have 2 fields after the tag, got 3"),
    ("str for int", frame(2, "7", None), "Response.request_id must be an int, got str"),
    ("bool for int", frame(21, 1, True, "n", 3, 0), "ReplicateAck.shard_epoch must be an int, got bool"),
    ("int for bool", frame(23, 1, 2, 3, 0, 4, [], 1), "SnapshotChunk.last must be a bool, got int"),
    ("str for bytes", frame(5, 1, 2, "map"), "MapReply.cluster_map must be bytes, got str"),
    ("int for error code", frame(3, 1, 5, "r"), "ErrorReply.code must be an ErrorCode value, got 5"),
    ("unknown error code", frame(3, 1, "NOPE", "r"), "got 'NOPE'"),
    ("map for list", frame(23, 1, 2, 3, 0, 4, {}, True), "SnapshotChunk.items must be a list"),
    ("int map key", b"\x93\x02\x01\x81\x01\x02", "int is not allowed for map key"),
    ("list map key", b"\x93\x02\x01\x81\x90\x01", "not valid msgpack"),
    ("deep nesting", frame(2, 1, nested(MAX_NESTING_DEPTH + 1)), "nests deeper than"),
    ("msgpack-deep nesting", b"\x93\x02\x01" + b"\x91" * 5000 + b"\xc0", "nested too deeply"),
    ("invalid utf-8", b"\x93\x02\x01\xa2\xc3\x28", "not valid UTF-8"),
    ("trailing bytes", frame(2, 1, None) + b"\x00", "1 trailing byte(s)"),
    ("two frames", frame(2, 1, None) * 2, "trailing byte(s)"),
    ("extension type", frame(2, 1, msgpack.ExtType(3, b"x")), "extension types"),
    ("timestamp", frame(2, 1, msgpack.Timestamp(1, 0)), "extension types"),
    ("huge array header", b"\x93\x02\x01\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
    ("huge map header", b"\x93\x02\x01\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
    ("huge str header", b"\x93\x02\x01\xdb\xff\xff\xff\xff", "truncated"),
    ("truncated", frame(2, 1, "abc")[:-1], "truncated"),
    (
        "replication entry not a triple",
        frame(20, 1, 2, 0, 0, [[1]], 0),
        "Replicate.entries[0] must be a [seq",
    ),
    ("replication seq not int", frame(20, 1, 2, 0, 0, [["1", 1, []]], 0), "Replicate.entries[0]"),
    ("replication writes not list", frame(20, 1, 2, 0, 0, [[1, 1, {}]], 0), "Replicate.entries[0]"),
]


@pytest.mark.parametrize(
    ("frame_bytes", "reason"), [(f, r) for _, f, r in BAD_FRAMES], ids=[name for name, _, _ in BAD_FRAMES]
)
def test_bad_frames_are_refused_with_a_reason(frame_bytes: bytes, reason: str) -> None:
    error = refusal(frame_bytes)
    assert reason in error.reason
    assert error.code is ErrorCode.MALFORMED
    assert error.request_id is None


def test_oversize_frames_are_refused() -> None:
    frame_bytes = encode(Response(1, b"x" * 100))
    assert decode(frame_bytes, max_bytes=len(frame_bytes)) == Response(1, b"x" * 100)
    assert "larger than the limit" in refusal(frame_bytes, max_bytes=len(frame_bytes) - 1).reason
    too_long = frame(2, 1, [None] * (MAX_CONTAINER_LEN + 1))
    assert "max_array_len" in refusal(too_long).reason


@pytest.mark.parametrize("not_bytes", ["text", None, 5, [1, 2], object()])
def test_non_bytes_are_refused(not_bytes: Any) -> None:
    assert "must be bytes" in refusal(not_bytes).reason


def test_nesting_limit_is_exact() -> None:
    assert decode(encode(Response(1, nested(MAX_NESTING_DEPTH)))) == Response(1, nested(MAX_NESTING_DEPTH))
    assert "nests deeper than" in refusal(frame(2, 1, nested(MAX_NESTING_DEPTH + 1))).reason


def test_biggest_and_smallest_wire_ints_are_accepted() -> None:
    for number in (UINT64_MAX, INT64_MIN, 0, -1):
        assert decode(frame(2, number, number)) == Response(number, number)
    assert decode(request_frame("get", ["k"], request_id=UINT64_MAX)) == Request(UINT64_MAX, "get", [b"k"])


# --------------------------------------------------------------------------------------------
# Request-shaped frames: request id, code and reason
# --------------------------------------------------------------------------------------------


def request_frame(command: Any, args: Any, *rest: Any, request_id: Any = 42) -> bytes:
    return frame(1, request_id, command, args, *rest)


def valid_args(name: str) -> list[Any]:
    return [
        {"key": "k", "bytes": "f", "value": "v", "int": 1, "opt_int": None, "cond": None}[kind]
        for kind in kinds_of(name, 1)
    ]


def test_every_command_accepts_its_minimal_valid_call() -> None:
    for name in COMMANDS:
        decoded = decode(request_frame(name, valid_args(name)))
        assert isinstance(decoded, Request)
        assert decoded.command == name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_wrong_type_at_any_argument_is_named(name: str) -> None:
    args = valid_args(name)
    for index in range(len(args)):
        for wrong in (1.5, True, [b"k"], {"k": 1}):
            bad = [*args[:index], wrong, *args[index + 1 :]]
            error = refusal(request_frame(name, bad))
            assert error.code is ErrorCode.BAD_ARGUMENT
            assert error.request_id == 42
            assert f"argument {index} of '{name}' must be" in error.reason
            assert f"got {type(wrong).__name__}" in error.reason


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("set", ["k", "v", "soon"], "argument 2 of 'set' must be an int or None, got str"),
        ("set", ["k", "v", None, "yy"], "argument 3 of 'set' must be None, 'nx' or 'xx', got 'yy'"),
        ("set", ["k", "v", 2**63], "argument 2 of 'set' must be a signed 64-bit int or None"),
        ("set", ["k", 2**63], "argument 1 of 'set' must be str, bytes or a signed 64-bit int"),
        ("set", ["k", None], "argument 1 of 'set' must be str, bytes or int, got None"),
        ("get", [5], "argument 0 of 'get' must be a key (str or bytes), got int"),
        ("incr", ["k", "1"], "argument 1 of 'incr' must be an int, got str"),
        ("incr", ["k", UINT64_MAX], "argument 1 of 'incr' must be a signed 64-bit int, got 1844674"),
        ("lrange", ["k", 0, None], "argument 2 of 'lrange' must be an int, got None"),
        ("hget", ["k", 3], "argument 1 of 'hget' must be str or bytes, got int"),
        ("hset", ["k", "f", 3], "argument 2 of 'hset' must be str or bytes, got int"),
        ("mset", ["a", 1, 2, "b"], "argument 2 of 'mset' must be a key (str or bytes), got int"),
        ("sadd", ["k", "a", "b", None], "argument 3 of 'sadd' must be str or bytes, got None"),
        ("get", [], "'get' takes 1 argument, got 0"),
        ("get", ["a", "b"], "'get' takes 1 argument, got 2"),
        ("set", ["k"], "'set' takes 2 to 4 arguments, got 1"),
        ("set", ["k", "v", None, None, None], "'set' takes 2 to 4 arguments, got 5"),
        ("delete", [], "'delete' takes at least 1 argument, got 0"),
        ("lpush", ["k"], "'lpush' takes at least 2 arguments, got 1"),
        ("mset", [], "'mset' takes key/value pairs"),
        ("mset", ["a", "1", "b"], "an even number of arguments, at least 2), got 3"),
        ("hset", ["k", "f"], "'hset' takes 1 argument then field/value pairs"),
        ("get", "k", "arguments of 'get' must be a list, got str"),
    ],
)
def test_bad_arguments_are_refused_by_kind(name: str, args: Any, reason: str) -> None:
    if isinstance(args, list):
        with pytest.raises(CommandError) as caught:
            validate_command(name, args)
        assert caught.value.code is ErrorCode.BAD_ARGUMENT
        assert reason in caught.value.reason
        error = refusal(request_frame(name, args))
        assert error.code is ErrorCode.BAD_ARGUMENT
        assert error.request_id == 42
        assert reason in error.reason
    else:  # a non-list args field is a malformed frame, but the client-side check names it too
        with pytest.raises(CommandError, match=reason):
            validate_command(name, args)
        error = refusal(request_frame(name, args))
        assert error.code is ErrorCode.MALFORMED
        assert error.request_id == 42


@pytest.mark.parametrize("name", ["nope", "GET", "", "get "])
def test_unknown_commands(name: str) -> None:
    error = refusal(request_frame(name, ["k"]))
    assert error.code is ErrorCode.UNKNOWN_COMMAND
    assert error.request_id == 42
    assert repr(name) in error.reason
    with pytest.raises(CommandError) as caught:
        validate_command(name, ["k"])
    assert caught.value.code is ErrorCode.UNKNOWN_COMMAND


def test_out_of_range_ints_are_refused_before_they_reach_the_wire() -> None:
    with pytest.raises(CommandError, match="argument 1 of 'incr' must be a signed 64-bit int"):
        validate_command("incr", ["k", -(2**63) - 1])
    with pytest.raises(LocalProtocolError, match="must fit in 64 bits"):
        encode(Request(1, "incr", ["k", -(2**63) - 1]))


def test_command_name_must_be_a_string() -> None:
    with pytest.raises(CommandError) as caught:
        validate_command(5, [])  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.UNKNOWN_COMMAND
    error = refusal(request_frame(5, []))
    assert (error.code, error.request_id) == (ErrorCode.MALFORMED, 42)
    assert "Request.command must be a str, got int" in error.reason


def test_surrogate_strings_are_refused_locally() -> None:
    with pytest.raises(CommandError, match="valid UTF-8"):
        validate_command("get", ["\ud800"])
    with pytest.raises(LocalProtocolError):
        encode(Request(1, "get", ["\ud800"]))


@pytest.mark.parametrize(
    ("frame_bytes", "code", "request_id", "reason"),
    [
        (request_frame("get", ["k"], "eventual"), ErrorCode.BAD_ARGUMENT, 42, "consistency must be"),
        (request_frame("get", ["k"], "strong", True), ErrorCode.MALFORMED, 42, "map_epoch must be an int"),
        (
            request_frame("get", ["k"], "strong", 0, 0, 0, 0, 0),
            ErrorCode.MALFORMED,
            42,
            "after the tag, got 9",
        ),
        (frame(1, 42), ErrorCode.MALFORMED, 42, "Request must have 3 to 8 fields"),
        (frame(6, 42, "status", {b"k": 1}), ErrorCode.MALFORMED, 42, "AdminRequest.params key must be a str"),
        (request_frame("get", ["k"], request_id=True), ErrorCode.MALFORMED, None, "got bool"),
        (request_frame("get", ["k"], request_id="42"), ErrorCode.MALFORMED, None, "got str"),
        (request_frame("get", ["k"]) + b"\xc0", ErrorCode.MALFORMED, 42, "trailing"),
        (INVALID_UTF8_REQUEST, ErrorCode.MALFORMED, 5, "not valid UTF-8"),
        (frame(4, 42, "0"), ErrorCode.MALFORMED, 42, "GetMap.known_epoch must be an int"),
        (frame(6, 42, "explode", {}), ErrorCode.UNKNOWN_COMMAND, 42, "unknown admin action 'explode'"),
        (frame(6, 42, "status", []), ErrorCode.MALFORMED, 42, "AdminRequest.params must be a map"),
        (frame(2, 42, msgpack.ExtType(1, b"")), ErrorCode.MALFORMED, None, "extension"),
        (frame(1, 42, "get", [msgpack.ExtType(1, b"x")]), ErrorCode.MALFORMED, 42, "extension"),
        (frame(1, 42, "get", [msgpack.Timestamp(1, 0)]), ErrorCode.MALFORMED, 42, "extension"),
        (frame(1, 42, "get", [{1: 2}]), ErrorCode.MALFORMED, 42, "int is not allowed for map key"),
        (frame(1, 42, "get", ["k"])[:-1], ErrorCode.MALFORMED, None, "truncated"),
        (frame(3, 42, "MOVED"), ErrorCode.MALFORMED, None, "ErrorReply must have"),
    ],
)
def test_request_shaped_frames_keep_their_request_id(
    frame_bytes: bytes, code: ErrorCode, request_id: int | None, reason: str
) -> None:
    error = refusal(frame_bytes)
    assert (error.code, error.request_id) == (code, request_id)
    assert reason in error.reason


def test_error_reply_from_a_refusal_matches_the_request() -> None:
    error = refusal(request_frame("nope", []))
    reply = ErrorReply.from_error(error.request_id or 0, error, map_epoch=3)
    assert reply == ErrorReply(42, ErrorCode.UNKNOWN_COMMAND, "unknown command 'nope'", 3)
    assert decode(encode(reply)) == reply
    command_error = CommandError(ErrorCode.MOVED, "owned by shard 2")
    assert ErrorReply.from_error(9, command_error) == ErrorReply(9, ErrorCode.MOVED, "owned by shard 2")


# --------------------------------------------------------------------------------------------
# Encoding checks: what is sent is what arrives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Response(True, None), "Response.request_id must be an int, got bool"),
        (Response(1 << 64, None), "must fit in 64 bits"),
        (Response(1, (1, 2)), "got tuple (a tuple arrives as a list"),
        (Response(1, {1: "x"}), "map keys must be str or bytes, got int"),
        (Response(1, {"a": {1, 2}}), "Response.value['a'] must be msgpack-native data"),
        (Response(1, nested(MAX_NESTING_DEPTH + 1)), "nests deeper than"),
        (ErrorReply(1, "MOVED", "r"), "ErrorReply.code must be an ErrorCode value, got str"),  # type: ignore[arg-type]
        (Replicate(1, 2, 0, 0, [(1, 1, [])], 0), "Replicate.entries[0] must be msgpack-native data"),
        (Replicate(1, 2, 0, 0, [[1, 1, ()]], 0), "Replicate.entries[0][2] must be"),
        (Request(1, "get", ["k"], "eventual"), "consistency must be"),
        (Request(1, "nope", []), "UNKNOWN_COMMAND: unknown command 'nope'"),
        (Request(1, "get", ("k",)), "Request.args must be a list"),  # type: ignore[arg-type]
        (AdminRequest(1, "reboot", {}), "unknown admin action"),
        (SnapshotChunk(1, 2, 3, 0, 4, [], 1), "SnapshotChunk.last must be a bool, got int"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_would_not_arrive_unchanged(bad: Message, reason: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        encode(bad)
    assert reason in str(caught.value)


def test_encode_refuses_unregistered_objects_and_oversize_frames() -> None:
    with pytest.raises(LocalProtocolError, match="not a registered message"):
        encode(Small(1))
    with pytest.raises(LocalProtocolError, match="not a registered message"):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="more than the limit"):
        encode(Response(1, b"x" * 100), max_bytes=50)


def test_unchecked_encode_still_refuses_what_msgpack_cannot_pack() -> None:
    assert encode(Response(1, b"ok"), check=False) == encode(Response(1, b"ok"))
    with pytest.raises(LocalProtocolError, match="cannot be packed"):
        encode(Response(1, 1 << 70), check=False)
    with pytest.raises(LocalProtocolError, match="cannot be packed"):
        encode(Response(1, object()), check=False)
