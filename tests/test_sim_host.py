"""``SimHost`` feeds a machine its inputs in order and executes its effects as documented.

How: toy machines defined here stand in for DiMint's state machines. ``Scripted`` records every input
with its ``now_ms`` and answers with effects produced by a per-test function; ``PingPong`` is a
tiny two-host protocol with a counter in memory, a periodic timer and an ephemeral membership znode.
Tests run hosts on a seeded network with a ``CoordServiceModel`` and assert on what the machines saw:
timers replaced, cancelled and stale firings ignored; send/receive; coordination results;
crash/restart losing memory and the session; pause/resume delaying inputs; InvariantViolation and
other exceptions leaving ``env.run()`` unchanged; the same seed giving the same trace digest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import simpy

from dimint.core.effects import (
    CancelTimer,
    CoordCreate,
    CoordResult,
    Effect,
    Input,
    Receive,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
    Trace,
)
from dimint.core.errors import InvariantViolation, LocalProtocolError
from dimint.core.seeding import derive_rng
from dimint.sim.coord import CoordServiceModel
from dimint.sim.host import SimHost
from dimint.sim.network import Latency, NetworkOptions, SimNetwork
from dimint.sim.trace import Tracer

TIMEOUT_MS = 3000


class Scripted:
    """Records every input; ``script(input, now_ms)`` decides the effects."""

    def __init__(self, script: Callable[[Input, int], list[Effect]]) -> None:
        self.script = script
        self.seen: list[tuple[int, Input]] = []

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        self.seen.append((now_ms, event))
        return self.script(event, now_ms)

    def inputs(self, kind: type) -> list[tuple[int, Input]]:
        return [(t, e) for t, e in self.seen if isinstance(e, kind)]


@dataclass(frozen=True)
class Ping:
    count: int


@dataclass(frozen=True)
class Pong:
    count: int


class PingPong:
    """Pings its peer every 10 ms; counts pongs in memory; registers an ephemeral member znode."""

    def __init__(self, address: str, peer: str) -> None:
        self.address = address
        self.peer = peer
        self.pongs = 0
        self.session_ids: list[int] = []

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        if isinstance(event, Start):
            return [SetTimer("ping", now_ms + 10), Trace("pingpong.start", {"address": self.address})]
        if isinstance(event, TimerFired):
            return [Send(self.peer, Ping(self.pongs)), SetTimer("ping", now_ms + 10)]
        if isinstance(event, Receive) and isinstance(event.message, Ping):
            return [Send(event.source, Pong(event.message.count))]
        if isinstance(event, Receive) and isinstance(event.message, Pong):
            self.pongs += 1
            return []
        if isinstance(event, SessionStateChanged) and event.state is SessionState.CONNECTED:
            self.session_ids.append(event.session_id)
            return [CoordCreate(len(self.session_ids), f"/members/{self.address}", b"", ephemeral=True)]
        return []


class World:
    def __init__(self, seed: int = 1) -> None:
        self.env = simpy.Environment()
        self.tracer = Tracer()
        options = NetworkOptions(latency=Latency("uniform", base_ms=1.0, jitter_ms=1.0))
        self.network = SimNetwork(self.env, options, derive_rng(seed, "net"), self.tracer)
        self.zk = CoordServiceModel(self.env, self.network, self.tracer)
        self.seed = seed

    def host(
        self, address: str, factory: Callable[[], object], *, coord: bool = True, delay_ms: float = 0.0
    ) -> SimHost:
        return SimHost(
            self.env,
            address,
            factory,
            self.network,
            "zk" if coord else None,
            TIMEOUT_MS,
            self.tracer,
            derive_rng(self.seed, "host", address),
            processing_delay_ms=delay_ms,
        )

    def run(self, ms: float) -> None:
        self.env.run(until=self.env.now + ms)


def test_start_comes_first_then_the_session() -> None:
    world = World()
    machine = Scripted(lambda e, now: [])
    host = world.host("n1", lambda: machine)
    host.start()
    world.run(50)
    assert isinstance(machine.seen[0][1], Start)
    assert machine.seen[1][1] == SessionStateChanged(SessionState.CONNECTED, host.coord.session_id)


def test_timers_fire_replace_and_cancel() -> None:
    world = World()

    def script(event: Input, now: int) -> list[Effect]:
        if isinstance(event, Start):
            return [
                SetTimer("a", 10),
                SetTimer("a", 30),
                SetTimer("b", 20),
                SetTimer("c", 25),
                SetTimer("past", -5),
            ]
        if event == TimerFired("b"):
            return [CancelTimer("c")]
        return []

    machine = Scripted(script)
    world.host("n1", lambda: machine, coord=False).start()
    world.run(100)
    assert [(t, e.key) for t, e in machine.inputs(TimerFired)] == [(0, "past"), (20, "b"), (30, "a")]


def test_a_timer_that_came_due_but_was_cancelled_before_processing_is_ignored() -> None:
    world = World()

    def script(event: Input, now: int) -> list[Effect]:
        if isinstance(event, Start):
            return [SetTimer("t", 12)]
        if isinstance(event, Receive):
            return [CancelTimer("t"), SetTimer("u", now + 1)]
        return []

    machine = Scripted(script)
    # Each input takes 5 ms, so the message arriving at ~10 is handled at ~15, after "t" came due at 12.
    host = world.host("n1", lambda: machine, coord=False, delay_ms=5.0)
    host.start()
    world.network.register("peer", lambda s, m: None)
    world.run(8)
    world.network.send("peer", "n1", "cancel it")
    world.run(100)
    assert [e.key for _, e in machine.inputs(TimerFired)] == ["u"]
    assert world.tracer.counters["host.timer_stale"] == 1


def test_ping_pong_send_receive_and_coordination() -> None:
    world = World()
    a = world.host("a", lambda: PingPong("a", "b"))
    b = world.host("b", lambda: PingPong("b", "a"))
    a.start()
    b.start()
    world.run(1000)
    assert 95 <= a.machine.pongs <= 100 and 95 <= b.machine.pongs <= 100
    assert world.zk.get_children("/members") == ("a", "b")
    assert world.zk.ephemeral_owner("/members/a") == a.coord.session_id


def test_crash_loses_memory_and_session_restart_starts_fresh() -> None:
    world = World()
    a = world.host("a", lambda: PingPong("a", "b"))
    b = world.host("b", lambda: PingPong("b", "a"))
    a.start()
    b.start()
    world.run(500)
    old_session = a.coord.session_id
    a.crash()
    assert a.machine is None and a.coord is None and not world.network.is_up("a")
    pongs_before = b.machine.pongs
    world.run(500)
    assert b.machine.pongs == pongs_before  # nobody answers a crashed host
    assert world.zk.get("/members/a") is not None  # the session has not expired yet
    world.run(TIMEOUT_MS)
    assert world.zk.get("/members/a") is None
    a.restart()
    world.run(200)
    assert a.incarnation == 2
    assert 15 <= a.machine.pongs <= 20  # a fresh counter: memory did not survive
    assert a.machine.session_ids == [a.coord.session_id] and a.coord.session_id != old_session
    assert world.zk.ephemeral_owner("/members/a") == a.coord.session_id


def test_clean_stop_removes_membership_at_once() -> None:
    world = World()
    a = world.host("a", lambda: PingPong("a", "b"))
    a.start()
    world.run(100)
    a.stop()
    world.run(10)
    assert world.zk.get("/members/a") is None and a.machine is None


def test_short_pause_delays_inputs_and_timers_fire_late() -> None:
    world = World()

    def script(event: Input, now: int) -> list[Effect]:
        return [SetTimer("t", now + 100)] if isinstance(event, Start) else []

    machine = Scripted(script)
    host = world.host("n1", lambda: machine)
    host.start()
    world.network.register("peer", lambda s, m: None)
    world.run(20)
    seen_before = len(machine.seen)
    host.pause()
    world.network.send("peer", "n1", "one")
    world.network.send("peer", "n1", "two")
    world.run(500)
    assert len(machine.seen) == seen_before
    host.resume()
    world.run(1)
    late = machine.seen[seen_before:]
    assert [e for _, e in late] == [TimerFired("t"), Receive("peer", "one"), Receive("peer", "two")]
    assert all(t == 520 for t, _ in late)
    world.run(TIMEOUT_MS * 2)
    assert not machine.inputs(SessionStateChanged)[1:]  # half a second is well within the session


def test_long_pause_loses_the_session_after_resume() -> None:
    world = World()
    machine = Scripted(lambda e, now: [])
    host = world.host("n1", lambda: machine)
    host.start()
    world.run(20)
    session = host.coord.session_id
    host.pause()
    world.run(TIMEOUT_MS * 2)
    assert not world.zk.session_alive(session)
    host.resume()
    world.run(100)
    states = [(e.state, e.session_id) for _, e in machine.inputs(SessionStateChanged)]
    distinct = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert distinct[:3] == [
        (SessionState.CONNECTED, session),
        (SessionState.SUSPENDED, session),  # the host's own stall verdict comes first
        (SessionState.LOST, session),
    ]
    assert distinct[3][0] is SessionState.CONNECTED and distinct[3][1] == host.coord.session_id != session


def test_a_stall_within_the_session_fences_first_then_confirms_the_same_session() -> None:
    # Like the real driver: frozen past a third of the session timeout, the host cannot know whether
    # the session survived, so SUSPENDED reaches the machine before the requests that queued up,
    # and a read on the same session then confirms it (CONNECTED with the same session id).
    world = World()
    machine = Scripted(lambda e, now: [])
    host = world.host("n1", lambda: machine)
    host.start()
    world.network.register("peer", lambda s, m: None)
    world.run(20)
    session = host.coord.session_id
    host.pause()
    world.network.send("peer", "n1", "queued")
    world.run(TIMEOUT_MS // 2)
    assert world.zk.session_alive(session)
    host.resume()
    world.run(50)
    after = [e for _, e in machine.seen if not isinstance(e, Start)][1:]  # skip the first CONNECTED
    assert after[0] == SessionStateChanged(SessionState.SUSPENDED, session)
    assert Receive("peer", "queued") in after
    states = [e for e in after if isinstance(e, SessionStateChanged)]
    assert states[-1] == SessionStateChanged(SessionState.CONNECTED, session)
    assert [r.event for r in world.tracer.find("host.session_confirmed")] == ["host.session_confirmed"]


def test_coord_results_come_back_to_the_machine() -> None:
    world = World()

    def script(event: Input, now: int) -> list[Effect]:
        if isinstance(event, SessionStateChanged):
            return [CoordCreate(7, "/jobs/j-", b"x", sequential=True)]
        return []

    machine = Scripted(script)
    world.host("n1", lambda: machine).start()
    world.run(50)
    [(_, result)] = machine.inputs(CoordResult)
    assert result == CoordResult(7, path="/jobs/j-0000000000", version=0)


def test_invariant_violation_propagates_and_is_traced() -> None:
    world = World()

    def script(event: Input, now: int) -> list[Effect]:
        if isinstance(event, TimerFired):
            raise InvariantViolation("two masters for shard 3")
        return [SetTimer("boom", 5)] if isinstance(event, Start) else []

    world.host("n1", lambda: Scripted(script), coord=False).start()
    with pytest.raises(InvariantViolation, match="two masters"):
        world.run(100)
    [record] = world.tracer.find("host.invariant_violation")
    assert record.source == "n1" and record.fields["input"] == {"$type": "TimerFired", "key": "boom"}


def test_other_exceptions_propagate_too() -> None:
    world = World()

    def script(event: Input, now: int) -> list[Effect]:
        raise KeyError("bug")

    world.host("n1", lambda: Scripted(script), coord=False).start()
    with pytest.raises(KeyError):
        world.run(10)
    assert world.tracer.find("host.error")


def test_misused_effects_fail_loudly() -> None:
    world = World()
    world.host("n1", lambda: Scripted(lambda e, now: [CoordCreate(1, "/x")]), coord=False).start()
    with pytest.raises(LocalProtocolError, match="no coordination service"):
        world.run(10)
    world = World()
    world.host("n2", lambda: Scripted(lambda e, now: [object()]), coord=False).start()
    with pytest.raises(LocalProtocolError, match="cannot execute"):
        world.run(10)


def test_trace_effects_and_determinism() -> None:
    def digest(seed: int) -> str:
        world = World(seed)
        hosts = [world.host("a", lambda: PingPong("a", "b")), world.host("b", lambda: PingPong("b", "a"))]
        for host in hosts:
            host.start()
        world.run(300)
        hosts[0].crash()
        world.run(TIMEOUT_MS + 200)
        hosts[0].restart()
        world.run(300)
        assert len(world.tracer.find("pingpong.start")) == 3
        return world.tracer.digest()

    assert digest(11) == digest(11)
    assert digest(11) != digest(12)
