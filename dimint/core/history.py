"""Client operation histories: the events clients record, their pairing into operations, and JSONL.

Theory of operation
-------------------
A history is what clients saw, nothing more: every operation is an ``invoke`` event followed, on
the same process, by exactly one completion event. The completion says what is known:

* ``ok``   the operation took effect, somewhere between its invoke and this completion;
* ``fail`` the operation definitely did not take effect (the server refused it before applying);
* ``info`` nobody knows (a timeout, a crash): it may take effect at any time after its invoke,
  even after the run has ended, or never.

One history line (``history.jsonl``) is one event::

    {"process": 3, "type": "invoke", "f": "write", "key": "k1", "value": "v-17", "time_ms": 120.5}

plus optional extra fields, notably ``"consistency": "strong" | "weak"`` on reads (a weak read may
be served by a stale slave), ``"node"`` (who served it) and ``"readback": true`` on the final reads a
harness makes after healing. For a write, ``value`` is the value written (workloads write globally
unique values so a read names the write it saw); for an ``ok`` read it is the value read (``None``
means the key was absent); a delete carries ``None``.

Well-formedness (enforced by ``pair_operations`` and by ``HistoryRecorder`` at the source): a process
has at most one operation outstanding, and a completion matches the outstanding invoke of its process
(same ``f`` and ``key``, not earlier in time). After an ``info`` completion the process may invoke
again. The checker then treats the process as a *new logical process*: the info operation has no
known end, so the checker gives it an open interval ``[invoke, +inf)`` and every later operation of
the same process is concurrent with it. No process renumbering is needed for that; the intervals
carry it. An invoke still outstanding when the history ends (its client crashed, or the run stopped
mid-flight) pairs as ``info`` too.

Pairing keeps a write's identity: an ``Operation``'s ``value`` is the invoke's value for writes and
deletes (whatever the server answered goes to ``extra["result"]``) and the completion's value for
``ok`` reads. Extra fields of both events are merged, the completion's winning (it knows the node).

This module is pure: it turns events into lines and lines into events, and callers do the file I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dimint.core.commands import CONSISTENCIES
from dimint.core.errors import LocalProtocolError

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"

EVENT_TYPES: tuple[str, ...] = (INVOKE, OK, FAIL, INFO)
OUTCOMES: tuple[str, ...] = (OK, FAIL, INFO)

#: Fields every event line has; anything else on a line lands in ``Event.extra``.
CORE_FIELDS: tuple[str, ...] = ("process", "type", "f", "key", "value", "time_ms")

#: Functions whose ``ok`` completion carries the result the operation returned.
READ_FUNCTIONS: frozenset[str] = frozenset({"read"})


class HistoryError(LocalProtocolError):
    """A history is malformed or cannot be checked; the message names the event and the problem."""


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but ``"time_ms": true`` is certainly a bug in the recorder.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history: an invocation or a completion seen by one client process."""

    process: int
    type: str
    f: str
    key: str
    value: Any
    time_ms: float
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.process, int) or isinstance(self.process, bool):
            raise HistoryError(f"process must be an int, got {self.process!r}")
        if self.type not in EVENT_TYPES:
            raise HistoryError(f"type must be one of {', '.join(EVENT_TYPES)}; got {self.type!r}")
        if not isinstance(self.f, str) or not self.f:
            raise HistoryError(f"f must be a non-empty string, got {self.f!r}")
        if not isinstance(self.key, str):
            raise HistoryError(f"key must be a string, got {self.key!r}")
        if not _is_number(self.time_ms):
            raise HistoryError(f"time_ms must be a finite number, got {self.time_ms!r}")
        clashes = sorted(set(self.extra) & set(CORE_FIELDS))
        if clashes:
            raise HistoryError(f"extra fields may not reuse core field names: {clashes}")
        consistency = self.extra.get("consistency")
        if consistency is not None and consistency not in CONSISTENCIES:
            raise HistoryError(f"consistency must be 'strong' or 'weak', got {consistency!r}")
        # A private copy, so a caller mutating its dict afterwards cannot rewrite history.
        object.__setattr__(self, "extra", dict(self.extra))

    @property
    def consistency(self) -> str | None:
        return self.extra.get("consistency")

    @property
    def node(self) -> str | None:
        return self.extra.get("node")

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object of one history line: core fields first, then extras."""
        line = {
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "time_ms": self.time_ms,
        }
        line.update(self.extra)
        return line

    @classmethod
    def from_dict(cls, line: Mapping[str, Any]) -> Event:
        """Inverse of ``to_dict``; raises ``HistoryError`` naming a missing or bad field."""
        if not isinstance(line, Mapping):
            raise HistoryError(f"an event must be a JSON object, got {type(line).__name__}")
        missing = [name for name in CORE_FIELDS if name not in line]
        if missing:
            raise HistoryError(f"event is missing field(s) {missing}")
        extra = {name: item for name, item in line.items() if name not in CORE_FIELDS}
        return cls(
            process=line["process"],
            type=line["type"],
            f=line["f"],
            key=line["key"],
            value=line["value"],
            time_ms=line["time_ms"],
            extra=extra,
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke paired with its completion: the unit every checker reasons about.

    ``value`` is the value written for writes, the value read for ``ok`` reads and ``None`` otherwise.
    ``complete_ms`` is ``None`` exactly when ``outcome == "info"``: the operation has no known end.
    ``index`` is the position of the invoke event in the history, a stable name for humans reading
    a checker's explanation (``#412``).
    """

    process: int
    f: str
    key: str
    value: Any
    invoke_ms: float
    complete_ms: float | None
    outcome: str
    consistency: str | None = None
    node: str | None = None
    index: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise HistoryError(f"outcome must be one of {', '.join(OUTCOMES)}; got {self.outcome!r}")
        if self.consistency is not None and self.consistency not in CONSISTENCIES:
            raise HistoryError(f"consistency must be 'strong' or 'weak', got {self.consistency!r}")
        if not _is_number(self.invoke_ms):
            raise HistoryError(f"invoke_ms must be a finite number, got {self.invoke_ms!r}")
        if self.outcome == INFO:
            if self.complete_ms is not None:
                raise HistoryError("an info operation has no known completion: complete_ms must be None")
        elif not _is_number(self.complete_ms) or self.complete_ms < self.invoke_ms:
            raise HistoryError(
                f"complete_ms must be a number not before invoke_ms={self.invoke_ms}, "
                f"got {self.complete_ms!r}"
            )

    @property
    def is_weak(self) -> bool:
        return self.consistency == "weak"

    @property
    def is_readback(self) -> bool:
        """A read the harness made after healing, to see what survived."""
        return self.extra.get("readback") is True

    def describe(self) -> str:
        """One short line a human can match against the history, e.g. ``#12 p3 read -> 'v-4' [10, 12]``."""
        if self.f in READ_FUNCTIONS:
            what = f"{self.f} -> {self.value!r}" if self.outcome == OK else self.f
            if self.is_weak:
                what += " (weak)"
        else:
            what = f"{self.f} {self.value!r}" if self.value is not None else self.f
        end = "?)" if self.complete_ms is None else f"{self.complete_ms:g}]"
        return f"#{self.index} p{self.process} {what} [{self.invoke_ms:g}, {end} {self.outcome}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, used in checker reports."""
        return {
            "index": self.index,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "invoke_ms": self.invoke_ms,
            "complete_ms": self.complete_ms,
            "outcome": self.outcome,
            "consistency": self.consistency,
            "node": self.node,
        }


def _operation_from(invoke: Event, index: int, completion: Event | None) -> Operation:
    extra = dict(invoke.extra)
    outcome = INFO if completion is None else completion.type
    if completion is not None:
        extra.update(completion.extra)
    value = invoke.value
    if invoke.f in READ_FUNCTIONS:
        value = completion.value if completion is not None and outcome == OK else None
    elif completion is not None and completion.value is not None and completion.value != invoke.value:
        # A write's identity is the value it wrote; what the server answered (a count, "OK") is kept
        # for humans but never confused with it.
        extra["result"] = completion.value
    return Operation(
        process=invoke.process,
        f=invoke.f,
        key=invoke.key,
        value=value,
        invoke_ms=invoke.time_ms,
        complete_ms=None if completion is None or outcome == INFO else completion.time_ms,
        outcome=outcome,
        consistency=extra.get("consistency"),
        node=extra.get("node"),
        index=index,
        extra=extra,
    )


def pair_operations(events: Iterable[Event], *, pending_as_info: bool = True) -> list[Operation]:
    """Pair each invoke with its completion, checking that the history is well formed.

    Returns operations in invoke order. Raises ``HistoryError`` (naming the event by position) for a
    completion with no outstanding invoke, a second invoke while one is outstanding on the same
    process, a completion whose ``f``/``key`` differ from its invoke, or one earlier than its invoke.
    An invoke still open when the history ends became an ``info`` operation (its client crashed or
    the run stopped mid-flight: the outcome is unknown), unless ``pending_as_info`` is False, in
    which case it is an error too.
    """
    outstanding: dict[int, tuple[int, Event]] = {}
    paired: list[tuple[int, Operation]] = []
    for position, event in enumerate(events):
        if not isinstance(event, Event):
            raise HistoryError(f"event #{position}: expected an Event, got {type(event).__name__}")
        open_one = outstanding.get(event.process)
        if event.type == INVOKE:
            if open_one is not None:
                raise HistoryError(
                    f"event #{position}: process {event.process} invokes {event.f} {event.key!r} while its "
                    f"{open_one[1].f} {open_one[1].key!r} from event #{open_one[0]} is still outstanding"
                )
            outstanding[event.process] = (position, event)
            continue
        if open_one is None:
            raise HistoryError(
                f"event #{position}: {event.type} completion of {event.f} {event.key!r} on process "
                f"{event.process}, which has no outstanding invoke"
            )
        invoke_position, invoke = open_one
        if (event.f, event.key) != (invoke.f, invoke.key):
            raise HistoryError(
                f"event #{position}: process {event.process} completes {event.f} {event.key!r} but its "
                f"outstanding invoke (event #{invoke_position}) is {invoke.f} {invoke.key!r}"
            )
        if event.time_ms < invoke.time_ms:
            raise HistoryError(
                f"event #{position}: completion at {event.time_ms} ms precedes its invoke "
                f"(event #{invoke_position}) at {invoke.time_ms} ms"
            )
        del outstanding[event.process]
        paired.append((invoke_position, _operation_from(invoke, invoke_position, event)))
    for invoke_position, invoke in outstanding.values():
        if not pending_as_info:
            raise HistoryError(
                f"event #{invoke_position}: {invoke.f} {invoke.key!r} on process {invoke.process} "
                "was never completed"
            )
        paired.append((invoke_position, _operation_from(invoke, invoke_position, None)))
    paired.sort(key=lambda item: item[0])
    return [operation for _, operation in paired]


class HistoryRecorder:
    """What a client harness calls around each request; refuses ill-formed use at the source.

    ``invoke`` returns a token that the matching ``complete`` hands back, so a client never has to
    remember which process or key it was. The recorder holds events in the order they were recorded;
    the caller owns the clock (``time_ms``) and any locking.
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._open: dict[int, Event] = {}
        self._busy: dict[int, int] = {}
        self._next_token = 0

    def invoke(self, process: int, f: str, key: str, value: Any, time_ms: float, **extra: Any) -> int:
        """Record the start of an operation; returns the token to pass to ``complete``."""
        if process in self._busy:
            raise HistoryError(
                f"process {process} invokes {f} {key!r} while operation token {self._busy[process]} "
                "is still outstanding"
            )
        event = Event(process, INVOKE, f, key, value, time_ms, extra)
        token = self._next_token
        self._next_token += 1
        self._events.append(event)
        self._open[token] = event
        self._busy[process] = token
        return token

    def complete(self, token: int, type: str, value: Any, time_ms: float, **extra: Any) -> None:
        """Record the end of the operation ``token``: ``type`` is ``ok``, ``fail`` or ``info``."""
        invoke = self._open.get(token)
        if invoke is None:
            raise HistoryError(f"token {token!r} does not name an outstanding operation")
        if type not in OUTCOMES:
            raise HistoryError(f"a completion type must be one of {', '.join(OUTCOMES)}; got {type!r}")
        event = Event(invoke.process, type, invoke.f, invoke.key, value, time_ms, extra)
        if event.time_ms < invoke.time_ms:
            raise HistoryError(
                f"token {token}: completion at {time_ms} ms precedes invoke at {invoke.time_ms} ms"
            )
        del self._open[token]
        del self._busy[invoke.process]
        self._events.append(event)

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    @property
    def outstanding(self) -> int:
        """Operations invoked but not completed (they become ``info`` when paired)."""
        return len(self._open)

    def operations(self, *, pending_as_info: bool = True) -> list[Operation]:
        return pair_operations(self._events, pending_as_info=pending_as_info)


def to_jsonl_lines(events: Iterable[Event]) -> Iterator[str]:
    """One JSON object per event, without the newline (like ``str.splitlines``): the caller writes
    ``"".join(line + "\n" for line in to_jsonl_lines(events))``."""
    for position, event in enumerate(events):
        try:
            text = json.dumps(event.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise HistoryError(f"event #{position} cannot be written as JSON: {error}") from error
        yield text


def from_jsonl_lines(lines: Iterable[str]) -> list[Event]:
    """Parse history lines, with or without their newlines (an open file will do); blank lines are
    skipped, and errors name the 1-based line number."""
    events: list[Event] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise HistoryError(f"line {number}: not valid JSON ({error.msg})") from error
        try:
            events.append(Event.from_dict(parsed))
        except HistoryError as error:
            raise HistoryError(f"line {number}: {error}") from error
    return events
