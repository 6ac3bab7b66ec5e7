"""Placement: which shard owns a key, and which keys move when the shard set changes.

Theory of operation
-------------------
Every placement maps a key to a shard through the key's 64-bit hash (``hashing.key_hash``, xxh3_64
of the UTF-8 bytes), so an owner is a pure function of (placement, key): the same in every process,
on every machine, in simulation and for real. Placements are immutable values; a membership change
produces a new placement (``with_shard`` / ``without_shard``) and ``plan(old, new)`` describes the
keys that change owner as a list of ``RangeMove``s that migration executes.

The five kinds trade balance against movement:

* ``modulo``: ``shard_ids[h % n]``. Perfectly balanced and trivial, but changing ``n`` moves about
  ``n/(n+1)`` of all keys. It is the static-sharding baseline that the others are measured against.
* ``ring``: consistent hashing. Each shard puts ``vnodes`` points on the hash circle at
  ``label_hash(f"{shard_id}#{i}")``; a key belongs to the first point at or after its hash,
  wrapping. Adding or removing a shard only adds or removes that shard's points, so only the arcs
  in front of them change owner: keys move only to (add) or from (remove) the changed shard. Each
  shard owns a set of arcs, so its keys are exact hash ranges, which migration can stream without
  scanning. Load imbalance shrinks like ``1/sqrt(vnodes)``.
* ``rendezvous``: highest random weight. Each shard scores a key with a 64-bit mix of
  ``h ^ seed(shard)``; the highest score wins, ties to the lowest shard id. A key changes owner only
  if the winner leaves or a new shard beats it, so again only keys of the changed shard move, and
  balance is as good as the hash. Cost is ``O(n)`` per key (vectorised for batches).
* ``jump``: Lamping and Veach's jump consistent hash over a table of slots. Jump hashing alone can
  only grow or shrink at the end; to remove an arbitrary shard its slot becomes a tombstone, and a
  key that lands on a tombstone jumps again with a derived hash (``h`` mixed with the attempt
  number) until it lands on a live slot. Because the table size never changes on removal, every
  key's sequence of candidate slots is unchanged, so only the keys whose first live candidate was
  the removed slot move. Adding fills the lowest tombstone (again the table size is unchanged, so
  only keys that now stop earlier, at the refilled slot, move, all of them to the new shard); with
  no tombstone it appends a slot, where jump's own property applies (a key either stays or moves to
  the new slot). Slots are never trimmed. After ``_MAX_JUMP_ATTEMPTS`` tombstones in a row a key
  falls back to rendezvous among the live shards, which keeps lookups bounded in time and keeps the
  movement property (rendezvous has it too).
* ``bounded``: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam) over a
  ring, for a known set of ``K`` keys: no shard holds more than ``capacity = ceil((1+eps) * K/n)``
  of them. See ``BoundedPlacement`` for the assignment rule, the incremental updates and the proof of
  the bound. Keys outside the given set follow the plain ring. Adding a shard moves only keys to it,
  except in a rounding corner case (tiny ``K/n`` or ``eps``) where no such assignment respects the
  bound; the bound is the hard invariant, so keys then spill clockwise between old shards too.

A ``RangeMove`` selects the hashes that go from ``source`` to ``target``. For range-based kinds
(``ring`` on both sides) it carries the exact hash ranges; otherwise ``ranges`` is ``None`` and the
move is the predicate "old owner is source and new owner is target". ``plan`` guarantees that every
hash whose owner differs is selected by exactly one move and every other hash by none.

Invariants: shard ids are non-negative ``int``s that fit in a signed 64-bit integer; ``shard_ids`` is
sorted and non-empty; every owner a placement names is in its ``shard_ids``; the batched
lookups return exactly what the single lookups return.
"""

from __future__ import annotations

from dimint.core.placement.base import DEFAULT_EPSILON, DEFAULT_VNODES, KINDS, MAX_VNODES, Placement
from dimint.core.placement.bounded import BoundedPlacement
from dimint.core.placement.factory import make_placement, placement_from_dict
from dimint.core.placement.jump import JumpPlacement
from dimint.core.placement.kinds import ModuloPlacement, RendezvousPlacement, RingPlacement
from dimint.core.placement.plan import RangeMove, plan

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_VNODES",
    "KINDS",
    "MAX_VNODES",
    "BoundedPlacement",
    "JumpPlacement",
    "ModuloPlacement",
    "Placement",
    "RangeMove",
    "RendezvousPlacement",
    "RingPlacement",
    "make_placement",
    "placement_from_dict",
    "plan",
]
