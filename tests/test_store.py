"""The store behaves like a naive dict of Python values, and its ops replay it exactly on a replica.

How it is proved:

* ``StoreMachine`` (hypothesis ``RuleBasedStateMachine``) runs random commands - every command in the
  table, well-formed or deliberately malformed, on a few colliding keys so wrong-type refusals happen,
  under tight ``StoreLimits`` so every limit is hit, with time moving forward so TTLs expire - against
  ``Model``, a plain dict of Python values written naively here. Each reply (or refusal code) must
  match the model's; a refused command must leave the dump untouched. Ranges are exercised too:
  dropping a random ``HashRange`` from store and model, snapshotting a range in random batch sizes
  and restoring it into a fresh store, snapshot -> drop -> restore round trips. Invariants after
  every step: the dump equals the model's, the size bookkeeping equals an independent recomputation
  from the module's documented formula, and a replica fed only the ops (at another clock) holds the
  master's stored state exactly.
* ``test_replica_fed_only_ops_matches_master`` is the replication property on its own: random
  command sequences, ops sent through a msgpack round trip and applied at an unrelated ``now_ms``.
* Unit tests pin Redis edge cases: lrange indices, incr of strings, overflow, nx/xx, vanishing
  collections, expire <= 0, TTL clearing, malformed ops from peers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dimint.core.commands import COMMANDS, INT64_MAX, INT64_MIN
from dimint.core.errors import (
    CommandError,
    ConfigError,
    ErrorCode,
    InvariantViolation,
    RemoteProtocolError,
)
from dimint.core.hashing import FULL_RANGE, HASH_SPACE, HashRange, key_hash
from dimint.core.store import (
    ENTRY_OVERHEAD_BYTES,
    INTEGER_BYTES,
    ITEM_OVERHEAD_BYTES,
    TTL_OVERHEAD_BYTES,
    Store,
    StoreLimits,
    drop_op,
    restore_ops,
)

LIMITS = StoreLimits(max_key_bytes=8, max_value_bytes=16, max_collection_items=4)
EVERYTHING = INT64_MIN  # dump(EVERYTHING) shows every stored key, expired-but-unreclaimed included

# --------------------------------------------------------------------------------------------
# The naive reference model
# --------------------------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code)
        self.code = code


def _canonical(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return tuple(x for field in sorted(value) for x in (field, value[field]))
    if isinstance(value, set):
        return tuple(sorted(value))
    return value


def _tag(value: Any) -> str:
    return {bytes: "string", int: "integer", list: "list", dict: "hash", set: "set"}[type(value)]


class Model:
    """key -> [value, expire_at_ms | None] with values as plain bytes/int/list/dict/set."""

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self.data: dict[bytes, list[Any]] = {}

    def live(self, key: bytes, now: int) -> Any:
        entry = self.data.get(key)
        if entry is None or (entry[1] is not None and entry[1] <= now):
            return None
        return entry[0]

    def dump(self, now: int) -> dict[bytes, tuple[str, Any, int | None]]:
        return {
            key: (_tag(value), _canonical(value), at)
            for key, (value, at) in sorted(self.data.items())
            if at is None or at > now
        }

    # -- argument checks, one kind at a time, left to right ---------------------------------

    def _text(self, arg: Any) -> bytes:
        if isinstance(arg, str):
            try:
                return arg.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(ErrorCode.BAD_ARGUMENT) from None
        if isinstance(arg, bytes):
            return arg
        raise Refused(ErrorCode.BAD_ARGUMENT)

    def _int(self, arg: Any) -> int:
        if isinstance(arg, bool) or not isinstance(arg, int) or not INT64_MIN <= arg <= INT64_MAX:
            raise Refused(ErrorCode.BAD_ARGUMENT)
        return arg

    def _arg(self, kind: str, arg: Any) -> Any:
        if kind == "key":
            key = self._text(arg)
            if len(key) > self.limits.max_key_bytes:
                raise Refused(ErrorCode.KEY_TOO_LARGE)
            return key
        if kind == "bytes" or (kind == "value" and (isinstance(arg, bool) or not isinstance(arg, int))):
            data = self._text(arg)
            if len(data) > self.limits.max_value_bytes:
                raise Refused(ErrorCode.VALUE_TOO_LARGE)
            return data
        if kind in ("int", "value"):
            return self._int(arg)
        if kind == "opt_int":
            return None if arg is None else self._int(arg)
        assert kind == "cond"
        if arg not in (None, "nx", "xx"):
            raise Refused(ErrorCode.BAD_ARGUMENT)
        return arg

    def _args(self, command: str, args: list[Any]) -> list[Any]:
        kinds = COMMANDS[command].args
        if kinds[-1].endswith("*") or kinds[-1] == "pairs":
            fixed = len(kinds) - 1
            rest = len(args) - fixed
            step = 2 if kinds[-1] == "pairs" else 1
            if rest < step or rest % step:
                raise Refused(ErrorCode.BAD_ARGUMENT)
            if kinds[-1] == "pairs":
                pair = ("key", "value") if command == "mset" else ("bytes", "bytes")
                tail = [pair[i % 2] for i in range(rest)]
            else:
                tail = [kinds[-1][:-1]] * rest
            kinds = kinds[:-1] + tuple(tail)
        elif len(args) != len(kinds):
            raise Refused(ErrorCode.BAD_ARGUMENT)
        return [self._arg(kind, arg) for kind, arg in zip(kinds, args, strict=True)]

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str, args: list[Any], now: int) -> Any:
        if command not in COMMANDS:
            raise Refused(ErrorCode.UNKNOWN_COMMAND)
        args = self._args(command, args)
        return getattr(self, "do_" + command)(now, *args)

    def _expect(self, value: Any, kind: type) -> Any:
        if value is not None and type(value) is not kind:
            raise Refused(ErrorCode.WRONG_TYPE)
        return value

    def _too_many(self, count: int) -> None:
        if count > self.limits.max_collection_items:
            raise Refused(ErrorCode.BAD_ARGUMENT)

    def do_get(self, now: int, key: bytes) -> Any:
        value = self.live(key, now)
        if isinstance(value, list | dict | set):
            raise Refused(ErrorCode.WRONG_TYPE)
        return value

    def do_set(self, now: int, key: bytes, value: Any, ttl: int | None, cond: str | None) -> bool:
        if ttl is not None and (ttl <= 0 or now + ttl > INT64_MAX):
            raise Refused(ErrorCode.BAD_ARGUMENT)
        exists = self.live(key, now) is not None
        if (cond == "nx" and exists) or (cond == "xx" and not exists):
            return False
        self.data[key] = [value, None if ttl is None else now + ttl]
        return True

    def do_delete(self, now: int, *keys: bytes) -> int:
        count = 0
        for key in keys:
            if self.live(key, now) is not None:
                del self.data[key]
                count += 1
        return count

    def do_exists(self, now: int, *keys: bytes) -> int:
        return sum(self.live(key, now) is not None for key in keys)

    def do_type(self, now: int, key: bytes) -> str:
        value = self.live(key, now)
        return "none" if value is None else _tag(value)

    def do_ttl(self, now: int, key: bytes) -> int:
        if self.live(key, now) is None:
            return -2
        at = self.data[key][1]
        return -1 if at is None else at - now

    def do_expire(self, now: int, key: bytes, ttl: int) -> bool:
        if ttl > 0 and now + ttl > INT64_MAX:
            raise Refused(ErrorCode.BAD_ARGUMENT)
        if self.live(key, now) is None:
            return False
        if ttl <= 0:
            del self.data[key]
        else:
            self.data[key][1] = now + ttl
        return True

    def do_persist(self, now: int, key: bytes) -> bool:
        if self.live(key, now) is None or self.data[key][1] is None:
            return False
        self.data[key][1] = None
        return True

    def do_incr(self, now: int, key: bytes, by: int) -> int:
        value = self.live(key, now)
        if value is None:
            current = 0
        elif isinstance(value, int):
            current = value
        elif isinstance(value, bytes):
            if not re.fullmatch(rb"-?[1-9][0-9]*|0", value) or not INT64_MIN <= int(value) <= INT64_MAX:
                raise Refused(ErrorCode.NOT_INTEGER)
            current = int(value)
        else:
            raise Refused(ErrorCode.WRONG_TYPE)
        if not INT64_MIN <= current + by <= INT64_MAX:
            raise Refused(ErrorCode.OVERFLOW)
        self.data[key] = [current + by, None if value is None else self.data[key][1]]
        return current + by

    def do_decr(self, now: int, key: bytes, by: int) -> int:
        if by == INT64_MIN:
            raise Refused(ErrorCode.OVERFLOW)
        return self.do_incr(now, key, -by)

    def do_mget(self, now: int, *keys: bytes) -> list[Any]:
        return [v if isinstance(v, bytes | int) else None for v in (self.live(k, now) for k in keys)]

    def do_mset(self, now: int, *pairs: Any) -> bool:
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            self.data[key] = [value, None]
        return True

    def _push(self, now: int, key: bytes, items: tuple[bytes, ...], left: bool) -> int:
        self._too_many(len(items))
        current = self._expect(self.live(key, now), list)
        if current is None:
            current = []
            self.data[key] = [current, None]
        self._too_many(len(current) + len(items))
        for item in items:
            if left:
                current.insert(0, item)
            else:
                current.append(item)
        return len(current)

    def do_lpush(self, now: int, key: bytes, *items: bytes) -> int:
        return self._push(now, key, items, left=True)

    def do_rpush(self, now: int, key: bytes, *items: bytes) -> int:
        return self._push(now, key, items, left=False)

    def _pop(self, now: int, key: bytes, index: int) -> bytes | None:
        current = self._expect(self.live(key, now), list)
        if current is None:
            return None
        item = current.pop(index)
        if not current:
            del self.data[key]
        return item

    def do_lpop(self, now: int, key: bytes) -> bytes | None:
        return self._pop(now, key, 0)

    def do_rpop(self, now: int, key: bytes) -> bytes | None:
        return self._pop(now, key, -1)

    def do_lrange(self, now: int, key: bytes, start: int, stop: int) -> list[bytes]:
        items = self._expect(self.live(key, now), list) or []
        n = len(items)
        if start < 0:
            start = n + start
        if stop < 0:
            stop = n + stop
        start = max(start, 0)
        if start > stop or start >= n:
            return []
        return items[start : min(stop, n - 1) + 1]

    def do_llen(self, now: int, key: bytes) -> int:
        return len(self._expect(self.live(key, now), list) or [])

    def do_hset(self, now: int, key: bytes, *flat: bytes) -> int:
        self._too_many(len(flat) // 2)
        current = self._expect(self.live(key, now), dict)
        merged = dict(current or {})
        merged.update(zip(flat[::2], flat[1::2], strict=True))
        self._too_many(len(merged))
        added = len(merged) - len(current or {})
        self.data[key] = [merged, None if current is None else self.data[key][1]]
        return added

    def do_hget(self, now: int, key: bytes, field: bytes) -> bytes | None:
        return (self._expect(self.live(key, now), dict) or {}).get(field)

    def do_hdel(self, now: int, key: bytes, *fields: bytes) -> int:
        current = self._expect(self.live(key, now), dict)
        if current is None:
            return 0
        removed = {f for f in fields if f in current}
        for field in removed:
            del current[field]
        if not current:
            del self.data[key]
        return len(removed)

    def do_hgetall(self, now: int, key: bytes) -> dict[bytes, bytes]:
        return dict(self._expect(self.live(key, now), dict) or {})

    def do_hlen(self, now: int, key: bytes) -> int:
        return len(self._expect(self.live(key, now), dict) or {})

    def do_sadd(self, now: int, key: bytes, *members: bytes) -> int:
        self._too_many(len(members))
        current = self._expect(self.live(key, now), set)
        merged = (current or set()) | set(members)
        self._too_many(len(merged))
        self.data[key] = [merged, None if current is None else self.data[key][1]]
        return len(merged) - len(current or ())

    def do_srem(self, now: int, key: bytes, *members: bytes) -> int:
        current = self._expect(self.live(key, now), set)
        if current is None:
            return 0
        removed = current & set(members)
        current -= removed
        if not current:
            del self.data[key]
        return len(removed)

    def do_smembers(self, now: int, key: bytes) -> list[bytes]:
        return sorted(self._expect(self.live(key, now), set) or ())

    def do_sismember(self, now: int, key: bytes, member: bytes) -> bool:
        return member in (self._expect(self.live(key, now), set) or ())

    def do_scard(self, now: int, key: bytes) -> int:
        return len(self._expect(self.live(key, now), set) or ())


def recomputed_bytes(raw_dump: dict[bytes, tuple[str, Any, int | None]]) -> int:
    """approx_bytes from the documented formula, computed from a dump rather than the store."""
    total = 0
    for key, (tag, value, at) in raw_dump.items():
        if tag == "string":
            payload = len(value)
        elif tag == "integer":
            payload = INTEGER_BYTES
        else:
            items = value if tag != "hash" else [value[i] + value[i + 1] for i in range(0, len(value), 2)]
            payload = sum(len(item) + ITEM_OVERHEAD_BYTES for item in items)
        total += ENTRY_OVERHEAD_BYTES + len(key) + payload + (TTL_OVERHEAD_BYTES if at is not None else 0)
    return total


# --------------------------------------------------------------------------------------------
# Command strategies
# --------------------------------------------------------------------------------------------

# Small pools so keys collide (wrong types, overwrites) and items repeat (duplicate members, fields);
# a rare entry in each pool breaks a limit.
KEYS = st.sampled_from([b"a", b"b", b"c", "d", b"e", b"a", b"b", b"c", b"much-too-long"])
ITEMS = st.sampled_from([b"x", b"y", "z", b"", b"t", b"u", b"v"] * 3 + [b"w" * 17])
INTS = st.integers(-6, 60) | st.sampled_from([INT64_MAX, INT64_MIN, INT64_MAX - 1])
VALUES = ITEMS | INTS | st.sampled_from([b"12", b"-3", b"012", b"-0", b"1x", b"9223372036854775807"])
KIND_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "key": KEYS,
    "value": VALUES,
    "bytes": ITEMS,
    "int": INTS,
    "opt_int": st.none() | st.none() | st.integers(-1, 60) | st.just(INT64_MAX),
    "cond": st.sampled_from([None, None, "nx", "xx"]),
    "key*": st.lists(KEYS, min_size=1, max_size=3),
    "bytes*": st.lists(ITEMS, min_size=1, max_size=5),
}
BAD_VALUES = st.sampled_from([None, 1.5, True, [b"x"], "\ud800", "NX", {}, 2**64])


def _args_strategy(name: str, keys: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    kinds = {**KIND_STRATEGIES, "key": keys, "key*": st.lists(keys, min_size=1, max_size=3)}
    parts = []
    for kind in COMMANDS[name].args:
        if kind == "pairs":
            pair = st.tuples(keys, VALUES) if name == "mset" else st.tuples(ITEMS, ITEMS)
            pairs = st.lists(pair, min_size=1, max_size=5)
            parts.append(pairs.map(lambda ps: [x for p in ps for x in p]))
        elif kind.endswith("*"):
            parts.append(kinds[kind])
        else:
            parts.append(kinds[kind].map(lambda x: [x]))
    return st.tuples(*parts).map(lambda chunks: [x for chunk in chunks for x in chunk])


def _malform(draw: Callable[..., Any], args: list[Any]) -> list[Any]:
    how = draw(st.sampled_from(["drop", "extra", "replace"]))
    if how == "drop":
        return args[:-1]
    if how == "extra":
        return [*args, b"x"]
    index = draw(st.integers(0, len(args) - 1))
    return [*args[:index], draw(BAD_VALUES), *args[index + 1 :]]


#: Commands grouped by the type they work on, each with keys of its own (and the shared b"a"): a batch
#: from one family grows big values, which reaching a collection limit after the lookup takes.
FAMILIES = [
    (["get", "set", "incr", "decr", "mget", "mset", "delete", "exists", "ttl", "expire", "persist"], b"n"),
    (["lpush", "rpush", "lpop", "rpop", "lrange", "llen", "expire", "type"], b"l"),
    (["hset", "hget", "hdel", "hgetall", "hlen", "expire", "type"], b"h"),
    (["sadd", "srem", "smembers", "sismember", "scard", "expire", "type"], b"s"),
]


@st.composite
def commands(
    draw: Callable[..., Any], names: list[str] | None = None, keys: st.SearchStrategy[Any] = KEYS
) -> tuple[str, list[Any]]:
    name = draw(st.sampled_from(names or [*sorted(COMMANDS), "flushall", "GET"]))
    if name not in COMMANDS:
        return name, [b"a"]
    args = draw(_args_strategy(name, keys))
    if draw(st.integers(0, 9)) == 0:
        args = _malform(draw, args)
    return name, args


FAMILY_BATCHES = st.sampled_from(FAMILIES).flatmap(
    lambda family: st.lists(
        commands(family[0], st.sampled_from([family[1] + b"1", family[1] + b"2", b"a"])),
        min_size=1,
        max_size=8,
    )
)
HALF = HASH_SPACE // 2
HASH_RANGES = st.sampled_from([FULL_RANGE, HashRange(0, HALF), HashRange(HALF, HASH_SPACE)]) | st.tuples(
    st.integers(0, HASH_SPACE - 1), st.integers(1, HASH_SPACE)
).map(lambda se: HashRange(min(se), max(se)) if min(se) < max(se) else HashRange(se[0], se[0] + 1))


def outcome_of(run: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", run()
    except (CommandError, Refused) as refusal:
        return "refused", refusal.code


# --------------------------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store(LIMITS)
        self.replica = Store(LIMITS)
        self.model = Model(LIMITS)
        self.now = 1_000

    def _replicate(self, writes: Any) -> None:
        # The replica's clock is deliberately unrelated to the master's.
        self.replica.apply(writes, now_ms=self.now * 7 + 123_456)

    @rule(delta=st.integers(0, 40))
    def advance_time(self, delta: int) -> None:
        self.now += delta

    @rule(batch=st.lists(commands(), min_size=1, max_size=6))
    def run_commands(self, batch: list[tuple[str, list[Any]]]) -> None:
        # Several commands per step: hypothesis picks rules uniformly, and commands matter most.
        self._run_batch(batch)

    @rule(batch=FAMILY_BATCHES)
    def run_commands_of_one_family(self, batch: list[tuple[str, list[Any]]]) -> None:
        self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[str, list[Any]]]) -> None:
        for name, args in batch:
            self._run_one(name, args)
            self.store_matches_model()

    def _run_one(self, name: str, args: list[Any]) -> None:
        before = self.store.dump(EVERYTHING)
        outcome = None

        def run_store() -> Any:
            nonlocal outcome
            outcome = self.store.execute(name, args, self.now)
            return outcome.value

        got = outcome_of(run_store)
        expected = outcome_of(lambda: self.model.run(name, list(args), self.now))
        assert got == expected, f"{name}{tuple(args)} at {self.now}"
        if got[0] == "refused":
            assert self.store.dump(EVERYTHING) == before, "a refused command changed the store"
            return
        assert outcome is not None
        if not COMMANDS[name].is_write:
            assert outcome.writes == ()
        self._replicate(outcome.writes)

    @rule()
    def purge_expired(self) -> None:
        outcome = self.store.purge_expired(self.now)
        assert self.store.stats(self.now).expired_keys == 0
        self._replicate(outcome.writes)

    @rule(hash_range=HASH_RANGES)
    def drop_range(self, hash_range: HashRange) -> None:
        live_in_range = self.store.count([hash_range], self.now)
        assert self.store.drop([hash_range]) >= live_in_range
        self._replicate([drop_op([hash_range])])
        for key in [k for k in self.model.data if key_hash(k) in hash_range]:
            del self.model.data[key]
        assert self.store.count([hash_range], self.now) == 0

    @rule(hash_range=HASH_RANGES, batch=st.integers(1, 3))
    def snapshot_into_fresh_store(self, hash_range: HashRange, batch: int) -> None:
        whole = self.store.snapshot([hash_range], self.now)
        batched: list[Any] = []
        while True:
            after = batched[-1][0] if batched else None
            chunk = self.store.snapshot([hash_range], self.now, max_items=batch, after_key=after)
            assert len(chunk) <= batch
            if not chunk:
                break
            batched.extend(chunk)
        assert batched == whole
        wire = msgpack.unpackb(msgpack.packb(whole), raw=False)
        fresh = Store(LIMITS)
        assert fresh.restore(wire) == len(whole)
        expected = {k: v for k, v in self.model.dump(self.now).items() if key_hash(k) in hash_range}
        assert fresh.dump(self.now) == expected
        assert list(self.store.scan([hash_range], self.now)) == list(expected)
        keys, size = self.store.range_stats(lambda h: h in hash_range, self.now)
        assert (keys, size) == (len(expected), recomputed_bytes(expected))

    @rule(hash_range=HASH_RANGES)
    def snapshot_drop_restore_round_trip(self, hash_range: HashRange) -> None:
        before = self.store.dump(EVERYTHING)
        items = self.store.snapshot(hash_range, EVERYTHING)  # every stored key, expired ones too
        self.store.drop(hash_range)
        self._replicate([drop_op([hash_range])])
        self.store.restore(items)
        self._replicate(restore_ops(items))
        assert self.store.dump(EVERYTHING) == before

    @precondition(lambda self: self.model.data)
    @rule(data=st.data())
    def wrong_type_is_refused_without_change(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model.data)))
        kind = self.model.do_type(self.now, key)
        if kind == "none":
            return
        # A command of a different type family on the same key.
        other = {"string": "lpush", "integer": "sadd", "list": "hget", "hash": "get", "set": "llen"}[kind]
        args = [key, b"x"] if other in ("lpush", "sadd", "hget") else [key]
        before = self.store.dump(EVERYTHING)
        with pytest.raises(CommandError) as refusal:
            self.store.execute(other, args, self.now)
        assert refusal.value.code == ErrorCode.WRONG_TYPE
        assert self.store.dump(EVERYTHING) == before

    @invariant()
    def store_matches_model(self) -> None:
        assert self.store.dump(self.now) == self.model.dump(self.now)

    @invariant()
    def scan_and_count_see_live_keys_only(self) -> None:
        live = list(self.model.dump(self.now))
        assert list(self.store.scan(FULL_RANGE, self.now)) == live
        assert self.store.count([FULL_RANGE], self.now) == len(live)

    @invariant()
    def bookkeeping_matches_recomputation(self) -> None:
        raw = self.store.dump(EVERYTHING)
        assert self.store.key_count == len(raw)
        assert self.store.approx_bytes == recomputed_bytes(raw)
        self.store.check_invariants()

    @invariant()
    def replica_holds_the_masters_stored_state(self) -> None:
        assert self.replica.dump(EVERYTHING) == self.store.dump(EVERYTHING)
        assert self.replica.approx_bytes == self.store.approx_bytes
        self.replica.check_invariants()


StoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestStoreMachine = StoreMachine.TestCase


# --------------------------------------------------------------------------------------------
# Replication property on its own, through the wire format
# --------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 30), commands()), min_size=1, max_size=40),
    replica_now=st.integers(0, 10**6),
)
def test_replica_fed_only_ops_matches_master(
    steps: list[tuple[int, tuple[str, list[Any]]]], replica_now: int
) -> None:
    master, replica = Store(LIMITS), Store(LIMITS)
    now = 0
    for delta, (name, args) in steps:
        now += delta
        try:
            outcome = master.execute(name, args, now)
        except CommandError:
            continue
        wire = msgpack.unpackb(msgpack.packb(outcome.writes), raw=False)
        replica.apply(wire, now_ms=replica_now)
    for at in (EVERYTHING, now, now + 100):
        assert replica.dump(at) == master.dump(at)
    assert replica.stats(now) == master.stats(now)


# --------------------------------------------------------------------------------------------
# Redis edge cases
# --------------------------------------------------------------------------------------------


def refusal(store: Store, command: str, *args: Any, now: int = 0) -> ErrorCode:
    before = store.dump(EVERYTHING)
    with pytest.raises(CommandError) as raised:
        store.execute(command, args, now)
    assert store.dump(EVERYTHING) == before
    return raised.value.code


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        (0, -1, b"abcde"),
        (-2, -1, b"de"),
        (-100, 1, b"ab"),
        (3, 100, b"de"),
        (1, 1, b"b"),
        (4, 2, b""),
        (10, 20, b""),
        (-1, -2, b""),
        (0, -6, b""),
    ],
)
def test_lrange_follows_redis_indices(store: Store, start: int, stop: int, expected: bytes) -> None:
    store.rpush("l", *(bytes([c]) for c in b"abcde"), now_ms=0)
    assert b"".join(store.lrange("l", start, stop, now_ms=0)) == expected


def test_lpush_prepends_items_one_by_one(store: Store) -> None:
    assert store.lpush("l", "a", "b", now_ms=0) == 2
    assert store.rpush("l", "c", now_ms=0) == 3
    assert store.lrange("l", 0, -1, now_ms=0) == [b"b", b"a", b"c"]


def test_incr_parses_canonical_decimal_strings_only(store: Store) -> None:
    store.set("n", "12", now_ms=0)
    assert store.type("n", now_ms=0) == "string"
    assert store.incr("n", now_ms=0) == 13
    assert store.type("n", now_ms=0) == "integer"
    assert store.get("n", now_ms=0) == 13
    assert store.incr("missing", 5, now_ms=0) == 5
    assert store.decr("other", 2, now_ms=0) == -2
    for text in ("012", "+1", "-0", " 1", "1.5", "", "9223372036854775808"):
        store.set("s", text, now_ms=0)
        assert refusal(store, "incr", "s", 1) == ErrorCode.NOT_INTEGER
    store.rpush("l", "x", now_ms=0)
    assert refusal(store, "incr", "l", 1) == ErrorCode.WRONG_TYPE


def test_integer_overflow_is_refused_and_changes_nothing(store: Store) -> None:
    store.set("n", INT64_MAX, now_ms=0)
    assert refusal(store, "incr", "n", 1) == ErrorCode.OVERFLOW
    assert store.get("n", now_ms=0) == INT64_MAX
    assert refusal(store, "decr", "zero", INT64_MIN) == ErrorCode.OVERFLOW
    assert store.exists("zero", now_ms=0) == 0
    store.set("negative", -1, now_ms=0)
    assert refusal(store, "decr", "negative", INT64_MIN) == ErrorCode.OVERFLOW  # as Redis: always
    store.set("expired", 1, 5, now_ms=0)
    assert refusal(store, "decr", "expired", INT64_MIN, now=5) == ErrorCode.OVERFLOW
    assert store.key_count == 3  # refused before the expired key was reclaimed
    assert refusal(store, "set", "big", INT64_MAX + 1, None, None) == ErrorCode.BAD_ARGUMENT


def test_nx_and_xx_conditions(store: Store) -> None:
    assert store.set("k", "v", None, "xx", now_ms=0) is False
    assert store.exists("k", now_ms=0) == 0
    assert store.set("k", "v", None, "nx", now_ms=0) is True
    assert store.set("k", "w", None, "nx", now_ms=0) is False
    assert store.set("k", "w", None, "xx", now_ms=0) is True
    assert store.get("k", now_ms=0) == b"w"
    store.set("t", "v", 10, now_ms=0)
    assert store.set("t", "again", None, "nx", now_ms=10) is True  # expired counts as absent


def test_set_without_ttl_clears_ttl_but_incr_keeps_it(store: Store) -> None:
    store.set("k", 1, 100, now_ms=0)
    assert store.incr("k", now_ms=10) == 2
    assert store.ttl("k", now_ms=10) == 90
    store.set("k", "v", now_ms=20)
    assert store.ttl("k", now_ms=20) == -1
    assert store.ttl("missing", now_ms=20) == -2


def test_empty_collections_vanish(store: Store) -> None:
    store.rpush("l", "x", now_ms=0)
    assert store.lpop("l", now_ms=0) == b"x"
    store.hset("h", "f", "v", now_ms=0)
    assert store.hdel("h", "f", "f", now_ms=0) == 1
    store.sadd("s", "m", now_ms=0)
    assert store.srem("s", "m", now_ms=0) == 1
    assert [store.type(k, now_ms=0) for k in ("l", "h", "s")] == ["none"] * 3
    assert store.key_count == 0
    assert store.approx_bytes == 0


def test_expire_at_or_below_zero_deletes(store: Store) -> None:
    store.set("a", "1", now_ms=0)
    store.set("b", "1", now_ms=0)
    assert store.expire("a", 0, now_ms=0) is True
    assert store.expire("b", -5, now_ms=0) is True
    assert store.exists("a", "b", now_ms=0) == 0
    assert store.expire("missing", -5, now_ms=0) is False
    assert refusal(store, "set", "c", "v", 0, None) == ErrorCode.BAD_ARGUMENT


def test_expired_keys_are_absent_and_reclaimed_with_an_explicit_delete(store: Store) -> None:
    store.set("k", "v", 10, now_ms=0)
    assert store.get("k", now_ms=9) == b"v"
    assert store.get("k", now_ms=10) is None
    assert store.key_count == 1  # reads never mutate
    outcome = store.execute("lpush", ["k", "x"], 10)
    assert outcome.writes == (("del", b"k"), ("lpush", b"k", (b"x",)))
    store.set("t", "v", 5, now_ms=10)
    store.set("u", "v", 50, now_ms=10)
    assert store.purge_expired(14).writes == ()
    assert store.purge_expired(99, max_keys=0).writes == ()
    assert store.purge_expired(15).writes == (("del", b"t"),)  # expire_at_ms <= now_ms is expired
    assert store.stats(15).keys_with_ttl == 1


def test_wrong_type_and_mget_on_other_types(store: Store) -> None:
    store.rpush("l", "x", now_ms=0)
    store.set("s", "v", now_ms=0)
    assert refusal(store, "get", "l") == ErrorCode.WRONG_TYPE
    assert refusal(store, "lpush", "s", "x") == ErrorCode.WRONG_TYPE
    assert refusal(store, "hset", "l", "f", "v") == ErrorCode.WRONG_TYPE
    assert store.mget("s", "l", "missing", now_ms=0) == [b"v", None, None]


def test_limits_and_argument_checks() -> None:
    store = Store(StoreLimits(max_key_bytes=4, max_value_bytes=4, max_collection_items=2))
    assert refusal(store, "set", "12345", "v", None, None) == ErrorCode.KEY_TOO_LARGE
    assert refusal(store, "set", "k", "12345", None, None) == ErrorCode.VALUE_TOO_LARGE
    assert refusal(store, "rpush", "l", "a", "b", "c") == ErrorCode.BAD_ARGUMENT
    store.rpush("l", "a", "b", now_ms=0)
    assert refusal(store, "rpush", "l", "c") == ErrorCode.BAD_ARGUMENT
    store.sadd("s", "a", "b", now_ms=0)
    assert store.sadd("s", "a", "b", now_ms=0) == 0  # no growth, no refusal
    assert refusal(store, "sadd", "s", "a", "c") == ErrorCode.BAD_ARGUMENT
    store.hset("h", "f", "1", "g", "2", now_ms=0)
    assert store.hset("h", "f", "3", now_ms=0) == 0
    assert refusal(store, "hset", "h", "x", "1") == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "incr", "n", True) == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "expire", "l", "10") == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "sadd", "s", 1) == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "get") == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "hset", "h", "f") == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "set", "k", "v", None, "NX") == ErrorCode.BAD_ARGUMENT
    assert refusal(store, "nope", "k") == ErrorCode.UNKNOWN_COMMAND
    with pytest.raises(CommandError):
        store.execute("get", "k", 0)  # a bare string is not an argument list
    with pytest.raises(ConfigError):
        StoreLimits(max_key_bytes=0)


def test_reads_and_no_op_writes_emit_nothing(store: Store) -> None:
    store.sadd("s", "m", now_ms=0)
    assert store.execute("smembers", ["s"], 0).writes == ()
    assert store.execute("sadd", ["s", "m"], 0).writes == ()
    assert store.execute("srem", ["s", "x"], 0).writes == ()
    assert store.execute("persist", ["s"], 0).writes == ()


def test_direct_methods_answer_like_execute(store: Store) -> None:
    other = Store()
    store.hset("h", "f", "1", "g", "2", now_ms=0)
    other.execute("hset", ["h", "f", "1", "g", "2"], 0)
    assert store.hgetall("h", now_ms=0) == other.execute("hgetall", ["h"], 0).value
    assert store.dump(0) == other.dump(0)


def test_apply_refuses_malformed_ops_before_changing_anything(store: Store) -> None:
    good = ("put", b"k", "string", b"v", None)
    for bad in [
        ("put", "k", "string", b"v", None),  # key not bytes
        ("put", b"k", "list", (), None),  # empty collection
        ("put", b"k", "hash", (b"f", b"1", b"f", b"2"), None),  # duplicate field
        ("put", b"k", "integer", True, None),
        ("explode", b"k"),
        ("drop", ((5, 1),)),
        "put",
    ]:
        with pytest.raises(RemoteProtocolError):
            store.apply([good, bad], now_ms=0)
        assert store.dump(EVERYTHING) == {}


def test_apply_detects_a_diverged_replica(store: Store) -> None:
    store.set("k", "v", now_ms=0)
    with pytest.raises(InvariantViolation):
        store.apply([("lpush", b"k", (b"x",))], now_ms=0)


def test_snapshot_batches_and_selectors(store: Store) -> None:
    for i in range(50):
        store.set(f"k{i:02}", i, now_ms=0)
    batches, after = [], None
    while batch := store.snapshot(FULL_RANGE, 0, max_items=7, after_key=after):
        batches.append(batch)
        after = batch[-1][0]
    assert [len(b) for b in batches] == [7] * 7 + [1]
    assert [item for b in batches for item in b] == store.snapshot([FULL_RANGE], 0)
    low, high = HashRange(0, 1 << 63), HashRange(1 << 63, HASH_SPACE)
    assert store.count([low], 0) + store.count([high], 0) == store.count([low, high], 0) == 50
    assert store.count(lambda h: h in low, 0) == store.count([low], 0)
    assert store.drop([low]) + store.key_count == 50
