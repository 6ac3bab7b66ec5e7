"""Seed sweeps: run one scenario over many seeds on all cores, and say which seeds failed.

Why a module of its own: a sweep is how DiMint hunts for bugs (thousands of seeds, each drawing
its own fault mix), and how CI proves the safety claims on hundreds. Each failing seed is printed
with the exact command that replays it, since a run is a pure function of (scenario, seed).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dimint.sim.runner import run_scenario
from dimint.sim.scenario import Scenario

ROW_FIELDS = (
    "seed",
    "ok",
    "digest",
    "operations",
    "acked_writes",
    "info_ops",
    "lost_acknowledged_writes",
    "replayed_writes",
    "double_executions",
    "linearizable",
    "faults",
    "promotions",
    "max_unavailable_ms",
    "converged_after_ms",
    "failures",
)


def _one(task: tuple[Scenario, int]) -> dict[str, Any]:
    scenario, seed = task
    try:
        result = run_scenario(scenario, seed)
    except Exception as exc:  # a crash of the simulation itself is a failing seed, not a dead sweep
        return {"seed": seed, "ok": False, "digest": "", "failures": f"{type(exc).__name__}: {exc}"}
    summary = result.summary
    outcomes = summary["operations"]["by_outcome"]
    return {
        "seed": seed,
        "ok": result.ok,
        "digest": result.digest[:16],
        "operations": summary["operations"]["total"],
        "acked_writes": outcomes.get("write:ok", 0),
        "info_ops": sum(v for k, v in outcomes.items() if k.endswith(":info")),
        "lost_acknowledged_writes": summary["lost_acknowledged_writes"],
        "replayed_writes": summary["replayed_writes"],
        "double_executions": summary["double_executions"],
        "linearizable": summary["linearizability"].get("verdict"),
        "faults": len(summary["faults"]),
        "promotions": summary["promotions"],
        "max_unavailable_ms": summary["failover_unavailable_ms"]["max"],
        "converged_after_ms": summary["converged_after_ms"],
        "failures": " | ".join(result.failures)[:500],
    }


@dataclass
class SweepResult:
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["ok"]]

    def totals(self) -> dict[str, Any]:
        ok_rows = [r for r in self.rows if "operations" in r]
        unavailable = [r["max_unavailable_ms"] for r in ok_rows if r.get("max_unavailable_ms") is not None]
        return {
            "seeds": len(self.rows),
            "failed": len(self.failed),
            "operations": sum(r["operations"] for r in ok_rows),
            "acked_writes": sum(r["acked_writes"] for r in ok_rows),
            "lost_acknowledged_writes": sum(r["lost_acknowledged_writes"] for r in ok_rows),
            "replayed_writes": sum(r["replayed_writes"] for r in ok_rows),
            "double_executions": sum(r["double_executions"] for r in ok_rows),
            "faults": sum(r["faults"] for r in ok_rows),
            "promotions": sum(r["promotions"] for r in ok_rows),
            "non_linearizable": sum(r["linearizable"] == "not_linearizable" for r in ok_rows),
            "median_max_unavailable_ms": statistics.median(unavailable) if unavailable else None,
        }


def sweep(
    scenario: Scenario,
    seeds: Iterable[int],
    *,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    csv_path: Path | None = None,
) -> SweepResult:
    """Run every seed; results come back in seed order whatever the scheduling."""
    seeds = list(seeds)
    tasks = [(scenario, seed) for seed in seeds]
    result = SweepResult()
    writer = None
    handle = None
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        handle = csv_path.open("w", newline="")
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
    try:
        if workers <= 1:
            iterator: Iterable[dict[str, Any]] = map(_one, tasks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            iterator = pool.map(_one, tasks, chunksize=4)
        for row in iterator:
            result.rows.append(row)
            if writer is not None:
                writer.writerow(row)
                handle.flush()  # type: ignore[union-attr]
            if progress is not None:
                progress(1)
        if pool is not None:
            pool.shutdown()
    finally:
        if handle is not None:
            handle.close()
    return result
