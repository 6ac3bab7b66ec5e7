"""Client requests an Overlord forwards to the owning master, and the answers it relays back.

Theory of operation
-------------------
The original DiMint routed every request through the coordinator; DiMint's clients go direct, and
``RouterConfig.via_overlord`` keeps the old way for comparison experiments. A forwarded request gets
an id local to this Overlord (the client's own id could collide with another client's), and the
table remembers who asked under which id. An answer relays under the client's id; one that does not
come within the timeout is reported as TIMEOUT, outcome unknown, never as failed, because the master
may have executed it. The request's at-most-once identity (client id, seq) travels unchanged, so a
client that resends through another path is still deduplicated by the master.

The table is bounded (``limit`` in flight) and ordered by deadline (insertion order, as every entry
gets the same timeout), so expiry pops from the front and arms one timer for the next deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from dimint.core.clustermap import ClusterMap
from dimint.core.commands import request_keys
from dimint.core.effects import Effect, Reply, Send, SetTimer
from dimint.core.errors import ErrorCode
from dimint.core.protocol import ErrorReply, Request, Response

__all__ = ["Proxied", "ProxyTable"]


@dataclass(slots=True)
class Proxied:
    """A client request this Overlord forwarded, waiting for the node's answer."""

    client: str
    request_id: int
    deadline_ms: int


class ProxyTable:
    """The requests one Overlord has in flight for clients; ``timer_key`` is the timer it arms."""

    def __init__(self, overlord_id: str, timeout_ms: int, limit: int, timer_key: str) -> None:
        self.overlord_id = overlord_id
        self.timeout_ms = timeout_ms
        self.limit = limit
        self.timer_key = timer_key
        self.waiting: dict[int, Proxied] = {}  # forwarded request id -> who asked
        self._seq = 0

    def forward(
        self, source: str, request: Request, cmap: ClusterMap | None, now_ms: int, out: list[Effect]
    ) -> None:
        """Send ``request`` on to its shard's master, or refuse it with the reason it cannot go."""

        def refuse(code: ErrorCode, reason: str) -> None:
            epoch = cmap.epoch if cmap else 0
            out.append(Reply(source, ErrorReply(request.request_id, code, reason, epoch)))

        if cmap is None:
            refuse(ErrorCode.UNAVAILABLE, "the cluster map does not exist yet")
            return
        if len(self.waiting) >= self.limit:
            refuse(ErrorCode.UNAVAILABLE, f"overlord {self.overlord_id} is proxying too many requests")
            return
        try:
            keys = request_keys(request.command, request.args)
        except (TypeError, IndexError, KeyError) as exc:
            refuse(ErrorCode.BAD_ARGUMENT, f"bad keys: {exc}")
            return
        owner = cmap.owner_of_keys(keys)
        if owner is None:
            refuse(ErrorCode.BAD_ARGUMENT, "the keys of one command must belong to one shard")
            return
        shard = cmap.shards[owner]
        if shard.master is None or shard.master not in cmap.nodes:
            refuse(ErrorCode.UNAVAILABLE, f"shard {shard.shard_id} has no master right now")
            return
        self._seq += 1
        if not self.waiting:
            out.append(SetTimer(self.timer_key, now_ms + self.timeout_ms))
        self.waiting[self._seq] = Proxied(source, request.request_id, now_ms + self.timeout_ms)
        forwarded = msgspec.structs.replace(request, request_id=self._seq, map_epoch=cmap.epoch)
        out.append(Send(cmap.nodes[shard.master].address, forwarded))

    def answer(self, message: Response | ErrorReply, out: list[Effect]) -> None:
        """Relay a node's answer (to a request in ``waiting``) to the client that asked."""
        waiting = self.waiting.pop(message.request_id)
        out.append(Reply(waiting.client, msgspec.structs.replace(message, request_id=waiting.request_id)))

    def expire(self, now_ms: int, out: list[Effect]) -> None:
        """Answer TIMEOUT (outcome unknown) for every request past its deadline; re-arm the timer."""
        while self.waiting:
            proxy_id, waiting = next(iter(self.waiting.items()))
            if waiting.deadline_ms > now_ms:
                out.append(SetTimer(self.timer_key, waiting.deadline_ms))
                return
            del self.waiting[proxy_id]
            out.append(
                Reply(
                    waiting.client,
                    ErrorReply(
                        waiting.request_id,
                        ErrorCode.TIMEOUT,
                        f"no answer from the shard within {self.timeout_ms} ms; outcome unknown",
                    ),
                )
            )
