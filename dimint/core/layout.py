"""Where DiMint keeps its state in the coordination service (ZooKeeper paths and znode payloads).

Why sequential ephemerals for node registration: a node that crashes and restarts quickly may find
its previous session's znode still present until that session expires. With ``<node_id>_<seq>`` the
new incarnation registers at once under a fresh name, and the Overlord leader can tell a restart
(a new name for a known node id) from a node that merely stayed.

``validate_path`` is ZooKeeper's own path rule, here so that both coordination twins (the
simulator's model and the kazoo adapter) refuse exactly the same paths.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from dimint.core.errors import LocalProtocolError

ROOT = "/dimint"
#: What ZooKeeper refuses in a path besides the structure rules (see ``validate_path``).
_REFUSED_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\uffff]")
MAP_PATH = f"{ROOT}/map"
NODES_PATH = f"{ROOT}/nodes"
ELECTION_PATH = f"{ROOT}/election"


def validate_path(path: str, *, sequential: bool = False, deleting: bool = False) -> None:
    """Raise ``LocalProtocolError`` unless ``path`` is a ZooKeeper path.

    Absolute, no empty, ``.`` or ``..`` component, no trailing slash except for the root, and none
    of the characters ZooKeeper's ``PathUtils.validatePath`` refuses (NUL, the C0 and C1 controls,
    U+D800-U+F8FF, U+FFF0-U+FFFF): checked here so that both twins refuse such a path the same way,
    instead of the model storing it and the real server dropping the request. A sequential create
    may end in ``/`` (the name is then the sequence number alone). The root cannot be deleted (under
    a chroot the server would delete the chroot node itself).
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise LocalProtocolError(f"coordination path must be a str starting with '/', got {path!r}")
    checked = path + "0000000000" if sequential else path
    if checked == "/":
        if deleting:
            raise LocalProtocolError("the root node cannot be deleted")
        return
    if checked.endswith("/") or _REFUSED_CHARACTERS.search(checked):
        raise LocalProtocolError(f"invalid coordination path {path!r}")
    if any(part in ("", ".", "..") for part in checked[1:].split("/")):
        raise LocalProtocolError(f"invalid coordination path {path!r}")


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
