"""Where DiMint keeps its state in the coordination service (ZooKeeper paths and znode payloads).

Why sequential ephemerals for node registration: a node that crashes and restarts quickly may find
its previous session's znode still present until that session expires. With ``<node_id>_<seq>`` the
new incarnation registers at once under a fresh name, and the Overlord leader can tell a restart
(a new name for a known node id) from a node that merely stayed.
"""

from __future__ import annotations

from typing import Any

import msgpack

ROOT = "/dimint"
MAP_PATH = f"{ROOT}/map"
NODES_PATH = f"{ROOT}/nodes"
ELECTION_PATH = f"{ROOT}/election"


def node_znode_prefix(node_id: str) -> str:
    return f"{NODES_PATH}/{node_id}_"


def parse_node_znode(name: str) -> tuple[str, int] | None:
    """``"n3_0000000012"`` -> ``("n3", 12)``; None for names that are not node registrations."""
    node_id, sep, seq = name.rpartition("_")
    if not sep or not node_id or not seq.isdigit():
        return None
    return node_id, int(seq)


def encode_payload(data: dict[str, Any]) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def decode_payload(raw: bytes | None) -> dict[str, Any]:
    """Decode a znode payload written by ``encode_payload``; anything else reads as empty."""
    if not raw:
        return {}
    try:
        data = msgpack.unpackb(raw, raw=False)
    except Exception:  # a foreign or corrupt payload must not crash a coordinator
        return {}
    return data if isinstance(data, dict) else {}
