"""Experiment 6 end to end: the same scenario in the simulator and on a real local cluster.

What this proves: the experiment really starts a real cluster (on the session's real ZooKeeper),
kills a master with SIGKILL, adds a shard, and reports each metric from both worlds with provenance.
It asserts what must agree (the keys the join moves: placement is deterministic and shared) and
what must hold in each world (a failover within a bound of the session timeout), never a speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments import load
from experiments.common import read_csv, read_provenance
from experiments.sim_vs_real import Config

pytestmark = pytest.mark.real


def test_sim_and_real_agree_on_what_moves_and_both_fail_over(tmp_path: Path, zookeeper: Any) -> None:
    config = Config.quick()
    line = load("sim_vs_real").run(tmp_path, [1], quick=True, config=config, zookeeper=zookeeper.hosts)
    assert "sim_vs_real" in line
    runs = {r["world"]: r for r in read_csv(tmp_path / "runs.csv")}
    assert runs["sim"]["checks_ok"] == "True" and runs["real"]["checks_ok"] == "True"
    assert int(runs["sim"]["keys_moved"]) == int(runs["real"]["keys_moved"]) > 0
    bound = 2 * config.session_timeout_ms + 3000
    for world in ("sim", "real"):
        assert 0 < float(runs[world]["failover_ms"]) < bound, world
    summary = {r["metric"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert float(summary["keys_moved"]["real_over_sim"]) == 1.0
    assert read_provenance(tmp_path / "summary.csv")["experiment"] == "sim_vs_real"
    assert (tmp_path / "sim_vs_real.png").stat().st_size > 10_000
