"""What every experiment shares: provenance, CSV with a self-describing header, parallel seed sweeps.

Why a header: a plot must be regenerable from its CSV alone, so each CSV starts with ``#`` lines
holding the DiMint version and commit, the experiment, its configuration, the seeds and the date.
``read_csv`` skips them and ``read_provenance`` parses them back.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

import dimint

T = TypeVar("T")
R = TypeVar("R")

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    experiment: str
    config: dict[str, Any]
    seeds: list[int]
    version: str = dimint.__version__
    commit: str = ""
    date: str = ""

    @classmethod
    def make(cls, experiment: str, config: dict[str, Any], seeds: Sequence[int]) -> Provenance:
        return cls(
            experiment=experiment,
            config=config,
            seeds=list(seeds),
            commit=git_commit(),
            date=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )

    def header_lines(self) -> list[str]:
        return [
            f"# dimint {self.version} commit {self.commit}",
            f"# experiment: {self.experiment}",
            f"# date: {self.date}",
            f"# seeds: {json.dumps(self.seeds)}",
            f"# config: {json.dumps(self.config, sort_keys=True)}",
            f"# regenerate: dimint experiment run {self.experiment} --seeds {','.join(map(str, self.seeds))}",
        ]


def write_csv(path: Path, rows: Sequence[dict[str, Any]], provenance: Provenance) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else []
    with path.open("w", newline="") as handle:
        for line in provenance.header_lines():
            handle.write(line + "\n")
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return list(csv.DictReader(lines))


def read_provenance(path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    with path.open() as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            body = line[1:].strip()
            if body.startswith("dimint "):
                _, version, _, commit = body.split()
                meta["version"], meta["commit"] = version, commit
            elif ": " in body:
                name, value = body.split(": ", 1)
                meta[name] = json.loads(value) if name in ("seeds", "config") else value
    return meta


def parallel_map(
    func: Callable[[T], R], items: Iterable[T], *, desc: str, workers: int | None = None
) -> list[R]:
    """Map over items on all cores with a progress bar; results keep the input order.

    Determinism does not depend on scheduling: each item carries its own seed.
    """
    items = list(items)
    workers = workers if workers is not None else min(len(items), os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in tqdm(items, desc=desc, leave=False)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(func, items, chunksize=1), total=len(items), desc=desc, leave=False))


def config_dict(config: Any, quick: bool) -> dict[str, Any]:
    """A dataclass config as the plain JSON a provenance header records (tuples become lists)."""
    from dataclasses import asdict

    data = {
        name: list(value) if isinstance(value, tuple) else value for name, value in asdict(config).items()
    }
    return data | {"quick": quick}


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure: every plot ends this way."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
