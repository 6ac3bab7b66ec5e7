"""A simulated network: latency, loss, duplication, reordering, partitions, pauses and crashes.

Theory of operation: addresses are opaque strings. A host ``register``s a ``deliver(source, message)``
callback; ``send(src, dst, message)`` samples a one-way latency and schedules the delivery as a SimPy
event. Nothing is copied or encoded: the message object itself arrives, so messages must be
immutable (the core's are frozen dataclasses).

Two kinds of traffic share the links:

* **Datagrams** (the default, what DiMint's protocol sees): subject to random loss, duplication and,
  when ``NetworkOptions.reorder`` is True, reordering. A datagram is dropped when the link is cut
  at send time *or* at delivery time. When reordering is off a link (src, dst) is FIFO like a TCP
  connection: a message's delivery time is never earlier than that of the previous message on the
  same link, and SimPy runs same-time events in scheduling order, so nothing overtakes.
* **Streams** (``send(..., reliable=True)``, used by the coordination model to mimic ZooKeeper's TCP
  session): never randomly lost, duplicated or reordered. A stream message that meets a cut link is
  *held* (as TCP would keep retransmitting) and re-sent with fresh latency when a ``heal()`` or a new
  ``partition()`` makes the link reachable again. Each (src, dst) stream numbers its messages and the
  receiving side delivers strictly in that order, so holding never reorders. A stream that
  stays cut forever simply never delivers; the endpoints notice through their own timeouts.

Crashes sever connections: ``register`` and ``crash`` bump an address's *incarnation*, every message
remembers both endpoints' incarnations at send time, and a message is dropped when either endpoint
crashed (or re-registered) before it arrived. A host that restarts therefore never receives traffic
addressed to its previous life, and traffic from a dead host that was still in flight is lost.

A paused address (``pause``: a SIGSTOP'd process, a long GC) receives nothing; arriving messages
queue, in order, and are handed over on ``resume``. ``crash`` discards that queue.

Every delivery, drop, duplicate and fault is recorded in the tracer (source ``"net"``), so the trace
digest covers the network's behaviour. All randomness comes from the one ``rng`` given to the
constructor, drawn in event order, so a run is a pure function of its seed.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

from dimint.core.errors import ConfigError, LocalProtocolError
from dimint.sim.trace import Tracer

__all__ = ["Latency", "NetworkOptions", "SimNetwork"]

LATENCY_KINDS = ("constant", "uniform", "lognormal")

Deliver = Callable[[str, Any], None]


def _check_probability(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Latency:
    """A one-way latency distribution, in milliseconds.

    ``kind``:
      * ``"constant"``: always ``base_ms``.
      * ``"uniform"``: ``base_ms + U(0, jitter_ms)`` (a fixed floor plus bounded jitter).
      * ``"lognormal"``: ``base_ms * exp(N(0, sigma))``, i.e. median ``base_ms``, mean
        ``base_ms * exp(sigma**2 / 2)``; a heavy right tail like real queueing delay.
    Every sample is then clamped to ``[min_ms, max_ms]`` (``max_ms=None``: no cap), so a tail can
    be bounded to keep timeouts meaningful.
    """

    kind: str = "uniform"
    base_ms: float = 1.0
    jitter_ms: float = 0.5
    sigma: float = 0.5
    min_ms: float = 0.0
    max_ms: float | None = None

    def validate(self, name: str = "latency") -> None:
        """Raise ``ConfigError`` naming the bad field."""
        if self.kind not in LATENCY_KINDS:
            raise ConfigError(f"{name}.kind must be one of {LATENCY_KINDS}, got {self.kind!r}")
        _check_non_negative(f"{name}.base_ms", self.base_ms)
        _check_non_negative(f"{name}.jitter_ms", self.jitter_ms)
        _check_non_negative(f"{name}.sigma", self.sigma)
        _check_non_negative(f"{name}.min_ms", self.min_ms)
        if self.max_ms is not None:
            _check_non_negative(f"{name}.max_ms", self.max_ms)
            if self.max_ms < self.min_ms:
                raise ConfigError(f"{name}.max_ms ({self.max_ms}) is below min_ms ({self.min_ms})")

    def sample(self, rng: random.Random) -> float:
        """One latency draw. Constant latency draws nothing, so it does not consume randomness."""
        if self.kind == "constant":
            value = float(self.base_ms)
        elif self.kind == "uniform":
            value = self.base_ms + (rng.uniform(0.0, self.jitter_ms) if self.jitter_ms else 0.0)
        else:
            value = self.base_ms * rng.lognormvariate(0.0, self.sigma) if self.sigma else self.base_ms
        value = max(value, self.min_ms)
        if self.max_ms is not None:
            value = min(value, self.max_ms)
        return value


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    """Every knob of the network's fault model. Experiments sweep these and seeds, never code.

    ``latency``: default one-way latency of every link.
    ``link_latency``: per-link overrides, keyed by directed ``(src, dst)``; set both directions for a
        symmetric link. Use it for a far-away replica or a slow client.
    ``loss_probability``: chance that a datagram is silently lost (streams are never lost).
    ``link_loss_probability``: per-link overrides of ``loss_probability``, keyed by ``(src, dst)``.
    ``duplicate_probability``: chance that a delivered-to-be datagram is also delivered a second time
        (after its own latency draw), as a retransmitting sender or a flaky switch would.
    ``reorder``: False makes every link FIFO (a datagram never overtakes an earlier one on the same
        ``(src, dst)`` link, like TCP); True draws each datagram's latency independently, so later
        ones may arrive first. Streams are always FIFO.
    Partitions, cuts, pauses, crashes and loss bursts are not options but actions on ``SimNetwork``,
    so a fault schedule can apply them at chosen times.
    """

    latency: Latency = field(default_factory=Latency)
    link_latency: Mapping[tuple[str, str], Latency] = field(default_factory=dict)
    loss_probability: float = 0.0
    link_loss_probability: Mapping[tuple[str, str], float] = field(default_factory=dict)
    duplicate_probability: float = 0.0
    reorder: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.latency, Latency):
            raise ConfigError("latency must be a Latency")
        self.latency.validate("latency")
        for link, latency in self.link_latency.items():
            _check_link("link_latency", link)
            if not isinstance(latency, Latency):
                raise ConfigError(f"link_latency[{link!r}] must be a Latency")
            latency.validate(f"link_latency[{link!r}]")
        _check_probability("loss_probability", self.loss_probability)
        for link, probability in self.link_loss_probability.items():
            _check_link("link_loss_probability", link)
            _check_probability(f"link_loss_probability[{link!r}]", probability)
        _check_probability("duplicate_probability", self.duplicate_probability)
        if not isinstance(self.reorder, bool):
            raise ConfigError(f"reorder must be a bool, got {self.reorder!r}")


def _check_link(name: str, link: object) -> None:
    if not (isinstance(link, tuple) and len(link) == 2 and all(isinstance(a, str) for a in link)):
        raise ConfigError(f"{name} keys must be (src, dst) address pairs, got {link!r}")


@dataclass(slots=True)
class _Endpoint:
    deliver: Deliver
    incarnation: int
    up: bool = True
    paused: bool = False
    queue: deque[tuple[str, Any]] = field(default_factory=deque)


@dataclass(slots=True)
class _Stream:
    """One direction of a TCP-like connection between two incarnations."""

    incarnations: tuple[int, int]
    next_send_seq: int = 0
    next_deliver_seq: int = 0
    arrived: dict[int, Any] = field(default_factory=dict)  # out of order, waiting for predecessors
    held: list[tuple[int, Any]] = field(default_factory=list)  # met a cut link; re-sent on heal


@dataclass(frozen=True, slots=True)
class _LinkFault:
    """One partition, cut or isolation in force: what ``heal(handle)`` must undo, and only that."""

    kind: str
    group_of: dict[str, int] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()
    address: str = ""


class SimNetwork:
    """The simulated network. See the module docstring for the delivery model."""

    def __init__(
        self,
        env: simpy.Environment,
        options: NetworkOptions,
        rng: random.Random,
        tracer: Tracer,
        *,
        name: str = "net",
    ) -> None:
        self._env = env
        self.options = options
        self._rng = rng
        self._tracer = tracer
        self._name = name
        self._endpoints: dict[str, _Endpoint] = {}
        self._incarnations: dict[str, int] = {}
        # Every fault in force, by the handle its call returned: each heals alone, so two faults
        # that overlap both last exactly their own windows.
        self._faults: dict[int, _LinkFault] = {}
        self._next_fault = 0
        self._partitions: dict[int, dict[str, int]] = {}
        self._cuts: Counter[tuple[str, str]] = Counter()
        self._isolated: Counter[str] = Counter()
        self._burst_ends: list[tuple[float, float]] = []  # (end time, probability)
        self._last_arrival: dict[tuple[str, str, bool], float] = {}
        self._streams: dict[tuple[str, str], _Stream] = {}
        #: ``sent``, ``delivered``, ``dropped``, ``duplicated``, ``held``, ``queued`` totals.
        self.stats: Counter[str] = Counter()
        #: Drops by reason: ``loss``, ``partition``, ``unknown_destination``, ``destination_down``,
        #: ``crashed`` (destination crashed in flight), ``source_crashed``, ``paused_queue_crashed``.
        self.drops: Counter[str] = Counter()

    # ---------------------------------------------------------------- endpoints

    def register(self, address: str, deliver: Deliver) -> None:
        """Attach ``address``; a new incarnation, so traffic meant for an earlier one never arrives."""
        existing = self._endpoints.get(address)
        if existing is not None and existing.up:
            raise LocalProtocolError(f"address {address!r} is already registered")
        incarnation = self._incarnations.get(address, 0) + 1
        self._incarnations[address] = incarnation
        self._endpoints[address] = _Endpoint(deliver, incarnation)

    def unregister(self, address: str) -> None:
        """Detach ``address`` gracefully: its own in-flight messages still arrive, traffic to it drops."""
        self._endpoints.pop(address, None)

    def is_up(self, address: str) -> bool:
        endpoint = self._endpoints.get(address)
        return endpoint is not None and endpoint.up

    def addresses(self) -> list[str]:
        """Registered addresses that are up, sorted."""
        return sorted(a for a, e in self._endpoints.items() if e.up)

    # ---------------------------------------------------------------- sending

    def send(self, src: str, dst: str, message: Any, *, reliable: bool = False) -> None:
        """Send ``message`` from ``src`` to ``dst``: a datagram, or a stream message if ``reliable``."""
        self.stats["sent"] += 1
        endpoint = self._endpoints.get(dst)
        if endpoint is None:
            self._drop(src, dst, message, "unknown_destination")
            return
        if not endpoint.up:
            self._drop(src, dst, message, "destination_down")
            return
        incarnations = (self._incarnations.get(src, 0), endpoint.incarnation)
        if reliable:
            stream = self._streams.get((src, dst))
            if stream is None or stream.incarnations != incarnations:
                stream = _Stream(incarnations)
                self._streams[(src, dst)] = stream
            seq = stream.next_send_seq
            stream.next_send_seq += 1
            self._schedule(src, dst, message, incarnations, seq)
            return
        if not self.reachable(src, dst):
            self._drop(src, dst, message, "partition")
            return
        loss = self._loss_probability(src, dst)
        if loss > 0.0 and self._rng.random() < loss:
            self._drop(src, dst, message, "loss")
            return
        self._schedule(src, dst, message, incarnations, None)
        duplicate = self.options.duplicate_probability
        if duplicate > 0.0 and self._rng.random() < duplicate:
            self.stats["duplicated"] += 1
            self._trace("net.duplicate", src=src, dst=dst, message=self._tracer.describe_message(message))
            self._schedule(src, dst, message, incarnations, None)

    def _loss_probability(self, src: str, dst: str) -> float:
        base = self.options.link_loss_probability.get((src, dst), self.options.loss_probability)
        now = self._env.now
        burst = max((p for end, p in self._burst_ends if end > now), default=0.0)
        return 1.0 - (1.0 - base) * (1.0 - burst)

    def _schedule(
        self, src: str, dst: str, message: Any, incarnations: tuple[int, int], seq: int | None
    ) -> None:
        latency = self.options.link_latency.get((src, dst), self.options.latency).sample(self._rng)
        arrival = self._env.now + latency
        fifo = seq is not None or not self.options.reorder
        if fifo:
            # Why: SimPy runs same-time events in scheduling order, so max() is enough for FIFO.
            link = (src, dst, seq is not None)
            arrival = max(arrival, self._last_arrival.get(link, 0.0))
            self._last_arrival[link] = arrival
        event = self._env.timeout(arrival - self._env.now)
        event.callbacks.append(lambda _event: self._arrive(src, dst, message, incarnations, seq))

    # ---------------------------------------------------------------- arriving

    def _arrive(
        self, src: str, dst: str, message: Any, incarnations: tuple[int, int], seq: int | None
    ) -> None:
        endpoint = self._endpoints.get(dst)
        if self._incarnations.get(src, 0) != incarnations[0]:
            self._drop(src, dst, message, "source_crashed")
            return
        if endpoint is None:
            self._drop(src, dst, message, "unknown_destination")
            return
        if not endpoint.up or endpoint.incarnation != incarnations[1]:
            self._drop(src, dst, message, "crashed")
            return
        if seq is None:
            if not self.reachable(src, dst):
                self._drop(src, dst, message, "partition")
                return
            self._hand_over(endpoint, src, dst, message)
            return
        stream = self._streams.get((src, dst))
        if stream is None or stream.incarnations != incarnations:
            self._drop(src, dst, message, "crashed")
            return
        if not self.reachable(src, dst):
            self.stats["held"] += 1
            stream.held.append((seq, message))
            return
        stream.arrived[seq] = message
        while stream.next_deliver_seq in stream.arrived:
            in_order = stream.arrived.pop(stream.next_deliver_seq)
            stream.next_deliver_seq += 1
            self._hand_over(endpoint, src, dst, in_order)

    def _hand_over(self, endpoint: _Endpoint, src: str, dst: str, message: Any) -> None:
        if endpoint.paused:
            self.stats["queued"] += 1
            endpoint.queue.append((src, message))
            return
        self.stats["delivered"] += 1
        self._trace("net.deliver", src=src, dst=dst, message=self._tracer.describe_message(message))
        endpoint.deliver(src, message)

    def _drop(self, src: str, dst: str, message: Any, reason: str) -> None:
        self.stats["dropped"] += 1
        self.drops[reason] += 1
        self._trace("net.drop", src=src, dst=dst, reason=reason, message=type(message).__name__)

    def _release_held(self) -> None:
        """Re-send held stream messages on links that became reachable (TCP retransmission)."""
        for (src, dst), stream in sorted(self._streams.items()):
            if stream.held and self.reachable(src, dst):
                held, stream.held = stream.held, []
                for seq, message in held:
                    self._schedule(src, dst, message, stream.incarnations, seq)

    # ---------------------------------------------------------------- faults

    def reachable(self, a: str, b: str) -> bool:
        """Whether a message from ``a`` to ``b`` may pass right now (ignoring loss and crashes)."""
        if a == b:
            return True
        if a in self._isolated or b in self._isolated or (a, b) in self._cuts:
            return False
        for group_of in self._partitions.values():
            group_a = group_of.get(a)
            if group_a is not None:
                group_b = group_of.get(b)
                if group_b is not None and group_a != group_b:
                    return False
        return True

    def partition(self, groups: Sequence[Iterable[str]]) -> int:
        """Split the listed addresses into groups that cannot talk to each other, until ``heal``.

        Returns the fault's handle: ``heal(handle)`` ends this partition and nothing else, so
        partitions, cuts and isolations may overlap and each ends on its own schedule. An address
        listed in no group is unaffected and still talks to everyone: to cut a node off from all
        others, list every address or use ``isolate``. Listing an address twice is a ``ConfigError``.
        """
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                if address in group_of:
                    raise ConfigError(f"address {address!r} appears in two partition groups")
                group_of[address] = index
        handle = self._add_fault(_LinkFault("partition", group_of=group_of))
        self._partitions[handle] = group_of
        listed = [sorted(a for a, i in group_of.items() if i == index) for index in range(len(groups))]
        self._trace("fault.partition", groups=listed, handle=handle)
        self._release_held()
        return handle

    def cut(self, src: str, dst: str, one_way: bool = True) -> int:
        """Stop traffic from ``src`` to ``dst`` (and back too unless ``one_way``) until ``heal``;
        returns the fault's handle."""
        links = ((src, dst),) if one_way else ((src, dst), (dst, src))
        handle = self._add_fault(_LinkFault("cut", links=links))
        self._cuts.update(links)
        self._trace("fault.cut", src=src, dst=dst, one_way=one_way, handle=handle)
        return handle

    def isolate(self, address: str) -> int:
        """Cut ``address`` off from every other address, including ones registered later, until
        ``heal``; returns the fault's handle."""
        handle = self._add_fault(_LinkFault("isolate", address=address))
        self._isolated[address] += 1
        self._trace("fault.isolate", address=address, handle=handle)
        return handle

    def _add_fault(self, fault: _LinkFault) -> int:
        self._next_fault += 1
        self._faults[self._next_fault] = fault
        return self._next_fault

    def heal(self, handle: int | None = None) -> None:
        """End the fault ``handle`` (a partition, cut or isolation), or with no handle every one of
        them (loss bursts end on their own). Healing a fault that already ended does nothing."""
        handles = list(self._faults) if handle is None else [handle]
        for number in handles:
            fault = self._faults.pop(number, None)
            if fault is None:
                continue
            if fault.kind == "partition":
                del self._partitions[number]
            elif fault.kind == "cut":
                self._cuts.subtract(fault.links)
                for link in fault.links:
                    if self._cuts[link] <= 0:
                        del self._cuts[link]
            else:
                self._isolated[fault.address] -= 1
                if self._isolated[fault.address] <= 0:
                    del self._isolated[fault.address]
        if handle is None:
            self._trace("fault.heal")
        else:
            self._trace("fault.heal", handle=handle)
        self._release_held()

    def loss_burst(self, probability: float, duration_ms: float) -> None:
        """For ``duration_ms``, lose datagrams with extra ``probability`` (independent of base loss)."""
        _check_probability("probability", probability)
        _check_non_negative("duration_ms", duration_ms)
        end = self._env.now + duration_ms
        self._burst_ends = [(e, p) for e, p in self._burst_ends if e > self._env.now]
        self._burst_ends.append((end, probability))
        self._trace("fault.loss_burst", probability=probability, duration_ms=duration_ms)

    def pause(self, address: str) -> None:
        """Queue everything arriving for ``address`` until ``resume`` (a frozen process)."""
        endpoint = self._endpoints.get(address)
        if endpoint is not None:
            endpoint.paused = True
        self._trace("fault.pause", address=address)

    def resume(self, address: str) -> None:
        """Hand over, in arrival order, everything queued while ``address`` was paused."""
        self._trace("fault.resume", address=address)
        endpoint = self._endpoints.get(address)
        if endpoint is None or not endpoint.paused:
            return
        endpoint.paused = False
        while endpoint.queue and not endpoint.paused and endpoint.up:
            src, message = endpoint.queue.popleft()
            self.stats["queued"] -= 1
            self._hand_over(endpoint, src, address, message)

    def crash(self, address: str) -> None:
        """``address`` goes down: its queue is lost and in-flight traffic to or from it is dropped.

        The host re-registers when it restarts (a new incarnation). Memory loss is the host's business.
        """
        self._trace("fault.crash", address=address)
        self._incarnations[address] = self._incarnations.get(address, 0) + 1
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            return
        if endpoint.queue:
            self.stats["dropped"] += len(endpoint.queue)
            self.drops["paused_queue_crashed"] += len(endpoint.queue)
            self.stats["queued"] -= len(endpoint.queue)
            endpoint.queue.clear()
        endpoint.up = False
        endpoint.paused = False

    # ---------------------------------------------------------------- tracing

    def _trace(self, event: str, **fields: Any) -> None:
        self._tracer.record(self._env.now, self._name, event, fields)
