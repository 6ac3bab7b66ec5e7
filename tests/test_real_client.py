"""The client library and the ``dimint cli`` shell against a real two-shard cluster.

What this proves: every command of ``dimint.core.commands`` is a typed method of ``Client`` (and of
``Pipeline``) and works end to end over ZeroMQ on real node processes, for every value type
(strings as str and bytes, integers, lists, hashes, sets, TTLs); errors arrive as typed exceptions
carrying the wire ``ErrorCode`` (wrong type, not an integer, overflow, bad arguments, oversized
keys and values, unknown commands); multi-key commands span shards; dict-style access, pipelines
with many requests in flight, weak reads, thread safety, the history recorder (judged by the
simulator's checker), the admin calls (status, and add/remove shard surfacing the Overlord's
answer), and the interactive shell.
How: one ``LocalCluster`` (2 shards x 2 nodes, 3 Overlords, semi-sync) on the session's real
ZooKeeper, shared by the module; keys are unique per test. Throughput is printed, never asserted.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from dimint.core.checker import check_linearizable, lost_acknowledged_writes
from dimint.core.commands import COMMANDS, INT64_MAX
from dimint.core.errors import ErrorCode
from dimint.core.history import HistoryRecorder
from dimint.real.cli import run_shell_line
from dimint.real.client import (
    AdminError,
    BadArgumentError,
    Client,
    CommandFailed,
    DimintClientError,
    IntegerOverflowError,
    KeyTooLargeError,
    NotIntegerError,
    OutcomeUnknownError,
    Pipeline,
    UnknownCommandError,
    ValueTooLargeError,
    WrongTypeError,
)
from dimint.real.local import LocalCluster
from dimint.real.zk import ZooKeeperCluster

pytestmark = pytest.mark.real

MAX_VALUE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def cluster(zookeeper: ZooKeeperCluster) -> Iterator[LocalCluster]:
    local = LocalCluster(
        shards=2,
        replicas=1,
        overlords=3,
        mode="semi-sync",
        zookeeper=zookeeper.hosts,
        node_options={"max_value_bytes": MAX_VALUE_BYTES},
    )
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client(timeout=10.0) as connected:
        connected.wait_for_map()
        yield connected


def _keys_on_both_shards(client: Client, prefix: str, count: int = 8) -> list[str]:
    keys = [f"{prefix}-{i}" for i in range(count)]
    shards = {client._shard_of(k.encode()) for k in keys}
    assert len(shards) == 2, "test keys should span both shards"
    return keys


def test_every_command_is_a_typed_method_of_the_client_and_the_pipeline() -> None:
    for name in COMMANDS:
        assert callable(getattr(Client, name)), name
        assert callable(getattr(Pipeline, name)), name


def test_strings_integers_and_ttls(client: Client) -> None:
    assert client.get("s:missing") is None
    assert client.set("s:a", "héllo") is True
    assert client.get("s:a") == "héllo".encode()
    assert client.set("s:bytes", b"\x00\xff\x10") is True
    assert client.get("s:bytes") == b"\x00\xff\x10"
    assert client.set("s:empty", "") is True
    assert client.get("s:empty") == b""
    assert client.set("s:int", 42) is True
    assert client.get("s:int") == 42
    assert client.type("s:int") == "integer" and client.type("s:a") == "string"
    assert client.type("s:missing") == "none"
    assert client.set("s:a", "x", nx=True) is False
    assert client.set("s:new", "x", xx=True) is False
    assert client.set("s:new", "x", nx=True) is True
    assert client.incr("s:counter") == 1
    assert client.incr("s:counter", 10) == 11
    assert client.decr("s:counter", 20) == -9
    assert client.set("s:max", INT64_MAX)
    assert client.get("s:max") == INT64_MAX
    assert client.exists("s:a", "s:int", "s:missing") == 2
    assert client.ttl("s:a") == -1 and client.ttl("s:missing") == -2
    assert client.set("s:ttl", "v", px=60_000)
    assert 0 < client.ttl("s:ttl") <= 60_000
    assert client.persist("s:ttl") is True and client.ttl("s:ttl") == -1
    assert client.expire("s:ttl", 30_000) is True and client.ttl("s:ttl") > 0
    assert client.expire("s:missing", 1000) is False
    assert client.set("s:short", "v", ex=0.3)
    deadline = time.monotonic() + 10
    while client.get("s:short") is not None:
        assert time.monotonic() < deadline, "a key with a 300 ms TTL never expired"
        time.sleep(0.05)
    assert client.delete("s:a") == 1 and client.delete("s:a") == 0


def test_multi_key_commands_span_shards(client: Client) -> None:
    keys = _keys_on_both_shards(client, "multi")
    assert client.mset({k: f"v-{k}" for k in keys}) is True
    assert client.mget(*keys) == [f"v-{k}".encode() for k in keys]
    assert client.mget([*keys, "multi-missing"]) == [f"v-{k}".encode() for k in keys] + [None]
    assert client.exists(*keys) == len(keys)
    assert client.delete(*keys[:5]) == 5
    assert client.mget(*keys[:6]) == [None] * 5 + [f"v-{keys[5]}".encode()]
    assert client.execute_command("mget", keys[5]) == [f"v-{keys[5]}".encode()]


def test_lists_hashes_and_sets(client: Client) -> None:
    assert client.rpush("l:1", "a", "b") == 2
    assert client.lpush("l:1", "z") == 3
    assert client.lrange("l:1") == [b"z", b"a", b"b"]
    assert client.lrange("l:1", 1, 1) == [b"a"]
    assert client.llen("l:1") == 3
    assert client.lpop("l:1") == b"z" and client.rpop("l:1") == b"b"
    assert client.lpop("l:missing") is None
    assert client.type("l:1") == "list"

    assert client.hset("h:1", "f1", "v1") == 1
    assert client.hset("h:1", mapping={"f2": "v2", "f3": b"v3"}) == 2
    assert client.hget("h:1", "f2") == b"v2"
    assert client.hget("h:1", "nope") is None
    assert client.hgetall("h:1") == {b"f1": b"v1", b"f2": b"v2", b"f3": b"v3"}
    assert client.hlen("h:1") == 3
    assert client.hdel("h:1", "f1", "nope") == 1
    assert client.hgetall("h:missing") == {}

    assert client.sadd("set:1", "a", "b", "a") == 2
    assert client.sadd("set:1", "c") == 1
    assert client.smembers("set:1") == {b"a", b"b", b"c"}
    assert client.sismember("set:1", "a") is True and client.sismember("set:1", "q") is False
    assert client.scard("set:1") == 3
    assert client.srem("set:1", "a", "q") == 1
    assert client.smembers("set:missing") == set()


def test_errors_are_typed_and_carry_their_code(client: Client) -> None:
    client.set("e:string", "text")
    client.rpush("e:list", "x")
    with pytest.raises(WrongTypeError) as wrong:
        client.lpush("e:string", "x")
    assert wrong.value.code is ErrorCode.WRONG_TYPE and "lpush" in wrong.value.reason
    with pytest.raises(WrongTypeError):
        client.get("e:list")
    with pytest.raises(NotIntegerError) as not_integer:
        client.incr("e:string")
    assert not_integer.value.code is ErrorCode.NOT_INTEGER
    client.set("e:big", INT64_MAX)
    with pytest.raises(IntegerOverflowError) as overflow:
        client.incr("e:big")
    assert overflow.value.code is ErrorCode.OVERFLOW
    with pytest.raises(BadArgumentError) as bad:
        client.incr("e:n", "five")  # refused locally, before anything is sent
    assert bad.value.code is ErrorCode.BAD_ARGUMENT and "argument 1" in bad.value.reason
    with pytest.raises(BadArgumentError):
        client.set("e:x", 1.5)
    with pytest.raises(BadArgumentError):
        client.get("e:x", consistency="eventual")
    with pytest.raises(BadArgumentError):
        client.set("e:x", "v", nx=True, xx=True)
    with pytest.raises(BadArgumentError):
        client.set("e:x", "v", px=-5)  # the node refuses a non-positive TTL
    with pytest.raises(ValueTooLargeError) as too_large:
        client.set("e:huge", "v" * (MAX_VALUE_BYTES + 1))
    assert too_large.value.code is ErrorCode.VALUE_TOO_LARGE
    assert client.get("e:huge") is None
    with pytest.raises(KeyTooLargeError):
        client.set("k" * 5000, "v")
    with pytest.raises(UnknownCommandError) as unknown:
        client.execute_command("flurb", "k")
    assert unknown.value.code is ErrorCode.UNKNOWN_COMMAND
    assert issubclass(OutcomeUnknownError, DimintClientError)
    assert not issubclass(OutcomeUnknownError, CommandFailed)  # unknown is never "failed"
    assert client.get("e:string") == b"text"  # nothing refused changed anything


def test_a_request_larger_than_any_frame_is_refused_at_once(cluster: LocalCluster) -> None:
    with cluster.client(max_message_bytes=32 * 1024) as small:
        # Refused locally with a definite error, not sent to time out as an unknown outcome.
        with pytest.raises(ValueTooLargeError, match="more than 32768"):
            small.set("frame:huge", b"x" * 40_000)
        small.wait_for_map()
        candidates = [f"frame:{i}" for i in range(50)]
        same_shard = [k for k in candidates if small._shard_of(k.encode()) == small._shard_of(b"frame:0")]
        with pytest.raises(ValueTooLargeError):  # one shard's part is too large
            small.mset({key: b"x" * 20_000 for key in same_shard[:3]})
        assert small.get("frame:huge") is None


def test_dict_style_access(client: Client) -> None:
    client["d:key"] = "value"
    assert client["d:key"] == b"value"
    assert "d:key" in client and "d:missing" not in client
    del client["d:key"]
    with pytest.raises(KeyError):
        client["d:key"]
    with pytest.raises(KeyError):
        del client["d:key"]


def test_pipeline_many_in_flight_results_in_order(client: Client) -> None:
    keys = _keys_on_both_shards(client, "pipe", 50)
    with client.pipeline() as pipe:
        for key in keys:
            pipe.set(key, f"value-{key}")
        pipe.incr("pipe:counter", 5)
        pipe.mget(*keys[:10])
    assert pipe.results is not None
    assert pipe.results[: len(keys)] == [True] * len(keys)
    assert pipe.results[len(keys)] == 5
    assert pipe.results[-1] == [f"value-{k}".encode() for k in keys[:10]]
    pipe = client.pipeline()
    pipe.get(keys[0]).lpush(keys[1], "x").get("pipe:missing")
    results = pipe.execute(raise_on_error=False)
    assert results[0] == f"value-{keys[0]}".encode()
    assert isinstance(results[1], WrongTypeError)
    assert results[2] is None
    with pytest.raises(WrongTypeError):
        client.pipeline().lpush(keys[1], "x").execute()


def test_a_pipeline_sends_runs_of_plain_gets_and_sets_as_one_mget_or_mset_per_shard(client: Client) -> None:
    keys = _keys_on_both_shards(client, "coalesce", 40)
    before = client.router._next_request
    with client.pipeline() as pipe:
        for key in keys:
            pipe.set(key, f"v-{key}")
    assert pipe.results == [True] * len(keys)
    pipe = client.pipeline()
    for key in keys:
        pipe.get(key)
    assert pipe.execute() == [f"v-{key}".encode() for key in keys]
    # One mset and one mget per shard (a map refresh may take an id too), not 80 requests.
    assert client.router._next_request - before <= 6


def test_coalesced_commands_keep_their_own_results_and_order(client: Client) -> None:
    keys = _keys_on_both_shards(client, "order", 8)
    client.rpush("order:list", "x")
    pipe = client.pipeline()
    pipe.set(keys[0], "first").get(keys[0])  # a GET after a SET of its key reads it
    for key in keys[1:]:
        pipe.set(key, key)
    pipe.set("order:big", b"x" * (MAX_VALUE_BYTES + 1))  # refused: the rest of its mset still applies
    pipe.get("order:list")  # of another type: WrongTypeError, as alone, not mget's None
    pipe.get("order:missing")
    for key in keys:
        pipe.get(key)
    pipe.set(keys[0], "last")
    results = pipe.execute(raise_on_error=False)
    sets = len(keys) - 1
    assert results[:2] == [True, b"first"]
    assert results[2 : 2 + sets] == [True] * sets
    assert isinstance(results[2 + sets], ValueTooLargeError)
    assert isinstance(results[3 + sets], WrongTypeError)
    assert results[4 + sets] is None
    assert results[5 + sets : 5 + sets + len(keys)] == [b"first", *(key.encode() for key in keys[1:])]
    assert results[-1] is True
    assert client.get("order:big") is None
    assert client.get(keys[0]) == b"last"


def test_weak_reads_reach_the_value_eventually(client: Client) -> None:
    client.set("w:key", "fresh")
    deadline = time.monotonic() + 10
    while client.get("w:key", consistency="weak") != b"fresh":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.exists("w:key", consistency="weak") == 1


def test_decoded_responses(cluster: LocalCluster) -> None:
    with cluster.client(decode_responses=True) as decoded:
        decoded.hset("dec:h", "f", "v")
        assert decoded.hgetall("dec:h") == {"f": "v"}
        decoded.set("dec:s", "text")
        assert decoded.get("dec:s") == "text"


def test_threads_share_one_client_and_the_history_is_linearizable(cluster: LocalCluster) -> None:
    history = HistoryRecorder()
    with cluster.client(history=history, timeout=10.0) as shared:
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            for step in range(60):
                key = f"hist-{step % 4}"
                try:
                    if step % 3 == 0:
                        shared.get(key)
                    elif step % 7 == 0:
                        shared.delete(key)
                    else:
                        shared.set(key, f"w{worker}-{step}")
                except OutcomeUnknownError:
                    pass  # recorded as "info"; the checker allows for it
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
    operations = history.operations()
    assert len(operations) == 240
    # No fault is injected, but a loaded machine may time a request out: "info", never "fail".
    assert "fail" not in {op.outcome for op in operations}
    assert sum(op.outcome == "ok" for op in operations) >= 200
    assert lost_acknowledged_writes(operations) == []
    verdict = check_linearizable(operations)
    assert verdict.ok, verdict.explain()


def test_admin_status_and_shard_changes_surface_the_overlord_answer(client: Client) -> None:
    status = client.cluster_status()
    assert [s["shard_id"] for s in status["shards"]] == [0, 1]
    roles = sorted(o["role"] for o in status["overlords"])
    assert roles == ["follower", "follower", "leader"]
    assert status["answered_by"] == client.leader()
    assert len(status["nodes"]) == 4
    # Each process measures itself (CPU, resident memory) and the machines report it.
    deadline = time.monotonic() + 10
    while not (
        all((n.get("rss_bytes") or 0) > 0 for n in status["nodes"].values())
        and ((status.get("process") or {}).get("rss_bytes") or 0) > 0
    ):
        assert time.monotonic() < deadline, f"no process stats in {status['nodes']}"
        time.sleep(0.2)
        status = client.cluster_status()
    assert all(n["cpu_percent"] >= 0 for n in status["nodes"].values())
    # Until online rebalancing lands these are refused; afterwards a bogus shard id still is.
    with pytest.raises(AdminError) as refused:
        client.remove_shard(99)
    assert refused.value.code is not None and refused.value.reason
    with pytest.raises(BadArgumentError):
        client.remove_shard("zero")  # type: ignore[arg-type]


def test_throughput_is_measured_and_printed(client: Client) -> None:
    value = "v" * 100
    count = 400
    started = time.perf_counter()
    for index in range(count):
        client.set(f"bench-{index % 50}", value)
    sets = count / (time.perf_counter() - started)
    started = time.perf_counter()
    for index in range(count):
        client.get(f"bench-{index % 50}")
    gets = count / (time.perf_counter() - started)
    batch = 2000
    started = time.perf_counter()
    with client.pipeline() as pipe:
        for index in range(batch):
            pipe.set(f"bench-{index % 50}", value)
    pipelined_sets = batch / (time.perf_counter() - started)
    started = time.perf_counter()
    with client.pipeline() as pipe:
        for index in range(batch):
            pipe.get(f"bench-{index % 50}")
    pipelined_gets = batch / (time.perf_counter() - started)
    print(
        f"\nclient throughput (semi-sync, 100-byte values, 2 cores shared with the cluster): "
        f"SET {sets:.0f}/s, GET {gets:.0f}/s one at a time; "
        f"pipelined SET {pipelined_sets:.0f}/s, GET {pipelined_gets:.0f}/s"
    )
    assert pipe.results is not None and len(pipe.results) == batch


def test_shell_lines(client: Client) -> None:
    assert run_shell_line(client, "set sh:k 'hello world'") == ("OK", True)
    assert run_shell_line(client, "get sh:k") == ('"hello world"', True)
    assert run_shell_line(client, "get sh:k --weak")[1]
    assert run_shell_line(client, "incr sh:n 5") == ("(integer) 5", True)
    assert run_shell_line(client, "hset sh:h f v") == ("(integer) 1", True)
    assert run_shell_line(client, "hgetall sh:h") == ('1) "f" => "v"', True)
    assert run_shell_line(client, "rpush sh:l a b")[0] == "(integer) 2"
    assert run_shell_line(client, "lrange sh:l 0 -1") == ('1) "a"\n2) "b"', True)
    assert run_shell_line(client, "get sh:nothing") == ("(nil)", True)
    output, ok = run_shell_line(client, "lpush sh:k x")
    assert not ok and output.startswith("(error) WRONG_TYPE")
    output, ok = run_shell_line(client, "frobnicate a")
    assert not ok and "UNKNOWN_COMMAND" in output
    output, ok = run_shell_line(client, "incr sh:n notanumber")
    assert not ok and "BAD_ARGUMENT" in output
    assert "Data commands" in run_shell_line(client, "help")[0]
    assert "shard 0" in run_shell_line(client, "status")[0]


def test_the_shell_as_a_process(cluster: LocalCluster) -> None:
    overlords = ",".join(a.removeprefix("tcp://") for a in cluster.overlord_addresses)
    script = "set shell:a 1\nincr shell:a 41\nget shell:a\nsadd shell:s x\nbogus\nhistory\n"
    done = subprocess.run(
        [sys.executable, "-m", "dimint.real.cli", "cli", "--overlords", overlords],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["OK", "(integer) 42", "(integer) 42", "(integer) 1"]
    assert "UNKNOWN_COMMAND" in lines[4]
    assert "set shell:a 1" in done.stdout.split("UNKNOWN_COMMAND", 1)[1]  # the history listing
