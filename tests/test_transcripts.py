"""Transcript tests: scripts of inputs fed to a real state machine, with its effects written beside them.

Theory of operation
-------------------
etcd-io/raft tests its state machine with ``testdata/*.txt`` files (cockroachdb's datadriven
format): each file is a story told in inputs, and after every input the file shows what the machine
did. This module does the same for DiMint's pure machines (``DataNode`` and ``Overlord``): every
``tests/testdata/transcripts/<kind>/*.txt`` is one test. A file is a sequence of blocks::

    # free comment lines (and blank lines) before a block
    <directive> <args...>
    [body lines: one input per line, for the directives that take them]
    ----
    <expected output lines, up to the next blank line>

The driver runs the directives in order against one machine, renders what each returned (every
effect, one line each, in the order returned, traces filtered as the directive says) and compares
the rendering with the expected lines. A mismatch fails the test with a unified diff of each block
that differs, and the file and line it starts at.

Why transcripts: an assertion checks what its author thought of; a transcript shows *everything*
the machine did, so a new effect, a changed reply or an extra log entry shows up in review as a
diff of a readable story. They are also the quickest way to read the protocol: each file is a
scenario with the exact messages on the wire.

Regenerating: write the inputs (with an empty expected section), then run::

    DIMINT_REGENERATE=1 .venv/bin/pytest -q -p no:cacheprovider tests/test_transcripts.py
    git diff tests/testdata

The test then rewrites the expected sections instead of comparing, and passes. Review the diff:
the expected output is a claim about the protocol, never a snapshot to accept blindly.

Directives (``key=value`` options; values as below; ``at=T`` on any input moves the clock to T,
which may only grow; ``trace`` shows every Trace effect, ``trace=[a, b]`` only those events)::

    node id=n0 [seed=7] [address=node:n0] [overlords=[overlord:1]] [<NodeConfig field>=v ...]
    overlord id=o1 [seed=3] [address=overlord:o1] [<OverlordConfig field>=v ...]
        a fresh machine (clock at 0, no timers, no coordination requests outstanding).
    map <name> [epoch=1] [mode=semi-sync] [min_in_sync=1] [placement=ring:0,1]
        shard <id> master=<node|null> slaves=[..] in_sync=[..] [epoch=1]
        nodes <id>[@address][#incarnation] ...
        rebalance id=<n> target=<kind:ids> moves=[[source, target, state, attempt, src_ep, tgt_ep]]
      defines a cluster map for ``data=map:<name>``; prints it as parsed. Defaults: the placement
      is a ring over the shards listed, an address is ``node:<id>``, an incarnation is the
      machine's own for the node under test (rendered ``#self``), else 1000 + the id's digits.
    start                            Start()
    session <CONNECTED|SUSPENDED|LOST> [session_id=N]
    watch <path> <CREATED|DELETED|CHANGED|CHILD>
    deliver from=<address> [raw]     body: one message per line, ``<Struct> field=value ...``
      Each message is built with msgspec.convert from the named Struct's own field names (unknown or
      missing fields fail the test), then sent through the codec as the real transport does
      (encode, decode: arguments arrive normalised). A frame the codec refuses never reaches the
      machine; the output says so, with the ErrorReply the transport answers a request-shaped frame
      with. ``raw`` hands the Struct over as it is, as the simulator does.
    coord <request_id> [error=KIND] [path=P] [data=D] [payload={..}] [version=N] [children=[..]]
      (or ``coord`` with one such result per body line) answers an outstanding coordination request
      of the machine (a stray id fails unless ``stray``). ``data`` is ``map:<name>``, ``@<id>`` (the
      data that request <id> wrote) or a bytes literal; ``payload`` is a znode payload dict. A
      non-sequential create answers with its own path by default.
    fire <timer> [unarmed]           the timer's deadline arrives (the clock moves to it if later)
    tick <ms>                        the clock moves on. Nothing ever fires by itself: a transcript
                                     fires the timers its story needs (``state`` marks overdue ones)
    traces <on|off|[events]>         the default trace filter for the directives that follow
    state                            a summary of the machine (role, epochs, log, store, dedup, timers)

Values: ``null``, ``true``, ``false``, integers, ``"json strings"``, ``b"bytes"`` (Python escapes),
``[lists]``, ``{key: value}`` and bare words (strings). At the top of a line a bare word runs to the
next space; inside brackets it stops at ``,`` ``]`` ``}`` (and ``:`` for a key).

Output: ``Send to=<address> <Struct ...>``, ``Reply to=<address> <Struct ...>``, ``SetTimer <key>
at=<ms>``, ``Trace <event> k=v ...`` and the coordination effects by their fields. It uses the input
syntax, so the message of a ``Send`` line can be pasted as a ``deliver`` body line. A Struct prints
its fields in order, leaving out those equal to their default; dicts print with sorted keys, sets
sorted; map bytes print as the map, indented below the line (``= <name>`` when equal to a defined
map). A body of several inputs prints each one's effects under a ``> <label>`` line; a frame the
codec refuses prints a ``codec:`` line. Every message sent must also survive the wire codec
(``protocol.check``), as in the other machine tests. Nothing printed depends on object ids, set
order or the hash seed.
"""

from __future__ import annotations

import ast
import difflib
import enum
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dimint.core import layout, protocol
from dimint.core.clustermap import ClusterMap, MoveInfo, NodeInfo, Rebalance, ShardInfo
from dimint.core.effects import (
    COORD_EFFECTS,
    CancelTimer,
    CoordCreate,
    CoordErrorKind,
    CoordResult,
    CoordSet,
    Effect,
    Input,
    Receive,
    Reply,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
    Trace,
    WatchFired,
    WatchKind,
)
from dimint.core.errors import DecodeError, LocalProtocolError
from dimint.core.node import DataNode, NodeConfig
from dimint.core.node.config import Role
from dimint.core.overlord import Overlord, OverlordConfig
from dimint.core.placement import Placement, make_placement

TRANSCRIPTS = Path(__file__).parent / "testdata" / "transcripts"
REGENERATE = os.environ.get("DIMINT_REGENERATE") == "1"
SEPARATOR = "----"
FILES = sorted(TRANSCRIPTS.glob("node/*.txt")) + sorted(TRANSCRIPTS.glob("overlord/*.txt"))

Machine = DataNode | Overlord


class TranscriptError(Exception):
    """The script itself is wrong (a typo, a stray id, a missing field): fail loudly, never guess."""


# --------------------------------------------------------------------------------------------
# The file format: blocks
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Block:
    """One directive with its body and expected output; ``leading`` keeps the comments above it."""

    leading: list[str]
    directive: str
    body: list[str]
    expected: list[str]
    line_no: int  # of the directive, 1-based


def parse_blocks(text: str, name: str) -> tuple[list[Block], list[str]]:
    """The blocks of a transcript, and the comment lines after the last one."""
    lines = text.splitlines()
    blocks: list[Block] = []
    leading: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            leading.append(line)
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i] != SEPARATOR:
            if not lines[i].strip():
                raise TranscriptError(f"{name}:{start + 1}: block {line!r} has no {SEPARATOR!r} line")
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise TranscriptError(f"{name}:{start + 1}: block {line!r} has no {SEPARATOR!r} line")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(leading, line, body, expected, start + 1))
        leading = []
    return blocks, leading


def render_file(blocks: list[Block], outputs: list[list[str]], trailing: list[str]) -> str:
    lines: list[str] = []
    for block, output in zip(blocks, outputs, strict=True):
        lines += [*block.leading, block.directive, *block.body, SEPARATOR, *output]
    lines += trailing
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Values: one syntax for inputs and outputs
# --------------------------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")  # after _INT: what repr(float) writes
_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./:@#+-]*")
_BARE_KEY = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@#+-]*")
_KEYWORDS = {"null": None, "true": True, "false": False}


class _Reader:
    """A recursive-descent reader of the value syntax (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, problem: str) -> TranscriptError:
        return TranscriptError(f"{problem} at column {self.pos + 1} of {self.text!r}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def done(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def value(self, top: bool = False, key: bool = False) -> Any:
        text, start = self.text, self.pos
        if start >= len(text):
            raise self.fail("a value is missing")
        char = text[start]
        if char == "[":
            return self._sequence()
        if char == "{":
            return self._mapping()
        if char == '"':
            try:
                value, self.pos = json.JSONDecoder().raw_decode(text, start)
            except json.JSONDecodeError as exc:
                raise self.fail(f"bad string ({exc.msg})") from None
            return value
        if text.startswith(('b"', "b'"), start):
            quote, i = text[start + 1], start + 2
            while i < len(text) and text[i] != quote:
                i += 2 if text[i] == "\\" else 1
            if i >= len(text):
                raise self.fail("unterminated bytes literal")
            self.pos = i + 1
            return ast.literal_eval(text[start : self.pos])
        stops = " \t" if top else " \t,]}" + (":" if key else "")
        i = start
        while i < len(text) and text[i] not in stops:
            i += 1
        if i == start:
            raise self.fail(f"unexpected {char!r}")
        self.pos = i
        word = text[start:i]
        if word in _KEYWORDS:
            return _KEYWORDS[word]
        if _INT.fullmatch(word):
            return int(word)
        if _FLOAT.fullmatch(word):
            return float(word)
        return word

    def _sequence(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while True:
            self._skip_separators()
            if self.pos >= len(self.text):
                raise self.fail("unterminated list")
            if self.text[self.pos] == "]":
                self.pos += 1
                return items
            items.append(self.value())

    def _mapping(self) -> dict[Any, Any]:
        self.pos += 1
        items: dict[Any, Any] = {}
        while True:
            self._skip_separators()
            if self.pos >= len(self.text):
                raise self.fail("unterminated dict")
            if self.text[self.pos] == "}":
                self.pos += 1
                return items
            key = self.value(key=True)
            self.skip_space()
            if self.pos >= len(self.text) or self.text[self.pos] != ":":
                raise self.fail("expected ':' after a dict key")
            self.pos += 1
            self.skip_space()
            if key in items:
                raise self.fail(f"duplicate key {key!r}")
            items[key] = self.value()

    def _skip_separators(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t,":
            self.pos += 1


def parse_line(text: str) -> tuple[list[Any], dict[str, Any]]:
    """A line's positional values and ``key=value`` options, each parsed as a value."""
    reader = _Reader(text)
    positional: list[Any] = []
    options: dict[str, Any] = {}
    while not reader.done():
        match = _KEY.match(text, reader.pos)
        if match:
            name = match.group()[:-1]
            if name in options:
                raise reader.fail(f"option {name!r} given twice")
            reader.pos = match.end()
            options[name] = reader.value(top=True)
        else:
            positional.append(reader.value(top=True))
    return positional, options


def fmt(value: Any, key: bool = False) -> str:
    """One value in the transcript syntax, deterministically."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, enum.Enum):
        return fmt(value.value, key)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        bare = (_BARE_KEY if key else _BARE).fullmatch(value)
        return value if bare and value not in _KEYWORDS else json.dumps(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return fmt_bytes(bytes(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(item) for item in value) + "]"
    if isinstance(value, set | frozenset):
        return "[" + ", ".join(sorted(fmt(item) for item in value)) + "]"
    if isinstance(value, dict):
        pairs = sorted((fmt(k, key=True), fmt(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    if isinstance(value, msgspec.Struct):
        return render_struct(value)[0]
    raise TypeError(f"no transcript form for {type(value).__name__}: {value!r:.80}")


def fmt_bytes(data: bytes) -> str:
    out = []
    for byte in data:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\x{byte:02x}"))
    return 'b"' + "".join(out) + '"'


# --------------------------------------------------------------------------------------------
# Messages and effects
# --------------------------------------------------------------------------------------------

MESSAGE_TYPES: dict[str, type[msgspec.Struct]] = {
    cls.__name__: cls for cls in protocol.message_types().values()
}


def build_message(text: str) -> msgspec.Struct:
    """``<Struct> field=value ...`` -> the real Struct, checked by msgspec (typos fail loudly)."""
    positional, options = parse_line(text)
    if len(positional) != 1 or positional[0] not in MESSAGE_TYPES:
        raise TranscriptError(f"expected one message type (one of {sorted(MESSAGE_TYPES)}), got {text!r}")
    cls = MESSAGE_TYPES[positional[0]]
    infos = msgspec.structs.fields(cls)
    unknown = sorted(set(options) - {f.name for f in infos})
    if unknown:
        raise TranscriptError(
            f"{cls.__name__} has no field {unknown[0]!r} (fields: {[f.name for f in infos]})"
        )
    values: list[Any] = []
    for info in infos:
        if info.name in options:
            values.append(options[info.name])
        elif info.required:
            raise TranscriptError(f"{cls.__name__}.{info.name} is required: {text!r}")
        else:
            values.append(info.default if info.default is not msgspec.NODEFAULT else info.default_factory())
    try:
        return msgspec.convert([protocol.tag_of(cls), *values], cls)  # the wire form: [tag, *fields]
    except msgspec.ValidationError as exc:
        # msgspec locates the problem in the wire array ([tag, *fields]): name the field instead.
        problem = re.sub(
            r"\$\[(\d+)\]", lambda m: f"{cls.__name__}.{infos[int(m.group(1)) - 1].name}", str(exc), count=1
        )
        raise TranscriptError(f"{problem} in {text!r}") from None


def _struct_default(info: msgspec.structs.FieldInfo, value: Any) -> bool:
    """Whether a Struct field holds its default (so the rendering may leave it out)."""
    if info.required:
        return False
    default = info.default if info.default is not msgspec.NODEFAULT else info.default_factory()
    return type(value) is type(default) and value == default


def _dataclass_default(info: Any, value: Any) -> bool:
    """Whether a dataclass field (an effect's) holds its default."""
    if info.default is not MISSING:
        default = info.default
    elif info.default_factory is not MISSING:
        default = info.default_factory()
    else:
        return False
    return type(value) is type(default) and value == default


@dataclass(slots=True)
class Renderer:
    """Turns effects into lines; knows the defined maps and the node under test (for ``#self``)."""

    maps: dict[str, ClusterMap] = field(default_factory=dict)
    self_id: str | None = None
    self_incarnation: int | None = None

    def data(self, raw: bytes) -> tuple[str, list[str]]:
        """Znode data: a cluster map (shown whole, below), a payload dict, or plain bytes."""
        if raw:
            try:
                cmap = ClusterMap.from_bytes(raw)
            except DecodeError:
                pass
            else:
                lines = self.map_lines(cmap)
                return "<" + lines[0] + ">", ["  " + line for line in lines[1:]]
            payload = layout.decode_payload(raw)
            if payload and layout.encode_payload(payload) == raw:
                return "payload=" + fmt(payload), []
        return fmt_bytes(raw), []

    def map_lines(self, cmap: ClusterMap) -> list[str]:
        head = (
            f"map epoch={cmap.epoch} mode={fmt(cmap.replication_mode)} min_in_sync={cmap.min_in_sync} "
            f"placement={placement_text(cmap.placement)}"
        )
        same = [name for name, known in sorted(self.maps.items()) if known.to_bytes() == cmap.to_bytes()]
        if same:
            head += f" (= {', '.join(same)})"
        lines = [head]
        for shard in sorted(cmap.shards.values(), key=lambda s: s.shard_id):
            lines.append(
                f"shard {shard.shard_id} master={fmt(shard.master)} slaves={fmt(shard.slaves)} "
                f"in_sync={fmt(shard.in_sync)} epoch={shard.shard_epoch}"
            )
        lines.append("nodes " + " ".join(self.node_token(info) for _, info in sorted(cmap.nodes.items())))
        if cmap.rebalance is not None:
            r = cmap.rebalance
            moves = [
                [m.source, m.target, m.state, m.attempt, m.source_epoch, m.target_epoch] for m in r.moves
            ]
            lines.append(
                f"rebalance id={r.rebalance_id} target={placement_text(r.target)} moves={fmt(moves)}"
                + (f" reason={fmt(r.reason)}" if r.reason else "")
            )
        for name in ("draining", "retired", "extra", "next_shard_id"):
            value = getattr(cmap, name)
            if value:
                lines.append(f"{name}={fmt(dict(value) if name in ('retired', 'extra') else value)}")
        return lines

    def node_token(self, info: NodeInfo) -> str:
        token = info.node_id
        if info.address != f"node:{info.node_id}":
            token += "@" + info.address
        if info.node_id == self.self_id and info.incarnation == self.self_incarnation:
            return token + "#self"
        return token + f"#{info.incarnation}"

    def effect(self, effect: Effect) -> list[str]:
        if isinstance(effect, Send | Reply):
            line, extra = render_struct(effect.message, self)
            return [f"{type(effect).__name__} to={fmt(effect.destination)} {line}", *extra]
        if isinstance(effect, Trace):
            parts = [f"{fmt(k, key=True)}={fmt(v)}" for k, v in sorted(effect.fields.items())]
            return [" ".join(["Trace", fmt(effect.event), *parts])]
        if isinstance(effect, SetTimer):
            return [f"SetTimer {fmt(effect.key)} at={effect.at_ms}"]
        if isinstance(effect, CancelTimer):
            return [f"CancelTimer {fmt(effect.key)}"]
        if is_dataclass(effect):
            parts, extra = [type(effect).__name__], []
            for info in fields(effect):
                value = getattr(effect, info.name)
                if info.name == "request_id":
                    parts.append(str(value))
                elif info.name == "path":
                    parts.append(fmt(value))
                elif info.name == "data":
                    text, extra = self.data(value)
                    parts.append(f"data={text}")
                elif not _dataclass_default(info, value):
                    parts.append(f"{info.name}={fmt(value)}")
            return [" ".join(parts), *extra]
        raise TypeError(f"no transcript form for effect {effect!r:.80}")


def render_struct(message: msgspec.Struct, renderer: Renderer | None = None) -> tuple[str, list[str]]:
    """``Name field=value ...`` with defaulted fields left out; map bytes shown below the line."""
    parts, extra = [type(message).__name__], []
    for info in msgspec.structs.fields(type(message)):
        value = getattr(message, info.name)
        if _struct_default(info, value):
            continue
        if info.name == "cluster_map" and renderer is not None:
            text, extra = renderer.data(value)
            parts.append(f"{info.name}={text}")
        else:
            parts.append(f"{info.name}={fmt(value)}")
    return " ".join(parts), extra


def placement_text(placement: Placement) -> str:
    spec = placement.to_dict()
    kind = spec["kind"]
    ids = list(placement.shard_ids)
    text = f"{kind}:{','.join(str(i) for i in ids)}"
    default = make_placement(kind, ids).to_dict()
    params = {k: v for k, v in spec.items() if default.get(k) != v}
    return text + (fmt(params) if params else "")


def parse_placement(text: Any) -> Placement:
    if not isinstance(text, str) or ":" not in text:
        raise TranscriptError(f"a placement is <kind>:<id>,<id>... (e.g. ring:0,1), got {text!r}")
    kind, ids = text.split(":", 1)
    try:
        return make_placement(kind, [int(i) for i in ids.split(",")])
    except Exception as exc:  # ValueError from int(), ConfigError from make_placement
        raise TranscriptError(f"bad placement {text!r}: {exc}") from None


def default_incarnation(node_id: str) -> int:
    digits = "".join(ch for ch in node_id if ch.isdigit())
    return 1000 + int(digits or 0)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------

#: Flags and options every input directive accepts.
_COMMON = {"at", "trace"}


@dataclass(slots=True)
class Driver:
    """One transcript's world: the machine, the clock, its timers and coordination requests."""

    kind: str  # "node" or "overlord": which machine the directory's files drive
    machine: Machine | None = None
    now: int = 0
    timers: dict[str, int] = field(default_factory=dict)
    coord_outstanding: dict[int, Effect] = field(default_factory=dict)
    coord_issued: dict[int, Effect] = field(default_factory=dict)
    renderer: Renderer = field(default_factory=Renderer)
    trace_default: bool | frozenset[str] = False

    # ---------------------------------------------------------------- dispatch

    def run(self, block: Block) -> list[str]:
        positional, options = parse_line(block.directive)
        if not positional or not isinstance(positional[0], str):
            raise TranscriptError(f"a block starts with a directive name, got {block.directive!r}")
        name, args = positional[0], positional[1:]
        if "trace" in args:  # the bare flag: every trace
            if "trace" in options:
                raise TranscriptError("trace given twice")
            args = [a for a in args if a != "trace"]
            options["trace"] = True
        handler: Callable[[list[Any], dict[str, Any], list[str]], list[str]] | None = getattr(
            self, "do_" + name.replace("-", "_"), None
        )
        if handler is None:
            known = sorted(n[3:] for n in dir(self) if n.startswith("do_"))
            raise TranscriptError(f"unknown directive {name!r} (known: {', '.join(known)})")
        return handler(args, options, block.body)

    def _require(self) -> Machine:
        if self.machine is None:
            raise TranscriptError(f"no machine yet: start the file with a {self.kind!r} directive")
        return self.machine

    def _no_body(self, name: str, body: list[str]) -> None:
        if body:
            raise TranscriptError(f"{name} takes no body lines")

    def _check_options(self, name: str, options: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(options) - allowed - _COMMON)
        if unknown:
            raise TranscriptError(
                f"{name} has no option {unknown[0]!r} (options: {sorted(allowed | _COMMON)})"
            )

    def _advance(self, options: dict[str, Any]) -> None:
        at = options.get("at")
        if at is None:
            return
        if not isinstance(at, int) or at < self.now:
            raise TranscriptError(f"at={at!r}: time only moves forward (now {self.now})")
        self.now = at

    def _trace_filter(self, options: dict[str, Any]) -> bool | frozenset[str]:
        if "trace" not in options:
            return self.trace_default
        return _trace_setting(options["trace"])

    # ---------------------------------------------------------------- feeding the machine

    def feed(self, event: Input, options: dict[str, Any]) -> list[str]:
        machine = self._require()
        shown = self._trace_filter(options)
        effects = machine.handle(event, self.now)
        lines: list[str] = []
        for effect in effects:
            if not isinstance(effect, Effect):
                raise AssertionError(f"{type(machine).__name__} returned a non-effect {effect!r:.80}")
            if isinstance(effect, Send | Reply):
                protocol.check(effect.message)  # every message sent must survive the wire codec
            if isinstance(effect, SetTimer):
                self.timers[effect.key] = effect.at_ms
            elif isinstance(effect, CancelTimer):
                self.timers.pop(effect.key, None)
            elif isinstance(effect, COORD_EFFECTS):
                request_id = effect.request_id  # type: ignore[attr-defined]
                if request_id in self.coord_issued:
                    raise AssertionError(f"coordination request id {request_id} reused")
                self.coord_outstanding[request_id] = effect
                self.coord_issued[request_id] = effect
            if isinstance(effect, Trace) and not (shown is True or (shown and effect.event in shown)):
                continue
            lines += self.renderer.effect(effect)
        return lines

    def _many(self, inputs: list[tuple[str, Callable[[], list[str]]]]) -> list[str]:
        """Each input's lines; with several inputs, each group under a ``> label`` line."""
        if len(inputs) == 1:
            return inputs[0][1]()
        lines: list[str] = []
        for label, run in inputs:
            lines.append(f"> {label}")
            lines += run()
        return lines

    # ---------------------------------------------------------------- machines

    def do_node(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._machine_kind("node", args, body)
        node_id = _required(options, "id", "node")
        seed = options.pop("seed", 7)
        address = options.pop("address", f"node:{node_id}")
        overlords = options.pop("overlords", ["overlord:1"])
        config = _config(NodeConfig, options)
        node = DataNode(node_id, address, overlords, config, random.Random(seed))
        self._fresh(node)
        self.renderer.self_id, self.renderer.self_incarnation = node_id, node.incarnation
        return []

    def do_overlord(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._machine_kind("overlord", args, body)
        overlord_id = _required(options, "id", "overlord")
        seed = options.pop("seed", 3)
        address = options.pop("address", f"overlord:{overlord_id}")
        config = _config(OverlordConfig, options)
        self._fresh(Overlord(overlord_id, address, config, random.Random(seed)))
        self.renderer.self_id = self.renderer.self_incarnation = None
        return []

    def _machine_kind(self, kind: str, args: list[Any], body: list[str]) -> None:
        if kind != self.kind:
            raise TranscriptError(f"a {self.kind} transcript cannot create a {kind}")
        if args or body:
            raise TranscriptError(f"{kind} takes only key=value options")

    def _fresh(self, machine: Machine) -> None:
        self.machine = machine
        self.now = 0
        self.timers.clear()
        self.coord_outstanding.clear()
        self.coord_issued.clear()

    # ---------------------------------------------------------------- maps

    def do_map(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        if len(args) != 1 or not isinstance(args[0], str):
            raise TranscriptError("map takes a name: map <name> [epoch=..] ...")
        self._check_options("map", options, {"epoch", "mode", "min_in_sync", "placement"})
        shards: list[ShardInfo] = []
        nodes: list[NodeInfo] = []
        rebalance: Rebalance | None = None
        for line in body:
            words, opts = parse_line(line)
            if words[:1] == ["shard"] and len(words) == 2:
                unknown = set(opts) - {"master", "slaves", "in_sync", "epoch"}
                if unknown:
                    raise TranscriptError(f"shard line has no option {sorted(unknown)[0]!r}: {line!r}")
                shards.append(
                    ShardInfo(
                        int(words[1]),
                        opts.get("master"),
                        tuple(opts.get("slaves", ())),
                        tuple(opts.get("in_sync", ())),
                        int(opts.get("epoch", 1)),
                    )
                )
            elif words[:1] == ["nodes"] and not opts:
                nodes += [self._node_info(str(token)) for token in words[1:]]
            elif words[:1] == ["rebalance"] and len(words) == 1:
                rebalance = Rebalance(
                    int(_required(opts, "id", "rebalance")),
                    parse_placement(_required(opts, "target", "rebalance")),
                    tuple(MoveInfo(*move) for move in _required(opts, "moves", "rebalance")),
                    str(opts.pop("reason", "")),
                )
                if opts:
                    raise TranscriptError(f"rebalance line has no option {sorted(opts)[0]!r}")
            else:
                raise TranscriptError(f"a map body line is shard/nodes/rebalance, got {line!r}")
        placement = (
            parse_placement(options["placement"])
            if "placement" in options
            else make_placement("ring", sorted(s.shard_id for s in shards))
        )
        cmap = ClusterMap(
            epoch=int(options.get("epoch", 1)),
            placement=placement,
            shards={s.shard_id: s for s in shards},
            nodes={n.node_id: n for n in nodes},
            replication_mode=str(options.get("mode", "semi-sync")),
            min_in_sync=int(options.get("min_in_sync", 1)),
            rebalance=rebalance,
        )
        try:
            cmap.validate()
        except Exception as exc:
            raise TranscriptError(f"map {args[0]}: {exc}") from None
        self.renderer.maps[args[0]] = cmap
        return self.renderer.map_lines(cmap)

    def _node_info(self, token: str) -> NodeInfo:
        match = re.fullmatch(r"([^@#]+)(?:@([^#]+))?(?:#(self|[0-9]+))?", token)
        if match is None:
            raise TranscriptError(f"a node is <id>[@address][#incarnation], got {token!r}")
        node_id, address, incarnation = match.groups()
        if incarnation is None:
            own = isinstance(self.machine, DataNode) and self.machine.node_id == node_id
            incarnation = "self" if own else str(default_incarnation(node_id))
        if incarnation == "self":
            if not isinstance(self.machine, DataNode):
                raise TranscriptError(f"{token!r}: #self needs a node under test")
            number = self.machine.incarnation
        else:
            number = int(incarnation)
        return NodeInfo(node_id, address or f"node:{node_id}", number)

    # ---------------------------------------------------------------- inputs

    def do_start(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._simple("start", args, options, body, 0)
        return self.feed(Start(), options)

    def do_session(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._simple("session", args, options, body, 1, {"session_id"})
        state = _enum(SessionState, args[0])
        return self.feed(SessionStateChanged(state, int(options.get("session_id", 0))), options)

    def do_watch(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._simple("watch", args, options, body, 2)
        return self.feed(WatchFired(str(args[0]), _enum(WatchKind, args[1])), options)

    def do_fire(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        unarmed = "unarmed" in args
        args = [a for a in args if a != "unarmed"]
        self._simple("fire", args, options, body, 1)
        key = str(args[0])
        if key not in self.timers and not unarmed:
            raise TranscriptError(f"timer {key!r} is not armed (armed: {self._timer_text()}); say 'unarmed'")
        deadline = self.timers.pop(key, self.now)
        self.now = max(self.now, deadline)
        return self.feed(TimerFired(key), options)

    def do_tick(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._simple("tick", args, options, body, 1)
        if not isinstance(args[0], int) or args[0] < 0:
            raise TranscriptError(f"tick takes a non-negative number of ms, got {args[0]!r}")
        self.now += args[0]
        return [f"now={self.now}"]

    def do_traces(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._simple("traces", args, {}, body, 1)
        self.trace_default = _trace_setting(args[0])
        return []

    def _simple(
        self,
        name: str,
        args: list[Any],
        options: dict[str, Any],
        body: list[str],
        count: int,
        allowed: set[str] | None = None,
    ) -> None:
        self._no_body(name, body)
        if len(args) != count:
            raise TranscriptError(f"{name} takes {count} argument(s), got {args!r}")
        self._check_options(name, options, allowed or set())
        self._advance(options)

    def do_deliver(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        raw = "raw" in args
        if [a for a in args if a != "raw"]:
            raise TranscriptError(
                f"deliver takes from=<address> [raw] and messages as body lines, got {args!r}"
            )
        self._check_options("deliver", options, {"from"})
        source = str(_required(dict(options), "from", "deliver"))
        if not body:
            raise TranscriptError("deliver needs at least one message body line")
        self._advance(options)
        messages = [build_message(line) for line in body]
        return self._many(
            [
                (
                    f"{index}: {type(message).__name__}",
                    lambda m=message: self._deliver(source, m, raw, options),
                )
                for index, message in enumerate(messages, 1)
            ]
        )

    def _deliver(self, source: str, message: msgspec.Struct, raw: bool, options: dict[str, Any]) -> list[str]:
        if not raw:
            try:
                frame = protocol.encode(message, check=False)
            except LocalProtocolError as exc:
                raise TranscriptError(f"{type(message).__name__} cannot be packed: {exc}") from None
            try:
                message = protocol.decode(frame)
            except DecodeError as exc:
                if exc.request_id is None:
                    return [f"codec: dropped, not a request ({exc.code.value}: {exc.reason})"]
                refusal = protocol.ErrorReply(exc.request_id, exc.code, exc.reason[:1000])
                return [
                    f"codec: refused before the machine; the transport answers: Reply to={fmt(source)} "
                    + render_struct(refusal)[0]
                ]
        return self.feed(Receive(source, message), options)

    def do_coord(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        if body:
            if args or set(options) - _COMMON:
                raise TranscriptError("coord with body lines takes only at=/trace= on its own line")
            self._advance(options)
            results = [parse_line(line) for line in body]
        else:
            self._advance(options)
            results = [(args, {k: v for k, v in options.items() if k not in _COMMON})]
        return self._many(
            [
                (f"coord {fmt(a[0]) if a else '?'}", lambda a=a, o=o: self._coord(a, o, options))
                for a, o in results
            ]
        )

    def _coord(self, args: list[Any], opts: dict[str, Any], options: dict[str, Any]) -> list[str]:
        stray = "stray" in args
        options = dict(options)
        if "trace" in args:  # a body line's own trace flag
            options["trace"] = True
        if "trace" in opts:
            options["trace"] = opts.pop("trace")
        args = [a for a in args if a not in ("stray", "trace")]
        if len(args) != 1 or not isinstance(args[0], int):
            raise TranscriptError(f"coord takes a request id, got {args!r}")
        request_id = args[0]
        unknown = set(opts) - {"error", "path", "data", "payload", "version", "children"}
        if unknown:
            raise TranscriptError(f"coord has no option {sorted(unknown)[0]!r}")
        effect = self.coord_outstanding.pop(request_id, None)
        if effect is None and not stray:
            waiting = ", ".join(f"{i} {type(e).__name__}" for i, e in sorted(self.coord_outstanding.items()))
            raise TranscriptError(
                f"request {request_id} is not outstanding (outstanding: {waiting or 'none'})"
            )
        error = _enum(CoordErrorKind, opts["error"]) if "error" in opts else None
        path = opts.get("path")
        if path is None and isinstance(effect, CoordCreate) and error is None:
            if effect.sequential:
                raise TranscriptError(f"request {request_id} is a sequential create: give path=")
            path = effect.path
        if "data" in opts and "payload" in opts:
            raise TranscriptError("coord takes data= or payload=, not both")
        data = self._data(opts["data"]) if "data" in opts else None
        if "payload" in opts:
            if not isinstance(opts["payload"], dict):
                raise TranscriptError(f"payload must be a dict, got {opts['payload']!r}")
            data = layout.encode_payload(opts["payload"])
        children = opts.get("children", [])
        if not isinstance(children, list):
            raise TranscriptError(f"children must be a list, got {children!r}")
        result = CoordResult(
            request_id,
            error=error,
            path=str(path or ""),
            data=data,
            version=int(opts.get("version", -1)),
            children=tuple(str(c) for c in children),
        )
        return self.feed(result, options)

    def _data(self, spec: Any) -> bytes:
        if isinstance(spec, bytes):
            return spec
        if isinstance(spec, str) and spec.startswith("map:"):
            name = spec[4:]
            if name not in self.renderer.maps:
                raise TranscriptError(f"no map named {name!r} (defined: {sorted(self.renderer.maps)})")
            return self.renderer.maps[name].to_bytes()
        if isinstance(spec, str) and spec.startswith("@") and spec[1:].isdigit():
            written = self.coord_issued.get(int(spec[1:]))
            if not isinstance(written, CoordCreate | CoordSet):
                raise TranscriptError(f"data={spec}: request {spec[1:]} wrote nothing")
            return written.data
        raise TranscriptError(f'data is map:<name>, @<request id> or b"...", got {spec!r}')

    # ---------------------------------------------------------------- state

    def do_state(self, args: list[Any], options: dict[str, Any], body: list[str]) -> list[str]:
        self._simple("state", args, {}, body, 0)
        machine = self._require()
        lines = node_state(machine, self.now) if isinstance(machine, DataNode) else overlord_state(machine)
        lines.append(f"now={self.now} timers: {self._timer_text()}")
        outstanding = " ".join(f"{i}:{type(e).__name__}" for i, e in sorted(self.coord_outstanding.items()))
        if outstanding:
            lines.append(f"coordination requests outstanding: {outstanding}")
        if isinstance(machine, Overlord) and machine.map is not None:
            lines += self.renderer.map_lines(machine.map)
        return lines

    def _timer_text(self) -> str:
        """Armed timers by key; one whose deadline passed without a ``fire`` says so."""
        text = [f"{k}@{at}" + ("(overdue)" if at < self.now else "") for k, at in sorted(self.timers.items())]
        return " ".join(text) or "none"


def _required(options: dict[str, Any], name: str, directive: str) -> Any:
    if name not in options:
        raise TranscriptError(f"{directive} needs {name}=")
    return options.pop(name)


def _enum(kind: type[enum.Enum], value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise TranscriptError(f"{value!r} is not one of {[m.value for m in kind]}") from None


def _trace_setting(value: Any) -> bool | frozenset[str]:
    if value in ("on", True):
        return True
    if value in ("off", False, None):
        return False
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise TranscriptError(f"trace is on, off, an event name or a list of them, got {value!r}")


def _config(cls: type, options: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TranscriptError(f"{cls.__name__} has no field {unknown[0]!r} (fields: {sorted(known)})")
    try:
        return msgspec.convert(options, cls)
    except (msgspec.ValidationError, ValueError) as exc:
        raise TranscriptError(f"{cls.__name__}: {exc}") from None


def node_state(node: DataNode, now: int) -> list[str]:
    """Role and epochs, log position, held replies, store and dedup table of a data node."""
    cmap_epoch = node.map.epoch if node.map is not None else None
    lines = [
        f"role={node.role.value} shard={fmt(node.shard_id)} shard_epoch={node.shard_epoch} "
        f"fenced={fmt(node.fenced)} session={node.session.value} map_epoch={fmt(cmap_epoch)}"
    ]
    position = f"applied_seq={node.applied_seq} last_epoch={node.last_epoch}"
    if node.role is Role.MASTER:
        master = node.master
        acks = fmt(dict(sorted(master.acks.items())))
        position += f" commit_seq={master.commit_seq} log_entries={len(master.log)} acks={acks}"
    elif node.role is Role.SLAVE:
        position += f" master={fmt(node.master_id)} staleness_ms={fmt(node.staleness_ms(now))}"
    lines.append(position)
    for item in node.pending:
        lines.append(f"held: {render_struct(item.reply)[0]} to={fmt(item.destination)} until seq {item.seq}")
    dump = node.store.dump(now)
    entries = [
        f"{fmt(key)}={fmt(value)}"
        + ("" if tag == "string" else f"({tag})")
        + ("" if at is None else f"@{at}")
        for key, (tag, value, at) in dump.items()
    ]
    lines.append("store: " + (" ".join(entries) or "empty"))
    sessions = sorted(node.sessions.snapshot(), key=lambda op: op[1])
    if sessions:
        for op in sessions:
            _, client_id, floor, forgotten, last_ms, results = op[:6]
            outcomes = ", ".join(f"{r[0]}: {fmt(r[1])}" for r in sorted(results, key=lambda r: r[0]))
            low = f" forgotten_below={forgotten}" if forgotten else ""
            lines.append(
                f"dedup: client={client_id} floor={floor}{low} last_ms={last_ms} results={{{outcomes}}}"
            )
    else:
        lines.append("dedup: empty")
    return lines


def overlord_state(overlord: Overlord) -> list[str]:
    """Role, map version, registrations and what the leader is waiting for."""
    lines = [
        f"role={overlord.role.value} session={overlord.session.value} election={fmt(overlord.election_path)} "
        f"map_version={overlord.map_version} map_missing={fmt(overlord.map_missing)} "
        f"write_in_flight={fmt(overlord.write_in_flight)} nodes_listed={fmt(overlord.nodes_listed)}"
    ]
    registrations = [
        f"{node_id}={r.znode}" + (f"@{r.address}" if r.address else "@?") + f"#{fmt(r.incarnation)}"
        for node_id, r in sorted(overlord.registrations.items())
    ]
    lines.append("registrations: " + (" ".join(registrations) or "none"))
    if overlord.payloads_pending:
        lines.append(f"payloads pending: {fmt(overlord.payloads_pending)}")
    for shard_id, f in sorted(overlord.failovers.items()):
        lines.append(
            f"failover shard={shard_id} old_master={fmt(f.old_master)} asked={fmt(f.asked)} "
            f"must_hear={fmt(f.must_hear)} replies={fmt(f.replies)} request_id={f.request_id} "
            f"done={fmt(f.done)} timed_out={fmt(f.timed_out)}"
        )
    for _, change in sorted(overlord.insync_requests.items()):
        lines.append("queued: " + render_struct(change)[0])
    in_doubt = overlord._in_doubt  # no public view of it; the transcripts are about this very state
    if in_doubt is not None:
        lines.append(f"in doubt: the write of map epoch {in_doubt[0].epoch} (CONNECTION_LOSS)")
    for proxy_id, waiting in sorted(overlord.proxy.waiting.items()):
        lines.append(
            f"proxied: {proxy_id} for {fmt(waiting.client)} request_id={waiting.request_id} "
            f"deadline={waiting.deadline_ms}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def run_transcript(path: Path) -> tuple[list[Block], list[list[str]], list[str]]:
    name = str(path.relative_to(TRANSCRIPTS))
    blocks, trailing = parse_blocks(path.read_text(), name)
    driver = Driver(kind=path.parent.name)
    outputs: list[list[str]] = []
    for block in blocks:
        try:
            outputs.append(driver.run(block))
        except TranscriptError as exc:
            raise TranscriptError(f"{name}:{block.line_no}: {block.directive}: {exc}") from None
        except Exception as exc:
            raise AssertionError(
                f"{name}:{block.line_no}: {block.directive}: the machine raised {exc!r}"
            ) from exc
    return blocks, outputs, trailing


def test_there_are_transcripts_of_both_machines() -> None:
    assert {path.parent.name for path in FILES} == {"node", "overlord"}


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(TRANSCRIPTS)) for p in FILES])
def test_transcript(path: Path) -> None:
    blocks, outputs, trailing = run_transcript(path)
    name = str(path.relative_to(TRANSCRIPTS))
    if REGENERATE:
        text = render_file(blocks, outputs, trailing)
        if text != path.read_text():
            path.write_text(text)
        return
    failures = []
    for block, output in zip(blocks, outputs, strict=True):
        if output != block.expected:
            diff = difflib.unified_diff(
                block.expected, output, f"{name}:{block.line_no} expected", "actual", lineterm=""
            )
            failures.append(f"{name}:{block.line_no}: {block.directive}\n" + "\n".join(diff))
    if failures:
        pytest.fail(
            "\n\n".join(failures)
            + "\n\n(if the change is intended: DIMINT_REGENERATE=1 and review the diff)",
            pytrace=False,
        )
