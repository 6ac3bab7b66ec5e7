"""How fast the linearizability checker decides realistic histories.

Run ``python benchmarks/checker.py``. A seeded simulation of a truly linearizable register produces
the histories: 16 client processes issue back-to-back reads, writes and a few deletes with random
latencies; each operation takes effect at a random instant inside its interval; about 1% end ``info``
(timed out: they take effect later, or never) and about 1% ``fail`` (never take effect). Histories go
through ``HistoryRecorder`` and ``pair_operations`` like a real run's would.

Printed: the median of three ``check_linearizable`` runs for 2,000 operations on one key (the target
is under 10 s) and for 20,000 operations over 100 keys; then, as a cross-check that the speed does
not come from skipping work, the time to reject the 2,000-operation history when its last read is
made definitely stale (caught by a direct witness) and when two writes at its very end are seen in
both orders (caught only by searching the whole history).
"""

from __future__ import annotations

import heapq
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dimint.core.checker import LINEARIZABLE, NOT_LINEARIZABLE, LinearizabilityResult, check_linearizable
from dimint.core.history import HistoryRecorder, Operation

TARGET_SECONDS = 10.0


def linearizable_history(
    seed: int,
    operations: int,
    *,
    processes: int = 16,
    keys: int = 1,
    read_fraction: float = 0.5,
    delete_fraction: float = 0.03,
    info_fraction: float = 0.01,
    fail_fraction: float = 0.01,
) -> list[Operation]:
    """Operations of a simulated linearizable register per key, paired from recorded events."""
    rng = random.Random(seed)
    free_at = [(rng.uniform(0, 5), process) for process in range(processes)]
    heapq.heapify(free_at)
    planned = []  # (process, f, key, value, invoke_ms, complete_ms, outcome, effect_ms or None)
    for number in range(operations):
        ready_ms, process = heapq.heappop(free_at)
        invoke_ms = ready_ms + rng.expovariate(1 / 2.0)
        complete_ms = invoke_ms + rng.uniform(0.5, 20.0)
        key = f"k{rng.randrange(keys)}"
        roll = rng.random()
        f = "write"
        if roll < read_fraction:
            f = "read"
        elif roll < read_fraction + delete_fraction:
            f = "delete"
        value = f"v{number}" if f == "write" else None
        roll = rng.random()
        outcome = "info" if roll < info_fraction else "fail" if roll < info_fraction + fail_fraction else "ok"
        effect_ms: float | None = rng.uniform(invoke_ms, complete_ms)
        if outcome == "fail":
            effect_ms = None
        elif outcome == "info":
            effect_ms = rng.choice([None, rng.uniform(invoke_ms, complete_ms + 200.0)])
        planned.append([process, f, key, value, invoke_ms, complete_ms, outcome, effect_ms])
        heapq.heappush(free_at, (complete_ms, process))
    register: dict[str, str | None] = {}
    effects = sorted((entry[7], number) for number, entry in enumerate(planned) if entry[7] is not None)
    for _, number in effects:
        entry = planned[number]
        if entry[1] == "read":
            entry[3] = register.get(entry[2]) if entry[6] == "ok" else None
        else:
            register[entry[2]] = entry[3]
    events = []
    for number, (process, f, key, value, invoke_ms, complete_ms, outcome, _) in enumerate(planned):
        events.append((invoke_ms, number, 0, process, f, key, value if f == "write" else None, outcome))
        events.append((complete_ms, number, 1, process, f, key, value, outcome))
    events.sort()
    recorder = HistoryRecorder()
    tokens: dict[int, int] = {}
    for time_ms, number, phase, process, f, key, value, outcome in events:
        if phase == 0:
            tokens[number] = recorder.invoke(process, f, key, value, time_ms, consistency="strong")
        else:
            recorder.complete(tokens.pop(number), outcome, value if f == "read" else None, time_ms)
    return recorder.operations()


def make_one_read_stale(operations: list[Operation]) -> list[Operation]:
    """Make the last strong ok read return the newest value that is definitely stale by then.

    A write's value is definitely stale for a read when another acknowledged write of the key was
    invoked after it completed and completed before the read was invoked: values are unique, so no
    linearization can let the read see it. The checker finds this without searching.
    """
    target = [op for op in operations if op.f == "read" and op.outcome == "ok"][-1]
    writes = [op for op in operations if op.f == "write" and op.outcome == "ok" and op.key == target.key]
    stale = [
        older
        for older in writes
        if any(
            newer.invoke_ms > older.complete_ms and newer.complete_ms < target.invoke_ms for newer in writes
        )
    ]
    if not stale:
        raise RuntimeError("no definitely stale value found; change the seed")
    older = max(stale, key=lambda op: op.complete_ms)
    mutated = replace(target, value=older.value)
    return [mutated if op is target else op for op in operations]


def append_reordered_writes(operations: list[Operation]) -> list[Operation]:
    """Append, after everything, two concurrent writes that two sequential reads see in both orders.

    No single read is stale on its own, so only the search can reject this, and only after ordering
    the whole history before it: the worst case for a failing history.
    """
    key = operations[0].key
    start_ms = max(op.complete_ms if op.complete_ms is not None else op.invoke_ms for op in operations) + 1
    index = max(op.index for op in operations) + 1
    return [
        *operations,
        Operation(1000, "write", key, "late-a", start_ms, start_ms + 9, "ok", index=index),
        Operation(1001, "write", key, "late-b", start_ms, start_ms + 9, "ok", index=index + 1),
        Operation(1000, "read", key, "late-b", start_ms + 10, start_ms + 11, "ok", index=index + 2),
        Operation(1001, "read", key, "late-a", start_ms + 12, start_ms + 13, "ok", index=index + 3),
    ]


def median_seconds(
    run: Callable[[], LinearizabilityResult], repeats: int = 3
) -> tuple[float, LinearizabilityResult]:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), result


def report(
    label: str, operations: list[Operation], expected: str, target_seconds: float | None = None
) -> bool:
    seconds, result = median_seconds(lambda: check_linearizable(operations))
    states = sum(verdict.states_explored for verdict in result.keys.values())
    ok = result.verdict == expected and (target_seconds is None or seconds < target_seconds)
    target = f" (target < {target_seconds:g} s)" if target_seconds is not None else ""
    print(
        f"{label}: {seconds:.3f} s median of 3, {states} states, verdict {result.verdict}: "
        f"{'PASS' if ok else 'FAIL'}{target}"
    )
    return ok


def main() -> int:
    single = linearizable_history(seed=1, operations=2_000, processes=16, keys=1)
    info = sum(1 for op in single if op.outcome == "info")
    many = linearizable_history(seed=2, operations=20_000, processes=16, keys=100)
    results = [
        report(f"2,000 ops, 1 key, 16 processes, {info} info", single, LINEARIZABLE, TARGET_SECONDS),
        report("20,000 ops, 100 keys, 16 processes", many, LINEARIZABLE),
        report("2,000 ops, last read made stale", make_one_read_stale(single), NOT_LINEARIZABLE),
        report("2,000 ops + reordered writes at the end", append_reordered_writes(single), NOT_LINEARIZABLE),
    ]
    passed = all(results)
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
