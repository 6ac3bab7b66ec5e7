"""DiMint's real runtime on loopback next to Redis: operations, batches, failover and migration.

Usage: ``python benchmarks/e2e.py [--quick] [--ops 20000] [--keys 50000]``
Needs Debian's ``redis-server`` and the ``redis`` Python package (``pip install -e '.[bench]'``);
it starts its own servers on free loopback ports and stops them.

Each figure is a ratio against a named baseline measured in the same run (the machine is shared
and noisy: medians of ``--repeats`` rounds, interleaved so drift hits both sides alike):

* **GET and SET one at a time**, 100-byte values, one client thread: DiMint's ``Client.get/set``
  against redis-py's ``get/set`` on one ``redis-server``. Target >= 0.5x.
* **Batches of 100**: a DiMint pipeline of 100 SETs (then GETs) against a redis-py pipeline of 100
  (``transaction=False``). Target >= 0.5x.
* **Failover**: ``kill -9`` of the master of the shard holding a probe key, under a writer; the time
  from the kill to the first acknowledged write on that key of a write submitted after the master
  was gone. It runs on a cluster of its own, 1 shard x (master + 2 slaves): with one slave only, the
  promoted master would have no slave left and semi-sync would refuse writes until a spare caught
  up. The writer's client uses ``request_timeout=0.2`` s so that a request lost with the dead master
  is retried promptly. Target <= session timeout + 1 s.
* **Keys moved per second when a shard is added**: ``--keys`` keys preloaded, then a shard added;
  moved keys (from the Overlord's per-move metering) over the time from the leader accepting the
  ``add_shard`` request until the rebalance finished, both read from the leader's event log (so
  starting the new node processes, which comes before the request, and polling the status do not
  count; the end-to-end figure with them is printed too), against Redis
  ``MIGRATE host port "" 0 timeout KEYS k1 .. k100`` in batches of
  100 between two local ``redis-server`` processes. Target >= 0.5x.

The DiMint cluster is a ``LocalCluster`` (2 shards x (master + 1 slave), 3 Overlords, semi-sync,
its own standalone ZooKeeper). Redis runs without persistence (``--save "" --appendonly no``), the
fair comparison for an in-memory store without disk. It prints every figure it could measure (a
part that fails is reported as not measured, with its error, after the others) and exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from dimint.real.client import Client, DimintClientError
from dimint.real.local import LocalCluster
from dimint.real.zk import free_port

VALUE = b"v" * 100


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dimint-bench-redis-")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def per_second(count: int, action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return count / (time.perf_counter() - started)


def one_at_a_time(dimint: Client, redis_client: Any, ops: int, repeats: int) -> dict[str, list[float]]:
    keys = [f"bench:single:{i}" for i in range(ops)]
    out: dict[str, list[float]] = {"dimint set": [], "redis set": [], "dimint get": [], "redis get": []}
    for _ in range(repeats):
        out["dimint set"].append(per_second(ops, lambda: [dimint.set(k, VALUE) for k in keys]))
        out["redis set"].append(per_second(ops, lambda: [redis_client.set(k, VALUE) for k in keys]))
        out["dimint get"].append(per_second(ops, lambda: [dimint.get(k) for k in keys]))
        out["redis get"].append(per_second(ops, lambda: [redis_client.get(k) for k in keys]))
    return out


def batches(
    dimint: Client, redis_client: Any, ops: int, repeats: int, size: int = 100
) -> dict[str, list[float]]:
    keys = [f"bench:batch:{i}" for i in range(ops)]
    chunks = [keys[i : i + size] for i in range(0, len(keys), size)]

    def dimint_sets() -> None:
        for chunk in chunks:
            with dimint.pipeline() as pipe:
                for key in chunk:
                    pipe.set(key, VALUE)

    def dimint_gets() -> None:
        for chunk in chunks:
            pipe = dimint.pipeline()
            for key in chunk:
                pipe.get(key)
            pipe.execute()

    def redis_sets() -> None:
        for chunk in chunks:
            pipe = redis_client.pipeline(transaction=False)
            for key in chunk:
                pipe.set(key, VALUE)
            pipe.execute()

    def redis_gets() -> None:
        for chunk in chunks:
            pipe = redis_client.pipeline(transaction=False)
            for key in chunk:
                pipe.get(key)
            pipe.execute()

    out: dict[str, list[float]] = {"dimint set": [], "redis set": [], "dimint get": [], "redis get": []}
    for _ in range(repeats):
        out["dimint set"].append(per_second(ops, dimint_sets))
        out["redis set"].append(per_second(ops, redis_sets))
        out["dimint get"].append(per_second(ops, dimint_gets))
        out["redis get"].append(per_second(ops, redis_gets))
    return out


def failover_time(cluster: LocalCluster) -> float:
    """Seconds from ``kill -9`` of a master to the first acknowledged write, on that shard, of a write
    submitted after the master was gone (so no ack from the dead master can count)."""
    client = Client(cluster.overlord_addresses, timeout=30.0, request_timeout=0.2, retries=50)
    try:
        probe = "bench:failover:probe"
        client.set(probe, b"0")
        shard = client.cluster_map().owner(probe)
        master = next(s["master"] for s in cluster.status()["shards"] if s["shard_id"] == shard)
        stop = threading.Event()
        dead_at: list[float] = []
        acked: list[float] = []

        def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                submitted = time.monotonic()
                try:
                    client.set(probe, str(n).encode())
                except DimintClientError:
                    time.sleep(0.01)
                    continue
                if dead_at and submitted >= dead_at[0]:
                    acked.append(time.monotonic())

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(0.5)
        killed_at = time.monotonic()
        cluster.kill(master, signal.SIGKILL, wait=True)
        dead_at.append(time.monotonic())
        deadline = killed_at + 60
        while time.monotonic() < deadline and not acked:
            time.sleep(0.01)
        stop.set()
        thread.join(10)
        if not acked:
            raise RuntimeError("no write was acknowledged within 60 s of the kill")
        return acked[0] - killed_at
    finally:
        client.close()


def dimint_migration(cluster: LocalCluster, client: Client, keys: int) -> tuple[int, float, float]:
    """(keys moved, seconds from the leader accepting ``add_shard`` to the rebalance finishing by the
    leader's own event clock, seconds end to end including starting the two new node processes)."""
    names = [f"bench:move:{i}" for i in range(keys)]
    for start in range(0, keys, 500):
        with client.pipeline() as pipe:
            for key in names[start : start + 500]:
                pipe.set(key, VALUE)
    owning = len(cluster.status()["placement_shards"])
    started = time.monotonic()
    cluster.add_shard()  # starts 1 + replicas processes, then asks the leader for a shard
    if not cluster.wait_rebalanced(owning + 1, timeout_s=300):
        raise RuntimeError("the rebalance did not finish within 300 s")
    end_to_end = time.monotonic() - started
    rebalance = cluster.last_rebalance()
    assert rebalance is not None and rebalance["finished_ms"] is not None
    events = cluster.status()["events"]
    asked_ms = max(e["time_ms"] for e in events if e["event"] == "admin_add_shard")
    moved = rebalance["keys_moved"]
    return moved, max(rebalance["finished_ms"] - asked_ms, 1) / 1000, end_to_end


def redis_migration(keys: int) -> tuple[int, float]:
    source, target = RedisServer(), RedisServer()
    try:
        names = [f"bench:move:{i}" for i in range(keys)]
        for start in range(0, keys, 1000):
            pipe = source.client.pipeline(transaction=False)
            for key in names[start : start + 1000]:
                pipe.set(key, VALUE)
            pipe.execute()
        started = time.monotonic()
        for start in range(0, keys, 100):
            source.client.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names[start : start + 100]
            )
        elapsed = time.monotonic() - started
        assert target.client.dbsize() == keys
        return keys, elapsed
    finally:
        source.stop()
        target.stop()


def _part(name: str, errors: dict[str, str], action: Callable[[], Any]) -> Any:
    """Run one part of the benchmark; a failure is reported with the figures, not instead of them."""
    try:
        return action()
    except Exception as exc:  # one broken part must not hide the others' figures
        errors[name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--session-timeout-ms", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ops, keys, repeats = (3000, 10_000, 1) if args.quick else (args.ops, args.keys, args.repeats)
    errors: dict[str, str] = {}
    single = batched = None
    moved = elapsed = end_to_end = redis_moved = redis_elapsed = None
    failover_s: float | None = None
    redis_server = RedisServer()
    cluster = LocalCluster(shards=2, replicas=1, overlords=3, session_timeout_ms=args.session_timeout_ms)
    try:
        cluster.up()
        client = Client(cluster.overlord_addresses, timeout=10.0)
        try:
            single = _part(
                "one at a time", errors, lambda: one_at_a_time(client, redis_server.client, ops, repeats)
            )
            batched = _part(
                "batches of 100", errors, lambda: batches(client, redis_server.client, ops, repeats)
            )
            moving = _part("migration", errors, lambda: dimint_migration(cluster, client, keys))
            if moving is not None:
                moved, elapsed, end_to_end = moving
        finally:
            client.close()
    except Exception as exc:
        errors.setdefault("cluster", f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        cluster.down()
        redis_server.stop()
    redis_moving = _part("redis migration", errors, lambda: redis_migration(keys))
    if redis_moving is not None:
        redis_moved, redis_elapsed = redis_moving
    # Failover on a cluster of its own, one shard of master + 2 slaves: after the kill the promoted
    # master keeps an in-sync slave, so semi-sync can acknowledge writes again (with one slave only,
    # the new master would have none and refuse writes until a spare caught up).
    failover_cluster = LocalCluster(
        shards=1, replicas=2, overlords=3, session_timeout_ms=args.session_timeout_ms
    )
    try:
        _part("cluster for failover", errors, failover_cluster.up)
        if "cluster for failover" not in errors:
            failover_s = _part("failover", errors, lambda: failover_time(failover_cluster))
    finally:
        failover_cluster.down()

    rows: list[tuple[str, float | None, float | None]] = []
    for name, figures in (("one at a time", single), ("batches of 100", batched)):
        for op in ("set", "get"):
            if figures is None:
                rows.append((f"{op.upper()} {name}", None, None))
                continue
            rows.append(
                (
                    f"{op.upper()} {name}",
                    statistics.median(figures[f"dimint {op}"]),
                    statistics.median(figures[f"redis {op}"]),
                )
            )
    rows.append(
        (
            "keys moved/s on add shard",
            moved / elapsed if moved is not None and elapsed else None,
            redis_moved / redis_elapsed if redis_moved is not None and redis_elapsed else None,
        )
    )
    print(
        f"DiMint real runtime vs Redis on loopback "
        f"({ops} ops, {keys} keys, {repeats} repeats, 100-byte values)"
    )
    print(f"{'measure':28s} {'DiMint/s':>10s} {'Redis/s':>10s} {'ratio':>7s}  target")
    for name, ours, theirs in rows:
        if ours is None or theirs is None:
            shown_ours = f"{ours:10,.0f}" if ours is not None else f"{'n/a':>10s}"
            shown_theirs = f"{theirs:10,.0f}" if theirs is not None else f"{'n/a':>10s}"
            print(f"{name:28s} {shown_ours} {shown_theirs} {'n/a':>7s}  >= 0.5x FAIL (not measured)")
            continue
        ratio = ours / theirs
        verdict = "PASS" if ratio >= 0.5 else "FAIL"
        print(f"{name:28s} {ours:10,.0f} {theirs:10,.0f} {ratio:7.3f}  >= 0.5x {verdict}")
    limit = args.session_timeout_ms / 1000 + 1
    if failover_s is None:
        print(f"failover after kill -9: not measured (target <= {limit:.1f} s FAIL)")
    else:
        print(
            f"failover after kill -9: {failover_s:.2f} s to the first acknowledged write "
            f"(1 shard x (master + 2 slaves), session timeout {args.session_timeout_ms} ms; "
            f"target <= {limit:.1f} s {'PASS' if failover_s <= limit else 'FAIL'})"
        )
    if moved is not None and elapsed is not None:
        redis_text = (
            f"Redis MIGRATE moved {redis_moved} in {redis_elapsed:.2f} s"
            if redis_moved is not None and redis_elapsed is not None
            else "Redis MIGRATE not measured"
        )
        print(
            f"migration: DiMint moved {moved} keys in {elapsed:.3f} s from the add_shard request to the "
            f"rebalance's end ({end_to_end:.2f} s end to end with starting 2 node processes: "
            f"{moved / end_to_end:,.0f} keys/s); {redis_text}"
        )
    for name, error in errors.items():
        print(f"FAILED part {name!r}: {error}")


if __name__ == "__main__":
    main()
