"""Experiment 3, failover: how long is a shard unavailable, and what is lost, when its master fails?

A master that crashes or is partitioned away is replaced only after its ZooKeeper session expires,
so the session timeout trades false failovers (too short) against unavailability (too long). The
replication mode decides what the replacement may lack: invariant 3 says async acknowledges writes
on the master alone, so a failover may lose them, while semi-sync and sync must lose none
(invariant 4). This experiment measures both sides against the session timeout, for each mode,
under crashes and, separately, under partitions.

Each run is a simulated cluster (``dimint.sim``) with an explicit fault schedule: the master of
shard 0, then of shard 1, and so on, is crashed (memory lost) or partitioned away from everyone
else (ZooKeeper, Overlords and its slaves on the majority side; some clients follow it into the
minority, as the fault injector decides from the seed). Each fault lasts long enough for a failover
at every timeout (``fault_duration_factor`` x timeout + ``fault_duration_extra_ms``), and the next
one starts after the cluster has recovered. Per failover we record:

* ``first_ack_ms`` (the run summary's ``unavailable_ms``): from the fault to the first acknowledged
  write on the shard, by anyone. Under a partition in async mode the old master keeps acknowledging
  writes from the clients on its side, so this can be near 0 although those acks are doomed.
* ``recovered_ms``: from the fault to the first acknowledged write on the shard by a node other than
  the failed master, i.e. until the shard serves again durably. This is the unavailability window
  plotted; it differs from ``first_ack_ms`` only when the old master acknowledged writes after the fault.
* ``old_master_acks``: writes the old master acknowledged after the fault began. In async mode these
  are exactly the writes exposed to loss; in semi-sync and sync an acknowledgement already in flight
  when the fault began lands here too, but such a write had reached a slave first.

What sets the window: the old session expires between 2/3 and all of the timeout after the fault
(the client pings every third of it), the Overlord then promotes a slave and publishes a map, and
clients blocked on the dead master notice only when their request times out
(``request_timeout_ms``) and they retry against the new map. So the measured window moves in steps
of the request timeout; change ``request_timeout_ms`` to see it.

Acknowledged writes lost come from the run's history checker (``lost_acknowledged_writes``): an
acknowledged write that a later strong read (including the final readback of every key) shows is
gone. Shard membership of a key is read off the history: the keys whose writes the old master
acknowledged just before the fault.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dimint.core.history import Operation
from dimint.sim.runner import run_scenario
from dimint.sim.scenario import FaultEvent, Scenario
from experiments.common import Provenance, config_dict, parallel_map, save_figure, write_csv

NAME = "failover"
MODES = ("async", "semi-sync", "sync")
FAULT_KINDS = ("crash", "partition")
# Keys of the failed shard: those the old master acknowledged writes for in this window before the
# fault (long enough to see every key of a busy shard, short enough to predate an earlier failover).
SHARD_KEYS_WINDOW_MS = 1500


@dataclass(frozen=True)
class Config:
    modes: tuple[str, ...] = MODES
    session_timeouts_ms: tuple[int, ...] = (400, 800, 1200, 2000, 3000)
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    shards: int = 3  # one failover per shard per run
    replicas: int = 2
    clients: int = 6
    keys: int = 60
    read_fraction: float = 0.5
    think_ms: float = 10.0
    # A client retries a request unanswered for this long, so a shard's recovery is seen at the first
    # retry after the new map: unavailability comes in steps of about this size.
    request_timeout_ms: int = 500
    settle_ms: int = 2000
    fault_duration_factor: float = 2.0
    fault_duration_extra_ms: int = 1000
    recovery_gap_ms: int = 2500  # after a fault heals, before the next one: resync and re-admission

    @classmethod
    def quick(cls) -> Config:
        return cls(session_timeouts_ms=(500, 1500), shards=2, clients=4, keys=40)


def fault_duration_ms(cfg: Config, timeout_ms: int) -> int:
    return int(cfg.fault_duration_factor * timeout_ms) + cfg.fault_duration_extra_ms


def scenario_for(cfg: Config, mode: str, timeout_ms: int, kind: str) -> Scenario:
    """The scenario of one grid point: one ``kind`` fault per shard master, one after another."""
    duration = fault_duration_ms(cfg, timeout_ms)
    gap = duration + cfg.recovery_gap_ms
    schedule = tuple(
        FaultEvent(at_ms=cfg.settle_ms + 500 + i * gap, kind=kind, target=f"master:{i}", duration_ms=duration)
        for i in range(cfg.shards)
    )
    return Scenario(
        name=f"{NAME}-{kind}-{mode}-{timeout_ms}",
        duration_ms=500 + cfg.shards * gap,
        settle_ms=cfg.settle_ms,
    ).with_changes(
        cluster={
            "shards": cfg.shards,
            "replicas": cfg.replicas,
            "replication_mode": mode,
            "min_in_sync": min(1, cfg.replicas),
            "session_timeout_ms": timeout_ms,
        },
        workload={
            "clients": cfg.clients,
            "keys": cfg.keys,
            "read_fraction": cfg.read_fraction,
            "think_ms": cfg.think_ms,
            "request_timeout_ms": cfg.request_timeout_ms,
        },
        faults={"mix": "schedule", "schedule": schedule},
    )


def _failover_rows(failover: dict[str, Any], operations: list[Operation], duration_ms: int) -> dict[str, Any]:
    """Recovery time and the old master's late acknowledgements for one failover, from the history."""
    at, old = failover["at_ms"], failover["master"]
    writes = [
        op for op in operations if op.f == "write" and op.outcome == "ok" and op.complete_ms is not None
    ]
    shard_keys = {
        op.key
        for op in writes
        if op.node == old and at - SHARD_KEYS_WINDOW_MS <= op.complete_ms < at  # type: ignore[operator]
    }
    after = [op for op in writes if op.key in shard_keys and op.invoke_ms >= at]
    by_new = [op.complete_ms for op in after if op.node != old]
    recovered = min(by_new) - at if by_new else None  # type: ignore[operator]
    old_acks = [
        op
        for op in writes
        if op.key in shard_keys and op.node == old and at <= op.complete_ms < at + duration_ms  # type: ignore[operator]
    ]
    return {
        "shard": failover["shard"],
        "master": old,
        "at_ms": at,
        "first_ack_ms": failover["unavailable_ms"],
        "recovered_ms": recovered,
        "old_master_acks": len(old_acks),
        "old_master_ack_window_ms": (max(op.complete_ms for op in old_acks) - at) if old_acks else 0,  # type: ignore[type-var]
        "shard_keys": len(shard_keys),
    }


def run_one(task: tuple[str, int, str, int, Config]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One simulated run: a run-level row and one row per failover."""
    mode, timeout_ms, kind, seed, cfg = task
    scenario = scenario_for(cfg, mode, timeout_ms, kind)
    result = run_scenario(scenario, seed)
    summary = result.summary
    outcomes = summary["operations"]["by_outcome"]
    key = {"kind": kind, "mode": mode, "session_timeout_ms": timeout_ms, "seed": seed}
    duration = fault_duration_ms(cfg, timeout_ms)
    failovers = [
        {**key, **_failover_rows(f, result.operations, duration)}
        for f in summary["failovers"]
        if f["kind"] == kind
    ]
    run_row = {
        **key,
        "faults": len(summary["faults"]),
        "failovers": len(failovers),
        "promotions": summary["promotions"],
        "writes_ok": outcomes.get("write:ok", 0),
        "writes_info": outcomes.get("write:info", 0),
        "writes_fail": outcomes.get("write:fail", 0),
        "reads_ok": outcomes.get("read:ok", 0),
        "reads_fail": outcomes.get("read:fail", 0) + outcomes.get("read:info", 0),
        "lost_acknowledged_writes": summary["lost_acknowledged_writes"],
        "linearizability": summary["linearizability"]["verdict"],
        "converged": summary["converged"],
        "checks_ok": summary["ok"],
        "first_failure": (summary["failures"] or [""])[0][:200],
        "trace_digest": summary["trace_digest"],
    }
    return run_row, failovers


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values)


def aggregate(runs: list[dict[str, Any]], failovers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    run_groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in runs:
        run_groups[(row["kind"], row["mode"], row["session_timeout_ms"])].append(row)
    fo_groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in failovers:
        fo_groups[(row["kind"], row["mode"], row["session_timeout_ms"])].append(row)
    summary = []
    for group, items in sorted(run_groups.items()):
        kind, mode, timeout_ms = group
        fos = fo_groups.get(group, [])
        recovered = [r["recovered_ms"] for r in fos if r["recovered_ms"] is not None]
        first_ack = [r["first_ack_ms"] for r in fos if r["first_ack_ms"] is not None]
        lost = [r["lost_acknowledged_writes"] for r in items]
        rec_mean, rec_std = _stats(recovered)
        ack_mean, ack_std = _stats(first_ack)
        lost_mean, lost_std = _stats(lost)
        summary.append(
            {
                "kind": kind,
                "mode": mode,
                "session_timeout_ms": timeout_ms,
                "runs": len(items),
                "failovers": len(fos),
                "failovers_unrecovered": len(fos) - len(recovered),
                "recovered_ms_mean": rec_mean,
                "recovered_ms_std": rec_std,
                "recovered_ms_max": max(recovered) if recovered else None,
                "first_ack_ms_mean": ack_mean,
                "first_ack_ms_std": ack_std,
                "recovered_over_timeout": rec_mean / timeout_ms if rec_mean is not None else None,
                "lost_per_run_mean": lost_mean,
                "lost_per_run_std": lost_std,
                "lost_total": sum(lost),
                "lost_per_failover": sum(lost) / len(fos) if fos else None,
                "old_master_acks_total": sum(r["old_master_acks"] for r in fos),
                "writes_ok_total": sum(r["writes_ok"] for r in items),
                "runs_failing_checks": sum(not r["checks_ok"] for r in items),
            }
        )
    return summary


def plot(summary: list[dict[str, Any]], path: Path, title_note: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in FAULT_KINDS if any(r["kind"] == k for r in summary)]
    modes = [m for m in MODES if any(r["mode"] == m for r in summary)]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(6 * (len(kinds) + 1), 4.8), squeeze=False)
    axes = axes[0]
    timeouts = sorted({r["session_timeout_ms"] for r in summary})
    markers = {"crash": "o", "partition": "s"}
    for ax, kind in zip(axes, kinds, strict=False):
        for mode in modes:
            rows = [r for r in summary if r["kind"] == kind and r["mode"] == mode and r["recovered_ms_mean"]]
            line = ax.errorbar(
                [r["session_timeout_ms"] for r in rows],
                [r["recovered_ms_mean"] for r in rows],
                yerr=[r["recovered_ms_std"] for r in rows],
                marker=markers.get(kind, "o"),
                capsize=3,
                label=f"{mode}: until a new master acks",
            )
            acked = [r for r in rows if r["first_ack_ms_mean"] is not None]
            if any(abs(r["first_ack_ms_mean"] - r["recovered_ms_mean"]) > 1 for r in acked):
                ax.plot(
                    [r["session_timeout_ms"] for r in acked],
                    [r["first_ack_ms_mean"] for r in acked],
                    linestyle=":",
                    marker="x",
                    color=line[0].get_color(),
                    label=f"{mode}: first ack by anyone",
                )
        ax.plot(timeouts, timeouts, "k--", linewidth=0.8, label="session timeout")
        ax.set(
            xlabel="ZooKeeper session timeout (ms)",
            ylabel="write unavailability after the fault (ms)",
            title=f"Master {kind}: unavailability window",
        )
    ax = axes[-1]
    for kind in kinds:
        for mode in modes:
            rows = [r for r in summary if r["kind"] == kind and r["mode"] == mode]
            ax.errorbar(
                [r["session_timeout_ms"] for r in rows],
                [r["lost_per_run_mean"] for r in rows],
                yerr=[r["lost_per_run_std"] for r in rows],
                marker=markers.get(kind, "o"),
                linestyle="-" if kind == "crash" else "--",
                capsize=3,
                label=f"{mode}, {kind}",
            )
    ax.set(
        xlabel="ZooKeeper session timeout (ms)",
        ylabel="acknowledged writes lost per run",
        title="Acknowledged writes lost",
    )
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DiMint failover: unavailability and loss against session timeout {title_note}".strip())
    return save_figure(fig, path)


def run(out_dir: Path, seeds: list[int], quick: bool = False, config: Config | None = None) -> str:
    """Every (fault kind, mode, timeout, seed) run on all cores; CSVs and PNG in ``out_dir``; the finding."""
    cfg = config or (Config.quick() if quick else Config())
    tasks = [
        (mode, timeout_ms, kind, seed, cfg)
        for kind in cfg.fault_kinds
        for mode in cfg.modes
        for timeout_ms in cfg.session_timeouts_ms
        for seed in seeds
    ]
    results = parallel_map(run_one, tasks, desc=NAME)
    runs = [run_row for run_row, _ in results]
    failovers = [row for _, rows in results for row in rows]
    summary = aggregate(runs, failovers)
    provenance = Provenance.make(NAME, config_dict(cfg, quick), seeds)
    write_csv(out_dir / "runs.csv", runs, provenance)
    write_csv(out_dir / "failovers.csv", failovers, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    plot(summary, out_dir / "failover.png", f"({len(seeds)} seeds, {cfg.shards} failovers per run)")
    return _headline(summary, out_dir)


def _headline(summary: list[dict[str, Any]], out_dir: Path) -> str:
    parts = [f"{NAME}:"]
    timeouts = sorted({r["session_timeout_ms"] for r in summary})
    crash = {
        (r["mode"], r["session_timeout_ms"]): r
        for r in summary
        if r["kind"] == "crash" and r["recovered_ms_mean"] is not None
    }
    mode = "semi-sync" if any(m == "semi-sync" for m, _ in crash) else next(iter(crash), ("", 0))[0]
    window = [
        f"{crash[mode, t]['recovered_ms_mean']:.0f} ms at {t} ms" for t in timeouts if (mode, t) in crash
    ]
    if window:
        parts.append(f"{mode} crash unavailability {window[0]} -> {window[-1]} session timeout;")
    lost = defaultdict(lambda: [0, 0])
    for r in summary:
        lost[r["kind"], r["mode"]][0] += r["lost_total"]
        lost[r["kind"], r["mode"]][1] += r["runs"]
    listed = ", ".join(f"{mode}/{kind} {n}/{runs}" for (kind, mode), (n, runs) in sorted(lost.items()))
    parts.append(f"acknowledged writes lost (total/runs): {listed};")
    failing = sum(r["runs_failing_checks"] for r in summary)
    parts.append(f"{failing} run(s) failed a safety/liveness check")
    return " ".join(parts) + f" -> {out_dir}/failover.png"
