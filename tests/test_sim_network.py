"""The simulated network does what ``NetworkOptions`` and the fault actions say, deterministically.

How: each test builds a SimPy environment with a seeded network and a few registered addresses whose
``deliver`` callbacks record ``(time, source, message)``. Statistical knobs (latency, loss,
duplication) are checked over thousands of messages against tolerant bounds; the seeds are fixed,
so the bounds are not flaky. Ordering, partitions, pauses and crashes are checked exactly. Finally
the same seeded scenario is run twice (same digest) and with another seed (different digest), and
the determinism helpers underneath (``derive_rng`` across processes, the tracer's canonical encoding)
are checked directly.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import simpy

from dimint.core.errors import ConfigError, LocalProtocolError
from dimint.core.seeding import derive_rng
from dimint.sim.network import Latency, NetworkOptions, SimNetwork
from dimint.sim.trace import Tracer


class Recorder:
    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.got: list[tuple[float, str, object]] = []

    def __call__(self, source: str, message: object) -> None:
        self.got.append((self.env.now, source, message))

    @property
    def messages(self) -> list[object]:
        return [m for _, _, m in self.got]


def make(options: NetworkOptions | None = None, seed: int = 1, addresses: tuple[str, ...] = ("a", "b", "c")):
    env = simpy.Environment()
    tracer = Tracer()
    network = SimNetwork(env, options or NetworkOptions(), derive_rng(seed, "net"), tracer)
    recorders = {}
    for address in addresses:
        recorders[address] = Recorder(env)
        network.register(address, recorders[address])
    return env, network, recorders, tracer


def latencies(latency: Latency, count: int = 4000) -> list[float]:
    env, network, rec, _ = make(NetworkOptions(latency=latency, reorder=True))
    for i in range(count):
        network.send("a", "b", i)
    env.run()
    return [t for t, _, _ in rec["b"].got]


def test_constant_latency_is_exact() -> None:
    assert set(latencies(Latency("constant", base_ms=3.0), 50)) == {3.0}


def test_uniform_latency_statistics() -> None:
    samples = latencies(Latency("uniform", base_ms=2.0, jitter_ms=4.0))
    assert min(samples) >= 2.0 and max(samples) <= 6.0
    assert statistics.fmean(samples) == pytest.approx(4.0, abs=0.15)


def test_lognormal_latency_statistics_and_clamp() -> None:
    samples = latencies(Latency("lognormal", base_ms=5.0, sigma=0.5))
    assert statistics.median(samples) == pytest.approx(5.0, rel=0.05)
    assert statistics.fmean(samples) == pytest.approx(5.0 * math.exp(0.125), rel=0.05)
    clamped = latencies(Latency("lognormal", base_ms=5.0, sigma=1.0, min_ms=2.0, max_ms=8.0))
    assert min(clamped) >= 2.0 and max(clamped) <= 8.0


def test_per_link_latency_override() -> None:
    options = NetworkOptions(
        latency=Latency("constant", base_ms=1.0), link_latency={("a", "c"): Latency("constant", base_ms=9.0)}
    )
    env, network, rec, _ = make(options)
    network.send("a", "b", "x")
    network.send("a", "c", "y")
    network.send("c", "a", "z")
    env.run()
    assert [t for t, _, _ in rec["b"].got] == [1.0]
    assert [t for t, _, _ in rec["c"].got] == [9.0]
    assert [t for t, _, _ in rec["a"].got] == [1.0]


def test_loss_probability() -> None:
    env, network, rec, _ = make(NetworkOptions(loss_probability=0.2))
    for i in range(5000):
        network.send("a", "b", i)
    env.run()
    delivered = len(rec["b"].got)
    assert 0.77 * 5000 <= delivered <= 0.83 * 5000
    assert network.drops["loss"] == 5000 - delivered
    assert network.stats["delivered"] == delivered


def test_per_link_loss_and_loss_burst() -> None:
    env, network, rec, _ = make(NetworkOptions(link_loss_probability={("a", "b"): 1.0}))
    network.send("a", "b", 1)
    network.send("a", "c", 2)
    env.run()
    assert rec["b"].got == [] and rec["c"].messages == [2]

    env, network, rec, _ = make()
    network.loss_burst(1.0, duration_ms=50)
    network.send("a", "b", "lost")
    env.run(until=60)
    network.send("a", "b", "kept")
    env.run()
    assert rec["b"].messages == ["kept"]


def test_duplication_probability() -> None:
    env, network, rec, _ = make(NetworkOptions(duplicate_probability=0.1))
    for i in range(5000):
        network.send("a", "b", i)
    env.run()
    duplicated = network.stats["duplicated"]
    assert 0.08 * 5000 <= duplicated <= 0.12 * 5000
    assert len(rec["b"].got) == 5000 + duplicated
    assert set(rec["b"].messages) == set(range(5000))


@pytest.mark.parametrize("duplicate", [0.0, 0.2])
def test_links_are_fifo_without_reordering(duplicate: float) -> None:
    options = NetworkOptions(
        latency=Latency("lognormal", base_ms=5.0, sigma=1.0), duplicate_probability=duplicate
    )
    env, network, rec, _ = make(options)

    def sender(env: simpy.Environment):
        for i in range(2000):
            network.send("a", "b", i)
            network.send("c", "b", -i)
            if i % 3 == 0:
                yield env.timeout(0.5)

    env.process(sender(env))
    env.run()
    from_a = [m for _, s, m in rec["b"].got if s == "a"]
    assert from_a == sorted(from_a)
    assert sorted(set(from_a)) == list(range(2000))


def test_reordering_lets_later_messages_overtake() -> None:
    options = NetworkOptions(latency=Latency("lognormal", base_ms=5.0, sigma=1.0), reorder=True)
    env, network, rec, _ = make(options)
    for i in range(200):
        network.send("a", "b", i)
    env.run()
    assert rec["b"].messages != list(range(200))
    assert sorted(rec["b"].messages) == list(range(200))


def test_partition_groups_and_unlisted_addresses() -> None:
    env, network, rec, _ = make(addresses=("a", "b", "c", "d"))
    network.partition([["a", "b"], ["c"]])
    assert network.reachable("a", "b") and not network.reachable("a", "c") and not network.reachable("c", "b")
    assert network.reachable("d", "a") and network.reachable("c", "d")
    for src, dst in [("a", "b"), ("a", "c"), ("c", "a"), ("d", "c"), ("c", "d")]:
        network.send(src, dst, f"{src}->{dst}")
    env.run()
    assert rec["b"].messages == ["a->b"]
    assert rec["c"].messages == ["d->c"]
    assert rec["a"].messages == []
    assert rec["d"].messages == ["c->d"]
    assert network.drops["partition"] == 2
    network.heal()
    network.send("a", "c", "healed")
    env.run()
    assert rec["c"].messages == ["d->c", "healed"]
    with pytest.raises(ConfigError):
        network.partition([["a"], ["a", "b"]])


def test_one_way_cut_and_isolate() -> None:
    env, network, rec, _ = make()
    network.cut("a", "b")
    network.send("a", "b", "blocked")
    network.send("b", "a", "passes")
    env.run()
    assert rec["b"].messages == [] and rec["a"].messages == ["passes"]
    network.cut("a", "c", one_way=False)
    assert not network.reachable("c", "a")
    network.heal()
    network.isolate("c")
    network.register("late", Recorder(env))
    assert not network.reachable("c", "late") and not network.reachable("a", "c")
    assert network.reachable("a", "late") and network.reachable("c", "c")


def test_cut_at_delivery_time_drops_datagram() -> None:
    env, network, rec, _ = make(NetworkOptions(latency=Latency("constant", base_ms=10.0)))
    network.send("a", "b", "in flight")
    env.run(until=5)
    network.cut("a", "b")
    env.run(until=20)
    assert rec["b"].got == [] and network.drops["partition"] == 1


def test_stream_is_held_across_a_partition_and_never_lost() -> None:
    options = NetworkOptions(
        loss_probability=1.0,
        duplicate_probability=1.0,
        reorder=True,
        latency=Latency("lognormal", base_ms=3.0, sigma=1.0),
    )
    env, network, rec, _ = make(options)
    for i in range(5):
        network.send("a", "b", i, reliable=True)
    env.run(until=1)
    network.partition([["a"], ["b"]])
    for i in range(5, 10):
        network.send("a", "b", i, reliable=True)
    env.run(until=1000)
    held_until_heal = list(rec["b"].messages)
    network.heal()
    env.run()
    assert rec["b"].messages == list(range(10))
    assert all(t >= 1000 for t, _, m in rec["b"].got if m not in held_until_heal)
    assert network.stats["duplicated"] == 0


def test_pause_queues_and_resume_delivers_in_order() -> None:
    env, network, rec, _ = make()
    network.pause("b")
    for i in range(5):
        network.send("a", "b", i)
        network.send("c", "b", 100 + i, reliable=True)
    env.run(until=100)
    assert rec["b"].got == []
    network.resume("b")
    assert [t for t, _, _ in rec["b"].got] == [100] * 10
    from_a = [m for _, s, m in rec["b"].got if s == "a"]
    from_c = [m for _, s, m in rec["b"].got if s == "c"]
    assert from_a == list(range(5)) and from_c == [100 + i for i in range(5)]


def test_crash_drops_queue_and_in_flight_traffic_both_ways() -> None:
    env, network, rec, _ = make(NetworkOptions(latency=Latency("constant", base_ms=10.0)))
    network.pause("b")
    network.send("a", "b", "queued")
    env.run(until=15)
    network.send("a", "b", "in flight to b")
    network.send("b", "c", "in flight from b", reliable=True)
    network.crash("b")
    network.send("a", "b", "to a dead host")
    network.register("b", rec["b"])  # a restart: a new incarnation
    env.run()
    assert rec["b"].got == [] and rec["c"].got == []
    assert network.drops["paused_queue_crashed"] == 1
    assert network.drops["destination_down"] == 1
    assert network.drops["crashed"] == 1 and network.drops["source_crashed"] == 1
    network.send("a", "b", "after restart")
    env.run()
    assert rec["b"].messages == ["after restart"]


def test_registration_rules() -> None:
    env, network, rec, _ = make()
    with pytest.raises(LocalProtocolError):
        network.register("a", rec["a"])
    network.unregister("a")
    network.send("b", "a", "nobody home")
    network.send("b", "zzz", "unknown")
    env.run()
    assert network.drops["unknown_destination"] == 2
    assert network.addresses() == ["b", "c"]


@pytest.mark.parametrize(
    "options",
    [
        {"loss_probability": 1.5},
        {"duplicate_probability": -0.1},
        {"latency": Latency("gaussian")},
        {"latency": Latency("uniform", base_ms=-1.0)},
        {"latency": Latency("constant", min_ms=5.0, max_ms=1.0)},
        {"link_latency": {"a": Latency()}},
        {"link_loss_probability": {("a", "b"): 2.0}},
        {"reorder": "yes"},
    ],
)
def test_options_are_validated(options: dict) -> None:
    with pytest.raises(ConfigError):
        NetworkOptions(**options)


def run_random_traffic(seed: int) -> str:
    options = NetworkOptions(
        latency=Latency("lognormal", base_ms=2.0, sigma=0.7),
        loss_probability=0.05,
        duplicate_probability=0.05,
        reorder=True,
    )
    env, network, _, tracer = make(options, seed=seed)
    traffic = derive_rng(seed, "traffic")

    def chatter(env: simpy.Environment):
        for i in range(300):
            src, dst = traffic.sample(["a", "b", "c"], 2)
            network.send(src, dst, {"n": i, "payload": b"x" * (i % 7)}, reliable=i % 5 == 0)
            if i == 100:
                network.partition([["a"], ["b", "c"]])
            if i == 200:
                network.heal()
            yield env.timeout(traffic.expovariate(1.0))

    env.process(chatter(env))
    env.run()
    return tracer.digest()


def test_same_seed_same_digest_other_seed_other_digest() -> None:
    assert run_random_traffic(7) == run_random_traffic(7)
    assert run_random_traffic(7) != run_random_traffic(8)


def test_derive_rng_is_stable_across_processes() -> None:
    """The seed material must not depend on Python's per-process hash salt."""
    code = "from dimint.core.seeding import derive_rng; print(derive_rng(42, 'host', 'n1', 3).random())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2")
    }
    assert outputs == {f"{derive_rng(42, 'host', 'n1', 3).random()}\n"}
    assert derive_rng(42, "a").random() != derive_rng(42, "b").random()


def test_tracer_canonical_encoding_sink_and_refusals() -> None:
    lines: list[str] = []
    tracer = Tracer(keep_events=2, sink=lines.append)
    tracer.record(1, "x", "e", {"b": {2, 1}, "a": b"\x00k", "c": Latency("constant")})
    tracer.record(2.5, "x", "e")
    tracer.record(3, "y", "f")
    assert [e.time_ms for e in tracer.events] == [2.5, 3.0]
    assert json.loads(lines[0])["b"] == [1, 2] and json.loads(lines[0])["c"]["$type"] == "Latency"
    assert tracer.counters["e"] == 2 and tracer.records == 3
    other = Tracer(keep_events=0)
    other.record(1, "x", "e", {"a": b"\x00k", "c": Latency("constant"), "b": {1, 2}})
    other.record(2.5, "x", "e")
    other.record(3, "y", "f")
    assert other.digest() == tracer.digest() and other.events == []
    with pytest.raises(TypeError, match="deterministically"):
        tracer.record(4, "x", "bad", {"thing": object()})


def test_each_fault_heals_alone_and_overlapping_faults_keep_their_windows() -> None:
    """A partition healing must not end an isolation (or a cut) that is still scheduled: each call
    returns a handle, and ``heal(handle)`` undoes that fault only."""
    _env, network, _rec, _ = make(addresses=("a", "b", "c", "d"))
    partition = network.partition([["a"], ["b", "c", "d"]])
    isolation = network.isolate("c")
    cut = network.cut("d", "b")
    second_partition = network.partition([["a", "b"], ["d"]])
    assert (
        not network.reachable("a", "b")
        and not network.reachable("b", "c")
        and not network.reachable("d", "b")
    )
    network.heal(partition)
    assert network.reachable("a", "b")  # the second partition puts a and b together
    assert not network.reachable("a", "c") and not network.reachable("c", "d")  # still isolated
    assert not network.reachable("d", "b") and network.reachable("b", "d") is False  # cut + partition 2
    network.heal(second_partition)
    assert network.reachable("b", "d") and not network.reachable("d", "b")  # the one-way cut is left
    network.heal(partition)  # healing twice does nothing
    assert not network.reachable("b", "c")
    network.heal(isolation)
    assert network.reachable("b", "c") and not network.reachable("d", "b")
    network.heal(cut)
    assert all(network.reachable(x, y) for x in "abcd" for y in "abcd")


def test_the_same_address_isolated_twice_stays_isolated_until_both_end() -> None:
    _env, network, _rec, _ = make()
    first, second = network.isolate("a"), network.isolate("a")
    network.heal(first)
    assert not network.reachable("a", "b")
    network.heal(second)
    assert network.reachable("a", "b")
    network.isolate("a")
    network.cut("b", "c")
    network.heal()  # no handle: everything
    assert network.reachable("a", "b") and network.reachable("b", "c")
