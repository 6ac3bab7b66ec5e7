"""The cluster map: immutable, epoch-bumping, round-trips through bytes, and names what is wrong.

Proved by hypothesis round trips over random shard layouts and every placement kind, by feeding
``from_bytes`` random and truncated bytes (only ``DecodeError`` may come out), and by one test per
validation rule asserting the message names the problem.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimint.core.clustermap import ClusterMap, NodeInfo, ShardInfo, initial_map
from dimint.core.errors import ConfigError, DecodeError
from dimint.core.placement import make_placement


def _map(kind: str = "ring", shards: int = 3, replicas: int = 2, mode: str = "semi-sync") -> ClusterMap:
    nodes = [
        NodeInfo(f"n{i}", f"tcp://127.0.0.1:{7000 + i}", 100 + i) for i in range(shards * (1 + replicas))
    ]
    infos = []
    for s in range(shards):
        group = [n.node_id for n in nodes[s * (1 + replicas) : (s + 1) * (1 + replicas)]]
        infos.append(ShardInfo(s, group[0], tuple(group[1:]), tuple(group[1:]), 1))
    return initial_map(make_placement(kind, range(shards)), infos, nodes, replication_mode=mode)


@given(
    kind=st.sampled_from(["modulo", "ring", "rendezvous", "jump"]),
    shards=st.integers(1, 6),
    replicas=st.integers(0, 3),
    mode=st.sampled_from(["async", "semi-sync", "sync"]),
)
def test_round_trip_through_bytes(kind: str, shards: int, replicas: int, mode: str) -> None:
    cmap = _map(kind, shards, replicas, mode)
    again = ClusterMap.from_bytes(cmap.to_bytes())
    assert again.to_bytes() == cmap.to_bytes()
    assert again.shards == cmap.shards and again.nodes == cmap.nodes
    for key in ("a", "b", "user:42", "x" * 100):
        assert again.shard_of(key) == cmap.shard_of(key)


def test_bounded_placement_round_trips() -> None:
    keys = [f"k{i}" for i in range(200)]
    placement = make_placement("bounded", range(3), keys=keys)
    nodes = [NodeInfo(f"n{i}", f"a{i}") for i in range(3)]
    cmap = initial_map(placement, [ShardInfo(i, f"n{i}") for i in range(3)], nodes)
    again = ClusterMap.from_bytes(cmap.to_bytes())
    assert [again.shard_of(k).shard_id for k in keys] == [cmap.shard_of(k).shard_id for k in keys]


def test_successor_bumps_the_epoch_and_validates() -> None:
    cmap = _map()
    shard = cmap.shards[0]
    new = cmap.successor(shards=cmap.with_shard(ShardInfo(0, shard.slaves[0], (shard.slaves[1],), (), 2)))
    assert new.epoch == cmap.epoch + 1
    assert new.shards[0].master == shard.slaves[0]
    assert cmap.shards[0] == shard  # the old map is untouched
    with pytest.raises(ConfigError, match="bumps the epoch itself"):
        cmap.successor(epoch=7)


def test_roles_belong_to_one_incarnation() -> None:
    cmap = _map()
    assert cmap.role_of("n0") == ("master", 0)
    assert cmap.role_of("n0", 100) == ("master", 0)
    assert cmap.role_of("n0", 999) is None  # a restarted process does not inherit the role
    assert cmap.role_of("n1") == ("slave", 0)
    assert cmap.spare_nodes() == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: {"replication_mode": "eventual"}, "replication_mode must be one of"),
        (lambda m: {"min_in_sync": -1}, "min_in_sync must be a non-negative int"),
        (lambda m: {"shards": {**m.shards, 0: ShardInfo(0, "n0", ("n0",), (), 1)}}, "also listed as a slave"),
        (lambda m: {"shards": {**m.shards, 0: ShardInfo(0, "n0", ("n1",), ("n2",), 1)}}, "not a subset"),
        (lambda m: {"shards": {**m.shards, 0: ShardInfo(0, "ghost", (), (), 1)}}, "not a registered node"),
        (lambda m: {"shards": {**m.shards, 0: ShardInfo(0, "n3", (), (), 1)}}, "serves both shard"),
        (lambda m: {"shards": {k: v for k, v in m.shards.items() if k != 2}}, "absent from the map"),
        (lambda m: {"shards": {**m.shards, 0: ShardInfo(0, "n0", ("n1", "n1"), (), 1)}}, "duplicate slaves"),
        (lambda m: {"shards": {**m.shards, 0: ShardInfo(0, "n0", (), (), -1)}}, "negative shard epoch"),
    ],
)
def test_validation_names_the_problem(change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    cmap = _map()
    with pytest.raises(ConfigError) as error:
        cmap.successor(**change(cmap))
    assert fragment in str(error.value)


@given(st.binary(max_size=300))
def test_garbage_bytes_only_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ClusterMap.from_bytes(data)


def test_truncated_and_mutated_maps_only_raise_decode_error() -> None:
    raw = _map().to_bytes()
    for cut in range(0, len(raw), 7):
        with pytest.raises(DecodeError):
            ClusterMap.from_bytes(raw[:cut])
    for index in range(0, len(raw), 5):
        mutated = bytearray(raw)
        mutated[index] ^= 0xFF
        with contextlib.suppress(DecodeError):
            ClusterMap.from_bytes(bytes(mutated))


def test_owner_of_keys_names_one_shard_or_none_when_a_command_spans_shards() -> None:
    placement = make_placement("ring", [0, 1, 2])
    cmap = initial_map(placement, [ShardInfo(i, None) for i in range(3)], [])
    keys = [f"key-{i}" for i in range(50)]
    by_owner: dict[int, list[str]] = {}
    for key in keys:
        by_owner.setdefault(placement.owner(key), []).append(key)
    for owner, owned in by_owner.items():
        assert cmap.owner_of_keys(owned) == owner
    assert cmap.owner_of_keys(keys) is None
