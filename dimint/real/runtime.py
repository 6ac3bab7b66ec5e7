"""The real host: one event-loop thread that runs one core state machine over ZeroMQ and ZooKeeper.

Theory of operation
-------------------
``RealHost`` is the real twin of ``dimint.sim.host.SimHost`` and gives the machine the same
execution semantics. Everything that happens to the machine becomes an input in one inbox:
``Start()`` first, ``Receive`` for decoded frames (read by the loop itself from its zmq sockets),
``TimerFired`` for named timers, and ``CoordResult`` / ``WatchFired`` / ``SessionStateChanged``
from the kazoo adapter. Inputs are handled one at a time: ``machine.handle(input, now_ms)``, then
every returned effect is executed in order, before the next input is looked at. Callbacks from
kazoo's threads (and ``inject`` from other threads) only append to a deque and write one byte to a
wake-up pipe the loop polls alongside its sockets; they never touch the machine, so the machine is
never re-entered and needs no locks.

A thread that waits for the machine (the client library's caller) may run the loop's turns
itself: ``drive(done, timeout_s)`` takes the turn lock, runs the very same turns on the same inbox
until ``done()``, and meanwhile the loop thread is parked (it resumes ``_PARK_S`` after the last
caller left, or when a timer comes due). Whoever holds the lock, the machine still sees one input
at a time and its effects are executed in order; only the thread differs.

Replicate messages to one peer are coalesced within a turn (``_hold_replicate``): a master that
handles a pipeline of writes in one turn sends each slave one Replicate carrying every entry, in
order, flushed before anything else goes to that peer and before the loop polls again.

Within one turn of the loop, inputs are queued in this order: coordination events (so a
``SUSPENDED`` fences a master before it serves the requests that arrived with it), timers that came
due, then network frames (at most ``TransportOptions.batch`` per socket, so a flood cannot starve
the rest).

Timers are named and one-shot, exactly as in the simulator: ``SetTimer(key, at_ms)`` replaces the
deadline for ``key`` with a fresh generation; a firing is honoured only if its generation is still
the armed one *when the machine would see it*, so a timer cancelled or re-armed after it came due
but before it was processed never reaches the machine.

Clocks. ``now_ms`` is wall-clock epoch milliseconds (never decreasing within a process), so absolute
deadlines such as a key's ``expire_at_ms`` mean the same on every machine of a cluster with
synchronised clocks. Timers are scheduled on ``time.monotonic`` (``at_ms - now_ms`` from now), so a
wall-clock step never fires or delays them.

Stalls. A process frozen by SIGSTOP, a VM pause or swapping sees nothing while frozen, not even its
ZooKeeper session expiring; when it thaws, the requests queued in its sockets would reach the
machine before kazoo has noticed that the session is gone, and a deposed master would answer a
strong read from stale data. The loop therefore measures itself: a turn that took far longer than
it should have (``stall_threshold_ms``, default a third of the session timeout) is a stall, and
before handling anything else the machine gets ``SessionStateChanged(SUSPENDED)``, which fences a
master. The host then reads the coordination root on the same session; if that succeeds with no
session event from kazoo in between, the session provably survived and the machine gets
``CONNECTED`` again (it re-reads the map before unfencing). Otherwise kazoo's own ``LOST`` and
``CONNECTED`` follow as usual. A false alarm costs a brief fence, never safety.

Errors. An exception from ``handle`` is a bug in DiMint (the codec has already refused bad input):
it is logged with the input that caused it, recorded in ``failure``, and the loop stops, so a
process exits non-zero instead of limping on, as the simulator raises out of ``env.run()``.

Shutdown. ``stop()`` (thread-safe, async-signal-safe enough for a SIGTERM handler) ends the loop;
``close()`` then closes the ZooKeeper session, so our ephemeral znodes vanish at once rather than
after the session timeout, and closes the sockets.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from typing import Any

from dimint.core.effects import (
    COORD_EFFECTS,
    CancelTimer,
    CoordRead,
    CoordResult,
    Effect,
    Input,
    Machine,
    ProcessStats,
    Reply,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
    Trace,
)
from dimint.core.errors import LocalProtocolError
from dimint.core.protocol import Replicate
from dimint.real.coord import KazooCoordClient
from dimint.real.transport import Transport

__all__ = ["IMPORTANT_TRACE_EVENTS", "JsonLogFormatter", "RealHost", "wall_clock_ms"]

logger = logging.getLogger(__name__)
trace_logger = logging.getLogger("dimint.trace")

#: Trace events logged at INFO (role changes, fencing, failover, map writes); the rest at DEBUG.
IMPORTANT_TRACE_EVENTS: frozenset[str] = frozenset(
    {
        "role",
        "overlord_role",
        "fenced",
        "unfenced",
        "registered",
        "session",
        "failover_started",
        "failover_promote",
        "failover_stuck",
        "map_create",
        "map_written",
        "map_write_failed",
        "bad_map",
        "snapshot_installed",
        "host.stall",
        "host.error",
    }
)

#: Longest the loop sleeps without looking at the clock (bounds stall detection's blind spot).
_MAX_POLL_MS = 250
#: Most log entries one coalesced Replicate carries (see ``RealHost._hold_replicate``).
_COALESCE_ENTRIES = 256
#: How long the loop thread stays parked after the last caller that drove the loop left (``drive``).
_PARK_S = 0.05
#: How often a caller waiting for another to finish driving the loop checks its own operations.
_CONTENDED_WAIT_S = 0.002
#: Coordination request ids of the host's own session probes; machines count up from 1.
_PROBE_ID_START = -1


def wall_clock_ms() -> int:
    """Epoch milliseconds: what ``now_ms`` means in the real runtime."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class _TimerDue:
    key: str
    generation: int


class RealHost:
    """Runs ``machine`` at ``address``; see the module docstring for the execution model.

    ``coord_hosts`` None means no coordination client (a client library's router); a ``Coord*``
    effect is then a ``LocalProtocolError``. ``absorb(effect, now_ms)`` may claim effects the host
    does not know (the client's ``Completed``) by returning True. ``stats_interval_ms`` makes the
    host measure its OS process (CPU percent since the last sample, resident memory) and hand the
    machine a ``ProcessStats`` input that often.
    """

    def __init__(
        self,
        machine: Machine,
        transport: Transport,
        *,
        address: str | None = None,
        coord_hosts: str | None = None,
        session_timeout_ms: int = 0,
        stall_threshold_ms: int | None = None,
        absorb: Callable[[Effect, int], bool] | None = None,
        stats_interval_ms: int | None = None,
    ) -> None:
        if coord_hosts is not None and session_timeout_ms <= 0:
            raise LocalProtocolError(f"session_timeout_ms must be > 0, got {session_timeout_ms!r}")
        self.machine = machine
        self.transport = transport
        self.address = address or transport.identity
        self.coord_hosts = coord_hosts
        self.session_timeout_ms = session_timeout_ms
        if stall_threshold_ms is None:
            stall_threshold_ms = max(200, session_timeout_ms // 3) if coord_hosts else 0
        self.stall_threshold_ms = stall_threshold_ms
        self._absorb = absorb
        # A process's own CPU and memory go to its machine (for reports and status) this often.
        self.stats_interval_ms = stats_interval_ms
        self._stats_due: float | None = None
        self._stats_last: tuple[float, float] | None = None  # (monotonic, process CPU seconds)
        self.coord: KazooCoordClient | None = None
        self._inbox: deque[Input | _TimerDue] = deque()
        self._external: deque[Input] = deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._wake_pending = False
        self.transport.register_fd(self._wake_read)
        # Replicate messages held back within one turn, per destination (see ``_hold_replicate``).
        self._held: dict[str, Replicate] = {}
        self._held_parts: dict[str, list[Replicate]] = {}
        self._timers: dict[str, int] = {}
        self._timer_heap: list[tuple[float, int, str]] = []
        self._timer_generation = 0
        self._last_now_ms = 0
        self._last_beat = time.monotonic()
        self._stopping = False
        self._closed = False
        self.thread: threading.Thread | None = None
        #: The exception that stopped the loop (a bug in a machine), if any.
        self.failure: BaseException | None = None
        #: Inputs handed to the machine so far.
        self.inputs_processed = 0
        self.stalls = 0
        # Session bookkeeping for stall probes (loop thread only).
        self._machine_session: SessionState | None = None
        self._kazoo_session_events = 0
        self._probe: tuple[int, int, int] | None = None  # (request id, session id, kazoo events seen)
        self._probe_seq = _PROBE_ID_START
        self._probe_retry_at: float | None = None
        # Caller-driven turns (see ``drive``): whoever holds ``_turn_lock`` runs the loop; the loop
        # thread steps aside while callers drive and for ``_PARK_S`` after the last one left.
        self._turn_lock = threading.Lock()
        self._park = threading.Condition()
        self._drivers = 0
        self._last_driver_exit = -1.0

    # ------------------------------------------------------------ lifecycle

    def start(self, *, thread: bool = True) -> None:
        """Open the coordination session and run the loop (in a new daemon thread, or here)."""
        if thread:
            self.thread = threading.Thread(target=self.run, name=f"dimint-host {self.address}", daemon=True)
            self.thread.start()
        else:
            self.run()

    def run(self) -> None:
        """The loop; returns after ``stop()`` or a machine failure. Call ``close()`` afterwards."""
        self._inbox.append(Start())
        if self.coord_hosts is not None:
            self.coord = KazooCoordClient(self.coord_hosts, self.session_timeout_ms, self._deliver)
            self.coord.start()
        try:
            self._loop()
        except BaseException as exc:  # never leave a dead loop silently behind
            if self.failure is None:
                self.failure = exc
            logger.critical("host %s loop died: %r", self.address, exc, exc_info=True)
        finally:
            self._stopping = True

    def stop(self) -> None:
        """Ask the loop to end (thread-safe; fine to call from a signal handler)."""
        self._stopping = True
        self._wake()
        self._unpark()

    def join(self, timeout_s: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout_s)

    def close(self) -> None:
        """Close the session (ephemerals vanish at once) and the sockets. Call after the loop ended."""
        if self._closed:
            return
        self._closed = True
        # A caller still inside ``drive`` ends its turn first (``stop`` woke it); never close under it.
        locked = self._turn_lock.acquire(timeout=5.0)
        if self.coord is not None:
            self.coord.stop()
        self.transport.close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        if locked:
            self._turn_lock.release()

    @property
    def running(self) -> bool:
        return not self._stopping

    def inject(self, event: Input) -> None:
        """Enqueue an input from another thread (a client call, a test)."""
        self._deliver(event)

    # ------------------------------------------------------------ inbox

    def _deliver(self, item: Input) -> None:
        """Called from kazoo's threads and by ``inject``: enqueue and wake the loop, nothing else."""
        self._external.append(item)
        self._wake()
        self._unpark()

    def enqueue(self, event: Input) -> None:
        """Enqueue an input from another thread without waking the loop: the caller ``drive``s next."""
        self._external.append(event)

    def drive(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Run the loop on the calling thread until ``done()`` is true; returns ``done()``.

        The calling thread takes the loop's turn lock (waking the loop thread out of its poll if it
        holds it), and runs turns exactly as the loop thread would: one input at a time, effects in
        order, the same inbox. So a client call costs no hand-off to the loop thread and back. The
        loop thread stays parked while callers drive and for a moment after (a client calling
        in a tight loop comes back at once); it resumes to serve timers and idle traffic.
        Returns early, with ``done()`` false, after ``timeout_s`` or when the loop stopped.
        """
        deadline = time.monotonic() + timeout_s
        with self._park:
            self._drivers += 1
        try:
            if not self._turn_lock.acquire(blocking=False):
                self._wake()  # the loop thread (or another caller) is in its poll: end that turn
                # Another caller may drive on for its own slow operation while it completes ours.
                while not self._turn_lock.acquire(timeout=_CONTENDED_WAIT_S):
                    if done() or self._stopping or time.monotonic() >= deadline:
                        return done()
            try:
                # Our own input first, without a poll: the usual call sends its request at once.
                self._take_external()
                self._process_inbox()
                while not done() and not self._stopping:
                    remaining_ms = (deadline - time.monotonic()) * 1000
                    if remaining_ms <= 0:
                        break
                    self._turn(min(int(remaining_ms) + 1, _MAX_POLL_MS))
            finally:
                self._turn_lock.release()
        finally:
            # No notify: waking the parked loop thread after every call would cost the very
            # context switch ``drive`` saves; it looks again when its wait times out.
            with self._park:
                self._drivers -= 1
                self._last_driver_exit = time.monotonic()
        return done()

    def _unpark(self) -> None:
        with self._park:
            self._last_driver_exit = -1.0
            self._park.notify_all()

    def _wait_while_driven(self) -> None:
        """Loop thread: step aside while callers drive the loop, and for ``_PARK_S`` after."""
        with self._park:
            while not self._stopping:
                if self._drivers:
                    self._park.wait(_PARK_S)  # a driver serves timers meanwhile
                    continue
                idle_s = time.monotonic() - self._last_driver_exit
                if self._last_driver_exit < 0 or idle_s >= _PARK_S:
                    return
                # Wake for a timer due in the meantime (a request timeout, say) all the same.
                self._park.wait(max(0.001, min(_PARK_S - idle_s, self._next_timer_in_s())))
                if self._next_timer_in_s() <= 0:
                    return

    def _next_timer_in_s(self) -> float:
        """Seconds until the earliest timer entry (perhaps a stale one); only peeks, never pops."""
        heap = self._timer_heap
        return heap[0][0] - time.monotonic() if heap else _PARK_S

    def _wake(self) -> None:
        if self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 4096):
                pass
        self._wake_pending = False  # after reading, before draining ``_external`` (see _wake)

    def now_ms(self) -> int:
        """Wall-clock epoch ms, never going backwards within this host."""
        now = wall_clock_ms()
        if now < self._last_now_ms:
            now = self._last_now_ms
        self._last_now_ms = now
        return now

    def _poll_timeout_ms(self) -> int:
        if self._inbox or self._external:
            return 0
        heap = self._timer_heap
        while heap and self._timers.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # cancelled or re-armed: its entry is garbage
        timeout = _MAX_POLL_MS
        if heap:
            timeout = min(timeout, max(0, int((heap[0][0] - time.monotonic()) * 1000) + 1))
        if self._probe_retry_at is not None:
            timeout = min(timeout, max(0, int((self._probe_retry_at - time.monotonic()) * 1000) + 1))
        if self._stats_due is not None:
            timeout = min(timeout, max(0, int((self._stats_due - time.monotonic()) * 1000) + 1))
        return timeout

    def _loop(self) -> None:
        self._last_beat = time.monotonic()
        while not self._stopping:
            self._wait_while_driven()
            with self._turn_lock:
                if self._stopping:
                    break
                self._turn(None)

    def _turn(self, max_timeout_ms: int | None) -> None:
        """One turn: poll (at most ``max_timeout_ms``), queue what came in, handle it all."""
        before_poll = time.monotonic()
        self._check_stall(before_poll)
        timeout_ms = self._poll_timeout_ms()
        if max_timeout_ms is not None:
            timeout_ms = min(timeout_ms, max_timeout_ms)
        ready = self.transport.wait(timeout_ms)
        after_poll = time.monotonic()
        if self._stopping:
            return
        if self.stall_threshold_ms:
            overslept_ms = (after_poll - before_poll) * 1000 - timeout_ms
            if overslept_ms > self.stall_threshold_ms:
                self._on_stall(overslept_ms)
        self._last_beat = after_poll
        if self._wake_read in ready:
            self._drain_wake()
        self._take_external()
        self._take_due_timers(after_poll)
        self._take_stats(after_poll)
        if self._probe_retry_at is not None and after_poll >= self._probe_retry_at:
            self._probe_retry_at = None
            self._send_probe()
        self._inbox.extend(self.transport.receive(ready))
        self._process_inbox()

    def _check_stall(self, now_mono: float) -> None:
        """A gap since the last beat longer than the threshold means we were frozen (or starved)."""
        if self.stall_threshold_ms and (now_mono - self._last_beat) * 1000 > self.stall_threshold_ms:
            self._on_stall((now_mono - self._last_beat) * 1000)
        self._last_beat = now_mono

    def _take_external(self) -> None:
        external = self._external
        while external:
            item = external.popleft()
            if isinstance(item, CoordResult) and item.request_id <= _PROBE_ID_START:
                self._on_probe_result(item)
                continue
            if isinstance(item, SessionStateChanged):
                self._kazoo_session_events += 1
            self._inbox.append(item)

    def _take_stats(self, now_mono: float) -> None:
        if self.stats_interval_ms is None:
            return
        if self._stats_due is None:
            self._stats_due = now_mono  # the first sample right away, then every interval
        if now_mono < self._stats_due:
            return
        self._stats_due = now_mono + self.stats_interval_ms / 1000.0
        cpu_seconds = time.process_time()
        last = self._stats_last
        self._stats_last = (now_mono, cpu_seconds)
        if last is None or now_mono <= last[0]:
            return
        percent = 100.0 * (cpu_seconds - last[1]) / (now_mono - last[0])
        self._inbox.append(ProcessStats(round(percent, 1), _resident_bytes()))

    def _take_due_timers(self, now_mono: float) -> None:
        heap = self._timer_heap
        while heap and heap[0][0] <= now_mono:
            _, generation, key = heapq.heappop(heap)
            if self._timers.get(key) == generation:
                self._inbox.append(_TimerDue(key, generation))

    def _process_inbox(self) -> None:
        inbox = self._inbox
        while inbox and not self._stopping:
            self._check_stall(time.monotonic())
            item = inbox.popleft()
            if isinstance(item, _TimerDue):
                if self._timers.get(item.key) != item.generation:
                    continue  # re-armed or cancelled after it came due
                del self._timers[item.key]
                self._process(TimerFired(item.key))
            else:
                self._process(item)
        if self._held:
            self._flush_held()

    def _process(self, event: Input) -> None:
        now_ms = self.now_ms()
        self.inputs_processed += 1
        if isinstance(event, SessionStateChanged):
            self._machine_session = event.state
        try:
            effects = self.machine.handle(event, now_ms)
            for effect in effects:
                self._execute(effect, now_ms)
        except Exception as exc:
            self.failure = exc
            self._trace_host("host.error", now_ms, error_type=type(exc).__name__, error=str(exc), input=event)
            logger.critical("host %s: machine failed on %r", self.address, event, exc_info=True)
            self._stopping = True

    # ------------------------------------------------------------ effects

    def _execute(self, effect: Effect, now_ms: int) -> None:
        # Timer effects first: they are the commonest (two set and three cancelled per client call).
        if isinstance(effect, SetTimer):
            self._set_timer(effect.key, effect.at_ms, now_ms)
        elif isinstance(effect, CancelTimer):
            self._timers.pop(effect.key, None)
        elif isinstance(effect, Send):
            if type(effect.message) is Replicate:
                self._hold_replicate(effect.destination, effect.message)
                return
            if effect.destination in self._held:
                self._flush_held(effect.destination)  # what we send a peer arrives in order
            self.transport.send(effect.destination, effect.message)
        elif isinstance(effect, Reply):
            if effect.destination in self._held:
                self._flush_held(effect.destination)
            self.transport.reply(effect.destination, effect.message)
        elif isinstance(effect, COORD_EFFECTS):
            if self.coord is None:
                raise LocalProtocolError(f"host {self.address} has no coordination client: {effect!r}")
            self.coord.execute(effect)
        elif isinstance(effect, Trace):
            self._log_trace(effect.event, effect.fields, now_ms)
        elif self._absorb is None or not self._absorb(effect, now_ms):
            shown = effect if is_dataclass(effect) else type(effect).__name__
            raise LocalProtocolError(f"host {self.address} cannot execute effect {shown!r}")

    def _hold_replicate(self, destination: str, message: Replicate) -> None:
        """Coalesce the Replicates one turn sends a slave into one message (a pipeline of writes
        costs the slave one decode and one ack, the master one ack, instead of one per write).

        A message extends the held one only if it continues it exactly (same shard and epoch, its
        ``prev`` the held one's last entry): the slave then sees the very log it would have seen
        from the separate messages, in the same order, only sooner acknowledged. Held messages go
        out at the end of the turn, before anything else sent to that destination, and before the
        loop polls again; so one write alone is not delayed at all. A merged message the codec
        would refuse (too large) goes out as its parts.
        """
        held = self._held.get(destination)
        if held is None:
            self._held[destination] = message
            return
        entries = held.entries
        if (
            entries
            and message.entries
            and held.shard_id == message.shard_id
            and held.shard_epoch == message.shard_epoch
            and message.prev_seq == entries[-1][0]
            and message.prev_epoch == entries[-1][1]
            and message.commit_seq >= held.commit_seq
            and len(entries) + len(message.entries) <= _COALESCE_ENTRIES
        ):
            self._held[destination] = Replicate(
                held.shard_id,
                held.shard_epoch,
                held.prev_seq,
                held.prev_epoch,
                [*entries, *message.entries],
                message.commit_seq,
            )
            self._held_parts.setdefault(destination, [held]).append(message)
            return
        self._flush_held(destination)
        self._held[destination] = message

    def _flush_held(self, destination: str | None = None) -> None:
        destinations = list(self._held) if destination is None else [destination]
        for name in destinations:
            message = self._held.pop(name)
            parts = self._held_parts.pop(name, None)
            if parts is None or self.transport.send_if_encodable(name, message):
                if parts is None:
                    self.transport.send(name, message)
                continue
            for part in parts:  # the merged message is too large (or otherwise refused): one by one
                self.transport.send(name, part)

    def _set_timer(self, key: str, at_ms: int, now_ms: int) -> None:
        self._timer_generation += 1
        generation = self._timer_generation
        self._timers[key] = generation
        due = time.monotonic() + max(0, at_ms - now_ms) / 1000.0
        heapq.heappush(self._timer_heap, (due, generation, key))

    def timers(self) -> dict[str, int]:
        """Armed timer keys and their generations (for tests; generations are opaque)."""
        return dict(sorted(self._timers.items()))

    # ------------------------------------------------------------ stalls

    def _on_stall(self, stalled_ms: float) -> None:
        self.stalls += 1
        now_ms = self.now_ms()
        self._trace_host("host.stall", now_ms, stalled_ms=round(stalled_ms))
        coord = self.coord
        if coord is None or self._machine_session is not SessionState.CONNECTED:
            return
        # Fence first, before any frame that queued up while we were frozen reaches the machine.
        self._inbox.appendleft(SessionStateChanged(SessionState.SUSPENDED, coord.session_id))
        self._send_probe()

    def _send_probe(self) -> None:
        coord = self.coord
        if coord is None or not coord.connected:
            self._probe = None  # kazoo reports the session's fate itself once it reconnects
            return
        self._probe_seq -= 1
        self._probe = (self._probe_seq, coord.session_id, self._kazoo_session_events)
        coord.execute(CoordRead(self._probe_seq, "/"))

    def _on_probe_result(self, result: CoordResult) -> None:
        probe = self._probe
        if probe is None or result.request_id != probe[0]:
            return
        self._probe = None
        _, session_id, events_seen = probe
        coord = self.coord
        if coord is None or self._kazoo_session_events != events_seen:
            return  # kazoo reported a session change meanwhile: its own events tell the truth
        if result.error is None and coord.session_id == session_id:
            self._trace_host("host.session_confirmed", self.now_ms(), session_id=session_id)
            self._inbox.append(SessionStateChanged(SessionState.CONNECTED, session_id))
        else:
            self._probe_retry_at = time.monotonic() + 0.2

    # ------------------------------------------------------------ tracing

    def _trace_host(self, event: str, now_ms: int, **fields: Any) -> None:
        self._log_trace(event, fields, now_ms)

    def _log_trace(self, event: str, fields: dict[str, Any], now_ms: int) -> None:
        level = logging.INFO if event in IMPORTANT_TRACE_EVENTS else logging.DEBUG
        if event == "host.error":
            level = logging.ERROR
        if not trace_logger.isEnabledFor(level):
            return
        record = {"time_ms": now_ms, "host": self.address, "event": event, **fields}
        trace_logger.log(level, event, extra={"trace": record})


def _resident_bytes() -> int:
    """Resident memory of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: trace records as their fields, other records as time/level/message."""

    def format(self, record: logging.LogRecord) -> str:
        trace = getattr(record, "trace", None)
        if isinstance(trace, dict):
            line = {"level": record.levelname, **trace}
        else:
            line = {
                "time_ms": int(record.created * 1000),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
            if record.exc_info:
                line["traceback"] = self.formatException(record.exc_info)
        try:
            return json.dumps(line, default=_json_default, separators=(",", ":"))
        except (TypeError, ValueError):
            return json.dumps({"level": record.levelname, "message": repr(line)})
