"""The cluster map: who owns what, at which epoch.

Theory of operation: the map is the single source of truth that clients, nodes and Overlords agree
on. It is immutable; every change produces a new map with a strictly greater ``epoch`` (invariant 1)
and is written to the coordination service by the Overlord leader with a version-checked write, so
two leaders can never both install a successor of the same map.

Per shard it names the master, the slaves, the subset of slaves that are in sync (the ones a
synchronous write waits for and the only ones eligible for promotion), and a ``shard_epoch`` that
grows on every change of master. The shard epoch fences: a slave ignores replication from a lower
epoch and a deposed master that comes back finds its epoch stale.

The placement says which shard owns a key. Shards may exist in the map without owning anything (a
joining shard filling up, a draining shard emptying out), so ``placement.shard_ids`` is a subset of
the shards, never a superset.

Rebalancing. While shards join or leave, ``rebalance`` holds the target placement and one
``MoveInfo`` per (source, target) pair of ``plan(placement, target)``. A key belongs to
``placement.owner`` unless the move from that owner to ``target.owner`` has *switched*; then it
belongs to the target. So ownership passes move by move, each pass one version-checked map write,
and no key is ever owned by two shards or by none. When every move has switched the leader installs
the target placement and clears ``rebalance``. All of it lives in the map, hence in the coordination
service: a new leader resumes exactly where its predecessor stopped. ``draining`` queues shards an
administrator asked to remove; ``retired`` names node incarnations that drained and must not be
reused until they restart.

``to_bytes``/``from_bytes`` give the canonical msgpack form stored in a znode; ``from_bytes`` raises
``DecodeError`` and ``validate`` raises ``ConfigError`` naming the first thing that is wrong.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

from dimint.core.errors import ConfigError, DecodeError
from dimint.core.hashing import Key, key_hash
from dimint.core.placement import Placement, placement_from_dict


class ReplicationMode(enum.StrEnum):
    """When a master may acknowledge a write: at once, after one in-sync slave has it, or after all."""

    ASYNC = "async"
    SEMI_SYNC = "semi-sync"
    SYNC = "sync"


REPLICATION_MODES: tuple[str, ...] = tuple(mode.value for mode in ReplicationMode)
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A data node: its id, the address it is reached at, and the incarnation the map refers to.

    Roles in the map belong to one *incarnation* (a random number a process draws at start). A
    process that crashed and restarted with empty memory has a new incarnation, so it never mistakes
    the role of its predecessor for its own, even while the predecessor's session is still alive.
    """

    node_id: str
    address: str
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard_id: int
    master: str | None
    slaves: tuple[str, ...] = ()
    in_sync: tuple[str, ...] = ()
    shard_epoch: int = 1

    @property
    def members(self) -> tuple[str, ...]:
        return ((self.master,) if self.master else ()) + self.slaves


class MoveState(enum.StrEnum):
    """Where a move of a rebalance stands in the map: not started, streaming, or owned by the target."""

    PENDING = "pending"
    COPYING = "copying"
    SWITCHED = "switched"


MOVE_PENDING = MoveState.PENDING
MOVE_COPYING = MoveState.COPYING
MOVE_SWITCHED = MoveState.SWITCHED
MOVE_STATES: tuple[str, ...] = tuple(state.value for state in MoveState)


@dataclass(frozen=True, slots=True)
class MoveInfo:
    """One (source, target) move of a rebalance, as the leader last recorded it.

    ``attempt`` grows every time the move (re)starts; ``source_epoch``/``target_epoch`` are the shard
    epochs it started under, so a change of either master is noticed and the move restarts rather
    than trusting a stream from a deposed node.
    """

    source: int
    target: int
    state: MoveState = MOVE_PENDING
    attempt: int = 0
    source_epoch: int = 0
    target_epoch: int = 0

    def __post_init__(self) -> None:
        # A state read off the wire arrives as a plain string; the named one is what the code compares.
        # An unknown one stays as it came, for validate() to refuse by name.
        if type(self.state) is str and self.state in MOVE_STATES:
            object.__setattr__(self, "state", MoveState(self.state))

    @property
    def pair(self) -> tuple[int, int]:
        return (self.source, self.target)


@dataclass(frozen=True, slots=True)
class Rebalance:
    """A placement change in progress: the target placement and the state of each move."""

    rebalance_id: int
    target: Placement
    moves: tuple[MoveInfo, ...]
    reason: str = ""
    _switched: frozenset[tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        switched = frozenset(m.pair for m in self.moves if m.state == MOVE_SWITCHED)
        object.__setattr__(self, "_switched", switched)

    def move(self, source: int, target: int) -> MoveInfo | None:
        for move in self.moves:
            if move.source == source and move.target == target:
                return move
        return None

    def is_switched(self, source: int, target: int) -> bool:
        return (source, target) in self._switched

    @property
    def switched(self) -> frozenset[tuple[int, int]]:
        return self._switched

    @property
    def done(self) -> bool:
        return all(m.state == MOVE_SWITCHED for m in self.moves)

    def with_move(self, move: MoveInfo) -> Rebalance:
        moves = tuple(move if m.pair == move.pair else m for m in self.moves)
        return replace(self, moves=moves)

    def to_list(self) -> list[Any]:
        return [
            self.rebalance_id,
            self.target.to_dict(),
            [[m.source, m.target, m.state, m.attempt, m.source_epoch, m.target_epoch] for m in self.moves],
            self.reason,
        ]

    @classmethod
    def from_list(cls, data: Any) -> Rebalance:
        rebalance_id, target, moves, reason = data
        return cls(
            int(rebalance_id),
            _placement(target),
            tuple(
                MoveInfo(int(s), int(t), str(st), int(a), int(se), int(te)) for s, t, st, a, se, te in moves
            ),
            str(reason),
        )


@dataclass(frozen=True, slots=True)
class ClusterMap:
    epoch: int
    placement: Placement
    shards: Mapping[int, ShardInfo]
    nodes: Mapping[str, NodeInfo]
    replication_mode: ReplicationMode = ReplicationMode.SEMI_SYNC
    min_in_sync: int = 1
    #: Free-form, plain-data extension (experiments may tag maps; the protocol ignores it).
    extra: Mapping[str, Any] = field(default_factory=dict)
    rebalance: Rebalance | None = None
    draining: tuple[int, ...] = ()
    retired: Mapping[str, int] = field(default_factory=dict)  # node id -> retired incarnation
    next_shard_id: int = 0  # 0: one more than the largest shard id (ids are never reused)

    def __post_init__(self) -> None:
        # As MoveInfo.state: a mode from the wire or a config file becomes the named one; an unknown
        # one stays as it came, for validate() to refuse by name.
        if type(self.replication_mode) is str and self.replication_mode in REPLICATION_MODES:
            object.__setattr__(self, "replication_mode", ReplicationMode(self.replication_mode))

    # ---------------------------------------------------------------- queries

    def owner_of_hash(self, h: int) -> int:
        """The shard that owns key hash ``h`` now, moves already switched included."""
        owner = self.placement.owner_of_hash(h)
        rebalance = self.rebalance
        if rebalance is None or not rebalance.switched:
            return owner
        future = rebalance.target.owner_of_hash(h)
        return future if future != owner and rebalance.is_switched(owner, future) else owner

    def owners_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """``owner_of_hash`` for an array of hashes (vectorised)."""
        owners = self.placement.owners_of_hashes(hashes)
        rebalance = self.rebalance
        if rebalance is None or not rebalance.switched:
            return owners
        future = rebalance.target.owners_of_hashes(hashes)
        result = owners.copy()
        for source, target in rebalance.switched:
            result[(owners == source) & (future == target)] = target
        return result

    def owner(self, key: Key) -> int:
        return self.owner_of_hash(key_hash(key))

    def owner_of_keys(self, keys: Iterable[Key]) -> int | None:
        """The one shard that owns all of ``keys`` (a command's), or None when they span shards."""
        owners = {self.owner(key) for key in keys}
        return owners.pop() if len(owners) == 1 else None

    def shard_of(self, key: Key) -> ShardInfo:
        return self.shards[self.owner(key)]

    def fresh_shard_id(self) -> int:
        """The id a new shard gets: larger than any id ever used, so no stale state can match it."""
        return max(self.next_shard_id, max(self.shards, default=-1) + 1)

    def role_of(self, node_id: str, incarnation: int | None = None) -> tuple[str, int] | None:
        """``("master"|"slave", shard_id)`` for a node that serves a shard, else None (a spare).

        With ``incarnation``, a role recorded for another incarnation of the node does not count.
        """
        if incarnation is not None:
            info = self.nodes.get(node_id)
            if info is None or info.incarnation != incarnation:
                return None
        for shard in self.shards.values():
            if shard.master == node_id:
                return ("master", shard.shard_id)
            if node_id in shard.slaves:
                return ("slave", shard.shard_id)
        return None

    def spare_nodes(self) -> list[str]:
        """Registered nodes that serve no shard: candidates for new slaves or new shards."""
        used = {m for s in self.shards.values() for m in s.members}
        return sorted(n for n in self.nodes if n not in used)

    # ---------------------------------------------------------------- changes

    def successor(self, **changes: Any) -> ClusterMap:
        """A new map with ``changes`` applied and the epoch bumped by one; validated."""
        if "epoch" in changes:
            raise ConfigError("successor() bumps the epoch itself")
        new = replace(self, epoch=self.epoch + 1, **changes)
        new.validate()
        return new

    def with_shard(self, shard: ShardInfo) -> dict[int, ShardInfo]:
        """The shards mapping with ``shard`` replaced or added (to pass to ``successor``)."""
        shards = dict(self.shards)
        shards[shard.shard_id] = shard
        return shards

    # ---------------------------------------------------------------- validation

    def validate(self) -> None:
        if not isinstance(self.epoch, int) or isinstance(self.epoch, bool) or self.epoch < 0:
            raise ConfigError(f"map epoch must be a non-negative int, got {self.epoch!r}")
        if self.replication_mode not in REPLICATION_MODES:
            raise ConfigError(
                f"replication_mode must be one of {', '.join(REPLICATION_MODES)}, "
                f"got {self.replication_mode!r}"
            )
        if not isinstance(self.min_in_sync, int) or self.min_in_sync < 0:
            raise ConfigError(f"min_in_sync must be a non-negative int, got {self.min_in_sync!r}")
        for node_id, info in self.nodes.items():
            if node_id != info.node_id:
                raise ConfigError(f"node entry {node_id!r} holds info for {info.node_id!r}")
        missing = set(self.placement.shard_ids) - set(self.shards)
        if missing:
            raise ConfigError(f"placement names shards absent from the map: {sorted(missing)}")
        if self.rebalance is not None:
            missing = set(self.rebalance.target.shard_ids) - set(self.shards)
            if missing:
                raise ConfigError(f"rebalance target names shards absent from the map: {sorted(missing)}")
            pairs = [m.pair for m in self.rebalance.moves]
            if len(set(pairs)) != len(pairs):
                raise ConfigError(f"rebalance {self.rebalance.rebalance_id} repeats a move: {pairs}")
            for move in self.rebalance.moves:
                if move.state not in MOVE_STATES:
                    raise ConfigError(f"move {move.pair}: unknown state {move.state!r}")
                if move.source == move.target or not {move.source, move.target} <= set(self.shards):
                    raise ConfigError(f"move {move.pair} names an unknown shard or moves to itself")
        for shard_id in self.draining:
            if shard_id not in self.shards:
                raise ConfigError(f"draining shard {shard_id} is not in the map")
        seen: dict[str, int] = {}
        for shard_id, shard in self.shards.items():
            if shard_id != shard.shard_id:
                raise ConfigError(f"shard entry {shard_id} holds info for shard {shard.shard_id}")
            if shard.shard_epoch < 0:
                raise ConfigError(f"shard {shard_id}: negative shard epoch {shard.shard_epoch}")
            if shard.master is not None and shard.master in shard.slaves:
                raise ConfigError(f"shard {shard_id}: master {shard.master!r} is also listed as a slave")
            if len(set(shard.slaves)) != len(shard.slaves):
                raise ConfigError(f"shard {shard_id}: duplicate slaves {list(shard.slaves)}")
            if not set(shard.in_sync) <= set(shard.slaves):
                raise ConfigError(
                    f"shard {shard_id}: in-sync set {sorted(shard.in_sync)} is not a subset of the slaves"
                )
            for member in shard.members:
                if member not in self.nodes:
                    raise ConfigError(f"shard {shard_id}: member {member!r} is not a registered node")
                if member in seen:
                    raise ConfigError(
                        f"node {member!r} serves both shard {seen[member]} and shard {shard_id}"
                    )
                seen[member] = shard_id

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "placement": self.placement.to_dict(),
            "shards": [
                [s.shard_id, s.master, list(s.slaves), list(s.in_sync), s.shard_epoch]
                for s in sorted(self.shards.values(), key=lambda s: s.shard_id)
            ],
            "nodes": [
                [n.node_id, n.address, n.incarnation]
                for n in sorted(self.nodes.values(), key=lambda n: n.node_id)
            ],
            "replication_mode": self.replication_mode,
            "min_in_sync": self.min_in_sync,
            "extra": dict(self.extra),
            "rebalance": self.rebalance.to_list() if self.rebalance is not None else None,
            "draining": list(self.draining),
            "retired": [[n, i] for n, i in sorted(self.retired.items())],
            "next_shard_id": self.next_shard_id,
        }

    def to_bytes(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterMap:
        if not isinstance(data, Mapping):
            raise ConfigError("cluster map must be a mapping")
        if data.get("format") != FORMAT_VERSION:
            raise ConfigError(f"unsupported cluster map format {data.get('format')!r}")
        try:
            shards = {}
            for shard_id, master, slaves, in_sync, shard_epoch in data["shards"]:
                shards[int(shard_id)] = ShardInfo(
                    int(shard_id), master, tuple(slaves), tuple(in_sync), int(shard_epoch)
                )
            nodes = {
                str(node_id): NodeInfo(str(node_id), str(address), int(incarnation))
                for node_id, address, incarnation in data["nodes"]
            }
            new = cls(
                epoch=data["epoch"],
                placement=_placement(data["placement"]),
                shards=shards,
                nodes=nodes,
                replication_mode=data["replication_mode"],
                min_in_sync=data["min_in_sync"],
                extra=dict(data.get("extra") or {}),
                rebalance=Rebalance.from_list(data["rebalance"]) if data.get("rebalance") else None,
                draining=tuple(int(x) for x in data.get("draining") or ()),
                retired={str(n): int(i) for n, i in data.get("retired") or ()},
                next_shard_id=int(data.get("next_shard_id") or 0),
            )
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed cluster map: {exc!r}") from exc
        new.validate()
        return new

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClusterMap:
        """Decode a map; equal bytes give the same (immutable) map object.

        Memoised because every process reads every map version, and with the simulator's dozens of
        processes in one interpreter (or a big ring) decoding dominated rebalancing runs.
        """
        if cls is ClusterMap:
            return _decode_cached(raw)
        return cls._decode(raw)

    @classmethod
    def _decode(cls, raw: bytes) -> ClusterMap:
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises a zoo of exception types on garbage
            raise DecodeError(f"cluster map is not valid msgpack: {exc!r}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise DecodeError(str(exc)) from exc


def initial_map(
    placement: Placement,
    shards: Iterable[ShardInfo],
    nodes: Iterable[NodeInfo],
    *,
    replication_mode: ReplicationMode | str = ReplicationMode.SEMI_SYNC,
    min_in_sync: int = 1,
) -> ClusterMap:
    """The first map of a cluster (epoch 1), validated."""
    cmap = ClusterMap(
        epoch=1,
        placement=placement,
        shards={s.shard_id: s for s in shards},
        nodes={n.node_id: n for n in nodes},
        replication_mode=replication_mode,
        min_in_sync=min_in_sync,
    )
    cmap.validate()
    return cmap


@functools.lru_cache(maxsize=16)
def _decode_cached(raw: bytes) -> ClusterMap:
    return ClusterMap._decode(raw)


@functools.lru_cache(maxsize=32)
def _placement_from_packed(packed: bytes) -> Placement:
    return placement_from_dict(msgpack.unpackb(packed, raw=False, strict_map_key=False))


def _placement(data: Any) -> Placement:
    """``placement_from_dict`` memoised on the dict's bytes: a placement outlives many map versions,
    and building one (a ring of thousands of virtual nodes) costs far more than packing its dict."""
    try:
        packed = msgpack.packb(data, use_bin_type=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"malformed placement: {exc!r}") from exc
    return _placement_from_packed(packed)
