"""Placement: every kind against brute force, over random shard sets and random key sets.

What it proves, for modulo, ring, rendezvous, jump and bounded:

* the batched lookups (``owners``, ``owners_of_hashes``) agree with the single ones, and the fast
  batched hashing agrees with ``hashing.key_hash``;
* adding or removing one shard moves keys only to or from that shard (modulo: only that the moved
  fraction is a fraction; bounded: always for keys outside its key set, and for its keys whenever the
  bound allows it, see ``_bounded_add_can_be_minimal``);
* ``plan(old, new)`` selects every key whose owner changes with exactly one move, from its old owner to
  its new one, selects no other key, and applying the moves yields ``new``'s ownership; this also holds
  across kinds and shard sets that are not one step apart;
* ring ranges partition the hash space exactly, and agree with ``owner_of_hash``;
* ``to_dict`` survives msgpack and ``placement_from_dict`` gives an equal placement with equal owners;
* a fresh interpreter computes the same owners (no per-process salt anywhere);
* bounded never exceeds ``ceil((1+eps) * K/n)``: on construction, ``assign``, ``with_shard``,
  ``without_shard`` and chains of them, including the rounding corner case where it must spill;
* edge cases (no keys, one key, two keys, ranges holding 0, 1 and 2 keys, the ends of the hash space,
  a single shard, jump's tombstone fallback, add-then-remove) and every validation error.

How: hypothesis draws shard-id sets (1 to 20 distinct ids from 0..10_000), key sets (hypothesis text
and bytes keys plus a seeded bulk of generated keys) and placement parameters; each property is checked
key by key against the definition. Example counts are moderate so the file runs in well under a minute
on two cores.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from dataclasses import FrozenInstanceError
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import dimint.core.placement.base as placement_base
import dimint.core.placement.kinds as placement_kinds
from dimint.core.errors import ConfigError, LocalProtocolError
from dimint.core.hashing import FULL_RANGE, HASH_SPACE, MAX_HASH, HashRange, key_hash, key_hashes
from dimint.core.placement import (
    DEFAULT_VNODES,
    KINDS,
    BoundedPlacement,
    JumpPlacement,
    Placement,
    RangeMove,
    RingPlacement,
    make_placement,
    placement_from_dict,
    plan,
)
from dimint.core.placement.base import _batch_hashes

REPO = Path(__file__).resolve().parent.parent
MINIMAL_KINDS = ("ring", "rendezvous", "jump", "bounded")
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

shard_id_sets = st.lists(st.integers(0, 10_000), min_size=1, max_size=20, unique=True)


@st.composite
def key_sets(draw: st.DrawFn, bulk: int = 200) -> list[str | bytes]:
    """Awkward keys from hypothesis plus a seeded bulk, so every shard sees some keys."""
    odd = draw(st.lists(st.one_of(st.text(max_size=10), st.binary(max_size=10)), max_size=30))
    seed = draw(st.integers(0, 2**32))
    return odd + [f"key:{seed}:{i}" for i in range(draw(st.integers(0, bulk)))]


@st.composite
def placements(
    draw: st.DrawFn, kinds: tuple[str, ...] = KINDS, history: bool = True
) -> tuple[Placement, list[str | bytes]]:
    """A placement of a drawn kind, with the keys to test it on (bounded is given two thirds of them).

    Rings get few vnodes as often as many, so that single-point arcs and wrap-around are common;
    bounded gets few vnodes and small epsilons so that its bound actually binds. With ``history``,
    up to three membership changes are applied first, so jump tables carry tombstones and bounded
    assignments come from incremental updates rather than from a fresh construction.
    """
    kind = draw(st.sampled_from(kinds))
    ids = draw(shard_id_sets)
    keys = draw(key_sets())
    if kind == "ring":
        placement = make_placement(kind, ids, vnodes=draw(st.sampled_from([1, 2, 16, DEFAULT_VNODES])))
    elif kind == "bounded":
        params = {
            "vnodes": draw(st.sampled_from([1, 2, 8, 64])),
            "epsilon": draw(st.sampled_from([0.01, 0.1, 0.25, 1.0])),
            "keys": keys[: 2 * len(keys) // 3],
        }
        placement = make_placement(kind, ids, **params)
    else:
        placement = make_placement(kind, ids)
    for _ in range(draw(st.integers(0, 3)) if history else 0):
        if len(placement.shard_ids) > 1 and draw(st.booleans()):
            placement = placement.without_shard(draw(st.sampled_from(placement.shard_ids)))
        else:
            placement = placement.with_shard(_fresh_id(placement, draw(st.integers(0, 20_000))))
    return placement, keys


def _fresh_id(placement: Placement, draw_from: int) -> int:
    taken = set(placement.shard_ids)
    return next(i for i in range(draw_from, draw_from + 100) if i not in taken)


def _bounded_capacity(epsilon: float, key_count: int, shard_count: int) -> int:
    """The documented bound, computed independently: exact arithmetic on epsilon as written."""
    return math.ceil((1 + Fraction(repr(epsilon))) * key_count / shard_count)


def _check_bound(placement: BoundedPlacement) -> None:
    hashes = placement.key_hashes
    owners = placement.owners_of_hashes(hashes)
    counted = {s: int(np.count_nonzero(owners == s)) for s in placement.shard_ids}
    assert counted == placement.loads
    exact = _bounded_capacity(placement.epsilon, hashes.shape[0], len(placement.shard_ids))
    assert placement.capacity == exact
    assert max(counted.values()) <= exact
    # ... and the naive float formula's bound, which exact arithmetic never loosens in practice.
    assert max(counted.values()) <= math.ceil((1 + placement.epsilon) * hashes.shape[0] / len(counted))


def _bounded_add_can_be_minimal(old: BoundedPlacement, new: BoundedPlacement) -> bool:
    """Whether the old shards' excess over the new capacity fits on the new shard.

    If it does not (possible only when ceil() rounding leaves the old shards nearly full, e.g.
    eps=0.01, K=4, n=4: loads 2,2,0,0 and the new capacity is 1), no assignment can both respect the
    bound and move keys only to the new shard, and the bound wins.
    """
    excess = sum(max(0, load - new.capacity) for load in old.loads.values())
    return excess <= new.capacity


# --------------------------------------------------------------------------------------------
# Lookups
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(placements())
def test_batched_lookups_agree_with_single_lookups(case: tuple[Placement, list[str | bytes]]) -> None:
    placement, keys = case
    single = [placement.owner(k) for k in keys]
    assert placement.owners(keys) == single
    hashes = key_hashes(keys)
    assert placement.owners_of_hashes(hashes).tolist() == single
    assert [placement.owner_of_hash(key_hash(k)) for k in keys] == single
    assert set(single) <= set(placement.shard_ids)
    assert list(placement.shard_ids) == sorted(placement.shard_ids)
    for h in (0, 1, MAX_HASH - 1, MAX_HASH):  # the ends of the hash space
        assert placement.owners_of_hashes(np.array([h], dtype=np.uint64)).tolist() == [
            placement.owner_of_hash(h)
        ]


@FEW
@given(st.lists(st.one_of(st.text(max_size=12), st.binary(max_size=12)), max_size=50))
def test_fast_batched_hashing_is_key_hash(keys: list[str | bytes]) -> None:
    expected = [key_hash(k) for k in keys]
    assert _batch_hashes(keys).tolist() == expected
    text_only = [k for k in keys if isinstance(k, str)]
    assert _batch_hashes(text_only).tolist() == [key_hash(k) for k in text_only]
    assert _batch_hashes(tuple(text_only)).tolist() == key_hashes(text_only).tolist()
    # key_hashes: the C-mapped path for all-bytes lists, its fallback for mixed ones and iterators.
    byte_keys = [k if isinstance(k, bytes) else k.encode() for k in keys]
    assert key_hashes(byte_keys).tolist() == expected
    assert key_hashes(tuple(byte_keys)).tolist() == expected
    assert key_hashes(keys).tolist() == expected
    assert key_hashes(iter(keys)).tolist() == expected


# --------------------------------------------------------------------------------------------
# Movement
# --------------------------------------------------------------------------------------------


def _assert_moves_only_with(
    old: Placement, new: Placement, keys: list[str | bytes], changed: int, added: bool
) -> float:
    before = np.array(old.owners(keys), dtype=np.int64)
    after = np.array(new.owners(keys), dtype=np.int64)
    moved = before != after
    fraction = float(moved.mean()) if keys else 0.0
    assert 0.0 <= fraction <= 1.0
    if old.kind == "modulo":
        return fraction
    ends = after[moved] if added else before[moved]
    if isinstance(old, BoundedPlacement) and added and not _bounded_add_can_be_minimal(old, new):
        # Only the keys the bound governs may spill; all others follow the ring and stay minimal.
        given_keys = set(old.key_hashes.tolist())
        outside = np.array([key_hash(k) not in given_keys for k in keys], dtype=bool)
        ends = after[moved & outside]
    assert np.all(ends == changed), f"{old.kind}: keys moved between unchanged shards"
    return fraction


@PROPERTY
@given(placements(), st.integers(0, 20_000))
def test_adding_a_shard_moves_keys_only_to_it(case: tuple[Placement, list[str | bytes]], start: int) -> None:
    placement, keys = case
    new_id = _fresh_id(placement, start)
    bigger = placement.with_shard(new_id)
    assert new_id in bigger.shard_ids and len(bigger.shard_ids) == len(placement.shard_ids) + 1
    _assert_moves_only_with(placement, bigger, keys, new_id, added=True)


@PROPERTY
@given(placements(), st.data())
def test_removing_a_shard_moves_keys_only_from_it(
    case: tuple[Placement, list[str | bytes]], data: st.DataObject
) -> None:
    placement, keys = case
    assume(len(placement.shard_ids) > 1)
    gone = data.draw(st.sampled_from(placement.shard_ids))
    smaller = placement.without_shard(gone)
    assert gone not in smaller.shard_ids
    assert gone not in smaller.owners(keys)
    _assert_moves_only_with(placement, smaller, keys, gone, added=False)


def test_modulo_moves_most_keys_and_the_others_few() -> None:
    """A sanity figure beside the properties: the baseline really is the bad one."""
    keys = [f"k{i}" for i in range(4000)]
    fractions = {}
    for kind in KINDS:
        params = {"keys": keys} if kind == "bounded" else {}
        old = make_placement(kind, range(10), **params)
        fractions[kind] = _assert_moves_only_with(old, old.with_shard(10), keys, 10, added=True)
    assert fractions["modulo"] > 0.8
    for kind in MINIMAL_KINDS:
        assert fractions[kind] < 0.2, fractions


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def _check_plan(old: Placement, new: Placement, keys: list[str | bytes]) -> list[RangeMove]:
    moves = plan(old, new)
    assert moves == sorted(moves, key=lambda m: (m.source, m.target))
    assert len({(m.source, m.target) for m in moves}) == len(moves)
    hashes = key_hashes(keys)
    before = old.owners_of_hashes(hashes)
    after = new.owners_of_hashes(hashes)
    selected_by = np.zeros(len(keys), dtype=np.int64)
    placed = before.copy()
    for move in moves:
        assert move.source != move.target
        chosen = move.selects_hashes(hashes, old, new)
        # The scalar predicate is the definition; check it on a sample (it is slow for rendezvous).
        for index in range(min(len(keys), 12)):
            assert move.selects_hash(int(hashes[index]), old, new) == bool(chosen[index])
        assert np.all(before[chosen] == move.source) and np.all(after[chosen] == move.target)
        selected_by += chosen
        placed[chosen & (placed == move.source)] = move.target
        if move.ranges is not None:
            assert all(b.start >= a.end for a, b in pairwise(move.ranges))
            # Coalesced: two ranges of one move never touch.
            assert all(b.start > a.end for a, b in pairwise(move.ranges))
    changed = before != after
    assert np.all(selected_by[changed] == 1), "a key that changes owner is not selected exactly once"
    assert np.all(selected_by[~changed] == 0), "a key that keeps its owner is selected"
    assert np.array_equal(placed, after)
    return moves


@PROPERTY
@given(placements(), st.data())
def test_plan_for_one_shard_added_or_removed(
    case: tuple[Placement, list[str | bytes]], data: st.DataObject
) -> None:
    old, keys = case
    if len(old.shard_ids) > 1 and data.draw(st.booleans()):
        changed = data.draw(st.sampled_from(old.shard_ids))
        new = old.without_shard(changed)
    else:
        changed = _fresh_id(old, data.draw(st.integers(0, 20_000)))
        new = old.with_shard(changed)
    moves = _check_plan(old, new, keys)
    if old.kind in ("ring", "rendezvous", "jump"):
        assert all(changed in (m.source, m.target) for m in moves)
    if old.kind == "ring":
        assert all(m.ranges is not None for m in moves)


@FEW
@given(placements(), placements())
def test_plan_between_unrelated_placements(
    first: tuple[Placement, list[str | bytes]], second: tuple[Placement, list[str | bytes]]
) -> None:
    """Different kinds, shard sets and vnodes: the plan must still be exact."""
    _check_plan(first[0], second[0], first[1] + second[1])


def test_plan_between_equal_placements_is_empty() -> None:
    for kind in KINDS:
        params = {"keys": ["a", "b"]} if kind == "bounded" else {}
        assert (
            plan(make_placement(kind, [3, 1, 2], **params), make_placement(kind, [1, 2, 3], **params)) == []
        )


def test_range_move_selection_on_ranges_holding_zero_one_and_two_keys() -> None:
    keys = [f"edge:{i}" for i in range(50)]
    ordered = sorted(zip(key_hashes(keys).tolist(), keys, strict=True))
    (h0, _), (h1, k1), (h2, k2) = ordered[10:13]
    ring = make_placement("ring", [1, 2], vnodes=1)
    cases = {
        0: HashRange(h0 + 1, h1),  # strictly between two keys
        1: HashRange(h0, h0 + 1),  # exactly one hash
        2: HashRange(h1, h2 + 1),  # two neighbouring keys, ends included and excluded correctly
    }
    for expected, hash_range in cases.items():
        move = RangeMove(1, 2, (hash_range,))
        hits = [k for k in keys if move.selects_hash(key_hash(k), ring, ring)]
        assert len(hits) == expected
        assert int(move.selects_hashes(key_hashes(keys), ring, ring).sum()) == expected
    assert [k for k in keys if RangeMove(1, 2, (cases[2],)).selects_hash(key_hash(k), ring, ring)] == [k1, k2]
    top = RangeMove(1, 2, (HashRange(MAX_HASH, HASH_SPACE), HashRange(0, 1)))
    assert top.ranges == (HashRange(0, 1), HashRange(MAX_HASH, HASH_SPACE))  # sorted
    assert top.selects_hash(MAX_HASH, ring, ring) and top.selects_hash(0, ring, ring)
    assert not top.selects_hash(1, ring, ring)
    assert top.selects_hashes(
        np.array([0, 1, MAX_HASH - 1, MAX_HASH], dtype=np.uint64), ring, ring
    ).tolist() == [
        True,
        False,
        False,
        True,
    ]
    with pytest.raises(ConfigError, match="overlap"):
        RangeMove(1, 2, (HashRange(0, 10), HashRange(5, 20)))


def test_plan_over_a_range_that_holds_no_key_still_applies() -> None:
    """Moves are about hashes, not keys: a plan for a key set that misses most ranges is still exact."""
    old = make_placement("ring", [1, 2, 3], vnodes=4)
    new = old.with_shard(4)
    for keys in ([], ["only"], ["one", "two"]):
        _check_plan(old, new, keys)


# --------------------------------------------------------------------------------------------
# Ring ranges
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(shard_id_sets, st.sampled_from([1, 2, 5, 64]), key_sets(bulk=100))
def test_ring_ranges_partition_the_hash_space(ids: list[int], vnodes: int, keys: list[str | bytes]) -> None:
    ring = make_placement("ring", ids, vnodes=vnodes)
    owned = sorted((r, shard) for shard in ring.shard_ids for r in ring.ranges_of(shard))
    assert owned[0][0].start == 0 and owned[-1][0].end == HASH_SPACE
    for (a, _), (b, _) in pairwise(owned):
        assert a.end == b.start, "gap or overlap between ranges"
    for hash_range, shard in owned:
        for h in {hash_range.start, hash_range.end - 1, (hash_range.start + hash_range.end) // 2}:
            assert ring.owner_of_hash(h) == shard
    for shard in ring.shard_ids:
        ranges = ring.ranges_of(shard)
        assert all(a.end < b.start for a, b in pairwise(ranges)), "not coalesced"
    for key in keys:
        assert any(key_hash(key) in r for r in ring.ranges_of(ring.owner(key)))


def test_ranges_of_other_kinds_is_none_and_of_a_single_shard_is_everything() -> None:
    for kind in ("modulo", "rendezvous", "jump"):
        assert make_placement(kind, [1, 2]).ranges_of(1) is None
    assert make_placement("bounded", [1, 2], keys=["a"]).ranges_of(1) is None
    assert make_placement("ring", [7]).ranges_of(7) == (FULL_RANGE,)
    with pytest.raises(ConfigError, match="not placed"):
        make_placement("ring", [7]).ranges_of(8)


def test_point_collisions_and_score_ties_go_to_the_lowest_shard_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """64-bit collisions never happen by chance, so force them with a degenerate label hash."""
    real_label_hash = placement_kinds.label_hash
    keys = [f"c{i}" for i in range(300)]
    # Ring: the i-th point of every shard lands in the same place; the lowest id must take them all.
    monkeypatch.setattr(placement_kinds, "label_hash", lambda label: real_label_hash(label.split("#")[1]))
    ring = RingPlacement((5, 3, 9), 8)
    assert len(ring._points) == 8 and set(ring.owners(keys)) == {3}
    assert ring.ranges_of(3) == (FULL_RANGE,) and ring.ranges_of(5) == ()
    lower = ring.with_shard(1)
    assert plan(ring, lower) == [RangeMove(3, 1, (FULL_RANGE,))]
    assert set(ring.without_shard(3).owners(keys)) == {5}
    # Rendezvous: equal seeds give equal scores for every shard; the lowest id wins every tie.
    monkeypatch.setattr(placement_base, "label_hash", lambda label: 42)  # rendezvous seeds
    rendezvous = make_placement("rendezvous", [8, 6, 7])
    assert rendezvous.owners(keys) == [rendezvous.owner(k) for k in keys] == [6] * len(keys)


# --------------------------------------------------------------------------------------------
# Wire form and determinism
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(placements())
def test_round_trip_through_dict_and_msgpack(case: tuple[Placement, list[str | bytes]]) -> None:
    placement, keys = case
    wire = msgpack.unpackb(msgpack.packb(placement.to_dict()))
    again = placement_from_dict(wire)
    assert again == placement and hash(again) == hash(placement)
    assert again.kind == placement.kind and again.shard_ids == placement.shard_ids
    assert again.owners(keys) == placement.owners(keys)
    assert again.to_dict() == placement.to_dict()
    assert pickle.loads(pickle.dumps(placement)) == placement


FIXED_KEYS = [f"fixed:{i}" for i in range(300)] + ["", "é", "日本語", "\U0001f600"]
FIXED_IDS = [4, 8, 15, 16, 23, 42]
SUBPROCESS_CODE = """
import json, sys
from dimint.core.placement import make_placement
kind, keys, ids = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
params = {"keys": keys[::2], "vnodes": 4, "epsilon": 0.05} if kind == "bounded" else {}
placement = make_placement(kind, ids, **params).without_shard(15).with_shard(99)
print(json.dumps([placement.owner(k) for k in keys]))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_interpreter_computes_the_same_owners(kind: str) -> None:
    params = {"keys": FIXED_KEYS[::2], "vnodes": 4, "epsilon": 0.05} if kind == "bounded" else {}
    here = make_placement(kind, FIXED_IDS, **params).without_shard(15).with_shard(99)
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_CODE, kind, json.dumps(FIXED_KEYS), json.dumps(FIXED_IDS)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    assert json.loads(result.stdout) == [here.owner(k) for k in FIXED_KEYS]


def test_construction_ignores_the_order_of_shard_ids() -> None:
    keys = [f"k{i}" for i in range(200)]
    for kind in KINDS:
        params = {"keys": keys} if kind == "bounded" else {}
        a = make_placement(kind, [9, 2, 5], **params)
        b = make_placement(kind, (2, 5, 9), **params)
        assert a == b and a.owners(keys) == b.owners(keys)


def test_placements_are_frozen_and_hashable() -> None:
    for kind in KINDS:
        params = {"keys": ["a", "b", "c"]} if kind == "bounded" else {}
        placement = make_placement(kind, [1, 2, 3], **params)
        assert isinstance(placement, Placement)
        assert hash(placement) == hash(make_placement(kind, [1, 2, 3], **params))
        with pytest.raises((FrozenInstanceError, AttributeError)):
            placement.shard_ids = (4,)  # type: ignore[misc]
        arrays = [v for v in getattr(placement, "__dict__", {}).values() if isinstance(v, np.ndarray)]
        if isinstance(placement, BoundedPlacement):
            arrays.append(placement.key_hashes)
        assert arrays and not any(a.flags.writeable for a in arrays)


# --------------------------------------------------------------------------------------------
# bounded
# --------------------------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 10_000)),
        st.tuples(st.just("remove"), st.integers(0, 100)),
        st.tuples(st.just("assign"), st.integers(0, 2**32), st.integers(0, 150)),
    ),
    min_size=1,
    max_size=8,
)


@PROPERTY
@given(
    shard_id_sets,
    key_sets(bulk=150),
    st.sampled_from([0.01, 0.05, 0.1, 0.25, 1.0, 3.0]),
    st.sampled_from([1, 2, 8, DEFAULT_VNODES]),
    operations,
)
def test_bounded_never_exceeds_its_bound_through_chains(
    ids: list[int], keys: list[str | bytes], epsilon: float, vnodes: int, steps: list[tuple]
) -> None:
    placement = make_placement("bounded", ids, keys=keys, epsilon=epsilon, vnodes=vnodes)
    assert isinstance(placement, BoundedPlacement)
    assert placement.key_count == len({key_hash(k) for k in keys})
    _check_bound(placement)
    for step in steps:
        if step[0] == "add":
            new_id = _fresh_id(placement, step[1])
            new = placement.with_shard(new_id)
            _check_bound(new)
            if _bounded_add_can_be_minimal(placement, new):
                moved = placement.owners_of_hashes(placement.key_hashes) != new.owners_of_hashes(
                    new.key_hashes
                )
                assert np.all(new.owners_of_hashes(new.key_hashes)[moved] == new_id)
        elif step[0] == "remove":
            if len(placement.shard_ids) == 1:
                continue
            gone = placement.shard_ids[step[1] % len(placement.shard_ids)]
            new = placement.without_shard(gone)
            _check_bound(new)
            moved = placement.owners_of_hashes(placement.key_hashes) != new.owners_of_hashes(new.key_hashes)
            assert np.all(placement.owners_of_hashes(placement.key_hashes)[moved] == gone)
        else:
            new = placement.assign([f"re:{step[1]}:{i}" for i in range(step[2])])
            assert new.key_count == step[2] and new.shard_ids == placement.shard_ids
            _check_bound(new)
        placement = new


def test_bounded_assignment_is_first_clockwise_shard_with_room() -> None:
    """Brute-force reference for construction: walk the ring point by point, in hash order."""
    keys = [f"bk{i}" for i in range(120)]
    for vnodes in (1, 3):
        placement = make_placement("bounded", [1, 2, 3, 4], keys=keys, epsilon=0.05, vnodes=vnodes)
        ring = RingPlacement((1, 2, 3, 4), vnodes)
        capacity = _bounded_capacity(0.05, 120, 4)
        points = sorted((p, ring.owner_of_hash(p)) for p in ring._points)
        loads = dict.fromkeys(ring.shard_ids, 0)
        expected = {}
        for h in sorted(key_hashes(keys).tolist()):
            start = next((i for i, (p, _) in enumerate(points) if p >= h), 0)
            for step in range(len(points)):
                shard = points[(start + step) % len(points)][1]
                if loads[shard] < capacity:
                    loads[shard] += 1
                    expected[h] = shard
                    break
        assert {h: placement.owner_of_hash(h) for h in expected} == expected
        assert placement.loads == loads


def test_bounded_rounding_corner_case_spills_but_keeps_the_bound() -> None:
    """eps=0.01 with few keys: old shards near full, the new shard cannot absorb all the excess."""
    found = 0
    for seed in range(60):
        keys = [f"corner:{seed}:{i}" for i in range(4 + seed % 9)]
        old = make_placement("bounded", [1, 2, 3, 4], keys=keys, epsilon=0.01, vnodes=1)
        new = old.with_shard(5)
        _check_bound(new)
        if not _bounded_add_can_be_minimal(old, new):
            found += 1
            before = old.owners(keys)
            after = new.owners(keys)
            assert sum(b != a for b, a in zip(before, after, strict=True)) >= 1
    assert found, "no corner case in the sample: the test no longer exercises the spill path"


@pytest.mark.parametrize("count", [0, 1, 2])
def test_bounded_with_zero_one_and_two_keys(count: int) -> None:
    keys = [f"few:{i}" for i in range(count)]
    placement = make_placement("bounded", [1, 2, 3], keys=keys, epsilon=0.25)
    _check_bound(placement)
    assert placement.capacity == _bounded_capacity(0.25, count, 3)
    for step in (
        placement.with_shard(4),
        placement.without_shard(2),
        placement.without_shard(1).without_shard(2),
    ):
        _check_bound(step)
        assert sum(step.loads.values()) == count


def test_bounded_duplicate_keys_are_one_unit() -> None:
    placement = make_placement("bounded", [1, 2], keys=["a", "a", b"a", "b"], epsilon=0.5)
    assert placement.key_count == 2
    assert placement.capacity == _bounded_capacity(0.5, 2, 2)


def test_bounded_keys_outside_the_set_follow_the_ring() -> None:
    keys = [f"in:{i}" for i in range(300)]
    placement = make_placement("bounded", [1, 2, 3], keys=keys, epsilon=0.01, vnodes=2)
    ring = make_placement("ring", [1, 2, 3], vnodes=2)
    outside = [f"out:{i}" for i in range(300)]
    assert placement.owners(outside) == ring.owners(outside)
    assert placement.owners(keys) != ring.owners(keys)  # the bound binds here: some keys were moved


# --------------------------------------------------------------------------------------------
# Single shard, add-then-remove, jump tombstones
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_single_shard_owns_everything_and_cannot_be_removed(kind: str) -> None:
    keys = [f"s{i}" for i in range(50)] + [b"", ""]
    params = {"keys": keys} if kind == "bounded" else {}
    placement = make_placement(kind, [7], **params)
    assert set(placement.owners(keys)) == {7}
    assert placement.owner_of_hash(0) == placement.owner_of_hash(MAX_HASH) == 7
    with pytest.raises(ConfigError, match="last shard"):
        placement.without_shard(7)
    _check_plan(placement, placement.with_shard(8), keys)


@PROPERTY
@given(placements(kinds=("ring", "rendezvous")), st.integers(0, 20_000))
def test_add_then_remove_restores_ring_and_rendezvous_exactly(
    case: tuple[Placement, list[str | bytes]], start: int
) -> None:
    placement, keys = case
    new_id = _fresh_id(placement, start)
    back = placement.with_shard(new_id).without_shard(new_id)
    assert back == placement and back.owners(keys) == placement.owners(keys)
    if len(placement.shard_ids) > 1:
        gone = placement.shard_ids[start % len(placement.shard_ids)]
        assert placement.without_shard(gone).with_shard(gone) == placement


def test_jump_add_then_remove_what_holds() -> None:
    """Documented in JumpPlacement: identical after refilling a tombstone; not after an append."""
    keys = [f"j{i}" for i in range(3000)]
    base = make_placement("jump", [1, 2, 3, 4, 5])
    assert isinstance(base, JumpPlacement)
    # Refill: remove 3 then add 3 -> the same table and owners.
    assert base.without_shard(3).with_shard(3) == base
    holed = base.without_shard(3)
    assert holed.with_shard(9).without_shard(9) == holed  # 9 refilled 3's slot and gave it back
    # Append then remove: a trailing tombstone remains; only keys that went to the new shard differ.
    grown = base.with_shard(6)
    back = grown.without_shard(6)
    assert back.slots == (1, 2, 3, 4, 5, -1) and back.shard_ids == base.shard_ids
    before, middle, after = (np.array(p.owners(keys)) for p in (base, grown, back))
    differs = before != after
    assert differs.any() and np.all(middle[differs] == 6)
    assert 0.05 < differs.mean() < 0.3
    # Adding any shard refills the slot and restores every other key's owner.
    refilled = back.with_shard(7)
    assert refilled.slots == (1, 2, 3, 4, 5, 7)
    again = np.array(refilled.owners(keys))
    assert np.array_equal(again[middle != 6], before[middle != 6])


def test_bounded_add_then_remove_only_touches_the_temporary_shards_keys() -> None:
    keys = [f"b{i}" for i in range(800)]
    base = make_placement("bounded", [1, 2, 3, 4], keys=keys, epsilon=0.1, vnodes=8)
    grown = base.with_shard(5)
    back = grown.without_shard(5)
    _check_bound(back)
    assert back.ring == base.ring
    before, middle, after = (np.array(p.owners(keys)) for p in (base, grown, back))
    assert np.all(middle[before != after] == 5)
    outside = [f"other{i}" for i in range(300)]
    assert back.owners(outside) == base.owners(outside)


def test_jump_tombstones_fall_back_and_stay_consistent() -> None:
    """Many tombstones force long re-jump chains and the rendezvous fallback; batch must agree."""
    keys = [f"t{i}" for i in range(2000)]
    slots = [-1] * 64
    slots[10], slots[50] = 3, 8
    placement = JumpPlacement(tuple(slots))
    owners = placement.owners(keys)
    assert owners == [placement.owner(k) for k in keys]
    assert set(owners) == {3, 8}
    assert 0.35 < owners.count(3) / len(owners) < 0.65
    smaller = placement.without_shard(8)
    assert set(smaller.owners(keys)) == {3}
    _check_plan(placement, smaller, keys)
    bigger = placement.with_shard(1)
    assert bigger.slots[0] == 1  # lowest tombstone
    _check_plan(placement, bigger, keys)
    assert all(b in (a, 1) for a, b in zip(owners, bigger.owners(keys), strict=True))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "ids", "params", "message"),
    [
        ("ring", [], {}, "at least one shard"),
        ("ring", [1, 1], {}, "duplicate shard id 1"),
        ("modulo", [1, -2], {}, "-2 is negative"),
        ("jump", [True], {}, "bool"),
        ("rendezvous", ["a"], {}, "must be an int"),
        ("ring", [2**63], {}, "64-bit"),
        ("ring", 5, {}, "iterable"),
        ("ring", [1], {"vnodes": 0}, "vnodes must be >= 1"),
        ("ring", [1], {"vnodes": 1.5}, "vnodes must be an int"),
        ("ring", [1], {"vnodes": 10**9}, "vnodes must be <="),
        ("bounded", [1], {"epsilon": 0}, "epsilon"),
        ("bounded", [1], {"epsilon": -0.5}, "epsilon"),
        ("bounded", [1], {"epsilon": float("nan")}, "epsilon"),
        ("bounded", [1], {"epsilon": "0.2"}, "epsilon"),
        ("bounded", [1], {"keys": "abc"}, "single str"),
        ("bounded", [1], {"keys": [1, 2]}, "str or bytes"),
        ("ring", [1], {"epsilon": 0.2}, "unknown parameter 'epsilon'"),
        ("modulo", [1], {"vnodes": 4}, "unknown parameter 'vnodes'"),
        ("consistent", [1], {}, "unknown placement kind 'consistent'"),
    ],
)
def test_bad_construction_is_a_config_error_naming_the_problem(
    kind: str, ids: object, params: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make_placement(kind, ids, **params)  # type: ignore[arg-type]
    assert isinstance(caught.value, LocalProtocolError)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_membership_changes_are_config_errors(kind: str) -> None:
    params = {"keys": ["x"]} if kind == "bounded" else {}
    placement = make_placement(kind, [1, 2], **params)
    with pytest.raises(ConfigError, match="already placed"):
        placement.with_shard(2)
    with pytest.raises(ConfigError, match="not placed"):
        placement.without_shard(3)
    with pytest.raises(ConfigError, match="negative"):
        placement.with_shard(-1)
    with pytest.raises(ConfigError, match="last shard"):
        placement.without_shard(1).without_shard(2)


def _bounded_dict() -> dict:
    keys = [f"d{i}" for i in range(40)]
    return make_placement("bounded", [1, 2, 3], keys=keys, epsilon=0.01, vnodes=1).to_dict()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a mapping"),
        ({}, "unknown placement kind None"),
        ({"kind": ["ring"]}, "unknown placement kind"),
        ({"kind": "ring", "shard_ids": [1]}, "missing field 'vnodes'"),
        ({"kind": "ring", "shard_ids": [1], "vnodes": 4, "colour": "red"}, "unknown field 'colour'"),
        ({"kind": "ring", "shard_ids": "12", "vnodes": 4}, "must be a list"),
        ({"kind": "ring", "shard_ids": [1, 1], "vnodes": 4}, "duplicate"),
        ({"kind": "modulo", "shard_ids": []}, "at least one shard"),
        ({"kind": "jump", "slots": [-1, -1]}, "every slot is a tombstone"),
        ({"kind": "jump", "slots": [1, -2]}, "negative"),
        ({"kind": "jump", "slots": [1, 1]}, "duplicate"),
        ({**_bounded_dict(), "epsilon": 0.0}, "epsilon"),
        ({**_bounded_dict(), "key_hashes": "nope"}, "must be bytes"),
        ({**_bounded_dict(), "key_hashes": b"1234567"}, "8-byte"),
        ({**_bounded_dict(), "key_hashes": b"\x02" + b"\x00" * 7 + b"\x01" + b"\x00" * 7}, "ascending"),
        ({**_bounded_dict(), "override_shards": []}, "override"),
        ({**_bounded_dict(), "override_hashes": b"\xff" * 8, "override_shards": [1]}, "among key_hashes"),
        ({**_bounded_dict(), "override_shards": [9] * len(_bounded_dict()["override_shards"])}, "not placed"),
    ],
)
def test_bad_dicts_are_config_errors_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        placement_from_dict(data)  # type: ignore[arg-type]


def test_a_dict_whose_assignment_breaks_the_bound_is_rejected() -> None:
    keys = [f"o{i}" for i in range(30)]
    placement = make_placement("bounded", [1, 2, 3], keys=keys, epsilon=1.0, vnodes=8)
    data = placement.to_dict()
    hashes = placement.key_hashes
    ring = make_placement("ring", [1, 2, 3], vnodes=8)
    stolen = [h for h in hashes.tolist() if ring.owner_of_hash(h) != 1]
    data["override_hashes"] = np.array(stolen, dtype="<u8").tobytes()
    data["override_shards"] = [1] * len(stolen)  # everything on shard 1: far beyond capacity
    with pytest.raises(ConfigError, match="load bound"):
        placement_from_dict(data)


def test_bounded_placement_is_built_only_through_the_factories() -> None:
    with pytest.raises(TypeError, match="make_placement"):
        BoundedPlacement()
