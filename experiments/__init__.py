"""One module per experiment; each has NAME, a docstring, and ``run(out_dir, seeds, quick) -> str``."""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS: dict[str, str] = {
    "rebalancing": "experiments.rebalancing",
    "load_balance": "experiments.load_balance",
    "failover": "experiments.failover",
    "read_offload": "experiments.read_offload",
    "routing": "experiments.routing",
    "sim_vs_real": "experiments.sim_vs_real",
}


def load(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    return importlib.import_module(EXPERIMENTS[name])
