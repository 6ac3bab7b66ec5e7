"""The store's memory and speed next to a plain dict holding the same data.

Usage: ``python benchmarks/store.py [--quick]``

What it measures, and why a dict is the baseline: a dict of bytes -> bytes is the least any Python
key-value store can cost, so the ratios say how much the store's typing, expiry, accounting and
command dispatch add on top.

* Memory: 1 M keys ``b"key:%d"`` -> 16-byte values (100 k with ``--quick``), built inside one
  tracemalloc window each, in the same process; both sides allocate their own key and value objects,
  so the figures compare like with like. The target is store <= 1.5x dict (PASS/FAIL). Keys with a
  TTL are shown too, for information: a TTL costs an entry in a second dict and an int.
* Speed: get and set on existing keys through ``Store.execute`` (the canonical, validated entry that
  also builds replication ops) and through the direct methods, against bare ``dict.get`` /
  ``d[k] = v``. Each figure is the median of several repeats.

It prints figures; it is not a test. The exit status is 1 when the memory target fails.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from dimint.core.store import Store

MEMORY_TARGET_RATIO = 1.5


def _value(i: int) -> bytes:
    return b"%016d" % i


def _traced_bytes(build: Callable[[], Any]) -> tuple[Any, int]:
    """What ``build()`` leaves allocated, in bytes (its result is kept alive and returned)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = build()
        gc.collect()
        return result, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def build_dict(count: int) -> dict[bytes, bytes]:
    return {b"key:%d" % i: _value(i) for i in range(count)}


def build_store(count: int, ttl_ms: int | None = None) -> Store:
    store = Store()
    store_set = store.set
    for i in range(count):
        store_set(b"key:%d" % i, _value(i), ttl_ms, now_ms=0)
    return store


def ops_per_second(loop: Callable[[], None], operations: int, repeats: int) -> float:
    """Median throughput of ``loop``, which performs ``operations`` operations per call."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop()
        rates.append(operations / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 k keys and fewer repeats")
    options = parser.parse_args()
    count = 100_000 if options.quick else 1_000_000
    sample = 20_000 if options.quick else 200_000
    repeats = 3 if options.quick else 5

    print(f"memory: {count:,} keys b'key:%d' -> 16-byte values (tracemalloc)")
    plain, dict_bytes = _traced_bytes(lambda: build_dict(count))
    store, store_bytes = _traced_bytes(lambda: build_store(count))
    ratio = store_bytes / dict_bytes
    verdict = "PASS" if ratio <= MEMORY_TARGET_RATIO else "FAIL"
    print(f"  plain dict      {dict_bytes / count:7.1f} B/key  {dict_bytes / 2**20:8.1f} MiB")
    print(f"  Store           {store_bytes / count:7.1f} B/key  {store_bytes / 2**20:8.1f} MiB")
    print(f"  ratio           {ratio:7.3f}x   target <= {MEMORY_TARGET_RATIO}x   {verdict}")
    with_ttl, ttl_bytes = _traced_bytes(lambda: build_store(count, ttl_ms=60_000))
    print(f"  Store, all TTL  {ttl_bytes / count:7.1f} B/key  ({ttl_bytes / dict_bytes:.3f}x dict, info)")
    del with_ttl
    gc.collect()

    rng = random.Random(1)
    keys = [b"key:%d" % rng.randrange(count) for _ in range(sample)]
    new_value = _value(-1)
    execute, store_get, store_set, plain_get = store.execute, store.get, store.set, plain.get

    def dict_get() -> None:
        for key in keys:
            plain_get(key)

    def execute_get() -> None:
        for key in keys:
            execute("get", (key,), 0)

    def direct_get() -> None:
        for key in keys:
            store_get(key, now_ms=0)

    def dict_set() -> None:
        for key in keys:
            plain[key] = new_value

    def execute_set() -> None:
        for key in keys:
            execute("set", (key, new_value, None, None), 0)

    def direct_set() -> None:
        for key in keys:
            store_set(key, new_value, now_ms=0)

    print(f"\nspeed: {sample:,} ops on random existing keys, median of {repeats} repeats")
    print(
        f"  {'op':4} {'dict ops/s':>12} {'execute ops/s':>14} {'dict/execute':>13} "
        f"{'direct ops/s':>13} {'dict/direct':>12}"
    )
    for name, baseline, via_execute, direct in (
        ("get", dict_get, execute_get, direct_get),
        ("set", dict_set, execute_set, direct_set),
    ):
        base = ops_per_second(baseline, sample, repeats)
        executed = ops_per_second(via_execute, sample, repeats)
        called = ops_per_second(direct, sample, repeats)
        print(
            f"  {name:4} {base:12,.0f} {executed:14,.0f} {base / executed:12.1f}x "
            f"{called:13,.0f} {base / called:11.1f}x"
        )
    store.check_invariants()
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
