"""The history checkers accept every linearizable history and catch the classic violations.

What this proves, and how:

* Hand-made bad histories (a stale read, an acknowledged write that vanishes, a read of a value
  nobody wrote, two writes seen in both orders, a read of a failed write) are each rejected, with an
  explanation naming the operations involved; hand-made good ones (a read racing a write, info
  writes that show up late or never, deletes, stale weak reads) are accepted.
* Keys are judged separately, histories survive a JSONL round trip, and malformed histories are
  refused with errors that say what is wrong and where.
* The search budget turns a hard case into ``"unknown"`` instead of a hang.
* Properties: histories produced by simulating a truly linearizable register (random concurrent
  operations, each taking effect at a random instant inside its interval, some ending ``info`` or
  ``fail``) are always accepted, show no lost write and no stale read; making one read return a
  value that was definitely overwritten before it began is always caught. And on small random
  histories (mostly not linearizable, values repeated on purpose) the checker agrees with a naive
  brute-force search over all orders, which is how its pruning rules are held to the definition.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimint.core.checker import (
    LINEARIZABLE,
    LOST,
    NOT_LINEARIZABLE,
    REPLAYED,
    UNKNOWN,
    Execution,
    check_linearizable,
    lost_acknowledged_writes,
    summarise,
    weak_read_staleness,
)
from dimint.core.history import (
    Event,
    HistoryError,
    HistoryRecorder,
    Operation,
    from_jsonl_lines,
    pair_operations,
    to_jsonl_lines,
)


class History:
    """Builds operations by hand; each call gets the next index, so explanations can name it."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def add(
        self,
        f: str,
        value: Any,
        invoke_ms: float,
        complete_ms: float | None,
        outcome: str = "ok",
        *,
        process: int | None = None,
        key: str = "x",
        consistency: str | None = None,
        **extra: Any,
    ) -> Operation:
        operation = Operation(
            process=len(self.operations) if process is None else process,
            f=f,
            key=key,
            value=value,
            invoke_ms=invoke_ms,
            complete_ms=complete_ms,
            outcome=outcome,
            consistency=consistency,
            index=len(self.operations),
            extra=extra,
        )
        self.operations.append(operation)
        return operation

    def write(self, value: Any, invoke_ms: float, complete_ms: float | None, outcome: str = "ok", **kw: Any):
        return self.add("write", value, invoke_ms, complete_ms, outcome, **kw)

    def read(self, value: Any, invoke_ms: float, complete_ms: float | None, outcome: str = "ok", **kw: Any):
        return self.add("read", value, invoke_ms, complete_ms, outcome, **kw)

    def delete(self, invoke_ms: float, complete_ms: float | None, outcome: str = "ok", **kw: Any):
        return self.add("delete", None, invoke_ms, complete_ms, outcome, **kw)


# --------------------------------------------------------------------------------------------
# Bad histories
# --------------------------------------------------------------------------------------------


def test_stale_read_after_a_completed_write_is_rejected() -> None:
    history = History()
    history.write("a", 0, 1)
    overwrite = history.write("b", 2, 3)
    stale = history.read("a", 4, 5)
    result = check_linearizable(history.operations)
    assert result.verdict == NOT_LINEARIZABLE and not result.ok
    verdict = result.keys["x"]
    assert stale in verdict.involved and overwrite in verdict.involved
    assert "#2" in verdict.explanation and "#1" in verdict.explanation and "'a'" in verdict.explanation
    [lost] = lost_acknowledged_writes(history.operations)
    assert lost.write == overwrite and lost.witness == stale


def test_a_value_that_comes_back_after_being_overwritten_is_a_replayed_write() -> None:
    """The issue's bug as a history: A's write, B's newer one, a read of B's, then A's value again."""
    history = History()
    first = history.write("a", 0, 1, client_id=11, seq=1)
    newer = history.write("b", 2, 3, client_id=22, seq=1)
    history.read("b", 4, 5)
    again = history.read("a", 6, 7)
    [found] = lost_acknowledged_writes(history.operations)
    assert (found.kind, found.write, found.witness, found.origin) == (REPLAYED, newer, again, first)
    assert found.reason.startswith("a write applied twice (replayed request)")
    assert "log positions unknown" in found.reason and "#2" in found.reason

    # With the trace: two executions of (11, 1) name both log positions.
    twice = {(11, 1): [Execution("n0", 0, 4, 1, 0.5), Execution("n0", 0, 9, 1, 5.5)]}
    [found] = lost_acknowledged_writes(history.operations, executions=twice)
    assert found.kind == REPLAYED and found.executions == tuple(twice[(11, 1)])
    assert "shard 0 log seq 4" in found.reason and "and again at shard 0 log seq 9" in found.reason
    assert summarise(history.operations, executions=twice)["lost_writes"]["replayed"] == 1

    # A trace that shows one execution says the newer write itself was lost (a rollback).
    once = {(11, 1): [Execution("n0", 0, 4, 1, 0.5)]}
    [found] = lost_acknowledged_writes(history.operations, executions=once)
    assert found.kind == LOST and "replayed" not in found.reason


def test_without_a_read_showing_the_overwrite_an_old_value_is_a_lost_write() -> None:
    history = History()
    history.write("a", 0, 1, client_id=11, seq=1)
    history.write("b", 2, 3, client_id=22, seq=1)
    history.read("a", 6, 7)
    [found] = lost_acknowledged_writes(history.operations)
    assert found.kind == LOST


def test_acknowledged_write_that_vanishes_is_a_lost_write() -> None:
    history = History()
    acknowledged = history.write("a", 0, 1)
    history.read("a", 2, 3)
    gone = history.read(None, 10, 11)
    assert check_linearizable(history.operations).verdict == NOT_LINEARIZABLE
    [lost] = lost_acknowledged_writes(history.operations)
    assert (lost.write, lost.witness, lost.key) == (acknowledged, gone, "x")
    assert "absent" in lost.reason


def test_read_of_a_value_nobody_wrote_is_rejected() -> None:
    history = History()
    history.write("a", 0, 1)
    history.read("zzz", 2, 3)
    result = check_linearizable(history.operations)
    assert result.verdict == NOT_LINEARIZABLE
    assert "no operation ever wrote it" in result.explain()


def test_two_writes_seen_in_both_orders_is_rejected_by_the_search() -> None:
    history = History()
    history.write("a", 0, 10)
    history.write("b", 0, 10)
    history.read("b", 11, 12)
    history.read("a", 13, 14)
    verdict = check_linearizable(history.operations).keys["x"]
    assert verdict.verdict == NOT_LINEARIZABLE
    assert verdict.states_explored > 0  # no single read is provably stale: only an ordering argument
    assert "has yet to return" in verdict.explanation
    # Neither write completed before the other began, so neither is provably the lost one.
    assert lost_acknowledged_writes(history.operations) == []


def test_read_of_a_failed_writes_value_is_rejected() -> None:
    history = History()
    history.write("a", 0, 1, "fail")
    history.read("a", 2, 3)
    result = check_linearizable(history.operations)
    assert result.verdict == NOT_LINEARIZABLE
    assert "failed" in result.explain()


def test_read_from_the_future_is_rejected() -> None:
    history = History()
    history.read("a", 0, 1)
    history.write("a", 2, 3)
    result = check_linearizable(history.operations)
    assert result.verdict == NOT_LINEARIZABLE
    assert "only after the read completed" in result.explain()


def test_delete_then_old_value_is_rejected() -> None:
    history = History()
    history.write("a", 0, 1)
    history.delete(2, 3)
    history.read("a", 4, 5)
    assert check_linearizable(history.operations).verdict == NOT_LINEARIZABLE


# --------------------------------------------------------------------------------------------
# Good histories
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seen", [None, "a"])
def test_read_racing_a_write_may_see_either_value(seen: str | None) -> None:
    history = History()
    history.write("a", 0, 10)
    history.read(seen, 1, 2)
    history.read("a", 11, 12)
    assert check_linearizable(history.operations).ok


def test_equal_times_count_as_concurrent() -> None:
    history = History()
    history.write("a", 0, 5)
    history.read(None, 5, 6)  # invoked the instant the write completed: may still precede it
    assert check_linearizable(history.operations).ok


def test_info_write_may_show_up_late_even_after_later_writes() -> None:
    history = History()
    history.write("a", 0, None, "info")
    history.write("b", 5, 6)
    history.read("b", 7, 8)
    history.read("a", 50, 51)  # the timed-out write took effect long after its client gave up
    assert check_linearizable(history.operations).ok
    assert lost_acknowledged_writes(history.operations) == []


def test_info_write_may_never_show_up() -> None:
    history = History()
    history.write("a", 0, None, "info")
    history.read(None, 50, 51)
    history.read(None, 60, 61)
    assert check_linearizable(history.operations).ok


def test_info_write_cannot_show_up_twice() -> None:
    history = History()
    history.write("a", 0, None, "info")
    history.read("a", 5, 6)
    history.write("b", 7, 8)
    history.read("a", 10, 11)
    assert check_linearizable(history.operations).verdict == NOT_LINEARIZABLE


def test_deletes_and_info_deletes() -> None:
    history = History()
    history.write("a", 0, 1)
    history.delete(2, 3)
    history.read(None, 4, 5)
    history.write("b", 6, 7)
    history.delete(8, None, "info")
    history.read("b", 9, 10)
    history.read(None, 11, 12)  # the unknown delete landed between the two reads
    history.write("c", 13, 14)
    history.read("c", 15, 16)
    assert check_linearizable(history.operations).ok


def test_failed_operations_and_info_reads_constrain_nothing() -> None:
    history = History()
    history.write("a", 0, 1)
    history.write("b", 2, 3, "fail")
    history.read(None, 2, None, "info")
    history.read("a", 4, 5)
    history.read(None, 6, 7, "fail")
    assert check_linearizable(history.operations).ok


def test_stale_weak_reads_are_excluded_but_measured() -> None:
    history = History()
    history.write("a", 0, 1)
    history.write("b", 2, 3)
    stale = history.read("a", 10, 11, consistency="weak")
    fresh = history.read("b", 12, 13, consistency="weak")
    assert check_linearizable(history.operations).ok
    assert lost_acknowledged_writes(history.operations) == []
    stats = weak_read_staleness(history.operations)
    assert [(item.operation, item.staleness_ms) for item in stats.per_read] == [(stale, 7.0), (fresh, 0.0)]
    assert (stats.count, stats.stale_count, stats.stale_fraction) == (2, 1, 0.5)
    assert (stats.mean_ms, stats.p50_ms, stats.p99_ms, stats.max_ms) == (3.5, 0.0, 7.0, 7.0)


def test_weak_read_staleness_uses_the_earliest_replacement_and_absence() -> None:
    history = History()
    history.write("a", 0, 1)
    history.write("b", 2, 9)
    history.write("c", 3, 5)  # completes first: "a" is definitely replaced from 5 ms
    history.read("a", 20, 21, consistency="weak")
    history.read(None, 20, 21, consistency="weak")  # absence, replaced by "a" at 1 ms
    history.read("never", 20, 21, consistency="weak")
    stats = weak_read_staleness(history.operations)
    assert [item.staleness_ms for item in stats.per_read] == [15.0, 19.0]
    assert stats.unexplained == 1
    assert weak_read_staleness([]).to_dict()["mean_ms"] is None


def test_initial_value_is_respected() -> None:
    history = History()
    history.read(7, 0, 1)
    history.write(8, 2, 3)
    history.read(8, 4, 5)
    assert check_linearizable(history.operations, initial=7).ok
    assert not check_linearizable(history.operations).ok


def test_json_values_such_as_lists_are_compared_by_content() -> None:
    history = History()
    history.write([1, {"b": 2}], 0, 1)
    history.read([1, {"b": 2}], 2, 3)
    assert check_linearizable(history.operations).ok


# --------------------------------------------------------------------------------------------
# Keys, lost writes, summaries
# --------------------------------------------------------------------------------------------


def test_keys_are_judged_separately() -> None:
    history = History()
    # Values repeat across keys on purpose: only a per-key view makes these reads fresh.
    history.write(1, 0, 1, key="x")
    history.write(2, 2, 3, key="y")
    history.read(1, 4, 5, key="x")
    history.read(2, 4, 5, key="y")
    history.write("a", 0, 1, key="bad")
    history.write("b", 2, 3, key="bad")
    history.read("a", 4, 5, key="bad")
    result = check_linearizable(history.operations)
    assert {key: verdict.verdict for key, verdict in result.keys.items()} == {
        "x": LINEARIZABLE,
        "y": LINEARIZABLE,
        "bad": NOT_LINEARIZABLE,
    }
    assert result.verdict == NOT_LINEARIZABLE
    assert [verdict.key for verdict in result.failures] == ["bad"]
    assert "key 'bad'" in result.explain()


def test_final_readback_of_an_unexplained_value_loses_earlier_writes() -> None:
    history = History()
    first = history.write("a", 0, 1)
    history.write("b", 0, 1, "fail")
    readback = history.read("b", 10, 11, readback=True)
    [lost] = lost_acknowledged_writes(history.operations)
    assert (lost.write, lost.witness) == (first, readback)
    assert lost.reason.startswith("final readback")
    # The same read mid-run is a linearizability problem, not proof of a particular lost write.
    assert lost_acknowledged_writes([first, history.operations[1], replace(readback, extra={})]) == []


def test_lost_writes_ignore_info_and_concurrent_writes() -> None:
    history = History()
    history.write("a", 0, 1)
    history.write("b", 2, None, "info")
    history.write("c", 3, 10)
    history.read("c", 11, 12)
    history.read("b", 13, 14)  # the unknown write landed last: nothing acknowledged is lost
    history.write("d", 20, 30)
    history.write("e", 25, 35)
    history.read("d", 40, 41)  # "d" and "e" overlap, so either may be last
    assert lost_acknowledged_writes(history.operations) == []
    assert check_linearizable(history.operations).ok


def test_summary_is_plain_json() -> None:
    history = History()
    history.write("a", 0, 1)
    history.write("b", 2, 3)
    history.read("a", 4, 5)
    history.read("a", 4, 5, consistency="weak")
    history.write("c", 6, None, "info")
    history.read("q", 0, 1, key="other", outcome="fail")
    summary = summarise(history.operations)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["operations"] == 6 and summary["keys"] == 2
    assert summary["by_outcome"] == {"ok": 4, "fail": 1, "info": 1}
    assert summary["by_f"]["read"] == {"fail": 1, "ok": 2}
    assert summary["linearizability"]["verdict"] == NOT_LINEARIZABLE
    assert summary["linearizability"]["failures"][0]["key"] == "x"
    assert summary["lost_writes"]["count"] == 1
    assert summary["weak_read_staleness"]["stale_count"] == 1


def test_functions_outside_the_register_model_are_refused() -> None:
    history = History()
    history.write("a", 0, 1)
    history.add("incr", 1, 2, 3)
    with pytest.raises(HistoryError, match="only read, write and delete"):
        check_linearizable(history.operations)
    summary = summarise(history.operations)
    assert summary["linearizability"]["verdict"] == "error"
    assert "incr" in summary["linearizability"]["reason"]


# --------------------------------------------------------------------------------------------
# History format: recorder, pairing, JSONL, malformed input
# --------------------------------------------------------------------------------------------


def recorded_history() -> HistoryRecorder:
    recorder = HistoryRecorder()
    write = recorder.invoke(1, "write", "k", "v1", 0.0)
    read = recorder.invoke(2, "read", "k", None, 0.5, consistency="weak")
    recorder.complete(write, "ok", None, 2.0, node="node:1")
    recorder.complete(read, "ok", None, 2.5, node="node:2")
    lost_track = recorder.invoke(1, "write", "k", "v2", 3.0)
    recorder.complete(lost_track, "info", None, 9.0)
    recorder.invoke(1, "delete", "k", None, 10)  # the same process goes on after an info
    return recorder


def test_recorder_pairs_operations() -> None:
    recorder = recorded_history()
    assert recorder.outstanding == 1
    write, read, unknown, pending = recorder.operations()
    assert (write.f, write.value, write.outcome, write.complete_ms, write.node) == (
        "write",
        "v1",
        "ok",
        2.0,
        "node:1",
    )
    assert (read.value, read.consistency, read.is_weak, read.node) == (None, "weak", True, "node:2")
    assert (unknown.outcome, unknown.complete_ms, unknown.process) == ("info", None, 1)
    assert (pending.f, pending.outcome, pending.index) == ("delete", "info", 6)
    with pytest.raises(HistoryError, match="never completed"):
        recorder.operations(pending_as_info=False)


def test_jsonl_round_trip() -> None:
    events = recorded_history().events
    lines = list(to_jsonl_lines(events))
    assert all("\n" not in line for line in lines)
    assert json.loads(lines[1]) == {
        "process": 2,
        "type": "invoke",
        "f": "read",
        "key": "k",
        "value": None,
        "time_ms": 0.5,
        "consistency": "weak",
    }
    file_text = "".join(line + "\n" for line in lines)
    parsed = from_jsonl_lines(["\n", *file_text.splitlines(keepends=True), "   \n"])
    assert tuple(parsed) == events
    assert pair_operations(parsed) == pair_operations(events)


def event(
    process: int, type: str, f: str = "write", key: str = "k", value: Any = 1, time_ms: float = 0
) -> Event:
    return Event(process, type, f, key, value, time_ms)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([event(1, "ok")], "no outstanding invoke"),
        ([event(1, "invoke"), event(1, "invoke")], "still outstanding"),
        ([event(1, "invoke"), event(1, "ok", f="read")], "outstanding invoke .* is write"),
        ([event(1, "invoke"), event(1, "ok", key="other")], "outstanding invoke .* is write 'k'"),
        ([event(1, "invoke", time_ms=5), event(1, "ok", time_ms=4)], "precedes its invoke"),
        (["not an event"], "expected an Event"),
    ],
)
def test_malformed_histories_are_rejected(events: list[Any], message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        pair_operations(events)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"type": "done"}, "type must be one of"),
        ({"process": True}, "process must be an int"),
        ({"process": "1"}, "process must be an int"),
        ({"time_ms": float("nan")}, "time_ms must be a finite number"),
        ({"key": 5}, "key must be a string"),
        ({"f": ""}, "f must be a non-empty string"),
        ({"extra": {"consistency": "eventual"}}, "consistency must be"),
        ({"extra": {"time_ms": 3}}, "may not reuse core field names"),
    ],
)
def test_bad_events_are_rejected(arguments: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "process": 1,
        "type": "invoke",
        "f": "write",
        "key": "k",
        "value": 1,
        "time_ms": 0,
    }
    fields.update(arguments)
    with pytest.raises(HistoryError, match=message):
        Event(**fields)


def test_bad_lines_name_their_line_number() -> None:
    good = next(to_jsonl_lines([event(1, "invoke")]))
    with pytest.raises(HistoryError, match="line 2: not valid JSON"):
        from_jsonl_lines([good, "{oops\n"])
    with pytest.raises(HistoryError, match=r"line 3: event is missing field\(s\) \['time_ms'\]"):
        from_jsonl_lines([good, "\n", '{"process": 1, "type": "ok", "f": "write", "key": "k", "value": 1}'])
    with pytest.raises(HistoryError, match="line 1: an event must be a JSON object"):
        from_jsonl_lines(["[1, 2]"])
    with pytest.raises(HistoryError, match="cannot be written as JSON"):
        list(to_jsonl_lines([event(1, "invoke", value=object())]))


def test_recorder_refuses_misuse_at_the_source() -> None:
    recorder = HistoryRecorder()
    token = recorder.invoke(1, "write", "k", "v", 5)
    with pytest.raises(HistoryError, match="still outstanding"):
        recorder.invoke(1, "read", "k", None, 6)
    with pytest.raises(HistoryError, match="completion type"):
        recorder.complete(token, "invoke", None, 6)
    with pytest.raises(HistoryError, match="precedes invoke"):
        recorder.complete(token, "ok", None, 4)
    recorder.complete(token, "ok", None, 6)
    with pytest.raises(HistoryError, match="does not name an outstanding operation"):
        recorder.complete(token, "ok", None, 7)
    assert len(recorder.events) == 2


def test_operations_check_their_own_shape() -> None:
    with pytest.raises(HistoryError, match="info operation has no known completion"):
        Operation(1, "write", "k", 1, 0, 5, "info")
    with pytest.raises(HistoryError, match="not before invoke_ms"):
        Operation(1, "write", "k", 1, 5, 4, "ok")
    with pytest.raises(HistoryError, match="outcome must be one of"):
        Operation(1, "write", "k", 1, 0, 1, "maybe")


# --------------------------------------------------------------------------------------------
# Simulated linearizable registers
# --------------------------------------------------------------------------------------------


@dataclass
class Planned:
    """One operation of a simulated client, and when (if ever) it takes effect on the register."""

    process: int
    f: str
    value: Any
    invoke_ms: float
    complete_ms: float
    outcome: str
    effect_ms: float | None


def simulate(plans: list[Planned], key: str = "x") -> list[Operation]:
    """Apply effects in time order to one true register, then record what clients saw."""
    register: Any = None
    for plan in sorted(
        (plan for plan in plans if plan.effect_ms is not None), key=lambda plan: plan.effect_ms
    ):
        if plan.f == "read":
            plan.value = register
        else:
            register = plan.value
    events = []
    for number, plan in enumerate(plans):
        events.append((plan.invoke_ms, plan.process, 2 * number, "invoke", plan))
        events.append((plan.complete_ms, plan.process, 2 * number + 1, plan.outcome, plan))
    events.sort(key=lambda item: item[:3])
    recorder = HistoryRecorder()
    tokens: dict[int, int] = {}
    for time_ms, process, sequence, kind, plan in events:
        if kind == "invoke":
            written = plan.value if plan.f == "write" else None
            tokens[sequence] = recorder.invoke(process, plan.f, key, written, time_ms, consistency="strong")
        else:
            seen = plan.value if plan.f == "read" and kind == "ok" else None
            recorder.complete(tokens.pop(sequence - 1), kind, seen, time_ms)
    return recorder.operations()


def random_plans(rng: random.Random, operations: int, processes: int) -> list[Planned]:
    """Back-to-back operations per process with random latencies; about 2% info, 2% fail."""
    free_ms = [rng.uniform(0, 3) for _ in range(processes)]
    plans = []
    for number in range(operations):
        process = min(range(processes), key=free_ms.__getitem__)
        invoke_ms = free_ms[process] + rng.expovariate(0.5)
        complete_ms = invoke_ms + rng.uniform(0.5, 20)
        f = rng.choices(["read", "write", "delete"], [50, 45, 5])[0]
        outcome = rng.choices(["ok", "info", "fail"], [96, 2, 2])[0]
        effect_ms: float | None = rng.uniform(invoke_ms, complete_ms)
        if outcome == "fail":
            effect_ms = None
        elif outcome == "info":
            effect_ms = rng.choice([None, rng.uniform(invoke_ms, complete_ms + 100)])
        value = f"v{number}" if f == "write" else None
        plans.append(Planned(process, f, value, invoke_ms, complete_ms, outcome, effect_ms))
        free_ms[process] = complete_ms
    return plans


def test_large_simulated_history_is_accepted_without_much_search() -> None:
    operations = simulate(random_plans(random.Random(7), 2_000, 16))
    verdict = check_linearizable(operations).keys["x"]
    assert verdict.verdict == LINEARIZABLE, verdict.explanation
    # A deterministic stand-in for "fast": the search barely backtracks on a linearizable history.
    assert verdict.states_explored < 5 * len(operations)


def test_search_budget_gives_unknown_instead_of_hanging() -> None:
    operations = simulate(random_plans(random.Random(8), 600, 12))
    # Two writes at the very end, seen in both orders: only a search of the whole history shows it.
    end_ms = max(operation.invoke_ms for operation in operations) + 100
    index = max(operation.index for operation in operations) + 1
    operations += [
        Operation(100, "write", "x", "late-a", end_ms, end_ms + 9, "ok", index=index),
        Operation(101, "write", "x", "late-b", end_ms, end_ms + 9, "ok", index=index + 1),
        Operation(100, "read", "x", "late-b", end_ms + 10, end_ms + 11, "ok", index=index + 2),
        Operation(101, "read", "x", "late-a", end_ms + 12, end_ms + 13, "ok", index=index + 3),
    ]
    limited = check_linearizable(operations, budget=200)
    assert limited.verdict == UNKNOWN and limited.unknown[0].states_explored == 201
    assert "budget of 200" in limited.explain()
    assert check_linearizable(operations).verdict == NOT_LINEARIZABLE
    with pytest.raises(HistoryError, match="budget"):
        check_linearizable(operations, budget=0)


@st.composite
def linearizable_plans(draw: st.DrawFn) -> list[Planned]:
    """A register's clients, preceded by writes "p0" then "p1" and followed by one final read.

    The fixed frame guarantees every history has a read that a definitely overwritten value
    ("p0") can be planted in.
    """
    plans = [
        Planned(99, "write", "p0", 0, 1, "ok", 0.5),
        Planned(99, "write", "p1", 2, 3, "ok", 2.5),
    ]
    number = 0
    for process in range(draw(st.integers(1, 4))):
        clock = 4 + draw(st.integers(0, 3))
        for _ in range(draw(st.integers(0, 6))):
            f = draw(st.sampled_from(["read", "read", "write", "write", "delete"]))
            duration = draw(st.integers(0, 6))  # whole numbers: plenty of equal times
            outcome = draw(st.sampled_from(["ok"] * 6 + ["info", "fail"]))
            point = draw(st.floats(0, 1))
            effect_ms: float | None = clock + point * duration
            if outcome == "fail":
                effect_ms = None
            elif outcome == "info":
                effect_ms = draw(st.one_of(st.none(), st.floats(clock, clock + 30)))
            plans.append(
                Planned(
                    process,
                    f,
                    f"w{number}" if f == "write" else None,
                    clock,
                    clock + duration,
                    outcome,
                    effect_ms,
                )
            )
            number += 1
            clock += duration + draw(st.integers(0, 2))
    end_ms = max(plan.complete_ms for plan in plans) + 1
    plans.append(Planned(99, "read", None, end_ms, end_ms + 1, "ok", end_ms + 0.5))
    return plans


def definitely_stale_plants(operations: list[Operation]) -> list[tuple[int, Any]]:
    """(position of an ok read, a value no linearization lets it return) pairs.

    Value v of an ok write is definitely stale for a read once another acknowledged write was
    invoked after v's write completed and completed before the read was invoked (values are
    unique, so nothing can bring v back).
    """
    writes = [operation for operation in operations if operation.f == "write" and operation.outcome == "ok"]
    plants = []
    for position, read in enumerate(operations):
        if read.f != "read" or read.outcome != "ok":
            continue
        for older in writes:
            if any(
                newer.invoke_ms > older.complete_ms and newer.complete_ms < read.invoke_ms for newer in writes
            ):
                plants.append((position, older.value))
    return plants


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=linearizable_plans(), data=st.data())
def test_simulated_linearizable_registers_pass_and_planted_stale_reads_fail(
    plans: list[Planned], data: st.DataObject
) -> None:
    operations = simulate(plans)
    result = check_linearizable(operations)
    assert result.ok, result.explain()
    assert lost_acknowledged_writes(operations) == []
    as_weak = [replace(op, consistency="weak") if op.f == "read" else op for op in operations]
    stats = weak_read_staleness(as_weak)
    assert stats.stale_count == 0 and stats.unexplained == 0
    assert check_linearizable(as_weak).ok

    position, stale_value = data.draw(st.sampled_from(definitely_stale_plants(operations)))
    broken = list(operations)
    broken[position] = replace(operations[position], value=stale_value)
    result = check_linearizable(broken)
    assert result.verdict == NOT_LINEARIZABLE
    assert f"#{broken[position].index}" in result.explain()
    assert any(lost.witness == broken[position] for lost in lost_acknowledged_writes(broken))


# --------------------------------------------------------------------------------------------
# Agreement with a naive reference
# --------------------------------------------------------------------------------------------


def brute_force_linearizable(operations: list[Operation], initial: Any = None) -> bool:
    """The definition, searched naively: some order of the operations that respects real time,
    includes every ok operation and any subset of info mutations, and replays as a register."""
    kept = [
        operation
        for operation in operations
        if operation.outcome != "fail"
        and not (operation.f == "read" and (operation.outcome != "ok" or operation.is_weak))
    ]
    required = [operation.outcome == "ok" for operation in kept]
    finish = [operation.complete_ms if operation.outcome == "ok" else float("inf") for operation in kept]
    everything = range(len(kept))

    @functools.cache
    def extend(placed: frozenset[int], state: Any) -> bool:
        if all(index in placed or not required[index] for index in everything):
            return True
        for index in everything:
            if index in placed or any(
                other not in placed and finish[other] < kept[index].invoke_ms for other in everything
            ):
                continue
            operation = kept[index]
            if operation.f == "read":
                if operation.value != state:
                    continue
                after = state
            else:
                after = operation.value if operation.f == "write" else None
            if extend(placed | {index}, after):
                return True
        return False

    return extend(frozenset(), initial)


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    """Arbitrary small histories: overlapping intervals, repeated values, every outcome."""
    operations = []
    for index in range(draw(st.integers(1, 7))):
        f = draw(st.sampled_from(["read", "read", "write", "write", "delete"]))
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail"]))
        invoke_ms = draw(st.integers(0, 8))
        duration = draw(st.integers(0, 5))
        if f == "write":
            value = draw(st.integers(1, 3))
        elif f == "read" and outcome == "ok":
            value = draw(st.sampled_from([None, 1, 2, 3]))
        else:
            value = None
        consistency = draw(st.sampled_from([None, "strong", "weak"])) if f == "read" else None
        operations.append(
            Operation(
                process=index,
                f=f,
                key="x",
                value=value,
                invoke_ms=invoke_ms,
                complete_ms=None if outcome == "info" else invoke_ms + duration,
                outcome=outcome,
                consistency=consistency,
                index=index,
            )
        )
    return operations


@settings(max_examples=600, deadline=None)
@given(operations=small_histories(), initial=st.sampled_from([None, 1]))
def test_checker_agrees_with_brute_force(operations: list[Operation], initial: Any) -> None:
    expected = brute_force_linearizable(operations, initial)
    result = check_linearizable(operations, initial=initial)
    assert result.ok == expected, result.explain()
    if expected:
        # The other checkers never accuse a linearizable history.
        assert lost_acknowledged_writes(operations, initial=initial) == []
        strong_as_weak = [
            replace(op, consistency="weak") if op.f == "read" else op for op in operations if not op.is_weak
        ]
        assert weak_read_staleness(strong_as_weak, initial=initial).stale_count == 0


def test_percentile_is_nearest_rank_and_none_when_empty() -> None:
    from dimint.core.checker import percentile

    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile(range(1, 101), 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([5.0, 1.0], 0.0) == 1.0
