"""Inputs that state machines take and effects that they return.

Theory of operation: every state machine in ``dimint.core`` has one entry point,
``handle(event: Input, now_ms: int) -> list[Effect]``. It never performs I/O, never reads a clock
and never sleeps; it describes what should happen and a driver (``dimint.sim`` or ``dimint.real``)
makes it happen, in the order given. Results of slow operations (a coordination write, a timer)
come back later as new inputs. Because both drivers execute the same effects, a behaviour seen in
simulation is a behaviour of the code that runs on real machines.

Addresses are opaque strings (``"node:3"``, ``"client:7"``, ``"tcp://127.0.0.1:7001"``); only the
driver knows how to reach one. Coordination requests carry a ``request_id`` chosen by the machine so
it can match the ``CoordResult`` that answers it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """Base class of everything a state machine can be handed."""


@dataclass(frozen=True, slots=True)
class Start(Input):
    """The driver started (or restarted, with empty memory) this machine."""


@dataclass(frozen=True, slots=True)
class Receive(Input):
    """A decoded message arrived from ``source`` (a peer or a client address)."""

    source: str
    message: Any


@dataclass(frozen=True, slots=True)
class TimerFired(Input):
    """The named timer set by ``SetTimer(key, at_ms)`` reached its deadline."""

    key: str


class SessionState(enum.StrEnum):
    """Client-side view of the coordination session, with kazoo's meaning.

    SUSPENDED: the connection dropped; the session may still be alive, ephemerals may still exist.
    LOST: the session expired; every ephemeral node of ours is gone and watches are void.
    CONNECTED: (re)connected with the session intact, or a new session after LOST.
    """

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


@dataclass(frozen=True, slots=True)
class SessionStateChanged(Input):
    state: SessionState
    session_id: int = 0


class CoordErrorKind(enum.StrEnum):
    NO_NODE = "NO_NODE"
    NODE_EXISTS = "NODE_EXISTS"
    BAD_VERSION = "BAD_VERSION"
    NOT_EMPTY = "NOT_EMPTY"
    CONNECTION_LOSS = "CONNECTION_LOSS"  # outcome unknown: the request may or may not have applied
    SESSION_EXPIRED = "SESSION_EXPIRED"


@dataclass(frozen=True, slots=True)
class CoordResult(Input):
    """Answer to one coordination request. ``error`` is None on success.

    ``path`` is the node actually created (it differs from the requested one for sequential nodes);
    ``version`` is the node's data version after the operation (or as read).
    """

    request_id: int
    error: CoordErrorKind | None = None
    path: str = ""
    data: bytes | None = None
    version: int = -1
    children: tuple[str, ...] = ()


class WatchKind(enum.StrEnum):
    CREATED = "CREATED"
    DELETED = "DELETED"
    CHANGED = "CHANGED"
    CHILD = "CHILD"


@dataclass(frozen=True, slots=True)
class WatchFired(Input):
    """A one-shot watch set by ``CoordRead(watch=True)`` or ``CoordList(watch=True)`` fired.

    Like ZooKeeper's, it carries no data: the machine re-reads (and re-arms) if it cares.
    """

    path: str
    kind: WatchKind


@dataclass(frozen=True, slots=True)
class ProcessStats(Input):
    """The driver's measurement of its own OS process, for the machine's reports and status.

    Only a real driver sends it (a simulated process has no OS process to measure); the machine
    never measures anything itself, so the core stays free of clocks and system calls.
    """

    cpu_percent: float
    rss_bytes: int


# --------------------------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    """Base class of everything a state machine can ask its driver to do."""


@dataclass(frozen=True, slots=True)
class Send(Effect):
    """Send ``message`` to a peer. Delivery is not guaranteed: loss is handled by timers."""

    destination: str
    message: Any


@dataclass(frozen=True, slots=True)
class Reply(Effect):
    """Answer a client. Kept apart from ``Send`` so traces and metrics can tell them apart."""

    destination: str
    message: Any


@dataclass(frozen=True, slots=True)
class SetTimer(Effect):
    """Arm the timer ``key`` for absolute time ``at_ms``, replacing any earlier deadline for it."""

    key: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class CancelTimer(Effect):
    key: str


@dataclass(frozen=True, slots=True)
class CoordCreate(Effect):
    request_id: int
    path: str
    data: bytes = b""
    ephemeral: bool = False
    sequential: bool = False
    make_parents: bool = True


@dataclass(frozen=True, slots=True)
class CoordSet(Effect):
    """Conditional write: applies only if the node's version equals ``expected_version``.

    ``expected_version=-1`` writes unconditionally; DiMint's map writes never use it.
    """

    request_id: int
    path: str
    data: bytes
    expected_version: int


@dataclass(frozen=True, slots=True)
class CoordDelete(Effect):
    request_id: int
    path: str
    expected_version: int = -1


@dataclass(frozen=True, slots=True)
class CoordRead(Effect):
    """Read a node's data and version; with ``watch`` arm a one-shot data/existence watch."""

    request_id: int
    path: str
    watch: bool = False


@dataclass(frozen=True, slots=True)
class CoordList(Effect):
    """List a node's children (sorted); with ``watch`` arm a one-shot child watch."""

    request_id: int
    path: str
    watch: bool = False


@dataclass(frozen=True, slots=True)
class Trace(Effect):
    """A structured event for logs, metrics and the trace digest. Fields must be plain data."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


COORD_EFFECTS: tuple[type[Effect], ...] = (CoordCreate, CoordSet, CoordDelete, CoordRead, CoordList)


class Machine(Protocol):
    """Any core state machine: one entry point, pure, effects returned in order.

    Both drivers (``dimint.sim.host.SimHost`` and ``dimint.real.runtime.RealHost``) run anything
    of this shape; it is written once, here, so the twins cannot drift apart.
    """

    def handle(self, event: Input, now_ms: int) -> list[Effect]: ...
