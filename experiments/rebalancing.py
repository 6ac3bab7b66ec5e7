"""Experiment 1, rebalancing cost: how much data moves when a shard joins or leaves?

For each placement kind, cluster size n and seed, a key set with realistic value sizes is placed on
n shards; then one shard is added and (separately) one random shard is removed. We count the keys
and bytes whose owner changed, and compare with the optimum: on add, 1/(n+1) of the keys (the new
shard's fair share); on remove, exactly the keys the leaving shard held. Modulo sharding is the
baseline the original design argued against; consistent hashing should sit on the optimum line.
The placement's own ``plan(old, new)`` is applied to the key set so the figures are those of the
moves the cluster would really execute.

Then the same join and leave run *online* in the simulator (``sim_sizes``, the first ``sim_seeds``
seeds): a cluster preloaded with ``sim_keys`` keys gets a new shard, which is drained again, under
a light read load. The simulated migration time (first move started to last move switched) shows
what the number of moves costs: consistent hashing moves little data but from every shard, so its
rebalance is a sequence of n small moves, each with its own freeze and map switch.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dimint.core.hashing import key_hashes
from dimint.core.placement import Placement, make_placement, plan
from experiments.common import Provenance, parallel_map, save_figure, write_csv

NAME = "rebalancing"
KINDS = ("modulo", "ring", "rendezvous", "jump", "bounded")


@dataclass(frozen=True)
class Config:
    kinds: tuple[str, ...] = KINDS
    cluster_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    keys: int = 50_000
    mean_value_bytes: int = 200
    vnodes: int | None = None  # None: the placement's default
    epsilon: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)
    # The simulated, online part.
    sim_sizes: tuple[int, ...] = (2, 4, 8, 16)
    sim_keys: int = 20_000
    sim_seeds: int = 3
    sim_replicas: int = 1
    migrate_keys_per_s: int = 200_000

    @classmethod
    def quick(cls) -> Config:
        return cls(
            cluster_sizes=(2, 4, 8, 16, 32, 64), keys=10_000, sim_sizes=(2, 4, 8), sim_keys=5_000, sim_seeds=1
        )


def _placement(kind: str, shard_ids: list[int], cfg: Config, keys: list[bytes]) -> Placement:
    params: dict[str, Any] = {}
    if kind in ("ring", "bounded") and cfg.vnodes is not None:
        params["vnodes"] = cfg.vnodes
    if kind == "bounded":
        params["epsilon"] = cfg.epsilon
        params["keys"] = keys
    return make_placement(kind, shard_ids, **params)


def _moved(old: Placement, new: Placement, hashes: np.ndarray, sizes: np.ndarray) -> tuple[int, int, int]:
    """Keys and bytes the executed plan moves, and how many moves the plan has."""
    before = old.owners_of_hashes(hashes)
    after = new.owners_of_hashes(hashes)
    changed = before != after
    moves = plan(old, new)
    return int(changed.sum()), int(sizes[changed].sum()), len(moves)


def run_one(task: tuple[str, int, int, Config]) -> list[dict[str, Any]]:
    kind, n, seed, cfg = task
    rng = random.Random(f"{NAME}:{kind}:{n}:{seed}")
    keys = [b"key:%016x" % rng.getrandbits(64) for _ in range(cfg.keys)]
    sizes = np.array(
        [max(1, int(rng.lognormvariate(0, 1) * cfg.mean_value_bytes / 1.6487)) for _ in keys], dtype=np.int64
    )
    hashes = key_hashes(keys)
    shard_ids = sorted(rng.sample(range(1, 100_000), n + 1))
    newcomer = shard_ids.pop(rng.randrange(len(shard_ids)))
    base = _placement(kind, shard_ids, cfg, keys)
    loads = np.bincount(np.searchsorted(np.array(shard_ids), base.owners_of_hashes(hashes)), minlength=n)
    peak_to_mean = float(loads.max() / loads.mean())
    total_bytes = int(sizes.sum())
    rows = []

    grown = base.with_shard(newcomer)
    keys_moved, bytes_moved, moves = _moved(base, grown, hashes, sizes)
    optimum = cfg.keys / (n + 1)
    rows.append(
        {
            "kind": kind,
            "shards": n,
            "seed": seed,
            "op": "add",
            "keys": cfg.keys,
            "keys_moved": keys_moved,
            "bytes_moved": bytes_moved,
            "moved_fraction": keys_moved / cfg.keys,
            "optimum_fraction": 1 / (n + 1),
            "moved_over_optimum": keys_moved / optimum,
            "bytes_fraction": bytes_moved / total_bytes,
            "plan_moves": moves,
            "peak_to_mean": peak_to_mean,
        }
    )

    if n >= 2:
        leaving = shard_ids[rng.randrange(n)]
        shrunk = base.without_shard(leaving)
        keys_moved, bytes_moved, moves = _moved(base, shrunk, hashes, sizes)
        held = int((base.owners_of_hashes(hashes) == leaving).sum())
        rows.append(
            {
                "kind": kind,
                "shards": n,
                "seed": seed,
                "op": "remove",
                "keys": cfg.keys,
                "keys_moved": keys_moved,
                "bytes_moved": bytes_moved,
                "moved_fraction": keys_moved / cfg.keys,
                "optimum_fraction": held / cfg.keys,
                "moved_over_optimum": keys_moved / max(held, 1),
                "bytes_fraction": bytes_moved / total_bytes,
                "plan_moves": moves,
                "peak_to_mean": peak_to_mean,
            }
        )
    return rows


def run_sim(task: tuple[str, int, int, Config]) -> list[dict[str, Any]]:
    """One simulated online join-then-leave; rows with simulated durations and client impact."""
    from dimint.sim.runner import run_scenario
    from dimint.sim.scenario import MembershipEvent, Scenario

    kind, n, seed, cfg = task
    scenario = Scenario(
        name=f"{NAME}-{kind}-{n}", duration_ms=1500, settle_ms=1500, liveness_timeout_ms=120_000
    ).with_changes(
        cluster={
            "shards": n,
            "replicas": cfg.sim_replicas,
            "min_in_sync": min(1, cfg.sim_replicas),
            "placement": kind,
            "preload_keys": cfg.sim_keys,
            "preload_value_bytes": cfg.mean_value_bytes,
            "session_timeout_ms": 2000,
            "migrate_keys_per_s": cfg.migrate_keys_per_s,
        },
        workload={"clients": 2, "keys": 20, "read_fraction": 1.0, "think_ms": 10.0},
        membership=(MembershipEvent(1600, "add_shard"), MembershipEvent(1700, "remove_shard", shard=n)),
    )
    result = run_scenario(scenario, seed, full_messages=False)
    rows = []
    for rebalance in result.summary["rebalances"]:
        moves = rebalance["moves"]
        baseline = (rebalance.get("baseline") or {}).get("ops_per_s") or 0.0
        during = (rebalance.get("during") or {}).get("ops_per_s") or 0.0
        rows.append(
            {
                "kind": kind,
                "shards": n,
                "seed": seed,
                "op": "add" if rebalance["reason"].startswith("add") else "remove",
                "ok": result.ok,
                "keys_moved": rebalance["keys_moved"],
                "bytes_moved": rebalance["bytes_moved"],
                "moves": len(moves),
                "migration_ms": rebalance.get("duration_ms"),
                "max_frozen_ms": max((m["frozen_ms"] for m in moves), default=0),
                "throughput_ratio": during / baseline if baseline else None,
            }
        )
    return rows


def aggregate_sim(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["migration_ms"] is not None:
            groups[(row["kind"], row["shards"], row["op"])].append(row)
    out = []
    for (kind, n, op), items in sorted(groups.items()):
        times = [r["migration_ms"] for r in items]
        out.append(
            {
                "kind": kind,
                "shards": n,
                "op": op,
                "seeds": len(items),
                "all_checks_ok": all(r["ok"] for r in items),
                "migration_ms_mean": statistics.fmean(times),
                "migration_ms_std": statistics.pstdev(times),
                "keys_moved_mean": statistics.fmean(r["keys_moved"] for r in items),
                "moves_mean": statistics.fmean(r["moves"] for r in items),
                "max_frozen_ms": max(r["max_frozen_ms"] for r in items),
            }
        )
    return out


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["shards"], row["op"])].append(row)
    summary = []
    for (kind, n, op), items in sorted(groups.items()):
        ratios = [r["moved_over_optimum"] for r in items]
        fractions = [r["moved_fraction"] for r in items]
        summary.append(
            {
                "kind": kind,
                "shards": n,
                "op": op,
                "seeds": len(items),
                "moved_fraction_mean": statistics.fmean(fractions),
                "moved_fraction_std": statistics.pstdev(fractions),
                "moved_over_optimum_mean": statistics.fmean(ratios),
                "moved_over_optimum_std": statistics.pstdev(ratios),
                "optimum_fraction_mean": statistics.fmean(r["optimum_fraction"] for r in items),
                "peak_to_mean_mean": statistics.fmean(r["peak_to_mean"] for r in items),
            }
        )
    return summary


def plot(
    summary: list[dict[str, Any]], path: Path, title_note: str = "", sim: list[dict[str, Any]] | None = None
) -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if sim else 3, figsize=(21 if sim else 16, 4.8))
    kinds = sorted({r["kind"] for r in summary})
    for kind in kinds:
        add = [r for r in summary if r["kind"] == kind and r["op"] == "add"]
        rem = [r for r in summary if r["kind"] == kind and r["op"] == "remove"]
        xs = [r["shards"] for r in add]
        axes[0].errorbar(
            xs,
            [r["moved_fraction_mean"] for r in add],
            yerr=[r["moved_fraction_std"] for r in add],
            marker="o",
            capsize=3,
            label=kind,
        )
        axes[1].errorbar(
            [r["shards"] for r in rem],
            [r["moved_over_optimum_mean"] for r in rem],
            yerr=[r["moved_over_optimum_std"] for r in rem],
            marker="o",
            capsize=3,
            label=kind,
        )
        axes[2].plot(xs, [r["peak_to_mean_mean"] for r in add], marker="o", label=kind)
    sizes = sorted({r["shards"] for r in summary})
    axes[0].plot(sizes, [1 / (n + 1) for n in sizes], "k--", label="optimum 1/(n+1)")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="shards before the join (n)",
        ylabel="fraction of keys moved",
        title="Adding one shard",
    )
    axes[1].axhline(1.0, color="k", linestyle="--", label="optimum")
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="shards before the leave (n)",
        ylabel="keys moved / keys on leaving shard",
        title="Removing one shard",
    )
    axes[2].axhline(1.0, color="k", linestyle="--")
    axes[2].set(xscale="log", xlabel="shards (n)", ylabel="peak / mean keys per shard", title="Load balance")
    if sim:
        for kind in sorted({r["kind"] for r in sim}):
            add = [r for r in sim if r["kind"] == kind and r["op"] == "add"]
            axes[3].errorbar(
                [r["shards"] for r in add],
                [r["migration_ms_mean"] for r in add],
                yerr=[r["migration_ms_std"] for r in add],
                marker="o",
                capsize=3,
                label=kind,
            )
        axes[3].set(
            xscale="log",
            xlabel="shards before the join (n)",
            ylabel="simulated migration time (ms)",
            title="Online join in the simulator",
        )
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    for ax in axes[:3]:
        ax.grid(True, which="major", alpha=0.3)
        # Label exactly the cluster sizes measured; log axes would otherwise print crowded minor labels.
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(s) for s in sizes]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if sim:
        sim_sizes = sorted({r["shards"] for r in sim})
        axes[3].grid(True, which="major", alpha=0.3)
        axes[3].xaxis.set_major_locator(FixedLocator(sim_sizes))
        axes[3].xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(s) for s in sim_sizes]))
        axes[3].xaxis.set_minor_locator(NullLocator())
        axes[3].xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(f"DiMint rebalancing cost by placement strategy {title_note}".strip())
    return save_figure(fig, path)


def run(out_dir: Path, seeds: list[int], quick: bool = False, config: Config | None = None) -> str:
    cfg = config or (Config.quick() if quick else Config())
    tasks = [(kind, n, seed, cfg) for kind in cfg.kinds for n in cfg.cluster_sizes for seed in seeds]
    rows = [row for chunk in parallel_map(run_one, tasks, desc=NAME) for row in chunk]
    sim_seeds = seeds[: cfg.sim_seeds]
    sim_tasks = [(kind, n, seed, cfg) for kind in cfg.kinds for n in cfg.sim_sizes for seed in sim_seeds]
    sim_rows = [
        row for chunk in parallel_map(run_sim, sim_tasks, desc=f"{NAME} (simulated)") for row in chunk
    ]
    provenance = Provenance.make(
        NAME,
        {
            "kinds": list(cfg.kinds),
            "cluster_sizes": list(cfg.cluster_sizes),
            "keys": cfg.keys,
            "mean_value_bytes": cfg.mean_value_bytes,
            "vnodes": cfg.vnodes,
            "epsilon": cfg.epsilon,
            "quick": quick,
            "sim_sizes": list(cfg.sim_sizes),
            "sim_keys": cfg.sim_keys,
            "sim_seeds": sim_seeds,
            "sim_replicas": cfg.sim_replicas,
            "migrate_keys_per_s": cfg.migrate_keys_per_s,
        },
        seeds,
    )
    summary = aggregate(rows)
    write_csv(out_dir / "runs.csv", rows, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    sim_summary = aggregate_sim(sim_rows)
    write_csv(out_dir / "migration_runs.csv", sim_rows, provenance)
    write_csv(out_dir / "migration.csv", sim_summary, provenance)
    plot(summary, out_dir / "rebalancing.png", f"({cfg.keys} keys, {len(seeds)} seeds)", sim_summary)
    ring_add = [r for r in summary if r["kind"] == "ring" and r["op"] == "add"]
    mod_add = [r for r in summary if r["kind"] == "modulo" and r["op"] == "add"]
    nan = float("nan")
    ring_ratio = statistics.fmean(r["moved_over_optimum_mean"] for r in ring_add) if ring_add else nan
    mod_ratio = statistics.fmean(r["moved_over_optimum_mean"] for r in mod_add) if mod_add else nan
    failed = sum(1 for r in sim_rows if not r["ok"])
    ring_sim = [r for r in sim_summary if r["kind"] == "ring" and r["op"] == "add"]
    ring_time = (
        f"; online ring join {ring_sim[0]['migration_ms_mean']:.0f}-"
        f"{ring_sim[-1]['migration_ms_mean']:.0f} ms "
        f"simulated for {ring_sim[0]['shards']}-{ring_sim[-1]['shards']} shards"
        if ring_sim
        else ""
    )
    return (
        f"{NAME}: {len(rows)} runs; adding a shard moves {ring_ratio:.2f}x the optimum with ring, "
        f"{mod_ratio:.1f}x with modulo{ring_time}; {len(sim_rows)} simulated rebalances, "
        f"{failed} failed checks -> {out_dir}/rebalancing.png"
    )
