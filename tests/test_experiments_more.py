"""Experiments 2-4 (load balance, failover, read offloading) on tiny configurations.

Each test runs an experiment through ``run`` (the code path of ``dimint experiment run``) on a grid
small enough for CI, then checks that the CSV provenance header round-trips, that the PNG plots are
written, and that the measured result has the shape the design predicts:

* load balance: a ring's relative spread shrinks as virtual nodes grow; bounded placement never lets
  a shard exceed its cap ceil((1+eps) K/n); modulo, rendezvous and jump sit near the sampling floor.
* failover: semi-sync and sync lose no acknowledged write (invariant 4), every failover completes,
  and the unavailability window is of the order of the session timeout.
* read offloading: weak reads reach slaves only when there are weak reads and slaves; staleness is
  measured only for weak reads and is zero when the master serves them; a run is a pure function of
  (config, seed) including the service-time path the experiment adds.

Async loss is measured, not asserted: it depends on timing.
"""

from __future__ import annotations

import math
from pathlib import Path

from experiments import load
from experiments.common import read_csv, read_provenance


def _check_provenance(path: Path, name: str, seeds: list[int]) -> dict:
    provenance = read_provenance(path)
    assert provenance["experiment"] == name
    assert provenance["seeds"] == seeds
    assert "regenerate" in provenance and "commit" in provenance and "date" in provenance
    return provenance["config"]


def test_load_balance_small_run(tmp_path: Path) -> None:
    module = load("load_balance")
    config = module.Config(
        cluster_sizes=(4, 16),
        vnodes=(1, 16, 256),
        keys=20_000,
        focus_size=16,
        tradeoff_epsilons=(0.02, 0.5),
        tradeoff_sizes=(8,),
    )
    line = module.run(tmp_path, [1, 2], config=config)
    assert line.startswith("load_balance:")

    summary = read_csv(tmp_path / "summary.csv")
    by = {(r["kind"], int(r["shards"]), int(r["vnodes"])): r for r in summary}
    for n in (4, 16):
        spreads = [float(by["ring", n, v]["rel_std_mean"]) for v in (1, 16, 256)]
        assert spreads[0] > spreads[1] > spreads[2], spreads
        for kind in ("modulo", "rendezvous", "jump"):
            row = by[kind, n, 0]
            # Hash-based kinds are as even as random assignment: within 3x the sampling floor.
            assert float(row["rel_std_mean"]) < 3 * float(row["sampling_rel_std"])
    for row in read_csv(tmp_path / "runs.csv"):
        if row["kind"] == "bounded":
            n, keys = int(row["shards"]), int(row["keys"])
            assert float(row["max_over_mean"]) <= 1 + config.epsilon + n / keys + 1e-9

    tradeoff_runs = read_csv(tmp_path / "tradeoff_runs.csv")
    assert {float(r["epsilon"]) for r in tradeoff_runs} == {0.02, 0.5, math.inf}
    for row in tradeoff_runs:
        if row["kind"] == "bounded":
            eps, n, keys = float(row["epsilon"]), int(row["shards"]), int(row["keys"])
            assert float(row["max_over_mean"]) <= float(row["cap_over_mean"]) + 1e-9
            assert float(row["cap_over_mean"]) <= 1 + eps + n / keys + 1e-9
            # A join moves keys only to the newcomer, so about the optimum 1/(n+1) of them.
            assert 0.5 < float(row["moved_over_optimum"]) < 1.6

    config_back = _check_provenance(tmp_path / "tradeoff.csv", "load_balance", [1, 2])
    assert config_back["keys"] == 20_000 and config_back["vnodes"] == [1, 16, 256]
    for png in ("load_balance.png", "bounded_tradeoff.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_failover_small_run(tmp_path: Path) -> None:
    module = load("failover")
    config = module.Config(session_timeouts_ms=(600,), shards=2, clients=4, keys=30, recovery_gap_ms=2000)
    line = module.run(tmp_path, [1], config=config)
    assert line.startswith("failover:")

    runs = read_csv(tmp_path / "runs.csv")
    assert len(runs) == 2 * 3  # (crash, partition) x (async, semi-sync, sync)
    for run in runs:
        assert int(run["failovers"]) == 2, run
        if run["mode"] in ("semi-sync", "sync"):
            assert int(run["lost_acknowledged_writes"]) == 0, run
            assert run["checks_ok"] == "True", run["first_failure"]
    for row in read_csv(tmp_path / "failovers.csv"):
        assert row["recovered_ms"] != "", row
        # A new master needs the old session to expire: at least ~2/3 of the timeout, well within 3x.
        assert 0.5 * 600 <= float(row["recovered_ms"]) <= 3 * 600, row

    config_back = _check_provenance(tmp_path / "summary.csv", "failover", [1])
    assert config_back["session_timeouts_ms"] == [600]
    assert (tmp_path / "failover.png").stat().st_size > 10_000


def test_read_offload_small_run(tmp_path: Path) -> None:
    module = load("read_offload")
    config = module.Config(
        weak_read_fractions=(0.0, 1.0), replicas=(0, 2), node_processing_delays_ms=(0.0,), duration_ms=300
    )
    line = module.run(tmp_path, [1], config=config)
    assert line.startswith("read_offload:")

    rows = {(float(r["weak_read_fraction"]), int(r["replicas"])): r for r in read_csv(tmp_path / "runs.csv")}
    for (weak, replicas), row in rows.items():
        assert float(row["ops_per_s"]) > 100, row
        assert row["checks_ok"] == "True"
        if weak == 0:
            assert int(row["weak_reads"]) == 0 and int(row["staleness_count"]) == 0
        if weak == 0 or replicas == 0:
            assert float(row["slave_read_share"]) == 0.0
        if replicas == 0:
            assert int(row["stale_reads"]) == 0  # the master always has the latest value
    # Every read weak, two slaves: the slaves serve every read.
    assert float(rows[1.0, 2]["slave_read_share"]) == 1.0
    assert int(rows[1.0, 2]["staleness_count"]) > 0

    histogram = read_csv(tmp_path / "staleness_histogram.csv")
    summary = read_csv(tmp_path / "summary.csv")
    for row in summary:
        key = (row["node_processing_delay_ms"], row["replicas"], row["weak_read_fraction"])
        counted = sum(
            int(h["weak_reads"])
            for h in histogram
            if (h["node_processing_delay_ms"], h["replicas"], h["weak_read_fraction"]) == key
        )
        in_runs = sum(
            int(r["staleness_count"])
            for r in rows.values()
            if (r["node_processing_delay_ms"], r["replicas"], r["weak_read_fraction"]) == key
        )
        assert counted == in_runs

    config_back = _check_provenance(tmp_path / "runs.csv", "read_offload", [1])
    assert config_back["replicas"] == [0, 2]
    assert (tmp_path / "read_offload.png").stat().st_size > 10_000


def test_read_offload_service_time_run_is_deterministic() -> None:
    """The service-time path builds the cluster itself; it must stay a pure function of the seed."""
    module = load("read_offload")
    config = module.Config(duration_ms=200)
    task = (0.5, 1, 1.0, 7, config)
    first, second = module.run_one(task), module.run_one(task)
    assert first == second
    assert first[0]["slave_read_share"] > 0


def test_routing_proxy_costs_throughput_and_latency(tmp_path: Path) -> None:
    from experiments.routing import Config as RoutingConfig

    config = RoutingConfig(client_counts=(16,), duration_ms=800)
    line = load("routing").run(tmp_path, [1], quick=True, config=config)
    assert "routing" in line
    summary = {r["mode"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert summary["direct"]["all_checks_ok"] == "True" and summary["proxy"]["all_checks_ok"] == "True"
    # One more hop and a queue at the Overlords: less throughput, no better latency.
    assert float(summary["proxy"]["ops_per_s_mean"]) < float(summary["direct"]["ops_per_s_mean"])
    assert float(summary["proxy"]["latency_p99_ms_mean"]) >= float(summary["direct"]["latency_p99_ms_mean"])
    assert read_provenance(tmp_path / "runs.csv")["experiment"] == "routing"
    assert (tmp_path / "routing.png").stat().st_size > 10_000
