"""The ZooKeeper model and its client behave like ZooKeeper and kazoo where DiMint depends on it.

How: a SimPy environment holds a seeded network, one ``CoordServiceModel`` and standalone
``SimCoordClient``s (``register_address=True``) whose ``deliver`` appends the core inputs they
produce to a list. Tests issue ``Coord*`` effects, run simulated time forward and assert on the
delivered inputs: tree semantics (versions, sequential names, ephemerals, errors), one-shot watches
and their ordering relative to reads, session expiry on crash and clean close, the kazoo state
sequence under partitions (SUSPENDED, then CONNECTED with the same session if healed in time, or
LOST and a new session if not), outages and pauses, and a conditional-write race.
"""

from __future__ import annotations

import pytest
import simpy

from dimint.core.effects import (
    CoordCreate,
    CoordDelete,
    CoordErrorKind,
    CoordList,
    CoordRead,
    CoordResult,
    CoordSet,
    Input,
    SessionState,
    SessionStateChanged,
    WatchFired,
    WatchKind,
)
from dimint.core.errors import LocalProtocolError
from dimint.core.seeding import derive_rng
from dimint.sim.coord import CoordServiceModel, SimCoordClient
from dimint.sim.network import Latency, NetworkOptions, SimNetwork
from dimint.sim.trace import Tracer

TIMEOUT_MS = 3000


class World:
    def __init__(
        self, seed: int = 1, latency: Latency | None = None, link_latency: dict | None = None
    ) -> None:
        self.env = simpy.Environment()
        self.tracer = Tracer()
        options = NetworkOptions(
            latency=latency or Latency("uniform", base_ms=1.0, jitter_ms=1.0), link_latency=link_latency or {}
        )
        self.network = SimNetwork(self.env, options, derive_rng(seed, "net"), self.tracer)
        self.zk = CoordServiceModel(self.env, self.network, self.tracer)
        self.seed = seed
        self.inputs: dict[str, list[tuple[float, Input]]] = {}
        self._request_id = 0

    def client(self, address: str, timeout_ms: int = TIMEOUT_MS, start: bool = True) -> SimCoordClient:
        log = self.inputs.setdefault(address, [])
        client = SimCoordClient(
            self.env,
            self.network,
            "zk",
            address,
            timeout_ms,
            lambda event: log.append((self.env.now, event)),
            derive_rng(self.seed, "coord", address),
            self.tracer,
            register_address=True,
        )
        if start:
            client.start()
            self.run(20)
        return client

    def run(self, ms: float) -> None:
        self.env.run(until=self.env.now + ms)

    def next_id(self) -> int:
        self._request_id += 1
        return self._request_id

    def call(self, client: SimCoordClient, effect_type: type, *args, **kwargs) -> CoordResult:
        request_id = self.next_id()
        client.execute(effect_type(request_id, *args, **kwargs))
        self.run(20)
        return self.result(client.owner_address, request_id)

    def result(self, address: str, request_id: int) -> CoordResult:
        found = [
            e for _, e in self.inputs[address] if isinstance(e, CoordResult) and e.request_id == request_id
        ]
        assert len(found) == 1, found
        return found[0]

    def events(self, address: str, kind: type) -> list:
        return [e for _, e in self.inputs[address] if isinstance(e, kind)]

    def states(self, address: str) -> list[tuple[SessionState, int]]:
        return [(e.state, e.session_id) for e in self.events(address, SessionStateChanged)]


def test_session_opens_with_connected() -> None:
    world = World()
    a = world.client("a")
    assert world.states("a") == [(SessionState.CONNECTED, a.session_id)]
    assert world.zk.session_alive(a.session_id)


def test_create_read_set_delete_versions_and_errors() -> None:
    world = World()
    a = world.client("a")
    created = world.call(a, CoordCreate, "/cfg/map", b"v0")
    assert (created.error, created.path, created.version) == (None, "/cfg/map", 0)
    assert world.call(a, CoordCreate, "/cfg/map", b"again").error is CoordErrorKind.NODE_EXISTS
    assert world.call(a, CoordCreate, "/nope/x", b"", make_parents=False).error is CoordErrorKind.NO_NODE
    read = world.call(a, CoordRead, "/cfg/map")
    assert (read.data, read.version) == (b"v0", 0)
    assert world.call(a, CoordSet, "/cfg/map", b"v1", 0).version == 1
    stale = world.call(a, CoordSet, "/cfg/map", b"lost", 0)
    assert stale.error is CoordErrorKind.BAD_VERSION
    assert world.call(a, CoordSet, "/cfg/map", b"v2", -1).version == 2
    assert world.call(a, CoordRead, "/cfg/map").data == b"v2"
    assert world.call(a, CoordSet, "/missing", b"", -1).error is CoordErrorKind.NO_NODE
    assert world.call(a, CoordDelete, "/cfg", -1).error is CoordErrorKind.NOT_EMPTY
    assert world.call(a, CoordDelete, "/cfg/map", 1).error is CoordErrorKind.BAD_VERSION
    assert world.call(a, CoordDelete, "/cfg/map", 2).error is None
    assert world.call(a, CoordRead, "/cfg/map").error is CoordErrorKind.NO_NODE
    assert world.call(a, CoordDelete, "/cfg/map").error is CoordErrorKind.NO_NODE
    assert world.call(a, CoordList, "/cfg").children == ()
    assert world.call(a, CoordList, "/nothing").error is CoordErrorKind.NO_NODE


def test_sequential_names_and_sorted_children() -> None:
    world = World()
    a = world.client("a")
    paths = [world.call(a, CoordCreate, "/election/n-", b"", sequential=True).path for _ in range(3)]
    assert paths == ["/election/n-0000000000", "/election/n-0000000001", "/election/n-0000000002"]
    world.call(a, CoordDelete, paths[1])
    world.call(a, CoordCreate, "/election/aaa", b"")
    # Like ZooKeeper, the suffix is the parent's cversion, which every child create/delete bumps.
    assert world.call(a, CoordCreate, "/election/n-", b"", sequential=True).path == "/election/n-0000000005"
    listing = world.call(a, CoordList, "/election")
    assert listing.children == ("aaa", "n-0000000000", "n-0000000002", "n-0000000005")


def test_bad_paths_and_children_of_ephemerals_fail_loudly() -> None:
    world = World()
    a = world.client("a")
    for path in ["relative", "/trailing/", "/a//b", "/a/../b"]:
        with pytest.raises(LocalProtocolError):
            a.execute(CoordRead(world.next_id(), path))
    world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
    a.execute(CoordCreate(world.next_id(), "/members/a/child", b""))
    with pytest.raises(LocalProtocolError, match="ephemeral"):
        world.run(20)


def test_ephemerals_vanish_at_session_expiry_after_crash() -> None:
    world = World()
    a = world.client("a")
    b = world.client("b")
    world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
    assert world.zk.ephemeral_owner("/members/a") == a.session_id
    world.call(b, CoordList, "/members", watch=True)
    crashed_at = world.env.now
    a.crash()
    world.run(TIMEOUT_MS - 200)
    assert world.zk.get("/members/a") is not None
    world.run(TIMEOUT_MS)
    assert world.zk.get("/members/a") is None
    assert not world.zk.session_alive(a.session_id)
    [(fired_at, fired)] = [(t, e) for t, e in world.inputs["b"] if isinstance(e, WatchFired)]
    assert fired == WatchFired("/members", WatchKind.CHILD)
    # Expiry is judged from the last message heard, at most one ping interval before the crash.
    assert crashed_at + TIMEOUT_MS * 2 / 3 - 5 <= fired_at <= crashed_at + TIMEOUT_MS + 5


def test_ephemerals_vanish_at_once_on_clean_stop() -> None:
    world = World()
    a = world.client("a")
    world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
    a.stop()
    world.run(10)
    assert world.zk.get("/members/a") is None
    assert world.zk.sessions() == []


def test_watches_are_one_shot() -> None:
    world = World()
    a = world.client("a")
    b = world.client("b")
    world.call(a, CoordCreate, "/n", b"0")
    world.call(a, CoordRead, "/n", watch=True)
    world.call(a, CoordList, "/", watch=True)
    world.call(a, CoordRead, "/later", watch=True)  # NO_NODE, but arms an exists-watch
    for value in (b"1", b"2"):
        world.call(b, CoordSet, "/n", value, -1)
    world.call(b, CoordCreate, "/later", b"")
    world.call(b, CoordCreate, "/other", b"")
    world.call(b, CoordDelete, "/later")
    assert world.events("a", WatchFired) == [
        WatchFired("/n", WatchKind.CHANGED),
        WatchFired("/later", WatchKind.CREATED),
        WatchFired("/", WatchKind.CHILD),
    ]
    assert world.events("b", WatchFired) == []


def test_delete_fires_deleted_once_for_data_and_child_watch() -> None:
    world = World()
    a = world.client("a")
    b = world.client("b")
    world.call(b, CoordCreate, "/dir", b"")
    world.call(a, CoordRead, "/dir", watch=True)
    world.call(a, CoordList, "/dir", watch=True)
    world.call(b, CoordDelete, "/dir")
    assert world.events("a", WatchFired) == [WatchFired("/dir", WatchKind.DELETED)]


def test_watch_event_arrives_before_any_later_read_that_observes_the_change() -> None:
    # The writer's link is slower, so some of a's reads reach the server before the write, some after.
    world = World(
        latency=Latency("lognormal", base_ms=1.0, sigma=0.5),
        link_latency={("b", "zk"): Latency("constant", base_ms=5.0)},
    )
    a = world.client("a")
    b = world.client("b")
    world.call(b, CoordCreate, "/n", b"old")
    world.call(a, CoordRead, "/n", watch=True)
    b.execute(CoordSet(world.next_id(), "/n", b"new", -1))
    for _ in range(40):  # a stream of reads racing the write
        a.execute(CoordRead(world.next_id(), "/n"))
        world.run(0.25)
    world.run(50)
    log = [e for _, e in world.inputs["a"]]
    watch_index = log.index(WatchFired("/n", WatchKind.CHANGED))
    new_reads = [i for i, e in enumerate(log) if isinstance(e, CoordResult) and e.data == b"new"]
    old_reads = [i for i, e in enumerate(log) if isinstance(e, CoordResult) and e.data == b"old"]
    assert new_reads and old_reads[1:], "the race did not happen; adjust timing"
    assert watch_index < min(new_reads)
    assert max(old_reads) < watch_index
    results = [e.request_id for e in log if isinstance(e, CoordResult)]
    assert results == sorted(results), "results must come back in request order"


def test_partition_healed_in_time_keeps_the_session() -> None:
    world = World()
    a = world.client("a")
    b = world.client("b")
    session = a.session_id
    world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
    world.call(a, CoordRead, "/members/a", watch=True)
    world.network.partition([["a"], ["zk"]])
    world.run(TIMEOUT_MS * 2 / 3 + 50)
    assert world.states("a")[-1] == (SessionState.SUSPENDED, session)
    failed = world.call(a, CoordRead, "/members/a")
    assert failed.error is CoordErrorKind.CONNECTION_LOSS
    world.call(b, CoordSet, "/members/a", b"changed while away", -1)
    world.network.heal()
    world.run(TIMEOUT_MS / 2)
    assert world.states("a") == [
        (SessionState.CONNECTED, session),
        (SessionState.SUSPENDED, session),
        (SessionState.CONNECTED, session),
    ]
    assert world.zk.get("/members/a") is not None
    # The watch survived the reconnect and reports the change made while we were away, after CONNECTED.
    log = [e for _, e in world.inputs["a"]]
    assert log.index(WatchFired("/members/a", WatchKind.CHANGED)) > log.index(
        SessionStateChanged(SessionState.CONNECTED, session), 1
    )
    assert world.call(a, CoordRead, "/members/a").data == b"changed while away"


def test_partition_past_the_timeout_loses_the_session() -> None:
    world = World()
    a = world.client("a")
    session = a.session_id
    world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
    world.call(a, CoordList, "/members", watch=True)
    in_flight = world.next_id()
    world.network.partition([["a"], ["zk"]])
    a.execute(CoordRead(in_flight, "/members/a"))
    world.run(TIMEOUT_MS * 2)
    assert world.states("a")[-1] == (SessionState.SUSPENDED, session)  # it cannot know yet
    assert world.result("a", in_flight).error is CoordErrorKind.CONNECTION_LOSS
    assert world.zk.get("/members/a") is None
    world.network.heal()
    world.run(TIMEOUT_MS)
    states = world.states("a")
    assert states[-3:-1] == [(SessionState.SUSPENDED, session), (SessionState.LOST, session)]
    assert states[-1][0] is SessionState.CONNECTED and states[-1][1] not in (0, session)
    assert a.session_id == states[-1][1] and world.zk.session_alive(a.session_id)
    # Watches die with the session: the ephemeral's deletion is never reported to the new one.
    assert world.events("a", WatchFired) == []


def test_requests_during_suspension_fail_and_after_lost_report_expiry() -> None:
    world = World()
    a = world.client("a")
    world.network.isolate("a")
    world.run(TIMEOUT_MS * 2 / 3 + 50)
    assert world.call(a, CoordRead, "/").error is CoordErrorKind.CONNECTION_LOSS
    world.network.heal()
    world.run(TIMEOUT_MS)
    assert a.connected
    assert world.call(a, CoordRead, "/").error is None


def test_conditional_set_race_has_exactly_one_winner() -> None:
    for seed in range(5):
        world = World(seed=seed, latency=Latency("lognormal", base_ms=2.0, sigma=0.5))
        clients = [world.client(name) for name in ("a", "b", "c")]
        world.call(clients[0], CoordCreate, "/map", b"epoch-0")
        ids = {}
        for client in clients:
            ids[client.owner_address] = world.next_id()
            client.execute(CoordSet(ids[client.owner_address], "/map", client.owner_address.encode(), 0))
        world.run(50)
        outcomes = {address: world.result(address, rid) for address, rid in ids.items()}
        winners = [a for a, r in outcomes.items() if r.error is None]
        assert len(winners) == 1
        assert all(r.error is CoordErrorKind.BAD_VERSION for a, r in outcomes.items() if a not in winners)
        assert world.zk.get("/map") == (winners[0].encode(), 1)


def test_outage_suspends_clients_but_expires_no_session() -> None:
    world = World()
    a = world.client("a")
    session = a.session_id
    world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
    world.zk.outage(TIMEOUT_MS * 2)  # longer than the timeout: still no expiry, ZooKeeper was down
    world.run(TIMEOUT_MS * 2 + TIMEOUT_MS / 2)
    assert world.states("a") == [
        (SessionState.CONNECTED, session),
        (SessionState.SUSPENDED, session),
        (SessionState.CONNECTED, session),
    ]
    assert world.zk.get("/members/a") is not None and not world.zk.is_down


def test_paused_client_session_expires_and_recovers_after_resume() -> None:
    world = World()
    a = world.client("a")
    session = a.session_id
    a.pause()
    world.run(TIMEOUT_MS * 2)
    assert world.states("a") == [(SessionState.CONNECTED, session)]  # frozen: it noticed nothing
    assert not world.zk.session_alive(session)
    a.resume()
    world.run(TIMEOUT_MS)
    states = world.states("a")
    assert states[1:3] == [(SessionState.SUSPENDED, session), (SessionState.LOST, session)]
    assert states[3][0] is SessionState.CONNECTED and states[3][1] != session


def test_short_pause_is_invisible() -> None:
    world = World()
    a = world.client("a")
    a.pause()
    world.run(TIMEOUT_MS / 2)
    a.resume()
    world.run(TIMEOUT_MS * 2)
    assert world.states("a") == [(SessionState.CONNECTED, a.session_id)]


def test_expire_session_fault_and_determinism() -> None:
    def scenario(seed: int) -> str:
        world = World(seed=seed, latency=Latency("lognormal", base_ms=2.0, sigma=0.5))
        a = world.client("a")
        b = world.client("b")
        world.call(a, CoordCreate, "/members/a", b"", ephemeral=True)
        world.call(b, CoordList, "/members", watch=True)
        world.zk.expire_session(a.session_id)
        world.run(TIMEOUT_MS)
        assert world.states("a")[-2][0] is SessionState.LOST
        assert world.events("b", WatchFired) == [WatchFired("/members", WatchKind.CHILD)]
        return world.tracer.digest()

    assert scenario(3) == scenario(3)
    assert scenario(3) != scenario(4)
