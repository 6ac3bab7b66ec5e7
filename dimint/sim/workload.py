"""YCSB-like workload clients for the simulator, recording every operation in a history.

Why a machine: a workload client is driven by the same host loop as every other process, so its
requests meet the same simulated network and faults. It wraps the core ``ClientRouter`` (the very
routing code of the real client) and adds only load generation: key choice (uniform or zipfian),
the read/write/delete mix, weak or strong reads, value sizes and think time. Every written value is
globally unique (client id and counter), so a read names the write it saw and a lost write is
detectable. Clients are closed-loop: one operation outstanding, as the history format requires.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any

from dimint.core.commands import Consistency
from dimint.core.effects import Effect, Input, SetTimer, Start, TimerFired
from dimint.core.history import HistoryRecorder
from dimint.core.routing import ClientRouter, Completed, RouterConfig, Submit
from dimint.sim.scenario import WorkloadSpec


def key_name(index: int) -> str:
    return f"key{index:06d}"


class KeyChooser:
    """Draws key indexes uniformly or from a zipfian distribution (rank 1 the hottest)."""

    def __init__(self, keys: int, distribution: str, exponent: float, rng: random.Random) -> None:
        self.keys = keys
        self.rng = rng
        self.cdf: list[float] | None = None
        if distribution == "zipfian":
            weights = [1.0 / (rank**exponent) for rank in range(1, keys + 1)]
            total = sum(weights)
            running, cdf = 0.0, []
            for weight in weights:
                running += weight / total
                cdf.append(running)
            self.cdf = cdf

    def draw(self) -> int:
        if self.cdf is None:
            return self.rng.randrange(self.keys)
        return min(bisect.bisect_left(self.cdf, self.rng.random()), self.keys - 1)


@dataclass
class _InFlight:
    token: int
    f: str
    key: str
    value: Any
    started_ms: int


class WorkloadClient:
    """A closed-loop load generator; ``recorder`` is shared by the run's clients (one process each)."""

    def __init__(
        self,
        process: int,
        overlords: list[str],
        spec: WorkloadSpec,
        recorder: HistoryRecorder,
        rng: random.Random,
        stop_at_ms: int,
        router_config: RouterConfig,
    ) -> None:
        self.process = process
        self.spec = spec
        self.recorder = recorder
        self.rng = rng
        self.stop_at_ms = stop_at_ms
        self.router = ClientRouter(
            f"c{process}", overlords, router_config, random.Random(rng.getrandbits(64))
        )
        self.keys = KeyChooser(spec.keys, spec.distribution, spec.zipf_exponent, rng)
        self.counter = 0
        self.in_flight: dict[int, _InFlight] = {}
        self.readback_queue: list[str] = []
        self.readback = False
        self.readback_attempts: dict[str, int] = {}
        self.completed = 0

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        if isinstance(event, Start):
            out.extend(self.router.handle(event, now_ms))
            out.append(_next_op_timer(now_ms + self.rng.randrange(1, 20)))
        elif isinstance(event, TimerFired) and event.key == "workload:next":
            self._issue(now_ms, out)
        else:
            out.extend(self.router.handle(event, now_ms))
        return self._absorb(out, now_ms)

    #: A readback read that does not succeed (a lost frame, a deadline shorter than a retry) is read
    #: again, so that a failed readback means the cluster would not serve the key, not bad luck.
    READBACK_ATTEMPTS = 5

    def start_readback(self, keys: list[str]) -> None:
        """Switch to the final phase: strong reads of ``keys``, one by one, then stop."""
        self.readback = True
        self.readback_queue = list(reversed(keys))

    def _absorb(self, effects: list[Effect], now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Completed):
                self._on_completed(effect, now_ms, out)
            else:
                out.append(effect)
        return out

    def _issue(self, now_ms: int, out: list[Effect]) -> None:
        if self.in_flight:
            return
        if self.readback:
            if not self.readback_queue:
                return
            key = self.readback_queue.pop()
            self._submit("read", key, None, "get", (key,), Consistency.STRONG, now_ms, out, readback=True)
            return
        if now_ms >= self.stop_at_ms:
            return
        key = key_name(self.keys.draw())
        draw = self.rng.random()
        spec = self.spec
        if draw < spec.read_fraction:
            consistency = (
                Consistency.WEAK if self.rng.random() < spec.weak_read_fraction else Consistency.STRONG
            )
            self._submit("read", key, None, "get", (key,), consistency, now_ms, out)
        elif draw < spec.read_fraction + spec.delete_fraction:
            self._submit("delete", key, None, "delete", (key,), Consistency.STRONG, now_ms, out)
        else:
            self.counter += 1
            unique = f"c{self.process}-{self.counter}"
            value = unique + "." * max(0, spec.value_bytes - len(unique))
            self._submit("write", key, value, "set", (key, value), Consistency.STRONG, now_ms, out)

    def _submit(
        self,
        f: str,
        key: str,
        value: Any,
        command: str,
        args: tuple[Any, ...],
        consistency: Consistency,
        now_ms: int,
        out: list[Effect],
        **extra: Any,
    ) -> None:
        if f == "read":
            extra["consistency"] = consistency
        token = self.recorder.invoke(self.process, f, key, value, now_ms, **extra)
        op_id = token
        self.in_flight[op_id] = _InFlight(token, f, key, value, now_ms)
        out.extend(
            self._absorb(self.router.handle(Submit(op_id, command, args, consistency), now_ms), now_ms)
        )

    def _on_completed(self, done: Completed, now_ms: int, out: list[Effect]) -> None:
        item = self.in_flight.pop(done.op_id, None)
        if item is None:
            return
        self.completed += 1
        if self.readback and item.f == "read" and done.outcome != "ok":
            tries = self.readback_attempts.get(item.key, 0) + 1
            self.readback_attempts[item.key] = tries
            if tries < self.READBACK_ATTEMPTS:
                self.readback_queue.append(item.key)
        # A write's at-most-once identity, so a checker can match it to its executions in the trace.
        identity = {"client_id": self.router.identity, "seq": done.seq} if done.seq else {}
        if done.outcome == "ok":
            if item.f == "read":
                value = done.value.decode("utf-8", "replace") if isinstance(done.value, bytes) else done.value
            else:
                value = item.value
            self.recorder.complete(item.token, "ok", value, now_ms, node=done.node, **identity)
        else:
            self.recorder.complete(
                item.token,
                done.outcome,
                item.value if item.f != "read" else None,
                now_ms,
                error=done.code.value if done.code else None,
                node=done.node,
                **identity,
            )
        think = self.spec.think_ms
        delay = think * (0.5 + self.rng.random()) if think > 0 else 0
        out.append(_next_op_timer(now_ms + max(1, int(delay))))


def _next_op_timer(at_ms: int) -> Effect:
    return SetTimer("workload:next", at_ms)
