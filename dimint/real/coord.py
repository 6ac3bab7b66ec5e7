"""The kazoo adapter: real ZooKeeper behind the interface of ``dimint.sim.coord.SimCoordClient``.

Theory of operation
-------------------
``KazooCoordClient`` is the imperative shell between a core state machine and ZooKeeper. The loop that
runs the machine calls ``execute(effect)`` for the five ``Coord*`` effects; each is issued with one of
kazoo's ``*_async`` calls and returns at once. Everything that comes back -- the ``CoordResult`` of a
request, a ``WatchFired``, a ``SessionStateChanged`` -- is handed to ``deliver`` from one of kazoo's
threads. ``deliver`` must therefore be thread-safe and must not block (``queue.Queue.put`` is the
intended one); the adapter never does anything else on kazoo's threads, and never calls a blocking
kazoo recipe.

Ordering. Stock kazoo runs watch callbacks and request completions on two different worker threads,
so a watch event could overtake, or be overtaken by, a reply that ZooKeeper sent before or after it.
The sim promises ZooKeeper's order (a watch event reaches the client before the result of any later
read that observes the change), and machines rely on it: a ``WatchFired`` that overtook the result of
the read that armed it would be ignored and the watch lost for ever. So the adapter gives kazoo a
handler whose completions go through the *watch* queue. kazoo's connection thread enqueues both in
wire order, one worker runs them, and ``deliver`` sees them in wire order. Session-state changes are
put on the same queue, so a state change is also delivered in order with results and watches.

Results carry the sim's field meanings: ``path`` is the node created (the sequential name), else the
requested path; ``version`` is the data version after the operation or as read (-1 after a delete,
and -1 where ZooKeeper's error reply carries no version, e.g. ``BAD_VERSION``; the sim reports the
current version there, which no machine may rely on since it is stale on arrival); ``children`` are
sorted. Errors map to ``CoordErrorKind``; any exception the mapping does not know is logged and
reported as ``CONNECTION_LOSS`` (outcome unknown), never raised into the caller.

Watches. ``CoordRead(watch=True)`` arms a data watch on an existing node; on a missing node it arms
an existence watch (``exists``) so that ``CREATED`` fires later, and answers ``NO_NODE``, like the sim.
If the node appears between the read and the ``exists``, the read is repeated so the answer and the
armed watch agree. ``CoordList(watch=True)`` arms a child watch. Watches are one-shot; each is
delivered once as ``WatchFired(path, kind)`` (a deleted node holding data and child watches yields
one ``DELETED``, as in the sim).

Where kazoo differs from the sim, and what the adapter does about it:

* Requests while not connected: kazoo would queue them until reconnection; the sim fails them at
  once. The adapter follows the sim: ``CONNECTION_LOSS`` while ``SUSPENDED``, ``SESSION_EXPIRED``
  between ``LOST`` and the next ``CONNECTED``.
* Watches across ``SUSPENDED -> CONNECTED``: ZooKeeper keeps them by re-registering on the new
  connection and firing those that missed a change; kazoo drops them all on disconnect (it does not
  re-register). The adapter remembers which watches were armed and, once reconnected, delivers a
  conservative ``WatchFired`` for each (``CHANGED`` for a data watch, ``CREATED`` for an existence
  watch, ``CHILD`` for a child watch). A spurious event only makes the machine re-read and re-arm,
  which is what it does for a real one; a lost event could stall it for ever.
* On ``LOST`` every watch is void and forgotten silently, as in the sim.

``stop()`` closes the session, so ZooKeeper deletes our ephemerals at once; it blocks for at most
about one round trip and is meant for shutdown. Nothing is delivered after it is called.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import AsyncResult, KazooTimeoutError, SequentialThreadingHandler
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat

from dimint.core.effects import (
    CoordCreate,
    CoordDelete,
    CoordErrorKind,
    CoordList,
    CoordRead,
    CoordResult,
    CoordSet,
    Effect,
    Input,
    SessionState,
    SessionStateChanged,
    WatchFired,
    WatchKind,
)
from dimint.core.errors import LocalProtocolError
from dimint.core.layout import validate_path

__all__ = ["KazooCoordClient"]

logger = logging.getLogger(__name__)

_ERROR_KINDS: tuple[tuple[type[BaseException], CoordErrorKind], ...] = (
    (NoNodeError, CoordErrorKind.NO_NODE),
    (NodeExistsError, CoordErrorKind.NODE_EXISTS),
    (BadVersionError, CoordErrorKind.BAD_VERSION),
    (NotEmptyError, CoordErrorKind.NOT_EMPTY),
    (SessionExpiredError, CoordErrorKind.SESSION_EXPIRED),
    (ConnectionLoss, CoordErrorKind.CONNECTION_LOSS),
    (ConnectionClosedError, CoordErrorKind.CONNECTION_LOSS),
    (OperationTimeoutError, CoordErrorKind.CONNECTION_LOSS),
    (KazooTimeoutError, CoordErrorKind.CONNECTION_LOSS),
    (TimeoutError, CoordErrorKind.CONNECTION_LOSS),
)

_WATCH_KINDS: dict[str, WatchKind] = {
    EventType.CREATED: WatchKind.CREATED,
    EventType.DELETED: WatchKind.DELETED,
    EventType.CHANGED: WatchKind.CHANGED,
    EventType.CHILD: WatchKind.CHILD,
}

# What a watch that kazoo dropped on disconnect is reported as, once reconnected.
_CONSERVATIVE_KIND: dict[str, WatchKind] = {
    "data": WatchKind.CHANGED,
    "exists": WatchKind.CREATED,
    "child": WatchKind.CHILD,
}


class _WireOrderAsyncResult(AsyncResult):
    """An async result whose completions run on the handler's watch queue (see "Ordering")."""

    def _do_callbacks(self) -> None:
        for callback in self._callbacks:
            if self._handler.running:
                self._handler.callback_queue.put(functools.partial(callback, self))
            else:
                callback(self)


class _WireOrderHandler(SequentialThreadingHandler):
    """kazoo's threading handler, but completions share one queue and one worker with watches."""

    def async_result(self) -> AsyncResult:
        return _WireOrderAsyncResult(self)


class KazooCoordClient:
    """A process's ZooKeeper client: executes ``Coord*`` effects, delivers results, watches and states.

    ``deliver`` is called from kazoo's threads and must be thread-safe and non-blocking (e.g.
    ``queue.Queue.put``). ``hosts`` is a kazoo connection string (``"127.0.0.1:2181,..."``).
    """

    def __init__(self, hosts: str, session_timeout_ms: int, deliver: Callable[[Input], None]) -> None:
        if session_timeout_ms <= 0:
            raise LocalProtocolError(f"session_timeout_ms must be > 0, got {session_timeout_ms!r}")
        self.hosts = hosts
        self.session_timeout_ms = session_timeout_ms
        self._deliver_input = deliver
        self._handler = _WireOrderHandler()
        # Unbounded retries: a client that stays cut off keeps trying, like the sim's.
        self._client = KazooClient(
            hosts=hosts,
            timeout=session_timeout_ms / 1000.0,
            handler=self._handler,
            connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
        )
        # Mutated from kazoo's connection thread (listener) and its worker thread (everything else).
        self._lock = threading.Lock()
        self.state = "new"  # new -> connecting -> connected <-> suspended ... -> closed
        self.session_id = 0
        self._session_lost = False  # between LOST and the next CONNECTED
        self._armed: dict[str, set[str]] = {}  # path -> {"data", "exists", "child"}
        self._voided: dict[str, set[str]] = {}  # dropped by kazoo on disconnect, reported on reconnect

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin connecting without waiting; ``CONNECTED(session_id)`` is delivered once a session is open."""
        with self._lock:
            if self.state != "new":
                raise LocalProtocolError(f"start() on a coordination client in state {self.state}")
            self.state = "connecting"
        self._client.add_listener(self._on_kazoo_state)
        self._client.start_async()

    def stop(self) -> None:
        """Close the session cleanly so ZooKeeper deletes our ephemerals now, not after the timeout."""
        with self._lock:
            if self.state == "closed":
                return
            self.state = "closed"
        try:
            self._client.stop()
            self._client.close()
        except Exception:  # shutdown must not fail the caller; the session expires anyway
            logger.exception("error while closing the ZooKeeper client")

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    # ------------------------------------------------------------ requests

    def execute(self, effect: Effect) -> None:
        """Issue one ``Coord*`` request without waiting; its ``CoordResult`` is delivered later.

        While not connected the request is not sent and fails at once, as in the sim, instead of
        being queued by kazoo until some later reconnection.
        """
        if not isinstance(effect, CoordCreate | CoordSet | CoordDelete | CoordRead | CoordList):
            raise LocalProtocolError(f"not a coordination effect: {effect!r}")
        validate_path(
            effect.path,
            sequential=isinstance(effect, CoordCreate) and effect.sequential,
            deleting=isinstance(effect, CoordDelete),
        )
        with self._lock:
            state, session_lost = self.state, self._session_lost
        if state in ("new", "closed"):
            raise LocalProtocolError(f"coordination request in client state {state}: {effect!r}")
        if state != "connected":
            error = CoordErrorKind.SESSION_EXPIRED if session_lost else CoordErrorKind.CONNECTION_LOSS
            self._deliver(CoordResult(effect.request_id, error, path=effect.path))
            return
        try:
            self._issue(effect)
        except Exception as exc:  # kazoo may raise synchronously (e.g. closed mid-call)
            self._deliver(CoordResult(effect.request_id, self._error_kind(exc, effect), path=effect.path))

    def _issue(self, effect: Effect) -> None:
        client = self._client
        if isinstance(effect, CoordCreate):
            pending = client.create_async(
                effect.path,
                effect.data,
                ephemeral=effect.ephemeral,
                sequence=effect.sequential,
                makepath=effect.make_parents,
            )
            self._link(pending, effect, lambda path: CoordResult(effect.request_id, path=path, version=0))
        elif isinstance(effect, CoordSet):
            pending = client.set_async(effect.path, effect.data, effect.expected_version)
            self._link(
                pending,
                effect,
                lambda stat: CoordResult(effect.request_id, path=effect.path, version=stat.version),
            )
        elif isinstance(effect, CoordDelete):
            pending = client.delete_async(effect.path, effect.expected_version)
            self._link(pending, effect, lambda _: CoordResult(effect.request_id, path=effect.path))
        elif isinstance(effect, CoordRead):
            self._read(effect)
        else:
            assert isinstance(effect, CoordList)
            watch = self._on_child_watch if effect.watch else None
            pending = client.get_children_async(effect.path, watch=watch, include_data=True)
            self._link(pending, effect, functools.partial(self._listed, effect))

    def _read(self, effect: CoordRead) -> None:
        """get(); with a watch on a missing node, exists() to arm the existence watch (see module doc)."""
        pending = self._client.get_async(effect.path, watch=self._on_data_watch if effect.watch else None)
        if not effect.watch:
            self._link(pending, effect, functools.partial(self._read_done, effect))
            return

        def on_get(result: IAsyncResult) -> None:
            if isinstance(result.exception, NoNodeError):
                try:
                    self._client.exists_async(effect.path, watch=self._on_data_watch).rawlink(on_exists)
                except Exception as exc:
                    self._fail(effect, exc)
                return
            self._complete(result, effect, functools.partial(self._read_done, effect))

        def on_exists(result: IAsyncResult) -> None:
            if result.successful() and result.value is not None:
                # Created since our get(): the watch just armed is a data watch; read it again.
                self._read(effect)
                return
            self._complete(result, effect, lambda _: self._missing(effect))

        pending.rawlink(on_get)

    def _read_done(self, effect: CoordRead, value: tuple[bytes, ZnodeStat]) -> CoordResult:
        data, stat = value
        if effect.watch:
            self._arm(effect.path, "data")
        return CoordResult(effect.request_id, path=effect.path, data=data, version=stat.version)

    def _missing(self, effect: CoordRead) -> CoordResult:
        self._arm(effect.path, "exists")
        return CoordResult(effect.request_id, CoordErrorKind.NO_NODE, path=effect.path)

    def _listed(self, effect: CoordList, value: tuple[list[str], ZnodeStat]) -> CoordResult:
        children, stat = value
        if effect.watch:
            self._arm(effect.path, "child")
        return CoordResult(
            effect.request_id, path=effect.path, version=stat.version, children=tuple(sorted(children))
        )

    # ------------------------------------------------------------ completions (kazoo's worker thread)

    def _link(self, pending: IAsyncResult, effect: Effect, on_success: Callable[[Any], CoordResult]) -> None:
        pending.rawlink(lambda result: self._complete(result, effect, on_success))

    def _complete(self, result: IAsyncResult, effect: Any, on_success: Callable[[Any], CoordResult]) -> None:
        """Turn a finished kazoo call into one ``CoordResult``; never lets an exception escape."""
        try:
            if result.successful():
                self._deliver(on_success(result.value))
            else:
                self._fail(effect, result.exception)
        except Exception as exc:
            self._fail(effect, exc)

    def _fail(self, effect: Any, exc: BaseException | None) -> None:
        self._deliver(CoordResult(effect.request_id, self._error_kind(exc, effect), path=effect.path))

    def _error_kind(self, exc: BaseException | None, effect: Any) -> CoordErrorKind:
        for exc_type, kind in _ERROR_KINDS:
            if isinstance(exc, exc_type):
                if kind is CoordErrorKind.SESSION_EXPIRED:
                    with self._lock:
                        # kazoo also says "expired" for a client it is closing; unsure means unknown.
                        if not self._session_lost:
                            return CoordErrorKind.CONNECTION_LOSS
                return kind
        logger.error("unexpected error from ZooKeeper for %r: %r", effect, exc)
        return CoordErrorKind.CONNECTION_LOSS

    # ------------------------------------------------------------ watches (kazoo's worker thread)

    def _arm(self, path: str, kind: str) -> None:
        with self._lock:
            self._armed.setdefault(path, set()).add(kind)

    def _on_data_watch(self, event: WatchedEvent) -> None:
        self._on_watch(event, ("data", "exists"))

    def _on_child_watch(self, event: WatchedEvent) -> None:
        self._on_watch(event, ("child",))

    def _on_watch(self, event: WatchedEvent, kinds: tuple[str, ...]) -> None:
        if event.type == EventType.NONE:
            # kazoo dropped every watch on disconnect; report them once reconnected.
            with self._lock:
                for path, armed in self._armed.items():
                    self._voided.setdefault(path, set()).update(armed)
                self._armed.clear()
            return
        kind = _WATCH_KINDS.get(event.type)
        if kind is None:
            return
        with self._lock:
            armed = self._armed.get(event.path, set())
            # A DELETED reaches both the data and the child watcher: deliver it once.
            fired = {"data", "exists", "child"} if kind is WatchKind.DELETED else set(kinds)
            if not armed & fired:
                return
            armed -= fired
            if not armed:
                self._armed.pop(event.path, None)
        self._deliver(WatchFired(event.path, kind))

    # ------------------------------------------------------------ session state

    def _on_kazoo_state(self, state: KazooState) -> None:
        """kazoo's listener, on its connection thread: read the session id, queue the rest in order."""
        client_id = self._client.client_id
        session_id = client_id[0] if client_id else 0
        self._handler.callback_queue.put(functools.partial(self._on_state, state, session_id))

    def _on_state(self, state: KazooState, session_id: int) -> None:
        with self._lock:
            if self.state == "closed":
                return
            voided: dict[str, set[str]] = {}
            if state == KazooState.CONNECTED:
                if session_id != self.session_id:
                    self._voided.clear()  # a new session: the old watches died with the old one
                voided, self._voided = self._voided, {}
                self.state = "connected"
                self.session_id = session_id
                self._session_lost = False
                reported = SessionStateChanged(SessionState.CONNECTED, session_id)
            elif state == KazooState.SUSPENDED:
                self.state = "suspended"
                reported = SessionStateChanged(SessionState.SUSPENDED, self.session_id)
            else:
                self.state = "connecting"
                self._session_lost = True
                self._armed.clear()
                self._voided.clear()
                reported = SessionStateChanged(SessionState.LOST, self.session_id)
        self._deliver(reported)
        for path in sorted(voided):
            for kind in sorted(voided[path]):
                self._deliver(WatchFired(path, _CONSERVATIVE_KIND[kind]))

    def _deliver(self, item: Input) -> None:
        if self.state == "closed":
            return
        try:
            self._deliver_input(item)
        except Exception:
            logger.exception("deliver() failed for %r", item)
