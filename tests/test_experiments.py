"""The experiment pipeline: results are reproducible from their CSV headers and say what they should.

Runs the rebalancing experiment on a small configuration through the same code path as
`dimint experiment run`, then checks the provenance header round-trips, the PNG is written, and the
measured result has the expected shape: ring placement moves about the optimum on a join and exactly
the leaving shard's keys on a leave, while modulo moves far more.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiments import EXPERIMENTS, load
from experiments.common import read_csv, read_provenance
from experiments.rebalancing import Config


def test_rebalancing_small_run(tmp_path: Path) -> None:
    module = load("rebalancing")
    config = Config(cluster_sizes=(4, 8), keys=4000)
    line = module.run(tmp_path, [1, 2], quick=True, config=config)
    assert "rebalancing" in line
    summary = read_csv(tmp_path / "summary.csv")
    by = {(r["kind"], int(r["shards"]), r["op"]): r for r in summary}
    for n in (4, 8):
        ring_add = float(by[("ring", n, "add")]["moved_over_optimum_mean"])
        assert 0.6 < ring_add < 1.6
        assert float(by[("ring", n, "remove")]["moved_over_optimum_mean"]) == 1.0
        assert float(by[("modulo", n, "add")]["moved_over_optimum_mean"]) > 2.5
    provenance = read_provenance(tmp_path / "runs.csv")
    assert provenance["experiment"] == "rebalancing"
    assert provenance["seeds"] == [1, 2]
    assert provenance["config"]["keys"] == 4000
    assert "regenerate" in provenance
    assert (tmp_path / "rebalancing.png").stat().st_size > 10_000


def test_cli_lists_and_rejects_unknown_experiments() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "dimint.cli", "experiment", "list"], capture_output=True, text=True, check=True
    )
    for name in EXPERIMENTS:
        assert name in listing.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "dimint.cli", "experiment", "run", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unknown.returncode != 0
    assert "unknown experiment 'nope'" in unknown.stderr
