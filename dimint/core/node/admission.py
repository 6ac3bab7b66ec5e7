"""Which client request a node answers how: the admission table, as data.

Theory of operation: once a request has passed the checks every role makes alike (a known
command, keys that this node's shard owns), what happens to it depends only on four things: the
node's role, the kind of request (a write, a strong read, a weak read), whether the node is
fenced (a master whose lease is in doubt) and whether a migration has frozen one of its keys. That
is this table, read by ``DataNode`` to dispatch and by the tests to check every combination, so
the rule lives in one place and nothing has to copy it (h11's ``EVENT_TRIGGERED_TRANSITIONS``).

What an answer means:

* ``SERVE_NOW``: run the read on this replica and answer at once (a weak read: a slave may be
  stale, its staleness bound still applies).
* ``SERVE_COMMITTED``: run the read on the master and answer once every write it could observe has
  committed (invariant 5: a strong read never returns what a failover could still lose).
* ``EXECUTE``: a write on the unfenced master; the master still refuses it below ``min_in_sync``,
  answers a duplicate from the dedup table, and holds the reply until the write commits.
* ``MOVED``, ``NOT_MASTER``, ``FENCED``, ``FROZEN``: refused with that code; nothing changes and the
  client knows whether to refresh its map or back off.

Order matters where two refusals apply: fencing is checked before freezing (a fenced master knows
nothing for sure, not even that a move is under way).
"""

from __future__ import annotations

import enum
import itertools
from types import MappingProxyType

from dimint.core.errors import ErrorCode
from dimint.core.node.config import Role

__all__ = ["ADMISSION", "Answer", "RequestKind", "admit"]


class RequestKind(enum.StrEnum):
    WRITE = "write"
    STRONG_READ = "strong_read"
    WEAK_READ = "weak_read"


class Answer(enum.StrEnum):
    SERVE_NOW = "serve_now"
    SERVE_COMMITTED = "serve_committed"
    EXECUTE = "execute"
    MOVED = "MOVED"
    NOT_MASTER = "NOT_MASTER"
    FENCED = "FENCED"
    FROZEN = "FROZEN"

    @property
    def refusal(self) -> ErrorCode | None:
        """The error code of a refusing answer, None for one that serves."""
        return ErrorCode(self.value) if self.value.isupper() else None


def _answer(role: Role, kind: RequestKind, fenced: bool, frozen: bool) -> Answer:
    if role in (Role.STARTING, Role.SPARE):
        return Answer.MOVED  # serves no shard
    if role is Role.SLAVE:
        return Answer.SERVE_NOW if kind is RequestKind.WEAK_READ else Answer.NOT_MASTER
    if kind is RequestKind.WEAK_READ:
        return Answer.SERVE_NOW  # a master serves weak reads even fenced or frozen: they promise nothing
    if fenced:
        return Answer.FENCED
    if frozen:
        return Answer.FROZEN
    return Answer.SERVE_COMMITTED if kind is RequestKind.STRONG_READ else Answer.EXECUTE


#: ``(role, kind, fenced, frozen) -> Answer`` for every combination.
ADMISSION: MappingProxyType[tuple[Role, RequestKind, bool, bool], Answer] = MappingProxyType(
    {
        (role, kind, fenced, frozen): _answer(role, kind, fenced, frozen)
        for role, kind, fenced, frozen in itertools.product(Role, RequestKind, (False, True), (False, True))
    }
)


def admit(role: Role, kind: RequestKind, fenced: bool, frozen: bool) -> Answer:
    return ADMISSION[(role, kind, fenced, frozen)]
