"""Experiment 5, routing: smart clients going straight to the shard, or every request via an Overlord?

The original DiMint sent every request through an Overlord, which looked up the owner and relayed
the answer. DiMint's clients cache the cluster map and go straight to the owning node; the
Overlords still proxy (``RouterConfig.via_overlord``), so both designs run on the same code. This
experiment compares them in the simulator as the number of closed-loop clients grows: completed
operations per simulated second and the latency distribution of successful operations.

What makes the difference: proxying adds a network round trip per request, and it funnels every
request through three Overlord processes. With hosts that handle inputs instantly only the extra
hop shows; with a service time per input (``overlord_processing_delay_ms``,
``node_processing_delay_ms``: simulated CPU per message) the Overlords become a queue, and their
throughput caps the whole cluster however many shards it has. Change those two fields, the shard
count (``shards``) or ``client_counts`` to move the crossover.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dimint.core.checker import percentile
from dimint.sim.runner import run_scenario
from dimint.sim.scenario import Scenario
from experiments.common import Provenance, parallel_map, save_figure, write_csv

NAME = "routing"
MODES = ("direct", "proxy")


@dataclass(frozen=True)
class Config:
    client_counts: tuple[int, ...] = (1, 4, 16, 32, 64)
    shards: int = 3
    replicas: int = 2
    duration_ms: int = 3000
    settle_ms: int = 1500
    keys: int = 500
    read_fraction: float = 0.8
    think_ms: float = 1.0
    node_processing_delay_ms: float = 0.1
    overlord_processing_delay_ms: float = 0.1
    latency_ms: float = 0.5

    @classmethod
    def quick(cls) -> Config:
        return cls(client_counts=(1, 8, 32), duration_ms=1000)


def scenario(cfg: Config, clients: int, mode: str) -> Scenario:
    return Scenario(
        name=f"{NAME}-{mode}-{clients}",
        duration_ms=cfg.duration_ms,
        settle_ms=cfg.settle_ms,
        liveness_timeout_ms=15_000,
    ).with_changes(
        cluster={
            "shards": cfg.shards,
            "replicas": cfg.replicas,
            "node_processing_delay_ms": cfg.node_processing_delay_ms,
            "overlord_processing_delay_ms": cfg.overlord_processing_delay_ms,
        },
        network={"latency_ms": cfg.latency_ms},
        workload={
            "clients": clients,
            "keys": cfg.keys,
            "read_fraction": cfg.read_fraction,
            "think_ms": cfg.think_ms,
            "route_via_overlord": mode == "proxy",
            "request_timeout_ms": 2000,
            "operation_deadline_ms": 8000,
        },
        faults={"mix": "none"},
    )


def run_one(task: tuple[int, str, int, Config]) -> dict[str, Any]:
    clients, mode, seed, cfg = task
    result = run_scenario(scenario(cfg, clients, mode), seed)
    start, end = cfg.settle_ms, cfg.settle_ms + cfg.duration_ms
    done = [
        op
        for op in result.operations
        if not op.is_readback and op.complete_ms is not None and start <= op.complete_ms < end
    ]
    ok = [op for op in done if op.outcome == "ok"]
    latencies = [op.complete_ms - op.invoke_ms for op in ok]  # type: ignore[operator]
    return {
        "mode": mode,
        "clients": clients,
        "seed": seed,
        "ok": result.ok,
        "ops_per_s": len(ok) / (cfg.duration_ms / 1000),
        "failed_or_unknown": len(done) - len(ok),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
        "latency_mean_ms": statistics.fmean(latencies) if latencies else None,
    }


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["mode"], row["clients"])].append(row)
    out = []
    for (mode, clients), items in sorted(groups.items()):
        throughput = [r["ops_per_s"] for r in items]
        p50 = [r["latency_p50_ms"] for r in items if r["latency_p50_ms"] is not None]
        p99 = [r["latency_p99_ms"] for r in items if r["latency_p99_ms"] is not None]
        out.append(
            {
                "mode": mode,
                "clients": clients,
                "seeds": len(items),
                "all_checks_ok": all(r["ok"] for r in items),
                "ops_per_s_mean": statistics.fmean(throughput),
                "ops_per_s_std": statistics.pstdev(throughput),
                "latency_p50_ms_mean": statistics.fmean(p50) if p50 else None,
                "latency_p99_ms_mean": statistics.fmean(p99) if p99 else None,
                "latency_p99_ms_std": statistics.pstdev(p99) if p99 else None,
            }
        )
    return out


def plot(summary: list[dict[str, Any]], path: Path, note: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, color in zip(MODES, ("tab:blue", "tab:orange"), strict=True):
        rows = [r for r in summary if r["mode"] == mode]
        xs = [r["clients"] for r in rows]
        label = "direct (smart client)" if mode == "direct" else "via an Overlord (original design)"
        left.errorbar(
            xs,
            [r["ops_per_s_mean"] for r in rows],
            yerr=[r["ops_per_s_std"] for r in rows],
            marker="o",
            capsize=3,
            color=color,
            label=label,
        )
        right.errorbar(
            xs,
            [r["latency_p99_ms_mean"] for r in rows],
            yerr=[r["latency_p99_ms_std"] or 0 for r in rows],
            marker="o",
            capsize=3,
            color=color,
            label=f"{mode}, p99",
        )
        right.plot(
            xs,
            [r["latency_p50_ms_mean"] for r in rows],
            linestyle=":",
            marker=".",
            color=color,
            label=f"{mode}, p50",
        )
    left.set(
        xscale="log",
        xlabel="closed-loop clients",
        ylabel="ok operations per simulated second",
        title="Throughput",
    )
    right.set(
        xscale="log",
        xlabel="closed-loop clients",
        ylabel="latency (simulated ms, whole ms)",
        title="Latency of successful operations",
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"DiMint routing: direct vs proxied through an Overlord {note}")
    return save_figure(fig, path)


def run(out_dir: Path, seeds: list[int], quick: bool = False, config: Config | None = None) -> str:
    cfg = config or (Config.quick() if quick else Config())
    tasks = [(clients, mode, seed, cfg) for clients in cfg.client_counts for mode in MODES for seed in seeds]
    rows = parallel_map(run_one, tasks, desc=NAME)
    provenance = Provenance.make(NAME, {**asdict(cfg), "quick": quick}, seeds)
    summary = aggregate(rows)
    write_csv(out_dir / "runs.csv", rows, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    plot(summary, out_dir / "routing.png", f"({len(seeds)} seeds)")
    most = max(cfg.client_counts)
    by = {(r["mode"], r["clients"]): r for r in summary}
    direct, proxy = by[("direct", most)], by[("proxy", most)]
    ratio = proxy["ops_per_s_mean"] / direct["ops_per_s_mean"] if direct["ops_per_s_mean"] else float("nan")
    p99 = (
        f"{direct['latency_p99_ms_mean']:.1f} -> {proxy['latency_p99_ms_mean']:.1f} ms"
        if direct["latency_p99_ms_mean"] and proxy["latency_p99_ms_mean"]
        else "n/a"
    )
    failed = sum(1 for r in rows if not r["ok"])
    return (
        f"{NAME}: {len(rows)} runs; at {most} clients proxying through an Overlord gives {ratio:.2f}x the "
        f"direct throughput, p99 latency {p99}; {failed} failed checks -> {out_dir}/routing.png"
    )
