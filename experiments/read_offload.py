"""Experiment 4, read offloading: what do weak reads on slaves buy in throughput and cost in staleness?

A strong read must go to the master (invariant 5: linearizable); a weak read may go to a slave and
return a value the master has already replaced. Offloading weak reads spreads work over the
replicas, which only helps if the master is what limits throughput. This experiment measures
completed operations per simulated second and the staleness distribution of weak reads against the
share of reads sent weak (0..1) and the number of slaves per shard (0..4), with the clients' read
preference set to slaves (the router's default: a weak read goes to a random slave, or the master
when the shard has none). There are no faults.

What bounds throughput in the simulator: clients are closed-loop (one operation outstanding, then a
think time), and by default a host handles each input the instant it arrives, so throughput is
``clients / (think time + round trip)`` whatever the replicas do: offloading cannot show. The
simulated host has a service-time knob: ``[cluster] node_processing_delay_ms`` in a scenario, the
simulated time each input occupies a data node; this experiment sweeps it
(``node_processing_delays_ms``). With a service time, the master queues client requests *and* its
slaves' acknowledgements, so each slave added costs write throughput while each weak read moved to
a slave frees the master.

Staleness comes from the history checker (``weak_read_staleness``): a weak read is stale by the
time between the completion of the write that replaced the value it returned and the read's
invocation. With the scenario's default network (lognormal latency, sigma 0.3) replication nearly
always reaches a slave before the client's next read, so the experiment uses a heavier latency
tail (``latency_sigma``), as on a busy LAN. Reads count as served by a slave when the answering
node never acknowledged a write (without faults, the masters are exactly the nodes that do).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dimint.core.checker import percentile, weak_read_staleness
from dimint.sim import runner
from dimint.sim.scenario import Scenario
from experiments.common import Provenance, config_dict, parallel_map, save_figure, write_csv

NAME = "read_offload"
# Upper edges (ms, inclusive) of the staleness histogram; the last bin is open-ended.
STALENESS_BINS_MS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Config:
    weak_read_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    replicas: tuple[int, ...] = (0, 1, 2, 3, 4)
    # 0: hosts are infinitely fast (client-bound); 1 ms per input saturates a master at ~1000
    # inputs/s, below what 16 clients offer, so the replicas' share of the work shows.
    node_processing_delays_ms: tuple[float, ...] = (0.0, 1.0)
    replication_mode: str = "async"  # writes never wait on slaves, so slave count acts only via load
    shards: int = 2
    clients: int = 16
    keys: int = 200
    distribution: str = "zipfian"  # hot keys: reads often follow writes to the same key
    read_fraction: float = 0.8
    think_ms: float = 1.0
    latency_ms: float = 1.0
    latency_sigma: float = 1.0
    duration_ms: int = 1000
    settle_ms: int = 1500

    @classmethod
    def quick(cls) -> Config:
        return cls(weak_read_fractions=(0.0, 0.5, 1.0), replicas=(0, 2), duration_ms=400)


def scenario_for(cfg: Config, weak_fraction: float, replicas: int) -> Scenario:
    return Scenario(
        name=f"{NAME}-w{weak_fraction:g}-r{replicas}",
        duration_ms=cfg.duration_ms,
        settle_ms=cfg.settle_ms,
    ).with_changes(
        cluster={
            "shards": cfg.shards,
            "replicas": replicas,
            "min_in_sync": min(1, replicas),
            "replication_mode": cfg.replication_mode,
        },
        network={"latency_ms": cfg.latency_ms, "latency_sigma": cfg.latency_sigma},
        workload={
            "clients": cfg.clients,
            "keys": cfg.keys,
            "distribution": cfg.distribution,
            "read_fraction": cfg.read_fraction,
            "weak_read_fraction": weak_fraction,
            "think_ms": cfg.think_ms,
        },
        faults={"mix": "none"},
    )


def simulate(scenario: Scenario, seed: int, node_processing_delay_ms: float) -> runner.RunResult:
    """``run_scenario`` with a service time on every data node (the scenario's own knob)."""
    return runner.run_scenario(
        scenario.with_changes(cluster={"node_processing_delay_ms": float(node_processing_delay_ms)}), seed
    )


def _histogram(values: list[float]) -> list[int]:
    counts = [0] * (len(STALENESS_BINS_MS) + 1)
    for value in values:
        index = next((i for i, edge in enumerate(STALENESS_BINS_MS) if value <= edge), len(STALENESS_BINS_MS))
        counts[index] += 1
    return counts


def run_one(task: tuple[float, int, float, int, Config]) -> tuple[dict[str, Any], list[int]]:
    """One run: throughput and staleness figures, and the staleness histogram of its weak reads."""
    weak_fraction, replicas, delay_ms, seed, cfg = task
    scenario = scenario_for(cfg, weak_fraction, replicas)
    result = simulate(scenario, seed, delay_ms)
    start, end = cfg.settle_ms, cfg.settle_ms + cfg.duration_ms
    window = [
        op
        for op in result.operations
        if start <= op.invoke_ms < end and not op.is_readback and op.complete_ms is not None
    ]
    ok = [op for op in window if op.outcome == "ok"]
    masters = {op.node for op in result.operations if op.f == "write" and op.outcome == "ok"}
    weak = [op for op in ok if op.f == "read" and op.is_weak]
    strong_reads = [op for op in ok if op.f == "read" and not op.is_weak]
    writes = [op for op in ok if op.f == "write"]
    staleness = weak_read_staleness(result.operations)
    values = [item.staleness_ms for item in staleness.per_read if start <= item.operation.invoke_ms < end]
    seconds = cfg.duration_ms / 1000

    def latency(ops: list[Any]) -> float | None:
        return statistics.fmean(op.complete_ms - op.invoke_ms for op in ops) if ops else None

    row = {
        "weak_read_fraction": weak_fraction,
        "replicas": replicas,
        "node_processing_delay_ms": delay_ms,
        "seed": seed,
        "ops_per_s": len(ok) / seconds,
        "reads_per_s": (len(weak) + len(strong_reads)) / seconds,
        "writes_per_s": len(writes) / seconds,
        "not_ok": len(window) - len(ok),
        "weak_reads": len(weak),
        "weak_reads_by_slaves": sum(op.node not in masters for op in weak),
        # Of all reads completed, the share a slave answered: the load taken off the masters.
        "slave_read_share": (
            sum(op.node not in masters for op in weak) / (len(weak) + len(strong_reads)) if weak else 0.0
        ),
        "weak_latency_ms": latency(weak),
        "strong_read_latency_ms": latency(strong_reads),
        "write_latency_ms": latency(writes),
        "staleness_count": len(values),
        "stale_reads": sum(v > 0 for v in values),
        "stale_fraction": (sum(v > 0 for v in values) / len(values)) if values else 0.0,
        "staleness_mean_ms": statistics.fmean(values) if values else None,
        "staleness_p50_ms": percentile(values, 0.5),
        "staleness_p99_ms": percentile(values, 0.99),
        "staleness_max_ms": max(values) if values else None,
        "unexplained_weak_reads": staleness.unexplained,
        "checks_ok": result.ok,
    }
    return row, _histogram(values)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (None, None)


def aggregate(
    rows: list[dict[str, Any]], histograms: list[list[int]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    groups: dict[tuple[float, int, float], list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[(row["node_processing_delay_ms"], row["replicas"], row["weak_read_fraction"])].append(index)
    summary, hist_rows = [], []
    for (delay, replicas, weak), indexes in sorted(groups.items()):
        items = [rows[i] for i in indexes]
        out: dict[str, Any] = {
            "node_processing_delay_ms": delay,
            "replicas": replicas,
            "weak_read_fraction": weak,
            "seeds": len(items),
        }
        for metric in ("ops_per_s", "writes_per_s", "slave_read_share", "stale_fraction", "staleness_p99_ms"):
            mean, std = _mean_std([r[metric] for r in items if r[metric] is not None])
            out[f"{metric}_mean"], out[f"{metric}_std"] = mean, std
        maxima = [r["staleness_max_ms"] for r in items if r["staleness_max_ms"] is not None]
        out["staleness_max_ms"] = max(maxima) if maxima else None
        out["weak_reads"] = sum(r["weak_reads"] for r in items)
        out["stale_reads"] = sum(r["stale_reads"] for r in items)
        for name in ("weak_latency_ms", "strong_read_latency_ms", "write_latency_ms"):
            out[f"{name}_mean"] = _mean_std([r[name] for r in items if r[name] is not None])[0]
        out["runs_failing_checks"] = sum(not r["checks_ok"] for r in items)
        summary.append(out)
        totals = [sum(histograms[i][b] for i in indexes) for b in range(len(STALENESS_BINS_MS) + 1)]
        low = float("-inf")
        for b, count in enumerate(totals):
            high = STALENESS_BINS_MS[b] if b < len(STALENESS_BINS_MS) else float("inf")
            hist_rows.append(
                {
                    "node_processing_delay_ms": delay,
                    "replicas": replicas,
                    "weak_read_fraction": weak,
                    "staleness_above_ms": low,
                    "staleness_at_most_ms": high,
                    "weak_reads": count,
                }
            )
            low = high
    return summary, hist_rows


def plot(
    summary: list[dict[str, Any]], histogram: list[dict[str, Any]], path: Path, title_note: str = ""
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    delays = sorted({r["node_processing_delay_ms"] for r in summary})
    replicas = sorted({r["replicas"] for r in summary})
    weaks = sorted({r["weak_read_fraction"] for r in summary})
    busy = delays[-1]  # the service-time setting is where offloading can matter

    ax = axes[0, 0]
    for delay in delays:
        for r in replicas:
            rows = [x for x in summary if x["node_processing_delay_ms"] == delay and x["replicas"] == r]
            ax.errorbar(
                [x["weak_read_fraction"] for x in rows],
                [x["ops_per_s_mean"] for x in rows],
                yerr=[x["ops_per_s_std"] for x in rows],
                color=f"C{replicas.index(r)}",  # one colour per slave count, one line style per delay
                marker="o" if delay == busy else ".",
                linestyle="-" if delay == busy else ":",
                capsize=3,
                label=f"{r} slaves, service {delay:g} ms",
            )
    ax.set(xlabel="share of reads sent weak", ylabel="completed operations / simulated s")
    ax.set_title("Throughput against weak-read share")

    ax = axes[0, 1]
    for weak in weaks:
        rows = [
            x for x in summary if x["node_processing_delay_ms"] == busy and x["weak_read_fraction"] == weak
        ]
        ax.errorbar(
            [x["replicas"] for x in rows],
            [x["ops_per_s_mean"] for x in rows],
            yerr=[x["ops_per_s_std"] for x in rows],
            marker="o",
            capsize=3,
            label=f"weak share {weak:g}",
        )
    ax.set(xlabel="slaves per shard", ylabel="completed operations / simulated s", xticks=replicas)
    ax.set_title(f"Throughput against slaves (service time {busy:g} ms per input)")

    ax = axes[1, 0]
    for delay in delays:
        for r in replicas:
            rows = [
                x
                for x in summary
                if x["node_processing_delay_ms"] == delay
                and x["replicas"] == r
                and x["weak_read_fraction"] > 0
            ]
            if not rows:
                continue
            ax.errorbar(
                [x["weak_read_fraction"] for x in rows],
                [x["stale_fraction_mean"] for x in rows],
                yerr=[x["stale_fraction_std"] for x in rows],
                color=f"C{replicas.index(r)}",
                marker="o" if delay == busy else ".",
                linestyle="-" if delay == busy else ":",
                capsize=3,
                label=f"{r} slaves, service {delay:g} ms",
            )
    ax.set(xlabel="share of reads sent weak", ylabel="share of weak reads that were stale")
    ax.set_title("How often a weak read is stale")

    ax = axes[1, 1]
    offloaded = [r for r in replicas if r > 0]
    focus = offloaded[len(offloaded) // 2] if offloaded else replicas[0]
    for delay in delays:
        for weak in weaks:
            bins = [
                h
                for h in histogram
                if h["node_processing_delay_ms"] == delay
                and h["replicas"] == focus
                and h["weak_read_fraction"] == weak
            ]
            total = sum(h["weak_reads"] for h in bins)
            if not total:
                continue
            edges, tail, remaining = [], [], total
            for h in bins:
                remaining -= h["weak_reads"]
                if h["staleness_at_most_ms"] != float("inf"):
                    edges.append(max(h["staleness_at_most_ms"], 0.5))  # 0 ms shown at 0.5 on a log axis
                    tail.append(remaining / total)
            ax.step(
                edges,
                tail,
                where="post",
                color=f"C{weaks.index(weak)}",
                marker="o" if delay == busy else ".",
                linestyle="-" if delay == busy else ":",
                label=f"weak {weak:g}, service {delay:g} ms",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="staleness x (ms; 0 plotted at 0.5)",
        ylabel="P(staleness > x) among weak reads",
    )
    ax.set_title(f"Staleness distribution ({focus} slaves)")
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DiMint read offloading to slaves {title_note}".strip())
    return save_figure(fig, path)


def run(out_dir: Path, seeds: list[int], quick: bool = False, config: Config | None = None) -> str:
    """Every (service time, slaves, weak share, seed) run on all cores; CSVs, PNG; the finding."""
    cfg = config or (Config.quick() if quick else Config())
    tasks = [
        (weak, replicas, delay, seed, cfg)
        for delay in cfg.node_processing_delays_ms
        for replicas in cfg.replicas
        for weak in cfg.weak_read_fractions
        for seed in seeds
    ]
    results = parallel_map(run_one, tasks, desc=NAME)
    rows = [row for row, _ in results]
    summary, histogram = aggregate(rows, [hist for _, hist in results])
    provenance = Provenance.make(NAME, config_dict(cfg, quick), seeds)
    write_csv(out_dir / "runs.csv", rows, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    write_csv(out_dir / "staleness_histogram.csv", histogram, provenance)
    plot(summary, histogram, out_dir / "read_offload.png", f"({len(seeds)} seeds, {cfg.clients} clients)")
    return _headline(summary, cfg, out_dir)


def _headline(summary: list[dict[str, Any]], cfg: Config, out_dir: Path) -> str:
    parts = [f"{NAME}:"]
    for delay in sorted({r["node_processing_delay_ms"] for r in summary}):
        rows = [r for r in summary if r["node_processing_delay_ms"] == delay]
        best = max(rows, key=lambda r: r["ops_per_s_mean"])
        strong = [r for r in rows if r["weak_read_fraction"] == 0]
        base = max(strong, key=lambda r: r["ops_per_s_mean"]) if strong else None
        low = min(r["ops_per_s_mean"] for r in rows)
        text = (
            f"service {delay:g} ms/input: {low:.0f}..{best['ops_per_s_mean']:.0f} ops/s, best with "
            f"{best['replicas']} slaves and weak share {best['weak_read_fraction']:g}"
        )
        if base is not None:
            text += f" (all-strong best {base['ops_per_s_mean']:.0f} with {base['replicas']} slaves)"
        parts.append(text + ";")
    weak_rows = [r for r in summary if r["weak_reads"]]
    stale = sum(r["stale_reads"] for r in weak_rows)
    total = sum(r["weak_reads"] for r in weak_rows)
    worst = max((r["staleness_max_ms"] or 0 for r in weak_rows), default=0)
    parts.append(f"{stale}/{total} weak reads stale (max {worst:g} ms)")
    return " ".join(parts) + f" -> {out_dir}/read_offload.png"
