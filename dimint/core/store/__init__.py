"""The typed in-memory data of one shard replica: commands, replication ops, ranges, accounting.

Theory of operation
-------------------
**Representation.** One dict maps each key (``bytes``) to its value, and the value's Python type *is*
its DiMint type: ``bytes`` is a string, ``int`` an integer, ``deque`` a list, ``dict`` a hash (field
bytes -> value bytes), ``set`` a set of bytes. A second dict holds ``expire_at_ms`` only for keys that
have a TTL. There is no per-key wrapper object and no stored hash: a million small keys cost little
more than a plain dict of the same pairs (``benchmarks/store.py`` holds us to 1.5x). Hashes are
computed when a range is scanned, which is rare (migration, rebalancing) next to get/set.

**Commands.** ``execute(command, args, now_ms)`` is the canonical entry; the table in
``dimint.core.commands`` names the commands and argument kinds. Every command first normalises and
checks all its arguments, then checks the stored value's type and limits, and mutates only after
every check passed: a refused command raises ``CommandError`` and changes nothing.

**Expiry.** A key whose ``expire_at_ms <= now_ms`` is absent to every command. Reads never mutate
(they may run on slaves, and a read must not need replicating). A write that finds an expired key
reclaims it and says so with an explicit ``("del", key)`` op; ``purge_expired`` sweeps the rest and
returns the deletes to replicate. This is Redis's rule: only the master expires, replicas delete
when told.

**Replication invariant.** ``Outcome.writes`` describes the change to the *stored* state (expired
but unreclaimed keys included) in absolute terms: relative TTLs become ``expire_at_ms``, ``incr``
becomes a ``put`` of the resulting integer, collection commands become deltas naming only what
actually changed. ``apply`` runs those ops on stored state without looking at the clock, using the
same mutation primitives as the commands. Hence a replica that starts with the master's stored state
and applies the master's ops in order holds the master's stored state exactly, whatever its own
``now_ms`` - and so ``dump(t)`` agrees on both for every ``t``. For this, every check that can fail
for an *absent* key runs before the key is looked up, so a reclaim is never followed by a refusal
whose ops would be lost; ``execute`` turns any such refusal into ``InvariantViolation``.

**WriteOp** (tuples of str/bytes/int/None; msgpack turns them into lists, and ``apply`` accepts lists):

====================================================  ==============================================
``("put", key, type_tag, value, expire_at_ms|None)``  replace the key (value in snapshot format)
``("del", key)``                                      delete the key if stored
``("expire_at", key, expire_at_ms|None)``             set or clear the TTL of a stored key
``("lpush"|"rpush", key, (item, ...))``               push one by one (as the command), creating the list
``("lpop"|"rpop", key)``                              pop one item; an emptied list vanishes
``("hset", key, (field, value, ...))``                set fields, creating the hash if absent
``("hdel", key, (field, ...))``                       delete fields; an emptied hash vanishes
``("sadd"|"srem", key, (member, ...))``               add / remove members
``("drop", ((start, end), ...))``                     delete every key whose hash is in the ranges
====================================================  ==============================================

**SnapshotItem** is ``(key, type_tag, value, expire_at_ms|None)`` - exactly a ``put`` op without its
name - where ``type_tag`` is ``"string"|"integer"|"list"|"hash"|"set"`` and ``value`` is ``bytes``,
``int``, a tuple of items in list order, a flat tuple ``(field, value, ...)`` sorted by field, or a
sorted tuple of members. ``dump`` uses the same format, so dumps are canonical and msgpack-able.

**Accounting.** ``approx_bytes`` is ``sum(ENTRY_OVERHEAD_BYTES + len(key) + payload)`` where payload
is the string length, ``INTEGER_BYTES``, or the item lengths plus ``ITEM_OVERHEAD_BYTES`` per item,
plus ``TTL_OVERHEAD_BYTES`` for a key with a TTL. It and ``key_count`` count *stored* keys (expired
ones included until reclaimed), are updated by the mutation primitives only, and are O(1) to read;
``check_invariants`` recomputes them. Master and replica agree on them because their stored states
agree.

**Ranges.** A selector is a sequence of ``HashRange`` (or one ``HashRange``), or a predicate on the
64-bit key hash. Range operations are O(stored keys): they hash every key. ``snapshot`` resumes after
``after_key`` in sorted key order, so each batch is one O(n log batch) pass; a migration of a large
store should take large batches.
"""

from __future__ import annotations

from dimint.core.store.ops import (
    ENTRY_OVERHEAD_BYTES,
    INTEGER_BYTES,
    ITEM_OVERHEAD_BYTES,
    TTL_OVERHEAD_BYTES,
    TYPE_TAGS,
    Outcome,
    Selector,
    SnapshotItem,
    StoreLimits,
    StoreStats,
    WriteOp,
    drop_op,
    restore_ops,
)
from dimint.core.store.store import Store

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "INTEGER_BYTES",
    "ITEM_OVERHEAD_BYTES",
    "TTL_OVERHEAD_BYTES",
    "TYPE_TAGS",
    "Outcome",
    "Selector",
    "SnapshotItem",
    "Store",
    "StoreLimits",
    "StoreStats",
    "WriteOp",
    "drop_op",
    "restore_ops",
]
