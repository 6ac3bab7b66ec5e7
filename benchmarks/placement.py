"""Placement benchmark: DiMint's ring against uhashring, then every other placement kind.

Usage: ``python benchmarks/placement.py [--quick]``

Part one compares ``make_placement("ring", ..., vnodes=160)`` with ``uhashring.HashRing`` (its default
ring puts 160 md5 points per node, so both rings have the same number of points) on the same keys:

* single lookup: median over repeats of the time per ``owner(key)`` / ``get_node(key)`` call;
* batched lookup: median time per key of ``owners(keys)``, hashing included (uhashring has none);
* movement: keys that change owner when an 11th node joins 10, and when one of the 11 leaves, divided
  by the optimum ``K/11`` (the share a perfectly balanced newcomer takes, or the leaver held), averaged
  over 20 seeds; each seed draws the node ids and the keys;
* balance: relative standard deviation of the 10 nodes' key counts, averaged over the seeds, against
  the ``1.1/sqrt(points per node)`` that a ring with that many points should stay under.

Part two gives the same figures for the other kinds. Lookup timings of all subjects are interleaved
(each repeat times every subject in turn) so that load from other processes on a shared machine
skews the ratios as little as possible. It is a measurement script, not a test: it prints the tables
and verdicts and always exits 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from uhashring import HashRing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dimint.core.placement import DEFAULT_VNODES, BoundedPlacement, make_placement

UHASHRING_POINTS = 160  # uhashring's default: HashRing() puts 160 points per node on its continuum
NODES = 10
SEEDS = 20


@dataclass(frozen=True)
class Options:
    lookup_keys: int  # keys in the timed batched lookup
    single_keys: int  # keys timed one call at a time
    repeats: int
    seed_keys: int  # keys per seed for movement and balance


FULL = Options(lookup_keys=200_000, single_keys=20_000, repeats=9, seed_keys=50_000)
QUICK = Options(lookup_keys=50_000, single_keys=5_000, repeats=5, seed_keys=20_000)


@dataclass(frozen=True)
class Figures:
    name: str
    single_ns: float
    batch_ns: float | None
    moved_add: float
    moved_remove: float
    rel_std: float
    max_over_mean: float
    note: str = ""


def make_keys(rng: random.Random, count: int) -> list[str]:
    return [f"user:{rng.getrandbits(64):016x}" for _ in range(count)]


def timed(action: Callable[[], object]) -> float:
    """Seconds for one run of ``action``, with the garbage collector paused as ``timeit`` does."""
    gc.disable()
    try:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start
    finally:
        gc.enable()


# --------------------------------------------------------------------------------------------
# One face for uhashring and for every DiMint kind
# --------------------------------------------------------------------------------------------


class Subject:
    """Something that places keys on nodes and can gain or lose one node."""

    name: str

    def build(self, ids: list[int], keys: list[str]) -> Any:
        raise NotImplementedError

    def single(self, placement: Any) -> Callable[[str], object]:
        raise NotImplementedError

    def batch(self, placement: Any) -> Callable[[list[str]], object] | None:
        return None

    def owners(self, placement: Any, keys: list[str]) -> np.ndarray:
        raise NotImplementedError

    def add(self, placement: Any, node: int) -> Any:
        raise NotImplementedError

    def remove(self, placement: Any, node: int) -> Any:
        raise NotImplementedError


class UhashringSubject(Subject):
    name = f"uhashring {version('uhashring')} ({UHASHRING_POINTS} md5 pts)"

    def build(self, ids: list[int], keys: list[str]) -> HashRing:
        return HashRing(nodes=[str(i) for i in ids])

    def single(self, placement: HashRing) -> Callable[[str], object]:
        return placement.get_node

    def owners(self, placement: HashRing, keys: list[str]) -> np.ndarray:
        get = placement.get_node
        return np.array([int(get(k)) for k in keys], dtype=np.int64)

    def add(self, placement: HashRing, node: int) -> HashRing:
        placement.add_node(str(node))  # uhashring rings are mutable
        return placement

    def remove(self, placement: HashRing, node: int) -> HashRing:
        placement.remove_node(str(node))
        return placement


class DimintSubject(Subject):
    def __init__(self, kind: str, name: str, **params: Any) -> None:
        self.kind = kind
        self.name = name
        self.params = params

    def build(self, ids: list[int], keys: list[str]) -> Any:
        params = dict(self.params)
        if self.kind == "bounded":
            params["keys"] = keys  # the bound is about the keys we look up
        return make_placement(self.kind, ids, **params)

    def single(self, placement: Any) -> Callable[[str], object]:
        return placement.owner

    def batch(self, placement: Any) -> Callable[[list[str]], object]:
        return placement.owners

    def owners(self, placement: Any, keys: list[str]) -> np.ndarray:
        return np.array(placement.owners(keys), dtype=np.int64)

    def add(self, placement: Any, node: int) -> Any:
        return placement.with_shard(node)

    def remove(self, placement: Any, node: int) -> Any:
        return placement.without_shard(node)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def lookup_times(subjects: Sequence[Subject], options: Options) -> dict[str, tuple[float, float | None]]:
    """Median ns per single lookup and per key of a batched lookup, per subject, interleaved."""
    keys = make_keys(random.Random(12345), options.lookup_keys)
    sample = keys[: options.single_keys]
    singles: dict[str, list[float]] = {s.name: [] for s in subjects}
    batches: dict[str, list[float]] = {s.name: [] for s in subjects}
    built = {s.name: s.build(list(range(NODES)), keys) for s in subjects}
    for _ in range(options.repeats):
        for subject in subjects:
            lookup = subject.single(built[subject.name])

            def one_at_a_time(lookup: Callable[[str], object] = lookup) -> None:
                for key in sample:
                    lookup(key)

            singles[subject.name].append(timed(one_at_a_time) / len(sample) * 1e9)
            batch = subject.batch(built[subject.name])
            if batch is not None:
                batches[subject.name].append(timed(lambda batch=batch: batch(keys)) / len(keys) * 1e9)
    return {
        name: (statistics.median(singles[name]), statistics.median(batches[name]) if batches[name] else None)
        for name in singles
    }


def measure(subject: Subject, options: Options, times: dict[str, tuple[float, float | None]]) -> Figures:
    """Movement and balance over the seeds, joined with the subject's lookup times."""
    moved_add, moved_remove, rel_stds, max_over_means = [], [], [], []
    bound_held = True
    for seed in range(SEEDS):
        rng = random.Random(seed)
        node_ids = rng.sample(range(1_000_000), NODES + 1)
        keys = make_keys(rng, options.seed_keys)
        optimum = len(keys) / (NODES + 1)

        ten = subject.build(node_ids[:NODES], keys)
        before = subject.owners(ten, keys)
        loads = np.array([np.count_nonzero(before == node) for node in node_ids[:NODES]], dtype=np.float64)
        rel_stds.append(float(loads.std() / loads.mean()))
        max_over_means.append(float(loads.max() / loads.mean()))
        if isinstance(ten, BoundedPlacement):
            bound_held &= max(ten.loads.values()) <= ten.capacity

        eleven = subject.add(ten, node_ids[NODES])
        after = subject.owners(eleven, keys)
        moved_add.append(np.count_nonzero(before != after) / optimum)

        leaver = node_ids[rng.randrange(NODES + 1)]
        ten_again = subject.remove(eleven, leaver)
        final = subject.owners(ten_again, keys)
        moved_remove.append(np.count_nonzero(after != final) / optimum)
        for placement in (eleven, ten_again):
            if isinstance(placement, BoundedPlacement):
                bound_held &= max(placement.loads.values()) <= placement.capacity

    note = ""
    if isinstance(subject, DimintSubject) and subject.kind == "bounded":
        note = "bound held" if bound_held else "BOUND VIOLATED"
    single, batch = times[subject.name]
    return Figures(
        subject.name,
        single,
        batch,
        statistics.mean(moved_add),
        statistics.mean(moved_remove),
        statistics.mean(rel_stds),
        statistics.mean(max_over_means),
        note,
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

HEADER = (
    f"{'placement':<34} {'single ns':>10} {'batch ns/key':>13} {'moved/opt +1':>13} "
    f"{'moved/opt -1':>13} {'load rel std':>13} {'max/mean':>9}"
)


def row(figures: Figures) -> str:
    batch = f"{figures.batch_ns:13.0f}" if figures.batch_ns is not None else f"{'-':>13}"
    note = f"  {figures.note}" if figures.note else ""
    return (
        f"{figures.name:<34} {figures.single_ns:10.0f} {batch} {figures.moved_add:13.3f} "
        f"{figures.moved_remove:13.3f} {figures.rel_std:13.4f} {figures.max_over_mean:9.3f}{note}"
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def within(value: float, low: float, high: float) -> bool:
    return low <= value <= high


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer keys and repeats (~15 s instead of ~45 s)"
    )
    options = QUICK if parser.parse_args(argv).quick else FULL

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, uhashring {version('uhashring')}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; lookups: {options.lookup_keys} keys "
        f"batched, {options.single_keys} one at a time, median of {options.repeats} interleaved repeats; "
        f"movement and balance: {SEEDS} seeds x {options.seed_keys} keys, "
        f"{NODES} -> {NODES + 1} -> {NODES} nodes"
    )

    uhashring = UhashringSubject()
    ring = DimintSubject("ring", f"dimint ring (vnodes={UHASHRING_POINTS})", vnodes=UHASHRING_POINTS)
    others = [
        DimintSubject("modulo", "modulo"),
        DimintSubject("rendezvous", "rendezvous"),
        DimintSubject("jump", "jump"),
        DimintSubject("bounded", f"bounded (eps=0.25, vnodes={UHASHRING_POINTS})", epsilon=0.25, vnodes=160),
        DimintSubject("ring", f"ring (default vnodes={DEFAULT_VNODES})"),
    ]
    times = lookup_times([uhashring, ring, *others], options)

    print(f"\n== DiMint ring vs uhashring, {UHASHRING_POINTS} points per node ==")
    print(HEADER)
    theirs = measure(uhashring, options, times)
    print(row(theirs), flush=True)
    ours = measure(ring, options, times)
    print(row(ours))
    assert ours.batch_ns is not None
    single_ratio = ours.single_ns / theirs.single_ns
    batch_ratio = ours.batch_ns / theirs.single_ns
    target_std = 1.1 / UHASHRING_POINTS**0.5
    checks = [
        ("single lookup / uhashring single", f"{single_ratio:.3f}", "<= 0.5", single_ratio <= 0.5, ""),
        ("batch per key / uhashring single", f"{batch_ratio:.3f}", "<= 0.1", batch_ratio <= 0.1, ""),
        (
            "moved / optimum, add",
            f"{ours.moved_add:.3f}",
            "0.95-1.05",
            within(ours.moved_add, 0.95, 1.05),
            f"uhashring {theirs.moved_add:.3f}",
        ),
        (
            "moved / optimum, remove",
            f"{ours.moved_remove:.3f}",
            "0.95-1.05",
            within(ours.moved_remove, 0.95, 1.05),
            f"uhashring {theirs.moved_remove:.3f}",
        ),
        (
            "load rel std",
            f"{ours.rel_std:.4f}",
            f"<= 1.1/sqrt({UHASHRING_POINTS}) = {target_std:.4f}",
            ours.rel_std <= target_std,
            f"uhashring {theirs.rel_std:.4f}",
        ),
    ]
    print()
    for label, value, target, ok, baseline in checks:
        print(f"{label:<34} = {value:>7}  target {target:<26} {verdict(ok)}  {baseline}")

    print(
        "\n== Every other kind (same keys, seeds and measures; ratios against uhashring's single lookup) =="
    )
    print(HEADER)
    results = [(subject, measure(subject, options, times)) for subject in others]
    for _, figures in results:
        print(row(figures))
    print()
    for subject, figures in results:
        assert isinstance(subject, DimintSubject) and figures.batch_ns is not None
        ratios = (
            f"single {figures.single_ns / theirs.single_ns:5.2f}x, "
            f"batch/key {figures.batch_ns / theirs.single_ns:5.3f}x"
        )
        if subject.kind == "modulo":
            verdicts = "moved/optimum: no target (the baseline moves ~n times the optimum)"
        else:
            moved_ok = within(figures.moved_add, 0.95, 1.05) and within(figures.moved_remove, 0.95, 1.05)
            verdicts = f"moved/optimum 0.95-1.05 {verdict(moved_ok)}"
        if subject.kind in ("ring", "bounded"):
            target = 1.1 / int(subject.params.get("vnodes", DEFAULT_VNODES)) ** 0.5
            verdicts += f", rel std <= {target:.4f} {verdict(figures.rel_std <= target)}"
        print(f"{figures.name:<34} {ratios}; {verdicts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
