"""Building a placement by kind name, and its wire form in the cluster map.

Theory of operation
-------------------
``make_placement`` is the one way configuration names a kind, so unknown kinds and parameters are
refused in one place with the accepted ones named. ``placement_from_dict`` is its inverse on the
map's wire dict and checks every field, because a map is read from ZooKeeper where anyone with
access could have written it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dimint.core.errors import ConfigError, InvariantViolation
from dimint.core.placement.base import (
    DEFAULT_EPSILON,
    DEFAULT_VNODES,
    KINDS,
    Placement,
    _check_epsilon,
    _check_shard_id,
    _check_shard_ids,
    _check_vnodes,
)
from dimint.core.placement.bounded import BoundedPlacement, _unique_sorted_hashes
from dimint.core.placement.jump import JumpPlacement
from dimint.core.placement.kinds import ModuloPlacement, RendezvousPlacement, RingPlacement

_PARAMS: dict[str, frozenset[str]] = {
    "modulo": frozenset(),
    "ring": frozenset({"vnodes"}),
    "rendezvous": frozenset(),
    "jump": frozenset(),
    "bounded": frozenset({"vnodes", "epsilon", "keys"}),
}


def make_placement(kind: str, shard_ids: Iterable[int], **params: Any) -> Placement:
    """Build a placement of ``kind`` over ``shard_ids`` (any order: the result depends on the set)."""
    if not isinstance(kind, str) or kind not in _PARAMS:
        raise ConfigError(f"unknown placement kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = sorted(set(params) - _PARAMS[kind])
    if unknown:
        accepted = ", ".join(sorted(_PARAMS[kind])) or "none"
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for placement kind {kind!r}; accepted: {accepted}"
        )
    ids = _check_shard_ids(shard_ids)
    if kind == "modulo":
        return ModuloPlacement(ids)
    if kind == "ring":
        return RingPlacement(ids, _check_vnodes(params.get("vnodes", DEFAULT_VNODES)))
    if kind == "rendezvous":
        return RendezvousPlacement(ids)
    if kind == "jump":
        return JumpPlacement(ids)
    ring = RingPlacement(ids, _check_vnodes(params.get("vnodes", DEFAULT_VNODES)))
    epsilon = _check_epsilon(params.get("epsilon", DEFAULT_EPSILON))
    return BoundedPlacement._build(ring, epsilon, _unique_sorted_hashes(params.get("keys", ())))


_FIELDS: dict[str, frozenset[str]] = {
    "modulo": frozenset({"kind", "shard_ids"}),
    "ring": frozenset({"kind", "shard_ids", "vnodes"}),
    "rendezvous": frozenset({"kind", "shard_ids"}),
    "jump": frozenset({"kind", "slots"}),
    "bounded": frozenset(
        {"kind", "shard_ids", "vnodes", "epsilon", "key_hashes", "override_hashes", "override_shards"}
    ),
}


def placement_from_dict(d: dict) -> Placement:
    """Rebuild a placement from ``to_dict`` output, validating everything (it may come off the wire)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a placement dict must be a mapping, not {type(d).__name__}")
    kind = d.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ConfigError(f"unknown placement kind {kind!r}; expected one of {', '.join(KINDS)}")
    present = set(d)
    missing = sorted(_FIELDS[kind] - present)
    if missing:
        raise ConfigError(f"placement dict of kind {kind!r} is missing field {missing[0]!r}")
    extra = sorted(map(str, present - _FIELDS[kind]))
    if extra:
        raise ConfigError(f"placement dict of kind {kind!r} has unknown field {extra[0]!r}")
    for name in ("shard_ids", "slots", "override_shards"):
        if name in d and not isinstance(d[name], list | tuple):
            raise ConfigError(f"placement field {name!r} must be a list, not {type(d[name]).__name__}")
    if kind == "modulo":
        return ModuloPlacement(_check_shard_ids(d["shard_ids"]))
    if kind == "ring":
        return RingPlacement(_check_shard_ids(d["shard_ids"]), _check_vnodes(d["vnodes"]))
    if kind == "rendezvous":
        return RendezvousPlacement(_check_shard_ids(d["shard_ids"]))
    if kind == "jump":
        return JumpPlacement(tuple(d["slots"]))
    return _bounded_from_dict(d)


def _hashes_from_bytes(d: Mapping, name: str) -> np.ndarray:
    blob = d[name]
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ConfigError(f"placement field {name!r} must be bytes, not {type(blob).__name__}")
    if len(blob) % 8:
        raise ConfigError(f"placement field {name!r} must hold 8-byte hashes; got {len(blob)} bytes")
    hashes = np.frombuffer(bytes(blob), dtype="<u8").astype(np.uint64)
    if hashes.size > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
        raise ConfigError(f"placement field {name!r} must be strictly ascending")
    return hashes


def _bounded_from_dict(d: Mapping) -> BoundedPlacement:
    ring = RingPlacement(_check_shard_ids(d["shard_ids"]), _check_vnodes(d["vnodes"]))
    epsilon = _check_epsilon(d["epsilon"])
    hashes = _hashes_from_bytes(d, "key_hashes")
    override_hashes = _hashes_from_bytes(d, "override_hashes")
    override_shards = [_check_shard_id(s, "override shard") for s in d["override_shards"]]
    if len(override_shards) != override_hashes.shape[0]:
        raise ConfigError(
            f"bounded placement has {override_hashes.shape[0]} override hashes "
            f"but {len(override_shards)} override shards"
        )
    unknown = sorted(set(override_shards) - set(ring.shard_ids))
    if unknown:
        raise ConfigError(f"bounded override names shard {unknown[0]}, which is not placed")
    positions = np.searchsorted(hashes, override_hashes)
    if override_hashes.size and (
        positions.max() >= hashes.shape[0] or not np.array_equal(hashes[positions], override_hashes)
    ):
        raise ConfigError("bounded override hashes must be among key_hashes")
    assigned = ring.owners_of_hashes(hashes)
    shards = np.array(override_shards, dtype=np.int64)
    if np.any(assigned[positions] == shards):
        raise ConfigError("bounded overrides must differ from the ring owner")
    assigned[positions] = shards
    try:
        return BoundedPlacement._from_assignment(ring, epsilon, hashes, assigned)
    except InvariantViolation as exc:  # from the wire, an over-full assignment is bad data, not a bug
        raise ConfigError(f"bounded placement violates its load bound: {exc}") from exc
