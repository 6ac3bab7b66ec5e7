"""Experiment 6, sim vs real: one scenario in the simulator and on a real local cluster, side by side.

The same story runs twice: a cluster of 2 shards, each a master with 2 slaves, 3 Overlords,
semi-sync replication, ``preload_keys`` keys preloaded; client threads read and write a small key
set; the master of shard 0 is killed (``kill -9`` on the real cluster, a crash in the simulator)
and a second later a replacement process starts (it takes the empty slave slot); later a shard
joins and the placement moves its share of the keys. The real run is a
``LocalCluster`` (real ZooKeeper, Overlord and node processes on loopback, started by the
experiment); the simulated run is ``dimint.sim`` with the same shape, timeouts and schedule.

Per metric we report both values and their divergence (real / simulated):

* ``failover_ms``: from the kill to the first acknowledged write on a key of shard 0;
* ``keys_moved``: keys the join moved (the Overlord's per-move metering); preloaded keys have the
  same names in both worlds and placement is deterministic, so only workload keys may differ;
* ``failover_dip`` and ``migration_dip``: the lowest throughput in a 250 ms window during the
  failover (kill to first acknowledged write + 250 ms) or the migration, over the throughput before
  the kill. Absolute throughput is not compared: simulated hosts are as fast as the scenario's
  service time says, real ones as fast as Python is.

Where they diverge is the point: the simulator models ZooKeeper session expiry, network latency
and timeouts, and a service time per message; it does not model CPU contention between processes,
garbage collection, or the cost of starting a process. Seeds repeat the real run (each repeat starts
a fresh cluster) and the simulated run (each with its own seed).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments.common import Provenance, save_figure, write_csv

NAME = "sim_vs_real"
WINDOW_MS = 250.0


@dataclass(frozen=True)
class Config:
    shards: int = 2
    replicas: int = 2
    session_timeout_ms: int = 2000
    preload_keys: int = 2000
    keys: int = 40
    clients: int = 4
    think_ms: float = 5.0
    kill_at_s: float = 3.0
    replace_after_s: float = 1.0
    join_at_s: float = 9.0
    duration_s: float = 15.0
    node_processing_delay_ms: float = 0.2  # the simulator's stand-in for a real node's CPU per message

    @classmethod
    def quick(cls) -> Config:
        return cls(preload_keys=500, kill_at_s=2.0, join_at_s=6.0, duration_s=9.0)


@dataclass
class _Op:
    start: float  # seconds since the run's time zero
    end: float
    ok: bool
    write: bool
    key: str


def _metrics(
    ops: list[_Op], shard0_keys: set[str], kill_at: float, join_at: float, join_end: float | None
) -> dict:
    """Failover time and throughput dips from a list of operations (times in seconds)."""
    acked = sorted(
        op.end for op in ops if op.ok and op.write and op.key in shard0_keys and op.start >= kill_at
    )
    failover_s = acked[0] - kill_at if acked else None

    def rate(start: float, end: float) -> float:
        return sum(1 for op in ops if op.ok and start <= op.end < end) / max(end - start, 1e-9)

    baseline = rate(max(0.5, kill_at - 1.5), kill_at)

    def dip(start: float, end: float) -> float | None:
        step = WINDOW_MS / 1000
        end = max(end, start + step)  # a change faster than one window still gets one window
        if baseline <= 0:
            return None
        windows = [rate(t, t + step) for t in _frange(start, end, step)]
        return min(windows) / baseline if windows else None

    failover_end = kill_at + (failover_s or 0.0) + WINDOW_MS / 1000
    return {
        "failover_ms": failover_s * 1000 if failover_s is not None else None,
        "failover_dip": dip(kill_at, failover_end),
        "migration_dip": dip(join_at, join_end) if join_end is not None else None,
        "baseline_ops_per_s": baseline,
    }


def _frange(start: float, end: float, step: float) -> list[float]:
    out, t = [], start
    while t + step <= end + 1e-9:
        out.append(t)
        t += step
    return out


# ------------------------------------------------------------------------------------ simulated


def run_sim(cfg: Config, seed: int) -> dict[str, Any]:
    from dimint.core.hashing import key_hash
    from dimint.sim.runner import run_scenario
    from dimint.sim.scenario import FaultEvent, MembershipEvent, Scenario

    settle_ms = 2000
    kill_ms = settle_ms + cfg.kill_at_s * 1000
    join_ms = settle_ms + cfg.join_at_s * 1000
    scenario = Scenario(
        name=NAME,
        duration_ms=int(cfg.duration_s * 1000),
        settle_ms=settle_ms,
        liveness_timeout_ms=30_000,
    ).with_changes(
        cluster={
            "shards": cfg.shards,
            "replicas": cfg.replicas,
            "session_timeout_ms": cfg.session_timeout_ms,
            "preload_keys": cfg.preload_keys,
            "node_processing_delay_ms": cfg.node_processing_delay_ms,
        },
        workload={"clients": cfg.clients, "keys": cfg.keys, "read_fraction": 0.5, "think_ms": cfg.think_ms},
        # The crashed process restarts after replace_after_s: a fresh incarnation, like a new process.
        faults={
            "mix": "schedule",
            "schedule": (FaultEvent(int(kill_ms), "crash", "master:0", int(cfg.replace_after_s * 1000)),),
        },
        membership=(MembershipEvent(int(join_ms), "add_shard"),),
    )
    result = run_scenario(scenario, seed, full_messages=False)
    # Shard 0's keys under the initial placement.
    from dimint.core.placement import make_placement

    placement = make_placement("ring", list(range(cfg.shards)))
    keys = {op.key for op in result.operations}
    shard0 = {k for k in keys if placement.owner_of_hash(key_hash(k)) == 0}
    ops = [
        _Op(
            (op.invoke_ms - settle_ms) / 1000,
            ((op.complete_ms if op.complete_ms is not None else op.invoke_ms) - settle_ms) / 1000,
            op.outcome == "ok",
            op.f != "read",
            op.key,
        )
        for op in result.operations
        if not op.is_readback
    ]
    join = next((r for r in result.summary["rebalances"] if r["reason"].startswith("add")), None)
    join_end = (join["finished_ms"] - settle_ms) / 1000 if join and "finished_ms" in join else None
    metrics = _metrics(ops, shard0, cfg.kill_at_s, cfg.join_at_s, join_end)
    metrics["keys_moved"] = join["keys_moved"] if join else None
    metrics["migration_ms"] = join.get("duration_ms") if join else None
    metrics["checks_ok"] = result.ok
    return metrics


# ---------------------------------------------------------------------------------------- real


def run_real(cfg: Config, seed: int, zookeeper: str | None = None) -> dict[str, Any]:
    from dimint.core.errors import DimintError
    from dimint.real.client import Client
    from dimint.real.local import LocalCluster

    cluster = LocalCluster(
        shards=cfg.shards,
        replicas=cfg.replicas,
        overlords=3,
        mode="semi-sync",
        session_timeout_ms=cfg.session_timeout_ms,
        zookeeper=zookeeper,
    )
    try:
        cluster.up()
        client = Client(cluster.overlord_addresses, timeout=10.0, request_timeout=0.5)
        value = b"v" * 100
        names = [f"pre:{i}" for i in range(cfg.preload_keys)]
        for start in range(0, len(names), 500):
            with client.pipeline() as pipe:
                for name in names[start : start + 500]:
                    pipe.set(name, value)
        cmap = client.cluster_map()
        from dimint.sim.workload import key_name

        keys = [key_name(i) for i in range(cfg.keys)]  # the simulated workload's key names
        shard0 = {k for k in keys if cmap.owner(k) == 0}
        ops: list[_Op] = []
        lock = threading.Lock()
        stop = threading.Event()
        zero = time.monotonic()

        def worker(index: int) -> None:
            import random

            rng = random.Random(seed * 1000 + index)
            counter = 0
            while not stop.is_set():
                key = keys[rng.randrange(len(keys))]
                write = rng.random() < 0.5
                began = time.monotonic() - zero
                try:
                    if write:
                        counter += 1
                        client.set(key, f"{index}:{counter}".encode())
                    else:
                        client.get(key)
                    ok = True
                except DimintError:
                    ok = False
                with lock:
                    ops.append(_Op(began, time.monotonic() - zero, ok, write, key))
                time.sleep(cfg.think_ms / 1000)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(cfg.clients)]
        for thread in threads:
            thread.start()
        _sleep_until(zero, cfg.kill_at_s)
        master = next(s["master"] for s in cluster.status()["shards"] if s["shard_id"] == 0)
        cluster.kill(master, wait=True)
        # The kill is asynchronous: requests the master took before it died are still acknowledged.
        killed_at = time.monotonic() - zero + 0.05
        _sleep_until(zero, cfg.kill_at_s + cfg.replace_after_s)
        cluster.start_node()
        _sleep_until(zero, cfg.join_at_s)
        cluster.add_shard()  # 1 + replicas new processes, then the admin request
        join_end = (
            time.monotonic() - zero
            if cluster.wait_rebalanced(
                cfg.shards + 1, timeout_s=zero + cfg.duration_s + 60 - time.monotonic()
            )
            else None
        )
        _sleep_until(zero, max(cfg.duration_s, (join_end or 0) + 0.5))
        stop.set()
        for thread in threads:
            thread.join(15)
        rebalance = cluster.last_rebalance()
        client.close()
        metrics = _metrics(ops, shard0, killed_at, cfg.join_at_s, join_end)
        metrics["keys_moved"] = rebalance["keys_moved"] if rebalance else None
        # From the leader's decision to its last switch, on the leader's clock (process start-up, which
        # the simulator does not model, is left out, as in the simulated figure).
        metrics["migration_ms"] = (
            rebalance["finished_ms"] - rebalance["started_ms"]
            if rebalance and rebalance["finished_ms"] is not None
            else None
        )
        metrics["checks_ok"] = join_end is not None
        return metrics
    finally:
        cluster.down()


def _sleep_until(zero: float, at_s: float) -> None:
    remaining = zero + at_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


# -------------------------------------------------------------------------------------- report

METRICS = ("failover_ms", "keys_moved", "migration_ms", "failover_dip", "migration_dip")


def summarise(sim: list[dict[str, Any]], real: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for metric in METRICS:
        s = [r[metric] for r in sim if r.get(metric) is not None]
        r = [x[metric] for x in real if x.get(metric) is not None]
        s_mean = statistics.fmean(s) if s else None
        r_mean = statistics.fmean(r) if r else None
        rows.append(
            {
                "metric": metric,
                "sim_mean": s_mean,
                "sim_std": statistics.pstdev(s) if len(s) > 1 else 0.0,
                "real_mean": r_mean,
                "real_std": statistics.pstdev(r) if len(r) > 1 else 0.0,
                "real_over_sim": (r_mean / s_mean) if s_mean and r_mean is not None else None,
            }
        )
    return rows


def plot(summary: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(3.2 * len(summary), 4))
    for ax, row in zip(axes, summary, strict=True):
        values = [row["sim_mean"] or 0, row["real_mean"] or 0]
        ax.bar(
            ["sim", "real"],
            values,
            yerr=[row["sim_std"] or 0, row["real_std"] or 0],
            color=["tab:blue", "tab:orange"],
            capsize=4,
        )
        ratio = row["real_over_sim"]
        ax.set_title(
            f"{row['metric']}\nreal/sim {ratio:.2f}" if ratio is not None else row["metric"], fontsize=9
        )
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("DiMint: the same scenario in the simulator and on a real local cluster")
    return save_figure(fig, path)


def run(
    out_dir: Path,
    seeds: list[int],
    quick: bool = False,
    config: Config | None = None,
    zookeeper: str | None = None,
) -> str:
    """``zookeeper``: an existing ZooKeeper to use (each real run takes a fresh chroot); default: own."""
    cfg = config or (Config.quick() if quick else Config())
    sim_rows, real_rows = [], []
    for seed in seeds:
        sim_rows.append({"world": "sim", "seed": seed, **run_sim(cfg, seed)})
        real_rows.append({"world": "real", "seed": seed, **run_real(cfg, seed, zookeeper)})
    provenance = Provenance.make(NAME, {**asdict(cfg), "quick": quick}, seeds)
    summary = summarise(sim_rows, real_rows)
    write_csv(out_dir / "runs.csv", sim_rows + real_rows, provenance)
    write_csv(out_dir / "summary.csv", summary, provenance)
    plot(summary, out_dir / "sim_vs_real.png")
    by = {r["metric"]: r for r in summary}

    def show(metric: str, unit: str = "") -> str:
        row = by[metric]
        if row["sim_mean"] is None or row["real_mean"] is None:
            return f"{metric} n/a"
        return f"{metric} sim {row['sim_mean']:.0f}{unit} real {row['real_mean']:.0f}{unit}"

    return f"{NAME}: {show('failover_ms', ' ms')}, {show('keys_moved')} -> {out_dir}/sim_vs_real.png"
