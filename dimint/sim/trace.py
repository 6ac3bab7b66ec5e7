"""Structured, hashable traces of a simulation run.

Theory of operation: a simulation is a pure function of (scenario, seed) (design invariant 6). To
*check* that, everything observable that happens in a run goes through one ``Tracer``: every delivered
or dropped message, every timer firing, every coordination event, every injected fault and every
``Trace`` effect a state machine returns. Each record is ``(time_ms, source, event, fields)``.

The tracer folds each record into a running BLAKE2b digest over a *canonical* encoding: dataclasses
(and msgspec Structs, the wire messages) become ``{"$type": name, field: value, ...}``, enums their
value, tuples and sets lists (sets sorted), dict keys sorted, times floats. The encoding is msgpack
of that canonical form, which is self-delimiting, so the concatenation of records is unambiguous.
Two runs produced the same records in the same order if and only if (barring a hash collision)
their ``digest()`` is equal; a divergence is then found by diffing the JSONL written through
``sink``.

Nothing here depends on memory addresses, ``hash()`` or set iteration order: an object whose only
description is a default ``repr`` containing ``at 0x...`` is refused, because it would make the
digest differ between two identical runs.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import numbers
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import msgspec

__all__ = ["TraceEvent", "Tracer", "canonical"]


_PLAIN = (str, int, float, bool, bytes, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_ENUM_TYPES: set[type] = set()  # enum classes canonical has met, to skip the field lookups


def canonical(value: Any) -> Any:
    """A plain, deterministic representation of ``value`` built from msgpack-encodable types.

    Why not ``dataclasses.asdict``: it deep-copies, loses the class name and does not sort sets.
    Why refuse default reprs: ``<Foo object at 0x7f...>`` differs between identical runs.
    Exact-type checks come first because this runs for every traced message.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list or kind is tuple:  # ops, args, entries: most of what is not plain
        return [canonical(v) for v in value]
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if kind in _ENUM_TYPES:  # a member of an enum met before (error codes, roles, modes)
            return canonical(value.value)
        if isinstance(value, msgspec.Struct):  # wire messages: the same form as a dataclass
            names = _FIELD_NAMES[kind] = value.__struct_fields__
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        out: dict[str, Any] = {"$type": kind.__name__}
        for name in names:
            out[name] = canonical(getattr(value, name))
        return out
    if isinstance(value, enum.Enum):
        _ENUM_TYPES.add(kind)
        return canonical(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        items = [(k if type(k) is str else _canonical_key(k), canonical(v)) for k, v in value.items()]
        if all(type(k) is str for k, _ in items):
            items.sort(key=lambda kv: kv[0])
        else:
            items.sort(key=lambda kv: repr(kv[0]))
        return dict(items)
    if isinstance(value, list | tuple | deque):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((canonical(v) for v in value), key=repr)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    to_wire = getattr(value, "to_wire", None)
    if callable(to_wire):
        return canonical(to_wire())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return canonical(tolist())
    text = repr(value)
    if " at 0x" in text:
        raise TypeError(
            f"cannot trace {type(value).__name__} deterministically: make it a dataclass, give it "
            f"to_wire(), or a repr without a memory address"
        )
    return text


def _canonical_key(key: Any) -> Any:
    """Dict keys must stay hashable and JSON-encodable: scalars stay, anything else becomes text."""
    key = canonical(key)
    if key is None or isinstance(key, bool | int | float | str):
        return key
    return json.dumps(key, sort_keys=True, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"not JSON-encodable: {type(value).__name__}")


@dataclasses.dataclass(frozen=True, slots=True)
class TraceEvent:
    """One record. ``fields`` is already canonical (plain data), so it is safe to keep and compare."""

    time_ms: float
    source: str
    event: str
    fields: dict[str, Any]

    def to_json(self) -> str:
        """One JSONL line; bytes are shown as UTF-8 with backslash escapes."""
        return json.dumps(
            {"t": self.time_ms, "src": self.source, "ev": self.event, **self.fields},
            default=_json_default,
            separators=(",", ":"),
        )


class Tracer:
    """Collects trace records, folds them into a digest, and optionally keeps or writes them.

    ``keep_events``: how many of the most recent events to keep in memory (``None`` = all, ``0`` =
    none); keeping is bounded by default so long sweeps do not grow without limit.
    ``sink``: called with one JSON line per event (e.g. ``file.write`` wrapped to add ``"\\n"``).
    ``full_messages``: when False, network records show only a message's type, not its contents
    (cheaper for runs that move large snapshots); the digest then covers only the types.
    """

    def __init__(
        self,
        *,
        keep_events: int | None = 100_000,
        sink: Callable[[str], None] | None = None,
        full_messages: bool = True,
    ) -> None:
        if keep_events is not None and keep_events < 0:
            raise ValueError("keep_events must be None or >= 0")
        self._events: deque[TraceEvent] = deque(maxlen=keep_events)
        self._keep = keep_events != 0
        self._sink = sink
        self._listeners: list[Callable[[TraceEvent], None]] = []
        self._hasher = hashlib.blake2b(digest_size=32)
        self.full_messages = full_messages
        #: Number of records per event name, plus anything added with ``count``.
        self.counters: Counter[str] = Counter()
        self.records = 0

    def record(
        self, time_ms: float, source: str, event: str, fields: Mapping[str, Any] | None = None
    ) -> TraceEvent:
        """Canonicalise, hash, count, keep and emit one record; returns it for convenience."""
        canonical_fields = canonical(fields) if fields else {}
        item = TraceEvent(float(time_ms), source, event, canonical_fields)
        self._hasher.update(msgpack.packb([item.time_ms, source, event, canonical_fields], use_bin_type=True))
        self.records += 1
        self.counters[event] += 1
        if self._keep:
            self._events.append(item)
        if self._sink is not None:
            self._sink(item.to_json())
        for listener in self._listeners:
            listener(item)
        return item

    def describe_message(self, message: Any) -> Any:
        """What network records show of a message: all of it, or only its type name."""
        return message if self.full_messages else type(message).__name__

    def count(self, name: str, amount: int = 1) -> None:
        """Bump a free-form counter. Counters are not part of the digest (records already are)."""
        self.counters[name] += amount

    def add_listener(self, listener: Callable[[TraceEvent], None]) -> None:
        """Call ``listener`` with every later event (metrics, live checkers). It must not raise."""
        self._listeners.append(listener)

    def digest(self) -> str:
        """Hex digest of every record so far, in order. Equal digests mean equal traces."""
        return self._hasher.copy().hexdigest()

    @property
    def events(self) -> list[TraceEvent]:
        """The kept events, oldest first (at most ``keep_events`` of them)."""
        return list(self._events)

    def find(self, event: str | None = None, source: str | None = None) -> list[TraceEvent]:
        """Kept events filtered by name and/or source; a convenience for tests."""
        return [
            e
            for e in self._events
            if (event is None or e.event == event) and (source is None or e.source == source)
        ]

    @staticmethod
    def write_jsonl(events: Iterable[TraceEvent], write: Callable[[str], Any]) -> None:
        """Write events as JSON lines through ``write`` (e.g. an open file's ``write``)."""
        for item in events:
            write(item.to_json() + "\n")
