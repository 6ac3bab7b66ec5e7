"""Decode and encode cost per wire message, against a bare msgpack unpack of the same frame.

What it measures: for realistic instances of the messages a cluster sends most (a client's get and
identified set, replies, replication entries singly and in a batch, acks, heartbeats, a node
report, a 500-key migration batch, a 1,000-item snapshot chunk), the microseconds per call of
``decode`` (validation included), of ``encode`` without and with the schema check, and of the
baseline: ``msgpack.unpackb`` of the same bytes, which builds the same Python objects and checks
nothing. ``decode / unpack`` is the price of validation; below 1.0 means the codec builds its
messages faster than msgpack-python builds plain lists.

How: every case runs ``--number`` calls per round, rounds interleaved case by case (decode,
baseline, encodes), and the median of ``--rounds`` is printed. The machine is noisy (2 cores):
say what else was running when you quote it. ``--json FILE`` writes the medians for a
before/after comparison (run this script on both checkouts, interleaved).

    .venv/bin/python benchmarks/protocol.py
    .venv/bin/python benchmarks/protocol.py --rounds 9 --number 20000 --json /tmp/after.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from dimint.core.errors import ErrorCode
from dimint.core.protocol import (
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    MigrateBatch,
    NodeReport,
    Replicate,
    ReplicateAck,
    Request,
    Response,
    SnapshotChunk,
    decode,
    encode,
)


def _value(i: int) -> bytes:
    return (b"value-%06d-" % i) + b"x" * 88  # 100-byte values, as benchmarks/e2e.py writes


def cases() -> dict[str, Any]:
    """The messages measured, by name."""
    put = [["put", b"key:%06d" % i, "string", _value(i), None] for i in range(500)]
    session = ["session", 0x5EED, 7, 0, 1_700_000_000_000, [[7, ["ok", True], [1234567890123]]]]
    entry = [[101, 3, [["put", b"key:000001", "string", _value(1), None], session]]]
    return {
        "Request get": Request(11, "get", [b"key:000001"], "strong", 4),
        "Request set (identified)": Request(
            12, "set", [b"key:000001", _value(1), None, None], "strong", 4, 0x5EED_1234_5678, 7, 7
        ),
        "Response": Response(12, _value(1)),
        "ErrorReply": ErrorReply(13, ErrorCode.MOVED, "key b'k' belongs to shard 2, not 1", 5),
        "Replicate 1 entry": Replicate(1, 3, 100, 3, entry, 99),
        "Replicate 50 entries": Replicate(
            1,
            3,
            100,
            3,
            [[101 + i, 3, [["put", b"key:%06d" % i, "string", _value(i), None]]] for i in range(50)],
            99,
        ),
        "ReplicateAck": ReplicateAck(1, 3, "node-127.0.0.1-7101", 150, 3),
        "Heartbeat": Heartbeat(1, 3, "node-127.0.0.1-7100", 150, 3, 1_700_000_000_000),
        "HeartbeatAck": HeartbeatAck(1, 3, "node-127.0.0.1-7101", 150, 3),
        "NodeReport": NodeReport(
            "node-127.0.0.1-7101",
            "tcp://127.0.0.1:7101",
            123456789,
            9,
            1,
            "slave",
            3,
            3,
            150,
            0,
            50_000,
            7_800_000,
            {},
            12,
            80_000,
            True,
            1_700_000_000_000,
            12.5,
            90_000_000,
        ),
        "MigrateBatch 500 keys": MigrateBatch(7, 0, 2, 1, 3, put, False),
        "SnapshotChunk 1000 items": SnapshotChunk(
            1, 3, 150, 3, 0, [[b"key:%06d" % i, "string", _value(i), None] for i in range(1000)], True, 4
        ),
    }


def _per_call_us(function: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        function()
    return (time.perf_counter() - start) / number * 1e6


def measure(rounds: int, number: int) -> dict[str, dict[str, float]]:
    samples = cases()
    frames = {name: encode(message) for name, message in samples.items()}
    for name, message in samples.items():
        assert decode(frames[name]) == message or name.startswith("Request"), name  # requests normalise
    timings: dict[str, dict[str, list[float]]] = {
        name: {"decode": [], "unpack": [], "encode": [], "encode_checked": []} for name in samples
    }
    for _ in range(rounds):
        for name, message in samples.items():
            frame = frames[name]
            calls = max(50, number // max(1, len(frame) // 200))  # big messages: fewer calls per round
            timings[name]["decode"].append(_per_call_us(lambda frame=frame: decode(frame), calls))
            timings[name]["unpack"].append(
                _per_call_us(lambda frame=frame: msgpack.unpackb(frame, raw=False), calls)
            )
            timings[name]["encode"].append(
                _per_call_us(lambda message=message: encode(message, check=False), calls)
            )
            timings[name]["encode_checked"].append(
                _per_call_us(lambda message=message: encode(message), calls)
            )
    result = {}
    for name, series in timings.items():
        medians = {kind: statistics.median(values) for kind, values in series.items()}
        medians["bytes"] = len(frames[name])
        result[name] = medians
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=10_000, help="calls per round for a small message")
    parser.add_argument("--json", type=Path, default=None, help="write the medians here")
    args = parser.parse_args()
    result = measure(args.rounds, args.number)
    print(f"median of {args.rounds} interleaved rounds, microseconds per call")
    print(
        f"{'message':<26} {'bytes':>7} {'decode':>9} {'unpack':>9} {'ratio':>6} {'encode':>9} {'checked':>9}"
    )
    for name, row in result.items():
        ratio = row["decode"] / row["unpack"] if row["unpack"] else float("nan")
        print(
            f"{name:<26} {row['bytes']:>7.0f} {row['decode']:>9.2f} {row['unpack']:>9.2f} {ratio:>6.2f} "
            f"{row['encode']:>9.2f} {row['encode_checked']:>9.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
