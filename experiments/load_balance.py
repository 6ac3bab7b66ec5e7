"""Experiment 2, load balance: how evenly does each placement spread keys, and what does evenness cost?

Two questions. (1) For every placement kind, how uneven are the keys per shard, as max/mean (the
hottest shard's load relative to a fair share: what capacity planning must provision for) and as
relative standard deviation (std/mean: the typical deviation), against the number of virtual nodes
per shard and the cluster size? Consistent hashing's imbalance should shrink like 1/sqrt(vnodes);
modulo, rendezvous and jump have no virtual nodes and should sit on the sampling floor, the spread a
perfectly random assignment of K keys already has (relative std sqrt((n-1)/K)). (2) Bounded-load
placement caps every shard at ceil((1+eps) K/n) keys: how much extra movement on a join does a
tighter cap cost, against the optimum 1/(n+1) of the keys? The answer sets ``epsilon``.

Everything is placement-only: keys are random byte strings hashed with the cluster's own hash
(``key_hashes``), and owners come from ``owners_of_hashes``, so the figures are those of the code the
cluster runs. Shard ids are drawn per seed, so each seed is a different ring. In the CSVs ``vnodes``
is 0 for kinds that have no virtual nodes (modulo, rendezvous, jump), and ``epsilon`` is ``inf`` for
the plain ring used as the no-bound reference of the trade-off.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dimint.core.hashing import key_hashes
from dimint.core.placement import DEFAULT_VNODES, BoundedPlacement, Placement, make_placement
from experiments.common import Provenance, config_dict, parallel_map, save_figure, write_csv

NAME = "load_balance"
KINDS = ("modulo", "ring", "rendezvous", "jump", "bounded")
VNODE_KINDS = ("ring", "bounded")  # the kinds whose balance depends on virtual nodes
# Bounded sits on the ring's line wherever its cap does not bind: distinct styles keep both visible.
STYLES = {
    "modulo": {"marker": "s"},
    "ring": {"marker": "o"},
    "rendezvous": {"marker": "^"},
    "jump": {"marker": "v"},
    "bounded": {"marker": "x", "linestyle": "--"},
}


@dataclass(frozen=True)
class Config:
    kinds: tuple[str, ...] = KINDS
    cluster_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    vnodes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    # The sampling floor is sqrt((n-1)/K): 200k keys put it at 1.8% for 64 shards, below the 3% a
    # 1024-vnode ring reaches, so the ring's own imbalance stays visible.
    keys: int = 200_000
    epsilon: float = 0.25  # the bounded kind's epsilon in the vnodes / cluster-size sweep
    focus_size: int = 16  # cluster size of the "every kind against vnodes" panel
    tradeoff_epsilons: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
    tradeoff_sizes: tuple[int, ...] = (8, 32)

    @classmethod
    def quick(cls) -> Config:
        return cls(
            cluster_sizes=(4, 16, 64),
            vnodes=(1, 4, 16, 64, 256, 1024),
            keys=30_000,
            tradeoff_epsilons=(0.02, 0.1, 0.5, 2.0),
            tradeoff_sizes=(16,),
        )


def _keys(rng: random.Random, count: int) -> list[bytes]:
    return [b"key:%016x" % rng.getrandbits(64) for _ in range(count)]


def _balance(placement: Placement, shard_ids: list[int], hashes: np.ndarray) -> tuple[float, float, float]:
    """(max/mean, relative std, min/mean) of keys per shard; a shard with no key counts as 0."""
    owners = placement.owners_of_hashes(hashes)
    loads = np.bincount(np.searchsorted(np.asarray(shard_ids), owners), minlength=len(shard_ids))
    mean = loads.mean()
    return float(loads.max() / mean), float(loads.std() / mean), float(loads.min() / mean)


def balance_task(task: tuple[int, int, Config]) -> list[dict[str, Any]]:
    """Every kind (and every vnodes value for the ring kinds) on one key set and one shard set."""
    n, seed, cfg = task
    rng = random.Random(f"{NAME}:balance:{n}:{seed}")
    keys = _keys(rng, cfg.keys)
    hashes = key_hashes(keys)
    shard_ids = sorted(rng.sample(range(1, 1_000_000), n))
    sampling_floor = math.sqrt((n - 1) / cfg.keys)
    rows = []
    for kind in cfg.kinds:
        settings: list[dict[str, Any]] = [{"vnodes": v} for v in cfg.vnodes] if kind in VNODE_KINDS else [{}]
        for params in settings:
            if kind == "bounded":
                params = {**params, "epsilon": cfg.epsilon, "keys": keys}
            placement = make_placement(kind, shard_ids, **params)
            max_over_mean, rel_std, min_over_mean = _balance(placement, shard_ids, hashes)
            rows.append(
                {
                    "kind": kind,
                    "shards": n,
                    "vnodes": params.get("vnodes", 0),
                    "seed": seed,
                    "keys": cfg.keys,
                    "max_over_mean": max_over_mean,
                    "rel_std": rel_std,
                    "min_over_mean": min_over_mean,
                    "sampling_rel_std": sampling_floor,
                }
            )
    return rows


def tradeoff_task(task: tuple[int, float, int, Config]) -> dict[str, Any]:
    """Balance before, and keys moved by, one join, for bounded(eps) or (eps = inf) the plain ring."""
    n, epsilon, seed, cfg = task
    rng = random.Random(f"{NAME}:tradeoff:{n}:{seed}")  # same keys and shards for every epsilon
    keys = _keys(rng, cfg.keys)
    hashes = key_hashes(keys)
    ids = sorted(rng.sample(range(1, 1_000_000), n + 1))
    newcomer = ids.pop(rng.randrange(len(ids)))
    if math.isinf(epsilon):
        kind, base = "ring", make_placement("ring", ids)
    else:
        kind, base = "bounded", make_placement("bounded", ids, epsilon=epsilon, keys=keys)
    max_over_mean, rel_std, _ = _balance(base, ids, hashes)
    # The price of the bound that movement does not show: keys held away from their ring owner are
    # per-key state the cluster map must carry (8-byte hash + shard each) and ship on every change.
    off_ring = float((base.owners_of_hashes(hashes) != _ring_of(base).owners_of_hashes(hashes)).mean())
    grown = base.with_shard(newcomer)
    moved = int((base.owners_of_hashes(hashes) != grown.owners_of_hashes(hashes)).sum())
    grown_ids = sorted([*ids, newcomer])
    grown_max, _, _ = _balance(grown, grown_ids, hashes)
    # The hard cap of bounded placement, relative to the mean: what max/mean may never exceed.
    cap = math.ceil((1 + epsilon) * cfg.keys / n) / (cfg.keys / n) if kind == "bounded" else math.inf
    return {
        "kind": kind,
        "epsilon": epsilon,
        "shards": n,
        "seed": seed,
        "keys": cfg.keys,
        "max_over_mean": max_over_mean,
        "rel_std": rel_std,
        "cap_over_mean": cap,
        "max_over_mean_after_join": grown_max,
        "moved_fraction": moved / cfg.keys,
        "optimum_fraction": 1 / (n + 1),
        "moved_over_optimum": moved / (cfg.keys / (n + 1)),
        "off_ring_fraction": off_ring,
    }


def _ring_of(placement: Placement) -> Placement:
    return placement.ring if isinstance(placement, BoundedPlacement) else placement


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


def aggregate_balance(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["shards"], row["vnodes"])].append(row)
    summary = []
    for (kind, n, vnodes), items in sorted(groups.items()):
        mm, mm_std = _mean_std([r["max_over_mean"] for r in items])
        rs, rs_std = _mean_std([r["rel_std"] for r in items])
        summary.append(
            {
                "kind": kind,
                "shards": n,
                "vnodes": vnodes,
                "seeds": len(items),
                "max_over_mean_mean": mm,
                "max_over_mean_std": mm_std,
                "rel_std_mean": rs,
                "rel_std_std": rs_std,
                "min_over_mean_mean": statistics.fmean(r["min_over_mean"] for r in items),
                "sampling_rel_std": items[0]["sampling_rel_std"],
            }
        )
    return summary


def aggregate_tradeoff(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["shards"], row["epsilon"])].append(row)
    summary = []
    for (n, epsilon), items in sorted(groups.items()):
        mm, mm_std = _mean_std([r["max_over_mean"] for r in items])
        mo, mo_std = _mean_std([r["moved_over_optimum"] for r in items])
        summary.append(
            {
                "kind": items[0]["kind"],
                "epsilon": epsilon,
                "shards": n,
                "seeds": len(items),
                "max_over_mean_mean": mm,
                "max_over_mean_std": mm_std,
                "max_over_mean_max": max(r["max_over_mean"] for r in items),
                "cap_over_mean": items[0]["cap_over_mean"],
                "moved_over_optimum_mean": mo,
                "moved_over_optimum_std": mo_std,
                "rel_std_mean": statistics.fmean(r["rel_std"] for r in items),
                "off_ring_fraction_mean": statistics.fmean(r["off_ring_fraction"] for r in items),
                "off_ring_fraction_std": statistics.pstdev(r["off_ring_fraction"] for r in items),
            }
        )
    return summary


def _log_ticks(ax: Any, values: list[int]) -> None:
    """Label exactly the values measured; a log axis would otherwise print crowded minor labels."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FixedFormatter([str(v) for v in values]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_balance(summary: list[dict[str, Any]], cfg: Config, path: Path, title_note: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    vnodes = sorted({r["vnodes"] for r in summary if r["vnodes"]})
    sizes = sorted({r["shards"] for r in summary})
    kinds = [k for k in KINDS if any(r["kind"] == k for r in summary)]

    # (a) ring: relative std against vnodes, one line per cluster size, with the 1/sqrt(v) law.
    ax = axes[0, 0]
    for n in sizes:
        ring = [r for r in summary if r["kind"] == "ring" and r["shards"] == n]
        if ring:
            ax.errorbar(
                [r["vnodes"] for r in ring],
                [r["rel_std_mean"] for r in ring],
                yerr=[r["rel_std_std"] for r in ring],
                marker="o",
                capsize=3,
                label=f"ring, n={n}",
            )
    if vnodes:
        ax.plot(vnodes, [1 / math.sqrt(v) for v in vnodes], "k--", label="1/sqrt(vnodes)")
        floor = max(r["sampling_rel_std"] for r in summary)
        ax.axhline(floor, color="grey", linestyle=":", label=f"sampling floor (n={max(sizes)})")
        _log_ticks(ax, vnodes)
    ax.set(yscale="log", xlabel="virtual nodes per shard", ylabel="relative std of keys per shard")
    ax.set_title("Consistent hashing: spread against vnodes")

    # (b) every kind at the focus size: max/mean against vnodes (vnode-free kinds are flat).
    ax = axes[0, 1]
    focus = cfg.focus_size if cfg.focus_size in sizes else sizes[len(sizes) // 2]
    for kind in kinds:
        rows = [r for r in summary if r["kind"] == kind and r["shards"] == focus]
        if not rows:
            continue
        if kind in VNODE_KINDS:
            ax.errorbar(
                [r["vnodes"] for r in rows],
                [r["max_over_mean_mean"] for r in rows],
                yerr=[r["max_over_mean_std"] for r in rows],
                capsize=3,
                label=kind if kind != "bounded" else f"bounded (eps={cfg.epsilon})",
                **STYLES.get(kind, {}),
            )
        elif vnodes:
            mean, std = rows[0]["max_over_mean_mean"], rows[0]["max_over_mean_std"]
            line = ax.plot(vnodes, [mean] * len(vnodes), linestyle="--", label=f"{kind} (no vnodes)")[0]
            ax.fill_between(vnodes, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.axhline(1.0, color="k", linewidth=0.8)
    if vnodes:
        _log_ticks(ax, vnodes)
    ax.set(yscale="log", xlabel="virtual nodes per shard", ylabel="max / mean keys per shard")
    ax.set_title(f"Hottest shard against vnodes (n={focus})")

    # (c, d) every kind at the default vnodes: max/mean and relative std against cluster size.
    for ax, metric, label in (
        (axes[1, 0], "max_over_mean", "max / mean keys per shard"),
        (axes[1, 1], "rel_std", "relative std of keys per shard"),
    ):
        for kind in kinds:
            rows = [
                r
                for r in summary
                if r["kind"] == kind and (r["vnodes"] in (0, DEFAULT_VNODES) or kind not in VNODE_KINDS)
            ]
            if kind in VNODE_KINDS and not any(r["vnodes"] == DEFAULT_VNODES for r in rows):
                continue
            rows = [r for r in rows if kind not in VNODE_KINDS or r["vnodes"] == DEFAULT_VNODES]
            ax.errorbar(
                [r["shards"] for r in rows],
                [r[f"{metric}_mean"] for r in rows],
                yerr=[r[f"{metric}_std"] for r in rows],
                capsize=3,
                label=kind if kind != "bounded" else f"bounded (eps={cfg.epsilon})",
                **STYLES.get(kind, {}),
            )
        if metric == "rel_std":
            floors = {r["shards"]: r["sampling_rel_std"] for r in summary}
            ax.plot(sizes, [floors[n] for n in sizes], "k:", label="sampling floor sqrt((n-1)/K)")
        _log_ticks(ax, sizes)
        ax.set(xlabel="shards (n)", ylabel=label)
        ax.set_title(f"Against cluster size ({DEFAULT_VNODES} vnodes for ring kinds)")
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DiMint load balance by placement strategy {title_note}".strip())
    return save_figure(fig, path)


def plot_tradeoff(summary: list[dict[str, Any]], path: Path, title_note: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    sizes = sorted({r["shards"] for r in summary})
    for n in sizes:
        bounded = [r for r in summary if r["shards"] == n and r["kind"] == "bounded"]
        ring = [r for r in summary if r["shards"] == n and r["kind"] == "ring"]
        eps = [r["epsilon"] for r in bounded]
        line = axes[0].errorbar(
            eps,
            [r["max_over_mean_mean"] for r in bounded],
            yerr=[r["max_over_mean_std"] for r in bounded],
            marker="o",
            capsize=3,
            label=f"bounded, n={n}",
        )
        color = line[0].get_color()
        for r in ring:
            axes[0].axhline(r["max_over_mean_mean"], color=color, linestyle=":", label=f"ring, n={n}")
        axes[1].errorbar(
            eps,
            [r["moved_over_optimum_mean"] for r in bounded],
            yerr=[r["moved_over_optimum_std"] for r in bounded],
            marker="o",
            capsize=3,
            color=color,
            label=f"bounded, n={n}",
        )
        for r in ring:
            axes[1].axhline(r["moved_over_optimum_mean"], color=color, linestyle=":", label=f"ring, n={n}")
        axes[2].errorbar(
            eps,
            [r["off_ring_fraction_mean"] for r in bounded],
            yerr=[r["off_ring_fraction_std"] for r in bounded],
            marker="o",
            capsize=3,
            color=color,
            label=f"bounded, n={n}",
        )
    all_eps = sorted({r["epsilon"] for r in summary if r["kind"] == "bounded"})
    axes[0].plot(all_eps, [1 + e for e in all_eps], "k--", label="cap 1+eps")
    axes[0].set(yscale="log", ylabel="max / mean keys per shard", title="Balance: the cap holds")
    axes[1].axhline(1.0, color="k", linestyle="--", label="optimum 1/(n+1)")
    axes[1].set(ylabel="keys moved on a join / optimum 1/(n+1)", title="Movement on a join")
    axes[2].set(ylabel="share of keys off their ring owner", title="Per-key state the map must carry")
    for ax in axes:
        ax.set(xscale="log", xlabel="epsilon (ring: dotted)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DiMint bounded-load trade-off {title_note}".strip())
    return save_figure(fig, path)


def run(out_dir: Path, seeds: list[int], quick: bool = False, config: Config | None = None) -> str:
    """Both studies over ``seeds`` (tasks on all cores); CSVs and PNGs into ``out_dir``; the finding."""
    cfg = config or (Config.quick() if quick else Config())
    balance_tasks = [(n, seed, cfg) for n in cfg.cluster_sizes for seed in seeds]
    # inf: the plain ring, the "no bound" end of the trade-off.
    epsilons = [*cfg.tradeoff_epsilons, math.inf]
    tradeoff_tasks = [(n, eps, seed, cfg) for n in cfg.tradeoff_sizes for eps in epsilons for seed in seeds]
    chunks = parallel_map(balance_task, balance_tasks, desc=f"{NAME}:vnodes")
    rows = [row for chunk in chunks for row in chunk]
    tradeoff_rows = parallel_map(tradeoff_task, tradeoff_tasks, desc=f"{NAME}:epsilon")
    provenance = Provenance.make(NAME, config_dict(cfg, quick), seeds)
    summary = aggregate_balance(rows)
    tradeoff = aggregate_tradeoff(tradeoff_rows)
    write_csv(out_dir / "runs.csv", rows, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    write_csv(out_dir / "tradeoff_runs.csv", tradeoff_rows, provenance)
    write_csv(out_dir / "tradeoff.csv", tradeoff, provenance)
    note = f"({cfg.keys} keys, {len(seeds)} seeds)"
    plot_balance(summary, cfg, out_dir / "load_balance.png", note)
    plot_tradeoff(tradeoff, out_dir / "bounded_tradeoff.png", note)
    return _headline(summary, tradeoff, cfg, out_dir)


def _headline(
    summary: list[dict[str, Any]], tradeoff: list[dict[str, Any]], cfg: Config, out_dir: Path
) -> str:
    focus_sizes = sorted({r["shards"] for r in summary})
    focus = cfg.focus_size if cfg.focus_size in focus_sizes else focus_sizes[len(focus_sizes) // 2]
    ring = sorted(
        (r for r in summary if r["kind"] == "ring" and r["shards"] == focus), key=lambda r: r["vnodes"]
    )
    parts = [f"{NAME}:"]
    if ring:
        parts.append(
            f"ring rel-std at n={focus} falls from {ring[0]['rel_std_mean']:.1%} "
            f"({ring[0]['vnodes']} vnodes) to {ring[-1]['rel_std_mean']:.1%} ({ring[-1]['vnodes']});"
        )
    at_default = {
        r["kind"]: r["max_over_mean_mean"]
        for r in summary
        if r["shards"] == focus and (r["vnodes"] == 0 or r["vnodes"] == DEFAULT_VNODES)
    }
    if at_default:
        listed = ", ".join(f"{k} {v:.2f}" for k, v in sorted(at_default.items()))
        parts.append(f"max/mean at {DEFAULT_VNODES} vnodes: {listed};")
    bounded = [r for r in tradeoff if r["kind"] == "bounded"]
    if bounded:
        tight = min(bounded, key=lambda r: (r["epsilon"], r["shards"]))
        loose = max(bounded, key=lambda r: (r["epsilon"], -r["shards"]))
        parts.append(
            f"bounded eps={tight['epsilon']:g} -> max/mean {tight['max_over_mean_mean']:.3f} at "
            f"{tight['moved_over_optimum_mean']:.2f}x optimal movement with "
            f"{tight['off_ring_fraction_mean']:.1%} of keys off-ring, eps={loose['epsilon']:g} -> "
            f"{loose['max_over_mean_mean']:.2f} at {loose['moved_over_optimum_mean']:.2f}x with "
            f"{loose['off_ring_fraction_mean']:.1%} (n={tight['shards']})"
        )
    return " ".join(parts) + f" -> {out_dir}/load_balance.png"
