"""The ZeroMQ transport and the real host loop, then 10,000+ malformed frames against live processes.

What this proves: (1) ``Transport`` delivers ``Send`` and ``Reply`` with the sender's address as
``Receive.source``, falls back to a DEALER for a reply to an unknown ``tcp://`` identity, and turns
malformed frames into an ``ErrorReply`` when they are request-shaped and a counted drop otherwise;
(2) ``RealHost`` gives a machine the simulator's semantics: ``Start`` first, named one-shot timers
that re-arming replaces and cancelling voids, a machine failure stops the loop, and a stalled loop
fences with ``SUSPENDED`` and, once a ZooKeeper round trip proves the session alive, ``CONNECTED``;
(3) a live node and a live Overlord, each sent over 10,000 malformed frames (truncated msgpack,
wrong types, unknown commands and tags, oversized frames, extra and missing frames, random bytes),
stay alive, answer every request-shaped one with an ``ErrorReply`` carrying its request id, and
keep serving well-formed traffic.
How: real zmq sockets on loopback ports, a real ZooKeeper (the session fixture), and a
``LocalCluster`` of real processes; nothing is mocked.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from dimint.core.effects import (
    CancelTimer,
    Effect,
    Input,
    Receive,
    Send,
    SessionState,
    SessionStateChanged,
    SetTimer,
    Start,
    TimerFired,
)
from dimint.core.errors import ErrorCode
from dimint.core.protocol import (
    ErrorReply,
    GetMap,
    MapReply,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    decode,
    encode,
    tag_of,
)
from dimint.real.local import LocalCluster
from dimint.real.runtime import RealHost
from dimint.real.transport import Transport, TransportOptions
from dimint.real.zk import ZooKeeperCluster, free_port

pytestmark = pytest.mark.real

WAIT_S = 10.0


def _address() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def _receive(transport: Transport, timeout_s: float = WAIT_S) -> list[Receive]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = transport.receive(transport.wait(50))
        if got:
            return got
    raise AssertionError(f"nothing received within {timeout_s}s")


@pytest.fixture
def pair() -> Iterator[tuple[Transport, Transport]]:
    a_address, b_address = _address(), _address()
    a = Transport(a_address, a_address)
    b = Transport(b_address, b_address)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------------------------
# Transport
# --------------------------------------------------------------------------------------------


def test_send_arrives_with_our_address_as_source_and_reply_comes_back(pair) -> None:
    a, b = pair
    assert a.send(b.identity, GetMap(7, 0))
    [received] = _receive(b)
    assert received.source == a.identity
    assert received.message == GetMap(7, 0)
    assert b.reply(received.source, MapReply(7, 3, b"map"))
    [answer] = _receive(a)
    assert answer.source == b.identity  # the reply came back on a's DEALER to b
    assert answer.message == MapReply(7, 3, b"map")
    # Peer to peer the other way round: b's own DEALER, a's ROUTER.
    assert b.send(a.identity, GetMap(8, 0))
    [back] = _receive(a)
    assert (back.source, back.message) == (b.identity, GetMap(8, 0))


def test_reply_to_an_unknown_identity_falls_back_to_a_dealer_or_is_dropped(pair) -> None:
    a, b = pair
    # b never heard from a, so a's identity is unknown to b's ROUTER: the DEALER path is used.
    assert b.reply(a.identity, ErrorReply(1, ErrorCode.TIMEOUT, "late"))
    [received] = _receive(a)
    assert received.source == b.identity and isinstance(received.message, ErrorReply)
    # A client name is not an address: nothing to connect to, counted and dropped.
    assert not b.reply("client-gone", Response(1, None))
    assert not b.send("node:3", Response(1, None))
    assert b.stats["dropped_unroutable"] == 2


def test_clients_without_a_bound_socket_get_replies_on_their_dealer(pair) -> None:
    a, _ = pair
    client = Transport("client-abc", None)
    try:
        client.send(a.identity, GetMap(1, 0))
        [request] = _receive(a)
        assert request.source == "client-abc"
        a.reply(request.source, MapReply(1, 1, b"m"))
        [answer] = _receive(client)
        assert answer.message == MapReply(1, 1, b"m")
    finally:
        client.close()


def test_malformed_frames_are_answered_when_request_shaped_and_dropped_otherwise(pair) -> None:
    a, b = pair
    raw = a.context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.ROUTING_ID, b"raw-sender")
    raw.connect(b.identity)
    try:
        unknown = msgpack.packb([tag_of(Request), 41, "flurb", ["k"]])
        wrong_type = msgpack.packb([tag_of(Request), 42, "get", "not-a-list"])
        valid = encode(Request(43, "get", [b"k"]))
        raw.send(unknown)
        raw.send(wrong_type)
        raw.send_multipart([valid, b"extra frame"])
        raw.send(b"\xc1 not msgpack at all")
        raw.send(valid[:-2])
        raw.send(b"")
        raw.send(msgpack.packb([9999, 1, 2]))
        answers: dict[int, ErrorReply] = {}
        deadline = time.monotonic() + WAIT_S
        while len(answers) < 3 and time.monotonic() < deadline:
            inputs = b.receive(b.wait(50))
            assert inputs == []  # nothing malformed ever reaches a machine
            if raw.poll(0):
                reply = decode(raw.recv())
                assert isinstance(reply, ErrorReply)
                answers[reply.request_id] = reply
        assert answers[41].code is ErrorCode.UNKNOWN_COMMAND
        assert answers[42].code is ErrorCode.MALFORMED and "args" in answers[42].reason
        assert answers[43].code is ErrorCode.MALFORMED and "payload frame" in answers[43].reason
        time.sleep(0.2)
        b.receive(b.wait(50))
        assert b.stats["malformed"] == 7
        assert b.stats["malformed_answered"] == 3
        assert b.stats["malformed_dropped"] == 4
    finally:
        raw.close(linger=0)


def test_a_reply_too_large_for_a_frame_is_answered_with_an_error() -> None:
    address = _address()
    server = Transport(address, address, TransportOptions(max_message_bytes=4096))
    client = Transport("client-big-reply", None)
    try:
        client.send(address, Request(9, "mget", [b"a", b"b"]))
        [request] = _receive(server)
        assert server.reply(request.source, Response(9, [b"x" * 3000, b"y" * 3000]))
        [answer] = _receive(client)
        assert isinstance(answer.message, ErrorReply)
        assert (answer.message.request_id, answer.message.code) == (9, ErrorCode.VALUE_TOO_LARGE)
        assert server.stats["reply_too_large"] == 1
    finally:
        client.close()
        server.close()


def test_an_oversized_frame_is_refused_and_the_socket_keeps_serving() -> None:
    address = _address()
    small = Transport(address, address, TransportOptions(max_message_bytes=4096))
    context = zmq.Context()
    big = context.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(address)
    try:
        big.send(b"\x00" * 100_000)  # above MAXMSGSIZE: zmq drops the connection
        good = Transport("client-after", None)
        try:
            good.send(address, GetMap(5, 0))
            [received] = _receive(small)
            assert received.message == GetMap(5, 0)
        finally:
            good.close()
    finally:
        big.close(linger=0)
        context.term()
        small.close()


# --------------------------------------------------------------------------------------------
# The host loop
# --------------------------------------------------------------------------------------------


class Recorder:
    """A toy machine: records inputs; a test scripts its effects per input."""

    def __init__(self) -> None:
        self.inputs: list[Input] = []
        self.script: dict[str, list[Effect]] = {}

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        self.inputs.append(event)
        if isinstance(event, Start):
            return [SetTimer("a", now_ms + 150), SetTimer("b", now_ms + 50), SetTimer("c", now_ms + 80)]
        if isinstance(event, TimerFired) and event.key == "b":
            return [SetTimer("a", now_ms + 100), CancelTimer("c")]  # re-arm a, cancel c
        if isinstance(event, Receive) and event.message == "boom":
            raise RuntimeError("machine bug")
        if isinstance(event, Receive) and event.message == "sleep":
            time.sleep(1.2)  # a stall, as SIGSTOP would make one
        return []

    def fired(self) -> list[str]:
        return [e.key for e in self.inputs if isinstance(e, TimerFired)]


def _wait_until(predicate, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_host_runs_start_first_and_named_timers_replace_and_cancel() -> None:
    machine = Recorder()
    address = _address()
    host = RealHost(machine, Transport(address, address))
    host.start()
    try:
        _wait_until(lambda: "a" in machine.fired())
        time.sleep(0.3)
        assert isinstance(machine.inputs[0], Start)
        assert machine.fired() == ["b", "a"]  # c cancelled; a fired once, at its re-armed time
        assert host.timers() == {}
    finally:
        host.stop()
        host.join(5)
        host.close()


def test_a_machine_failure_stops_the_loop_loudly() -> None:
    machine = Recorder()
    address = _address()
    host = RealHost(machine, Transport(address, address))
    host.start()
    try:
        host.inject(Receive("test", "boom"))
        host.join(5)
        assert not host.running
        assert isinstance(host.failure, RuntimeError)
    finally:
        host.close()


def _replicate(seq: int, epoch: int = 1, value_bytes: int = 10) -> Replicate:
    entry = [seq, epoch, [["put", f"k{seq}".encode(), "string", b"v" * value_bytes, None]]]
    return Replicate(0, epoch, seq - 1, epoch, [entry], seq - 1)


def _received_by(receiver: Transport, count: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < count and time.monotonic() < deadline:
        got.extend(r.message for r in receiver.receive(receiver.wait(100)))
    return got


def test_one_turn_of_replicates_to_a_peer_goes_out_coalesced_and_in_order() -> None:
    """Chained Replicates of one turn become one message with every entry; anything else sent to
    that peer flushes them first; a Replicate that does not continue the chain is sent on its own;
    a merged message too large for the codec goes out as its parts."""
    receiver_address = _address()
    receiver = Transport(receiver_address, receiver_address)
    machine = Recorder()
    address = _address()
    host = RealHost(machine, Transport(address, address, TransportOptions(max_message_bytes=4096)))
    ack = ReplicateAck(0, 1, "n9", 7, 1)
    machine.script = {
        "burst": [
            *(Send(receiver_address, _replicate(seq)) for seq in (1, 2, 3)),
            Send(receiver_address, ack),
            *(Send(receiver_address, _replicate(seq)) for seq in (4, 5)),
            Send(receiver_address, _replicate(6, epoch=2)),  # another epoch: not a continuation
        ],
        "large": [Send(receiver_address, _replicate(seq, value_bytes=1500)) for seq in (7, 8, 9)],
    }
    original = machine.handle

    def scripted(event: Input, now_ms: int) -> list[Effect]:
        original(event, now_ms)
        if isinstance(event, Receive) and event.message in machine.script:
            return list(machine.script[event.message])
        return []

    machine.handle = scripted  # type: ignore[method-assign]
    host.start()
    try:
        host.inject(Receive("test", "burst"))
        got = _received_by(receiver, 4)
        assert [type(m).__name__ for m in got] == ["Replicate", "ReplicateAck", "Replicate", "Replicate"]
        assert [e[0] for e in got[0].entries] == [1, 2, 3] and got[0].prev_seq == 0
        assert got[1] == ack
        assert [e[0] for e in got[2].entries] == [4, 5] and got[2].prev_seq == 3
        assert got[3] == _replicate(6, epoch=2)
        host.inject(Receive("test", "large"))
        got = _received_by(receiver, 3)
        assert got == [_replicate(seq, value_bytes=1500) for seq in (7, 8, 9)]
    finally:
        host.stop()
        host.join(5)
        host.close()
        receiver.close()


def test_a_stalled_loop_fences_then_confirms_its_session(zookeeper: ZooKeeperCluster) -> None:
    machine = Recorder()
    address = _address()
    host = RealHost(
        machine,
        Transport(address, address),
        coord_hosts=zookeeper.hosts,
        session_timeout_ms=4000,
        stall_threshold_ms=500,
    )
    host.start()
    try:

        def states() -> list[SessionState]:
            return [e.state for e in machine.inputs if isinstance(e, SessionStateChanged)]

        _wait_until(lambda: states() == [SessionState.CONNECTED])
        host.inject(Receive("test", "sleep"))
        _wait_until(lambda: len(states()) >= 3)
        assert states() == [SessionState.CONNECTED, SessionState.SUSPENDED, SessionState.CONNECTED]
        assert host.stalls >= 1
    finally:
        host.stop()
        host.join(5)
        host.close()


# --------------------------------------------------------------------------------------------
# Malformed input against live processes
# --------------------------------------------------------------------------------------------

MAX_MESSAGE_BYTES = 256 * 1024
FRAMES_PER_PROCESS = 10_000


@pytest.fixture(scope="module")
def small_cluster(zookeeper: ZooKeeperCluster) -> Iterator[LocalCluster]:
    options = {"max_message_bytes": MAX_MESSAGE_BYTES}
    cluster = LocalCluster(
        shards=1,
        replicas=1,
        overlords=1,
        zookeeper=zookeeper.hosts,
        node_options=options,
        overlord_options=options,
    )
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


def _garbage(rng: random.Random, request_id: int) -> tuple[list[bytes], bool]:
    """One malformed message (frames) and whether it is request-shaped (must be answered)."""
    kind = rng.randrange(12)
    request_tag = tag_of(Request)
    valid = encode(Request(request_id, "set", [b"k", b"v" * rng.randrange(1, 50), None, None]))
    if kind == 0:  # random bytes that do not start an array: never request-shaped
        first = rng.choice([0x00, 0x7F, 0xC0, 0xC1, 0xC3, 0xA5, 0xCC, 0xD9, 0x80])
        return [bytes([first]) + rng.randbytes(rng.randrange(0, 200))], False
    if kind == 1:  # truncated msgpack of a real request
        return [valid[: rng.randrange(1, len(valid) - 1)]], False
    if kind == 2:  # unknown command
        return [msgpack.packb([request_tag, request_id, "flurb" + str(rng.randrange(99)), ["k"]])], True
    if kind == 3:  # wrong types in the fields
        bad = rng.choice(["args", 5, None, {"a": 1}, [[1, 2]]])
        return [msgpack.packb([request_tag, request_id, "get", bad, "strong"])], True
    if kind == 4:  # bad argument types for the command
        return [msgpack.packb([request_tag, request_id, "incr", ["k", "not-int"]])], True
    if kind == 5:  # extra frames after a valid request
        return [valid, b"extra"] + [b"x"] * rng.randrange(0, 3), True
    if kind == 6:  # missing payload: an empty frame
        return [b""], False
    if kind == 7:  # unknown message tag
        return [msgpack.packb([rng.randrange(200, 60000), request_id, "x"])], False
    if kind == 8:  # oversized, but under zmq's limit: refused by the decoder (no id recovered)
        return [msgpack.packb([request_tag, request_id, "get", [b"k" * (MAX_MESSAGE_BYTES + 10)]])], False
    if kind == 9:  # trailing bytes after a request
        return [valid + b"\x00\x01"], True
    if kind == 10:  # wrong number of fields for the tag
        return [msgpack.packb([request_tag, request_id])], True
    # invalid UTF-8 in the command name, and a bad consistency level
    if rng.random() < 0.5:
        return [msgpack.packb([request_tag, request_id, b"\xff\xfe", ["k"]], use_bin_type=False)], True
    return [msgpack.packb([request_tag, request_id, "get", ["k"], "medium"])], True


def _bombard(address: str, count: int, seed: int) -> tuple[int, dict[int, ErrorReply], list[Any]]:
    """Send ``count`` malformed messages; returns (request-shaped sent, answers by id, others)."""
    rng = random.Random(seed)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, f"garbage-{seed}".encode())
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(address)
    expected: set[int] = set()
    answers: dict[int, ErrorReply] = {}
    others: list[Any] = []

    def drain(timeout_ms: int) -> None:
        while sock.poll(timeout_ms):
            message = decode(sock.recv())
            if isinstance(message, ErrorReply):
                answers[message.request_id] = message
            else:
                others.append(message)
            timeout_ms = 0

    try:
        for number in range(count):
            frames, request_shaped = _garbage(rng, 1_000_000 + number)
            if request_shaped:
                expected.add(1_000_000 + number)
            sock.send_multipart(frames)
            if number % 500 == 499:
                drain(0)
        deadline = time.monotonic() + 30
        while not expected <= set(answers) and time.monotonic() < deadline:
            drain(100)
        return len(expected), {i: answers[i] for i in expected if i in answers}, others
    finally:
        sock.close(linger=0)
        context.term()


def _oversized_beyond_zmq(address: str) -> None:
    """Frames above MAXMSGSIZE: zmq cuts the connection; the process must not notice otherwise."""
    context = zmq.Context()
    try:
        for _ in range(5):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            sock.send(b"\x92" + b"\x00" * (2 * MAX_MESSAGE_BYTES))
            time.sleep(0.05)
            sock.close(linger=0)
    finally:
        context.term()


def test_ten_thousand_malformed_frames_kill_nothing(small_cluster: LocalCluster) -> None:
    status = small_cluster.status()
    master = next(p for p in small_cluster.nodes() if p.id == status["shards"][0]["master"])
    overlord = small_cluster.overlords()[0]
    with small_cluster.client(timeout=10) as client:
        client.set("before", "garbage")
        for seed, target in enumerate([master, overlord]):
            _oversized_beyond_zmq(target.address)
            expected, answers, others = _bombard(target.address, FRAMES_PER_PROCESS, seed)
            assert expected > FRAMES_PER_PROCESS // 3
            assert len(answers) == expected, f"{target.id}: {expected - len(answers)} requests unanswered"
            assert all(
                a.code in (ErrorCode.MALFORMED, ErrorCode.UNKNOWN_COMMAND, ErrorCode.BAD_ARGUMENT)
                for a in answers.values()
            )
            assert others == []
            assert small_cluster.alive(target), f"{target.id} died:\n{small_cluster.collect_logs()}"
        # Well-formed traffic still works, state untouched by the garbage.
        assert client.get("before") == b"garbage"
        client.set("after", "fine")
        assert client.get("after") == b"fine"
        assert client.get("k") is None  # no garbage "set k" ever applied
        after = client.cluster_status()
        assert after["shards"][0]["master"] == master.id
    for info in small_cluster.processes:
        assert small_cluster.alive(info), f"{info.id} died"
    assert os.path.exists(master.log)
