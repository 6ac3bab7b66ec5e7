"""Fault injection: explicit schedules, or a mix drawn from the run's seed.

Theory of operation: DiMint promises no lost acknowledged write with *at most one failure per
shard* (invariant 4). The random injector therefore draws faults that respect that budget: a
node-level fault (crash, SIGSTOP-like pause, isolation, one-way clog, or membership in the minority
side of a partition) only hits a shard that is fully healthy (every member alive, every slave in
sync), and the shard stays off-limits until ``recovery_grace_ms`` after it recovered. At most one
Overlord is down at a time, and one network partition at a time. Message-loss bursts hit everyone.
Within that budget the seed chooses everything: which kinds this run uses and how often (each seed
draws its own mix), when, whom, and for how long. An explicit schedule bypasses the budget: it does
exactly what it says, so it can also drive a cluster past its guarantees on purpose.

Roles as targets (``master:1``, ``slave:0``, ``leader``, ``any-node``) are resolved when the fault
fires, against the map then in the coordination service, so a schedule reads like a test plan.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dimint.sim.cluster import SimCluster
from dimint.sim.scenario import FaultEvent, FaultSpec

NODE_KINDS = ("crash", "pause", "isolate", "clog", "partition")


@dataclass
class AppliedFault:
    kind: str
    target: str
    shard_id: int | None
    role: str | None
    at_ms: float
    duration_ms: float
    recovered_at_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "shard": self.shard_id,
            "role": self.role,
            "at_ms": self.at_ms,
            "duration_ms": self.duration_ms,
            "recovered_at_ms": self.recovered_at_ms,
            **self.extra,
        }


class FaultInjector:
    """Applies faults to a ``SimCluster`` between ``start_ms`` and ``end_ms`` (see module docstring)."""

    def __init__(
        self,
        cluster: SimCluster,
        spec: FaultSpec,
        rng: random.Random,
        start_ms: int,
        end_ms: int,
        replicas: int,
    ) -> None:
        self.cluster = cluster
        self.spec = spec
        self.rng = rng
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.replicas = replicas
        self.applied: list[AppliedFault] = []
        self.busy_shards: dict[int, float] = {}  # shard -> time it becomes eligible again
        self.overlord_down = False
        self.network_fault = False
        self._recoveries: list[Callable[[], None]] = []
        # Crashes and pauses in force per (kind, host): overlapping ones each keep their window.
        self._held: Counter[tuple[str, str]] = Counter()
        # Each seed draws its own mix: a non-empty subset of the allowed kinds with random weights.
        kinds = list(spec.kinds)
        chosen = [k for k in kinds if rng.random() < 0.7] or [rng.choice(kinds)] if kinds else []
        self.kinds = chosen
        self.weights = [rng.uniform(0.2, 1.0) for _ in chosen]
        self.rate_per_s = spec.rate_per_s * rng.uniform(0.5, 1.5)

    # ---------------------------------------------------------------- processes

    def start(self) -> None:
        env = self.cluster.env
        if self.spec.mix == "random" and self.kinds and self.rate_per_s > 0:
            env.process(self._random_process())
        elif self.spec.mix == "schedule":
            for event in self.spec.schedule:
                env.process(self._scheduled(event))

    def _random_process(self):  # type: ignore[no-untyped-def]
        env = self.cluster.env
        yield env.timeout(max(0, self.start_ms - env.now))
        while True:
            yield env.timeout(self.rng.expovariate(self.rate_per_s) * 1000.0)
            if env.now >= self.end_ms:
                return
            kind = self.rng.choices(self.kinds, weights=self.weights)[0]
            duration = min(
                self.rng.expovariate(1.0 / self.spec.mean_duration_ms) + 200.0,
                4.0 * self.spec.mean_duration_ms,
            )
            self._apply_random(kind, duration)

    def _scheduled(self, event: FaultEvent):  # type: ignore[no-untyped-def]
        env = self.cluster.env
        yield env.timeout(max(0, event.at_ms - env.now))
        self._apply(event.kind, event.target, float(event.duration_ms), budgeted=False)

    # ---------------------------------------------------------------- choosing targets

    def _healthy_shards(self) -> list[int]:
        cmap = self.cluster.current_map()
        if cmap is None:
            return []
        healthy = []
        for shard_id, shard in sorted(cmap.shards.items()):
            if self.busy_shards.get(shard_id, -1.0) > self.cluster.env.now:
                continue
            if shard.master is None or len(shard.slaves) < self.replicas:
                continue
            if set(shard.in_sync) != set(shard.slaves):
                continue
            if not all(self.cluster.host_running(m) for m in shard.members):
                continue
            healthy.append(shard_id)
        return healthy

    def _apply_random(self, kind: str, duration_ms: float) -> None:
        if kind == "loss_burst":
            self._apply("loss_burst", "all", duration_ms, budgeted=True)
            return
        if kind == "crash_overlord":
            if not self.overlord_down:
                target = (
                    "leader" if self.rng.random() < 0.5 else self.rng.choice(self.cluster.overlord_addresses)
                )
                self._apply("crash_overlord", target, duration_ms, budgeted=True)
            return
        if kind in ("isolate", "clog", "partition") and self.network_fault:
            return
        shards = self._healthy_shards()
        if not shards:
            return
        cmap = self.cluster.current_map()
        assert cmap is not None
        if kind == "partition":
            # The minority side: one member of each of a random subset of healthy shards.
            count = self.rng.randint(1, len(shards))
            picked = self.rng.sample(shards, count)
            minority = [self.rng.choice(cmap.shards[s].members) for s in picked]
            self._apply("partition", ",".join(minority), duration_ms, budgeted=True)
            return
        shard = cmap.shards[self.rng.choice(shards)]
        target = shard.master if self.rng.random() < 0.6 else self.rng.choice(shard.members)
        assert target is not None
        self._apply(kind, target, duration_ms, budgeted=True)

    def _resolve(self, target: str) -> list[str]:
        cmap = self.cluster.current_map()
        if target == "leader":
            leader = self.cluster.leader_address()
            return [leader] if leader else []
        if target == "any-node":
            return [self.rng.choice(self.cluster.node_addresses)]
        role, _, shard = target.partition(":")
        if role in ("master", "slave") and shard.isdigit() and cmap is not None:
            info = cmap.shards.get(int(shard))
            if info is None:
                return []
            if role == "master":
                return [info.master] if info.master else []
            return [self.rng.choice(info.slaves)] if info.slaves else []
        return [t for t in target.split(",") if t]

    # ---------------------------------------------------------------- applying

    def _apply(self, kind: str, target: str, duration_ms: float, budgeted: bool) -> None:
        cluster = self.cluster
        env = cluster.env
        targets = self._resolve(target) if kind != "loss_burst" else ["all"]
        if not targets:
            cluster.tracer.record(env.now, "faults", "fault_skipped", {"kind": kind, "target": target})
            return
        cmap = cluster.current_map()
        roles = {t: (cmap.role_of(t) if cmap is not None else None) for t in targets}
        first_role = roles[targets[0]]
        fault = AppliedFault(
            kind,
            ",".join(targets),
            first_role[1] if first_role else None,
            first_role[0] if first_role else None,
            env.now,
            duration_ms,
            extra={"members": {t: list(r) if r else None for t, r in roles.items()}},
        )
        recover: Callable[[], None]
        if kind in ("crash", "crash_overlord"):
            for t in targets:
                self._held[("crash", t)] += 1
                cluster.hosts[t].crash()
            recover = lambda: self._release("crash", targets)  # noqa: E731
        elif kind == "pause":
            for t in targets:
                self._held[("pause", t)] += 1
                cluster.hosts[t].pause()
            recover = lambda: self._release("pause", targets)  # noqa: E731
        elif kind == "isolate":
            recover = self._healer([cluster.network.isolate(t) for t in targets])
        elif kind == "clog":
            # One-way: the target hears everyone but nobody hears it (its pings to ZooKeeper too).
            recover = self._healer(
                [
                    cluster.network.cut(t, other, one_way=True)
                    for t in targets
                    for other in cluster.all_addresses()
                    if other != t
                ]
            )
        elif kind == "partition":
            minority = set(targets)
            rest = [a for a in cluster.all_addresses() if a not in minority]
            # Clients land on either side; ZooKeeper and the majority of Overlords on the big side.
            for client in cluster.client_addresses:
                if self.rng.random() < 0.3:
                    minority.add(client)
            majority = [a for a in rest if a not in minority]
            recover = self._healer([cluster.network.partition([sorted(minority), majority])])
        elif kind == "loss_burst":
            probability = self.rng.uniform(0.05, 0.5)
            fault.extra["probability"] = probability
            cluster.network.loss_burst(probability, duration_ms)
            recover = lambda: None  # noqa: E731 - the burst ends by itself
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.applied.append(fault)
        cluster.tracer.record(env.now, "faults", "fault", fault.to_dict())
        if budgeted:
            for role in roles.values():
                if role is not None:
                    self.busy_shards[role[1]] = float("inf")
            if kind == "crash_overlord":
                self.overlord_down = True
            if kind in ("isolate", "clog", "partition"):
                self.network_fault = True
        self._recoveries.append(recover)
        env.process(self._recover_later(fault, recover, roles, budgeted))

    def _release(self, kind: str, targets: list[str]) -> None:
        """End one crash or pause of each target, leaving any other still in force as it is: a host
        restarts (or resumes) only when no crash (or pause) of it remains, and a host that comes
        back from a crash while a pause of it is still scheduled goes straight back to sleep."""
        for target in targets:
            self._held[(kind, target)] -= 1
            if self._held[(kind, target)] > 0:
                continue
            host = self.cluster.hosts[target]
            if kind == "pause":
                host.resume()
            elif self._held[("crash", target)] <= 0:
                host.restart()
                if self._held[("pause", target)] > 0:
                    host.pause()

    def _healer(self, handles: list[int]) -> Callable[[], None]:
        """Undo exactly these network faults: an overlapping fault keeps its own window."""
        network = self.cluster.network

        def heal() -> None:
            for handle in handles:
                network.heal(handle)

        return heal

    def _recover_later(
        self, fault: AppliedFault, recover: Callable[[], None], roles: dict[str, Any], budgeted: bool
    ):  # type: ignore[no-untyped-def]
        env = self.cluster.env
        yield env.timeout(fault.duration_ms)
        if fault.recovered_at_ms is not None:
            return  # healed early by heal_all()
        self._finish(fault, recover, roles, budgeted)

    def _finish(
        self, fault: AppliedFault, recover: Callable[[], None], roles: dict[str, Any], budgeted: bool
    ) -> None:
        env = self.cluster.env
        recover()
        fault.recovered_at_ms = env.now
        self.cluster.tracer.record(
            env.now, "faults", "recovered", {"kind": fault.kind, "target": fault.target}
        )
        if budgeted:
            for role in roles.values():
                if role is not None:
                    self.busy_shards[role[1]] = env.now + self.spec.recovery_grace_ms
            if fault.kind == "crash_overlord":
                self.overlord_down = False
            if fault.kind in ("isolate", "clog", "partition"):
                self.network_fault = False

    def heal_all(self) -> None:
        """End of the safety phase: every fault still in force is repaired now."""
        for fault, recover in zip(self.applied, self._recoveries, strict=True):
            if fault.recovered_at_ms is None:
                self._finish(fault, recover, {}, budgeted=False)
        self.cluster.network.heal()
        for host in self.cluster.hosts.values():
            self.cluster.ensure_running(host)
