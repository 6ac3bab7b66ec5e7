"""The timeline of a simulation run: client throughput, with faults, failovers and migrations on it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any


def _throughput(history: Path, bucket_ms: float) -> tuple[list[float], list[int], list[int]]:
    """Operations completed per bucket: (bucket starts, ok counts, fail/info counts)."""
    ok: dict[int, int] = {}
    bad: dict[int, int] = {}
    if history.is_file():
        with history.open() as lines:
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = event.get("type")
                if kind == "invoke" or not isinstance(event.get("time_ms"), int | float):
                    continue
                slot = int(event["time_ms"] // bucket_ms)
                target = ok if kind == "ok" else bad
                target[slot] = target.get(slot, 0) + 1
    slots = range(min([*ok, *bad], default=0), max([*ok, *bad], default=0) + 1)
    return [s * bucket_ms for s in slots], [ok.get(s, 0) for s in slots], [bad.get(s, 0) for s in slots]


def timeline_png(run_dir: Path, summary: dict[str, Any], bucket_ms: float = 100.0) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, ok, bad = _throughput(run_dir / "history.jsonl", bucket_ms)
    per_s = 1000.0 / bucket_ms
    fig, ax = plt.subplots(figsize=(12, 4.2))
    ax.plot(starts, [c * per_s for c in ok], color="tab:blue", lw=1.2, label="ok ops/s")
    ax.plot(starts, [c * per_s for c in bad], color="tab:red", lw=1.0, label="failed or unknown ops/s")
    for index, fault in enumerate(summary.get("faults", [])):
        at = fault.get("at_ms", 0)
        until = fault.get("recovered_at_ms") or at + fault.get("duration_ms", 0)
        ax.axvspan(at, until, color="orange", alpha=0.18, label="fault" if index == 0 else None)
        ax.text(at, ax.get_ylim()[1] * 0.95, fault.get("kind", "?"), fontsize=7, rotation=90, va="top")
    for index, failover in enumerate(summary.get("failovers", [])):
        ax.axvline(
            failover.get("at_ms", 0), color="red", ls="--", lw=1, label="master hit" if index == 0 else None
        )
        if failover.get("first_ack_write_ms") is not None:
            ax.axvline(
                failover["first_ack_write_ms"],
                color="green",
                ls=":",
                lw=1,
                label="writes again" if index == 0 else None,
            )
    first = True
    for rebalance in summary.get("rebalances", []):
        for move in rebalance.get("moves", []):
            ax.axvspan(
                move["started_ms"],
                move["switched_ms"],
                color="purple",
                alpha=0.25,
                label="migration" if first else None,
            )
            first = False
    ax.set(xlabel="simulated time (ms)", ylabel="operations per second", title=f"run {run_dir.name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
