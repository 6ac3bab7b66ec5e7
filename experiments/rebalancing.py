"""Experiment 1, rebalancing cost: how much data moves when a shard joins or leaves?

For each placement kind, cluster size n and seed, a key set with realistic value sizes is placed on
n shards; then one shard is added and (separately) one random shard is removed. We count the keys
and bytes whose owner changed, and compare with the optimum: on add, 1/(n+1) of the keys (the new
shard's fair share); on remove, exactly the keys the leaving shard held. Modulo sharding is the
baseline the original design argued against; consistent hashing should sit on the optimum line.
The placement's own ``plan(old, new)`` is applied to the key set so the figures are those of the
moves the cluster would really execute.
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
from experiments.common import Provenance, parallel_map, write_csv

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

    @classmethod
    def quick(cls) -> Config:
        return cls(cluster_sizes=(2, 4, 8, 16, 32, 64), keys=10_000)


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


def plot(summary: list[dict[str, Any]], path: Path, title_note: str = "") -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
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
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        # Label exactly the cluster sizes measured; log axes would otherwise print crowded minor labels.
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(s) for s in sizes]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(f"DiMint rebalancing cost by placement strategy {title_note}".strip())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(out_dir: Path, seeds: list[int], quick: bool = False, config: Config | None = None) -> str:
    cfg = config or (Config.quick() if quick else Config())
    tasks = [(kind, n, seed, cfg) for kind in cfg.kinds for n in cfg.cluster_sizes for seed in seeds]
    rows = [row for chunk in parallel_map(run_one, tasks, desc=NAME) for row in chunk]
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
        },
        seeds,
    )
    summary = aggregate(rows)
    write_csv(out_dir / "runs.csv", rows, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    plot(summary, out_dir / "rebalancing.png", f"({cfg.keys} keys, {len(seeds)} seeds)")
    ring_add = [r for r in summary if r["kind"] == "ring" and r["op"] == "add"]
    mod_add = [r for r in summary if r["kind"] == "modulo" and r["op"] == "add"]
    nan = float("nan")
    ring_ratio = statistics.fmean(r["moved_over_optimum_mean"] for r in ring_add) if ring_add else nan
    mod_ratio = statistics.fmean(r["moved_over_optimum_mean"] for r in mod_add) if mod_add else nan
    return (
        f"{NAME}: {len(rows)} runs; adding a shard moves {ring_ratio:.2f}x the optimum with ring, "
        f"{mod_ratio:.1f}x with modulo -> {out_dir}/rebalancing.png"
    )
