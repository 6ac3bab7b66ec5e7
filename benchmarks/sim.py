"""How fast the simulator runs a realistic cluster, next to a bare SimPy loop, and the checker's speed.

Usage: ``python benchmarks/sim.py [--quick] [--profile]``

What it measures, and why a bare SimPy loop is the baseline: every simulated event DiMint processes
is a SimPy event (a message delivery, a timer, a host draining one input), so a loop of processes
doing nothing but ``yield env.timeout(random delay)`` is the least a SimPy event can cost in this
interpreter. The ratio says how much of that speed the cluster keeps once each event also runs a
state machine, the network and fault models and the hashed trace. Target: realistic >= 0.5x bare.

* Realistic: ``run_scenario`` on 3 shards x 3 copies (2 slaves each), 3 Overlords, 16 clients,
  random faults at 0.5/s; safety phase 10 s of simulated time after a 3 s settle (3 s with
  ``--quick``), then heal, liveness, readback and the history check. Wall time is the whole
  ``run_scenario`` call; the share spent inside ``env.run`` (the event loop alone, without building
  the cluster and checking the history) is shown too.
* Events are counted as ``simpy.core.Environment.step`` calls that processed an event. Counting
  slows the loop down, so the count comes from one extra, instrumented run and the timed runs are
  left untouched: a run is a pure function of (scenario, seed), and the script checks that every
  timed run ends with the counted run's trace digest. Trace records and client operations per wall
  second come from the run's summary.
* Bare: 100 processes in a loop of ``yield env.timeout(uniform(0, 2))``, as many events as the
  realistic run but at least 300,000, counted the same way.
* Checker: ``check_linearizable`` on the 2,000-operation, one-key, 16-process history that
  ``benchmarks/checker.py`` generates (same generator, same seed). Target: under 10 s.

The machine may be shared with other work, so absolute figures are noisy: each repeat times the bare
loop and the realistic run back to back, and the figures are medians over repeats (3; 1 with
``--quick``). ``--profile`` adds a cProfile of one realistic run (top functions by own time).
It prints figures; it is not a test, and it always exits 0.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import simpy
import simpy.core

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.checker import linearizable_history
from dimint.core.checker import LINEARIZABLE, check_linearizable
from dimint.sim.runner import run_scenario
from dimint.sim.scenario import Scenario

RATIO_TARGET = 0.5
CHECKER_TARGET_SECONDS = 10.0
SEED = 1
BARE_PROCESSES = 100
BARE_MEAN_DELAY = 1.0  # uniform(0, 2): BARE_PROCESSES events per unit of simulated time
BARE_MIN_EVENTS = 300_000

Result = TypeVar("Result")


def realistic_scenario(quick: bool) -> Scenario:
    return Scenario(
        name="benchmark: 3x3, 3 Overlords, 16 clients, random faults",
        duration_ms=3_000 if quick else 10_000,
        settle_ms=3_000,
    ).with_changes(
        cluster={"shards": 3, "replicas": 2, "overlords": 3},
        workload={"clients": 16},
        faults={"mix": "random", "rate_per_s": 0.5},
    )


# ---------------------------------------------------------------- instrumentation


def count_events(action: Callable[[], Result]) -> tuple[int, Result]:
    """``action()`` with every ``Environment.step`` that processed an event counted.

    The patch is on the class because the runner builds its own ``simpy.Environment`` inside
    ``run_scenario``; it is removed before returning, whatever happens.
    """
    original_step = simpy.core.Environment.step
    processed = 0

    def counting_step(self: simpy.core.Environment) -> None:
        nonlocal processed
        # A step that raises is not counted: the empty schedule, or the bookkeeping event that ends
        # an env.run(until=...) (a few dozen per run).
        original_step(self)
        processed += 1

    simpy.core.Environment.step = counting_step
    try:
        result = action()
    finally:
        simpy.core.Environment.step = original_step
    return processed, result


@contextmanager
def loop_timer() -> Iterator[list[float]]:
    """Accumulate the wall time spent inside ``Environment.run`` (a few hundred calls per run)."""
    original_run = simpy.core.Environment.run
    spent = [0.0]

    def timed_run(self: simpy.core.Environment, until: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return original_run(self, until)
        finally:
            spent[0] += time.perf_counter() - started

    simpy.core.Environment.run = timed_run
    try:
        yield spent
    finally:
        simpy.core.Environment.run = original_run


# ---------------------------------------------------------------- subjects


@dataclass
class RealisticSample:
    wall_s: float
    loop_s: float
    digest: str
    ok: bool
    summary: dict[str, Any]


def time_realistic(scenario: Scenario) -> RealisticSample:
    gc.collect()
    with loop_timer() as loop_spent:
        started = time.perf_counter()
        result = run_scenario(scenario, SEED)
        wall_s = time.perf_counter() - started
    return RealisticSample(wall_s, loop_spent[0], result.digest, result.ok, result.summary)


def bare_loop(until: float) -> None:
    """The baseline: processes that only wait a random delay, forever, until ``until``."""
    env = simpy.Environment()
    rng = random.Random(SEED)
    upper = 2 * BARE_MEAN_DELAY

    def sleeper() -> Iterator[simpy.Event]:
        while True:
            yield env.timeout(rng.uniform(0.0, upper))

    for _ in range(BARE_PROCESSES):
        env.process(sleeper())
    env.run(until=until)


def time_bare(until: float) -> float:
    gc.collect()
    started = time.perf_counter()
    bare_loop(until)
    return time.perf_counter() - started


# ---------------------------------------------------------------- report


def rate(count: float, seconds: float) -> str:
    return f"{count / seconds:>12,.0f}"


def simulator(scenario: Scenario, repeats: int) -> None:
    counted_events, reference = count_events(lambda: run_scenario(scenario, SEED))
    summary = reference.summary
    # At least BARE_MIN_EVENTS, so that one scheduler hiccup does not dominate a short loop.
    bare_until = max(counted_events, BARE_MIN_EVENTS) / BARE_PROCESSES * BARE_MEAN_DELAY
    bare_events, _ = count_events(lambda: bare_loop(bare_until))

    bare_times: list[float] = []
    samples: list[RealisticSample] = []
    for _ in range(repeats):
        bare_times.append(time_bare(bare_until))
        samples.append(time_realistic(scenario))
    deterministic = all(sample.digest == reference.digest for sample in samples)
    bare_s = statistics.median(bare_times)
    wall_s = statistics.median(sample.wall_s for sample in samples)
    loop_s = statistics.median(sample.loop_s for sample in samples)

    records = summary["trace_records"]
    operations = summary["operations"]["total"]
    cluster = scenario.cluster
    print(
        f"realistic run: {cluster.shards} shards x {1 + cluster.replicas} copies, {cluster.overlords} "
        f"Overlords, {scenario.workload.clients} clients, {scenario.faults.mix} faults at "
        f"{scenario.faults.rate_per_s}/s, seed {SEED}"
    )
    print(
        f"  settle {scenario.settle_ms} ms + safety {scenario.duration_ms} ms; whole run "
        f"{summary['simulated_ms']:,.0f} simulated ms; {len(summary['faults'])} faults applied"
    )
    print(f"  run ok: {reference.ok}; every timed run ended with the counted run's digest: {deterministic}")
    print(
        f"  per run: {counted_events:,} SimPy events, {records:,} trace records, {operations:,} client "
        f"operations"
    )
    print(
        f"bare SimPy loop: {BARE_PROCESSES} processes of yield env.timeout(uniform(0, "
        f"{2 * BARE_MEAN_DELAY:g})), {bare_events:,} events"
    )
    print()
    print(f"median of {repeats}    {'wall s':>8} {'events/s':>12} {'records/s':>12} {'client ops/s':>12}")
    print(f"bare SimPy loop  {bare_s:8.3f} {rate(bare_events, bare_s)} {'':>12} {'':>12}")
    print(
        f"realistic, whole {wall_s:8.3f} {rate(counted_events, wall_s)} {rate(records, wall_s)} "
        f"{rate(operations, wall_s)}"
    )
    print(
        f"realistic, loop  {loop_s:8.3f} {rate(counted_events, loop_s)} {rate(records, loop_s)} "
        f"{rate(operations, loop_s)}"
    )
    bare_rate = bare_events / bare_s
    whole_ratio = counted_events / wall_s / bare_rate
    loop_ratio = counted_events / loop_s / bare_rate
    verdict = "PASS" if whole_ratio >= RATIO_TARGET else "FAIL"
    print()
    print(f"ratio realistic/bare, whole run    {whole_ratio:6.3f}x   target >= {RATIO_TARGET}x   {verdict}")
    print(f"ratio realistic/bare, env.run only {loop_ratio:6.3f}x   (info: without building and checking)")


def checker(repeats: int) -> None:
    history = linearizable_history(seed=1, operations=2_000, processes=16, keys=1)
    info = sum(1 for op in history if op.outcome == "info")
    timings = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        result = check_linearizable(history)
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    ok = result.verdict == LINEARIZABLE and seconds < CHECKER_TARGET_SECONDS
    print(f"checker: {len(history):,} ops, 1 key, 16 processes, {info} info (benchmarks/checker.py, seed 1)")
    print(
        f"  {seconds:.3f} s median of {repeats}, verdict {result.verdict}   "
        f"target < {CHECKER_TARGET_SECONDS:g} s   {'PASS' if ok else 'FAIL'}"
    )


def profile(scenario: Scenario, top: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run_scenario, scenario, SEED)
    print()
    print(f"cProfile of one realistic run, top {top} by own time:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s safety phase and one repeat")
    parser.add_argument("--profile", action="store_true", help="also cProfile one realistic run")
    options = parser.parse_args()
    repeats = 1 if options.quick else 3
    scenario = realistic_scenario(options.quick)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"Python {platform.python_version()}, SimPy {version('simpy')}, {os.cpu_count()} CPUs, "
        f"load average {load}"
    )
    print()
    simulator(scenario, repeats)
    print()
    checker(repeats)
    if options.profile:
        profile(scenario)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
