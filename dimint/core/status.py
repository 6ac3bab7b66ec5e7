"""The cluster as one Overlord sees it, as plain data for ``cluster status``, the dashboard and tests.

Theory of operation
-------------------
The status document is a pure function of an Overlord's state: the map it last read, the latest
report of every node, its recent events and, during a rebalance, each move's metering from the
source's latest report of the move's current attempt (a report of an older attempt would show the
figures of a copy that was abandoned). It holds only JSON- and msgpack-ready values (enums as their
strings), because it travels in an ``AdminReply`` and is written to files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dimint.core.clustermap import MoveInfo

if TYPE_CHECKING:  # the Overlord calls this module; at run time it only reads its attributes
    from dimint.core.overlord import Overlord

__all__ = ["overlord_status"]


def overlord_status(overlord: Overlord) -> dict[str, Any]:
    """Plain-data view of the cluster from ``overlord``'s state."""
    cmap = overlord.map
    process = overlord.process_stats
    return {
        "overlord": overlord.overlord_id,
        "role": overlord.role.value,
        "map_epoch": cmap.epoch if cmap else 0,
        "replication_mode": str(cmap.replication_mode) if cmap else None,
        "shards": [
            {
                "shard_id": s.shard_id,
                "master": s.master,
                "slaves": list(s.slaves),
                "in_sync": list(s.in_sync),
                "shard_epoch": s.shard_epoch,
            }
            for s in sorted(cmap.shards.values(), key=lambda s: s.shard_id)
        ]
        if cmap
        else [],
        "nodes": {
            node_id: {
                "role": r.role,
                "shard_id": r.shard_id,
                "applied_seq": r.applied_seq,
                "keys": r.key_count,
                "bytes": r.approx_bytes,
                "staleness_ms": r.staleness_ms,
                "ops": r.ops_served,
                "address": r.address,
                "shard_epoch": r.shard_epoch,
                "fenced": r.fenced,
                "cpu_percent": r.cpu_percent,
                "rss_bytes": r.rss_bytes,
                "dedup": {"clients": r.dedup_clients, "results": r.dedup_results, "bytes": r.dedup_bytes},
                "reported_at_ms": r.sent_at_ms,
            }
            for node_id, r in sorted(overlord.reports.items())
        },
        "events": list(overlord.events[-50:]),
        "process": (
            {"cpu_percent": process.cpu_percent, "rss_bytes": process.rss_bytes} if process else None
        ),
        "placement": cmap.placement.to_dict()["kind"] if cmap else None,
        "placement_shards": list(cmap.placement.shard_ids) if cmap else [],
        "draining": list(cmap.draining) if cmap else [],
        "rebalance": (
            {
                "rebalance_id": cmap.rebalance.rebalance_id,
                "reason": cmap.rebalance.reason,
                "target_shards": list(cmap.rebalance.target.shard_ids),
                "moves": [
                    {
                        "source": m.source,
                        "target": m.target,
                        "state": str(m.state),
                        "attempt": m.attempt,
                        **_move_metrics(overlord, cmap.rebalance.rebalance_id, m),
                    }
                    for m in cmap.rebalance.moves
                ],
            }
            if cmap and cmap.rebalance
            else None
        ),
    }


def _move_metrics(overlord: Overlord, rebalance_id: int, move: MoveInfo) -> dict[str, Any]:
    report = overlord.move_reports.get((rebalance_id, move.source, move.target))
    if report is None or report.attempt != move.attempt:
        return {}
    return {"keys": report.keys, "bytes": report.bytes, "elapsed_ms": report.elapsed_ms}
