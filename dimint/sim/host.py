"""A simulated host: runs one core state machine, feeding it inputs and executing its effects.

Theory of operation: a host is the simulator's imperative shell around a pure machine. Everything
that happens to the machine arrives as an input in one inbox: ``Receive`` for network messages,
``TimerFired`` for timers, ``CoordResult``/``WatchFired``/``SessionStateChanged`` from the host's
coordination client, and ``Start`` first of all. Inputs are processed one at a time, in arrival
order: ``machine.handle(input, now_ms)`` is called, then the returned effects are executed in order,
before the next input is looked at. Callbacks from the network and the coordination client only
enqueue; they never call the machine, so the machine is never re-entered.

Timers are named and one-shot: ``SetTimer(key, at_ms)`` replaces any earlier deadline for ``key``;
each arming gets a fresh generation number and a firing is honoured only if its generation is still
the armed one *when the machine would see it*, so a timer replaced or cancelled after it came due but
before it was processed never reaches the machine.

Lifecycle: ``start()`` builds the machine from the factory, registers the address on the network,
opens a coordination session (if the host has a coordination service) and enqueues ``Start()``.
``crash()`` loses everything: the machine object, the inbox, every timer, the coordination client
(silently: the server expires its session later) and the network endpoint (in-flight traffic to and
from it is dropped). ``restart()`` is ``crash()`` if needed, then ``start()``: a fresh machine with
empty memory and a new session. ``stop()`` is a clean shutdown: the session is closed at once, so
ephemeral nodes vanish immediately. ``pause()``/``resume()`` freeze the whole host like SIGSTOP:
nothing is processed, arriving messages queue in the network, timers that come due wait, the
coordination client stops pinging (so its session may expire); on ``resume`` the timers that came due
are processed first, then the queued messages, then whatever the coordination client concludes
(typically ``SUSPENDED``, then ``LOST`` if the session expired meanwhile).

Stalls, as in the real driver (``dimint.real.runtime.RealHost``): a host that was frozen longer than
``stall_threshold_ms`` (default a third of the session timeout) cannot know whether its session
survived, and the requests queued in its sockets would reach the machine before the coordination
client's verdict. So on such a resume the machine first gets ``SUSPENDED`` (a master fences at
once), and the host reads the coordination root on the same session: if that succeeds with no
session event from the client in between, the session provably survived and the machine gets
``CONNECTED`` (it re-reads the map before unfencing); otherwise the client's own ``LOST`` follows.

Processing is driven by SimPy event callbacks rather than a generator process, so an exception
raised by ``handle`` leaves ``env.run()`` as the very same exception object and type (SimPy re-creates
exceptions that escape a process from their ``args``, which breaks exceptions with other signatures).
``InvariantViolation`` (or any other exception) is recorded in the tracer and re-raised: the run fails
loudly, never limps on.

``now_ms`` handed to the machine is ``int(env.now)``: simulated time is in milliseconds and may carry
fractions from latency draws; the machine sees whole milliseconds, and a timer set for ``at_ms`` fires
at exactly ``at_ms``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from typing import Any

import simpy

from dimint.core.effects import (
    COORD_EFFECTS,
    CancelTimer,
    CoordRead,
    CoordResult,
    Effect,
    Input,
    Machine,
    Receive,
    Reply,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
    Trace,
)
from dimint.core.errors import ConfigError, InvariantViolation, LocalProtocolError
from dimint.sim.coord import SimCoordClient
from dimint.sim.network import SimNetwork
from dimint.sim.trace import Tracer

__all__ = ["HostState", "SimHost"]


class HostState:
    """Lifecycle states of a host (plain strings so they read well in traces)."""

    NEW = "new"
    RUNNING = "running"
    PAUSED = "paused"
    CRASHED = "crashed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class _TimerDue:
    """A timer came due; honoured only if ``generation`` is still the armed one for ``key``."""

    key: str
    generation: int


class SimHost:
    """Runs one machine at ``address``. See the module docstring for the execution model.

    ``coord_service_address`` None means the host has no coordination client (a client process, say);
    a ``Coord*`` effect from its machine is then a ``LocalProtocolError``.
    ``processing_delay_ms``: simulated time each input occupies the host before ``handle`` sees it
    (a service-time knob for load experiments; 0 means inputs are handled the instant they arrive).
    ``rng`` seeds the coordination clients (one per incarnation); the machine's own randomness is the
    factory's business.
    """

    def __init__(
        self,
        env: simpy.Environment,
        address: str,
        machine_factory: Callable[[], Machine],
        network: SimNetwork,
        coord_service_address: str | None,
        session_timeout_ms: int,
        tracer: Tracer,
        rng: random.Random,
        *,
        processing_delay_ms: float = 0.0,
        stall_threshold_ms: float | None = -1.0,
    ) -> None:
        if processing_delay_ms < 0:
            raise ConfigError(f"processing_delay_ms must be >= 0, got {processing_delay_ms!r}")
        if coord_service_address is not None and session_timeout_ms <= 0:
            raise ConfigError(f"session_timeout_ms must be > 0, got {session_timeout_ms!r}")
        self._env = env
        self.address = address
        self._factory = machine_factory
        self._network = network
        self.coord_service_address = coord_service_address
        self.session_timeout_ms = session_timeout_ms
        self._tracer = tracer
        self._rng = rng
        self.processing_delay_ms = processing_delay_ms
        #: Frozen longer than this, a resumed host treats its session as unknown (None: never).
        self.stall_threshold_ms = (
            session_timeout_ms / 3
            if stall_threshold_ms is not None and stall_threshold_ms < 0
            else stall_threshold_ms
        )
        self._paused_at = 0.0
        self._probe_id = 0  # the host's own coordination reads count down from -1; machines count up
        self._probe_pending: int | None = None
        self._session_events = 0  # session states the coordination client delivered, ever
        self._probe_session_events = 0
        self.state = HostState.NEW
        self.machine: Machine | None = None
        self.coord: SimCoordClient | None = None
        self._incarnation = 0
        self._epoch = 0  # bumped by start, crash and stop; stale callbacks compare against it
        self._inbox: deque[Input | _TimerDue] = deque()
        self._drain_scheduled = False
        self._timers: dict[str, int] = {}
        self._timer_generation = 0
        #: Inputs handed to a machine over the host's whole life (all incarnations).
        self.inputs_processed = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def incarnation(self) -> int:
        """How many times this host has been started; bumped by every ``start``."""
        return self._incarnation

    @property
    def running(self) -> bool:
        """Started and not crashed or stopped (a paused host is still running)."""
        return self.state in (HostState.RUNNING, HostState.PAUSED)

    def start(self) -> None:
        """Build a fresh machine, attach to the network, open a session, and deliver ``Start()``."""
        if self.running:
            raise LocalProtocolError(f"host {self.address} is already running")
        self._incarnation += 1
        self._epoch += 1
        epoch = self._epoch
        self._inbox.clear()
        self._timers.clear()
        self._drain_scheduled = False
        self._network.register(self.address, self._on_network)
        self.machine = self._factory()
        self.state = HostState.RUNNING
        self._trace("host.start", incarnation=self._incarnation)
        self._inbox.append(Start())
        if self.coord_service_address is not None:
            self.coord = SimCoordClient(
                self._env,
                self._network,
                self.coord_service_address,
                self.address,
                self.session_timeout_ms,
                lambda event: self._enqueue(event, epoch),
                random.Random(self._rng.getrandbits(64)),
                self._tracer,
            )
            self.coord.start()
        self._kick()

    def crash(self) -> None:
        """Lose everything at once; the session expires on the server after its timeout."""
        if not self.running:
            return
        self._trace("host.crash", incarnation=self._incarnation)
        self._halt()
        if self.coord is not None:
            self.coord.crash()
            self.coord = None
        self._network.crash(self.address)
        self.state = HostState.CRASHED

    def stop(self) -> None:
        """Clean shutdown: close the session (ephemerals go at once) and leave the network."""
        if not self.running:
            return
        self._trace("host.stop", incarnation=self._incarnation)
        self._halt()
        if self.coord is not None:
            self.coord.stop()
            self.coord = None
        self._network.unregister(self.address)
        self.state = HostState.STOPPED

    def restart(self) -> None:
        """Crash (if running) and start again with a fresh machine and a new session."""
        self.crash()
        self._trace("host.restart", incarnation=self._incarnation + 1)
        self.start()

    def pause(self) -> None:
        """Freeze the host (SIGSTOP): nothing processed, no timer seen, no pings, messages queue."""
        if self.state != HostState.RUNNING:
            return
        self._trace("host.pause")
        self._paused_at = self._env.now
        self.state = HostState.PAUSED
        self._network.pause(self.address)
        if self.coord is not None:
            self.coord.pause()

    def resume(self) -> None:
        """Thaw: timers that came due, then queued messages, then the coordination client's verdict."""
        if self.state != HostState.PAUSED:
            return
        self._trace("host.resume")
        self.state = HostState.RUNNING
        frozen_ms = self._env.now - self._paused_at
        self._network.resume(self.address)
        if self.coord is not None:
            self.coord.resume()
        if (
            self.coord is not None
            and self.stall_threshold_ms is not None
            and frozen_ms > self.stall_threshold_ms
        ):
            self._trace("host.stall", frozen_ms=frozen_ms)
            self._inbox.appendleft(SessionStateChanged(SessionState.SUSPENDED, self.coord.session_id))
            self._probe_session()
        self._kick()

    def _probe_session(self) -> None:
        """Read the coordination root on our session; success means it survived (see the docstring)."""
        if self.coord is None or not self.coord.connected:
            return  # the client is reconnecting or lost: its own CONNECTED / LOST will follow
        self._probe_id -= 1
        self._probe_pending = self._probe_id
        self._probe_session_events = self._session_events
        self.coord.execute(CoordRead(self._probe_id, "/"))

    def inject(self, event: Input) -> None:
        """Enqueue an input from outside the network (a workload driver, a test)."""
        if self.running:
            self._trace("host.inject", input=event)
            self._enqueue(event, self._epoch)

    def _halt(self) -> None:
        self._epoch += 1
        self.machine = None
        self._inbox.clear()
        self._timers.clear()
        self._drain_scheduled = False

    # ------------------------------------------------------------ inbox

    def _on_network(self, source: str, message: Any) -> None:
        if self.coord is not None and source == self.coord_service_address:
            self.coord.receive(source, message)
        else:
            self._enqueue(Receive(source, message), self._epoch)

    def _enqueue(self, item: Input | _TimerDue, epoch: int) -> None:
        if epoch != self._epoch or not self.running:
            return
        if isinstance(item, SessionStateChanged):
            self._session_events += 1
        elif isinstance(item, CoordResult) and item.request_id < 0:
            if item.request_id != self._probe_pending:
                return
            self._probe_pending = None
            if item.error is not None or self._session_events != self._probe_session_events:
                return  # the client's own verdict decides
            item = SessionStateChanged(SessionState.CONNECTED, self.coord.session_id if self.coord else 0)
            self._trace("host.session_confirmed")
        self._inbox.append(item)
        self._kick()

    def _kick(self) -> None:
        if self._drain_scheduled or not self._inbox or self.state != HostState.RUNNING:
            return
        self._drain_scheduled = True
        epoch = self._epoch
        event = self._env.timeout(self.processing_delay_ms)
        event.callbacks.append(lambda _event: self._drain(epoch))

    def _drain(self, epoch: int) -> None:
        """Process one input, then schedule the next: one input per SimPy event keeps hosts fair."""
        if epoch != self._epoch:
            return  # a crash or stop voided this callback; the new incarnation has its own
        self._drain_scheduled = False
        if self.state != HostState.RUNNING or not self._inbox:
            return
        item = self._inbox.popleft()
        if isinstance(item, _TimerDue):
            if self._timers.get(item.key) != item.generation:
                self._tracer.count("host.timer_stale")
                self._kick()
                return
            del self._timers[item.key]
            self._trace("host.timer", key=item.key)
            self._process(TimerFired(item.key))
        else:
            self._process(item)
        self._kick()

    def _process(self, event: Input) -> None:
        machine = self.machine
        assert machine is not None, "a running host always has a machine"
        now_ms = int(self._env.now)
        self.inputs_processed += 1
        try:
            effects = machine.handle(event, now_ms)
        except InvariantViolation as exc:
            self._trace("host.invariant_violation", error=str(exc), input=event)
            raise
        except Exception as exc:
            self._trace("host.error", error_type=type(exc).__name__, error=str(exc), input=event)
            raise
        for effect in effects:
            try:
                self._execute(effect)
            except Exception as exc:
                shown = effect if is_dataclass(effect) else type(effect).__name__  # must stay traceable
                self._trace("host.error", error_type=type(exc).__name__, error=str(exc), effect=shown)
                raise
            if self.state not in (HostState.RUNNING, HostState.PAUSED) or self.machine is not machine:
                return  # an effect's consequence stopped this incarnation (a test harness crash)

    # ------------------------------------------------------------ effects

    def _execute(self, effect: Effect) -> None:
        if isinstance(effect, Send | Reply):
            self._network.send(self.address, effect.destination, effect.message)
        elif isinstance(effect, SetTimer):
            self._set_timer(effect.key, effect.at_ms)
        elif isinstance(effect, CancelTimer):
            self._timers.pop(effect.key, None)
        elif isinstance(effect, COORD_EFFECTS):
            if self.coord is None:
                raise LocalProtocolError(f"host {self.address} has no coordination service: {effect!r}")
            self.coord.execute(effect)
        elif isinstance(effect, Trace):
            self._tracer.record(self._env.now, self.address, effect.event, effect.fields)
        else:
            raise LocalProtocolError(f"host {self.address} cannot execute effect {effect!r}")

    def _set_timer(self, key: str, at_ms: int) -> None:
        self._timer_generation += 1
        generation = self._timer_generation
        self._timers[key] = generation
        epoch = self._epoch
        event = self._env.timeout(max(0.0, at_ms - self._env.now))
        event.callbacks.append(lambda _event: self._timer_due(key, generation, epoch))

    def _timer_due(self, key: str, generation: int, epoch: int) -> None:
        if self._timers.get(key) == generation:
            self._enqueue(_TimerDue(key, generation), epoch)

    def timers(self) -> dict[str, int]:
        """Armed timer keys and their generations (for tests; generations are opaque)."""
        return dict(sorted(self._timers.items()))

    # ------------------------------------------------------------ tracing

    def _trace(self, event: str, **fields: Any) -> None:
        self._tracer.record(self._env.now, self.address, event, fields)
