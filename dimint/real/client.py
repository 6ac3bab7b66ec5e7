"""The DiMint client library: ``Client(overlords=[...])`` over ZeroMQ, routing with the core router.

Theory of operation
-------------------
A ``Client`` runs ``dimint.core.routing.ClientRouter`` -- the same machine the simulator's workload
clients run -- in a ``RealHost`` loop thread of its own, over DEALER sockets (one per node or
Overlord it talks to, created on first use). The router fetches the cluster map from an Overlord,
sends each command straight to the owning shard's node, follows MOVED/NOT_MASTER/FENCED by
refreshing the map, retries reads, and reports one honest outcome per operation: ``ok``, ``fail``
(definitely not applied) or ``info`` (unknown). Nothing about routing is reimplemented here.

Calls from any thread are turned into ``Submit`` inputs queued for the loop, with a future each
that the loop resolves when the router reports ``Completed``. The calling thread then runs the
loop itself (``RealHost.drive``) until its futures are resolved, so a call costs no hand-off to the
loop thread and back (two thread wake-ups, a pipe write and a condition variable per operation);
the loop thread serves timers and stray replies while no caller drives. The client is therefore
thread-safe, and many operations may be in flight at once: ``pipeline()`` submits a whole batch in
one go and waits for all of it. A pipeline sends each run of plain GETs or SETs as one ``mget`` or
``mset`` per shard (``Client._run_pipeline`` says how every command still gets its own result):
per-request costs dominate in Python, so this is what makes a batch cheap.

Errors are typed. A definite failure raises a ``CommandFailed`` subclass chosen by its ``ErrorCode``
(``WrongTypeError``, ``BadArgumentError``, ``ValueTooLargeError``, ``UnavailableError``, ...); an
unknown outcome raises ``OutcomeUnknownError``, which is deliberately *not* a ``CommandFailed``: a
write that timed out may well have been applied, so a caller must not treat it as not done.
``retries`` resubmits an operation only after a definite, retryable failure (the shard had no
master until the deadline, say), never after an unknown outcome: repeating a write whose first
attempt may have landed could apply it twice.

Multi-key commands (``mget``, ``mset``, ``delete``, ``exists``) are split per shard using the
router's cached map and their results reassembled; they are atomic per shard, not across shards.

For tests, ``history=HistoryRecorder()`` records every ``get`` (as ``read``), unconditional ``set``
(as ``write``) and single-key ``delete`` in the Jepsen-style format of ``dimint.core.history``, so
``dimint.core.checker`` can judge a real run exactly as it judges a simulated one. Other commands
are not recorded; do not mix them with recorded ones on the same key when checking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import zmq

from dimint.core.commands import CONSISTENCIES, Consistency, request_keys
from dimint.core.effects import CancelTimer, Effect, Input, Receive, Send, SetTimer, TimerFired
from dimint.core.errors import RETRYABLE_CODES, CommandError, DimintError, ErrorCode
from dimint.core.hashing import as_key, key_hash
from dimint.core.history import HistoryRecorder
from dimint.core.protocol import AdminReply, AdminRequest, ErrorReply, Request, encode, validate_command
from dimint.core.routing import ClientRouter, Completed, ReadPreference, RouterConfig, Submit
from dimint.real.runtime import RealHost
from dimint.real.transport import Transport, TransportOptions, normalise_address

__all__ = [
    "AdminError",
    "BadArgumentError",
    "Client",
    "ClientClosedError",
    "CommandFailed",
    "DimintClientError",
    "IntegerOverflowError",
    "KeyTooLargeError",
    "NotIntegerError",
    "OutcomeUnknownError",
    "Pipeline",
    "UnavailableError",
    "UnknownCommandError",
    "ValueTooLargeError",
    "WrongTypeError",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DimintClientError(DimintError):
    """Base of every error the client raises; ``code`` is the wire ``ErrorCode`` (None if local)."""

    def __init__(self, code: ErrorCode | None, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}" if code is not None else reason)
        self.code = code
        self.reason = reason


class CommandFailed(DimintClientError):
    """The operation definitely did not take effect."""


class WrongTypeError(CommandFailed):
    """The command does not apply to the type of the value stored at the key."""


class NotIntegerError(CommandFailed):
    """incr/decr of a value that is not an integer."""


class IntegerOverflowError(CommandFailed):
    """An integer result would leave signed 64 bits."""


class BadArgumentError(CommandFailed):
    """Wrong number or type of arguments (raised locally, before anything is sent, when possible)."""


class UnknownCommandError(CommandFailed):
    """No such command."""


class KeyTooLargeError(CommandFailed):
    """The key is longer than the node's ``max_key_bytes``."""


class ValueTooLargeError(CommandFailed):
    """The value (or collection) is larger than the node's limits."""


class UnavailableError(CommandFailed):
    """The cluster could not serve the operation before its deadline (no master, fenced, ...)."""


class OutcomeUnknownError(DimintClientError):
    """The operation may or may not have taken effect (a write that timed out, say). Not a failure."""


class AdminError(DimintClientError):
    """An Overlord refused or did not answer an administrative request."""


class ClientClosedError(DimintClientError):
    """The client was closed (or its loop failed) before the operation completed."""


_FAILURES: dict[ErrorCode, type[CommandFailed]] = {
    ErrorCode.WRONG_TYPE: WrongTypeError,
    ErrorCode.NOT_INTEGER: NotIntegerError,
    ErrorCode.OVERFLOW: IntegerOverflowError,
    ErrorCode.BAD_ARGUMENT: BadArgumentError,
    ErrorCode.MALFORMED: BadArgumentError,
    ErrorCode.UNKNOWN_COMMAND: UnknownCommandError,
    ErrorCode.KEY_TOO_LARGE: KeyTooLargeError,
    ErrorCode.VALUE_TOO_LARGE: ValueTooLargeError,
}


def error_for(outcome: str, code: ErrorCode | None, reason: str) -> DimintClientError:
    """The exception for a non-``ok`` outcome."""
    if outcome == "info":
        return OutcomeUnknownError(code, reason)
    if code is not None and code in RETRYABLE_CODES:
        return UnavailableError(code, reason)
    return (
        _FAILURES.get(code, CommandFailed)(code, reason) if code is not None else CommandFailed(None, reason)
    )


# --------------------------------------------------------------------------------------------
# Inputs the client loop understands besides the router's
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SubmitBatch(Input):
    submits: tuple[Submit, ...]


@dataclass(frozen=True, slots=True)
class _AdminSubmit(Input):
    op_id: int
    action: str
    params: dict[str, Any]
    targets: tuple[str, ...]
    try_timeout_ms: int


#: Admin request ids live far above the router's (which count up from 1), so replies never mix.
_ADMIN_ID_BASE = 1 << 62
#: Codes after which an admin request is worth trying on the next Overlord (a follower answers
#: NOT_MASTER); any other answer is the leader's and is surfaced as it is.
_ADMIN_NEXT_CODES = frozenset({ErrorCode.NOT_MASTER, ErrorCode.TIMEOUT})


@dataclass(slots=True)
class _Pending:
    future: Future[Any]
    submit: Submit
    retries_left: int
    history_token: int | None = None
    history_read: bool = False
    history_value: Any = None


@dataclass(slots=True)
class _AdminPending:
    future: Future[Any]
    request: _AdminSubmit
    index: int = 0


class _ClientMachine:
    """The router plus the client's bookkeeping; runs only on the loop thread."""

    def __init__(self, client: Client, router: ClientRouter) -> None:
        self.client = client
        self.router = router
        self.pending: dict[int, _Pending] = {}
        self.admin: dict[int, _AdminPending] = {}

    def handle(self, event: Input, now_ms: int) -> list[Effect]:
        if isinstance(event, _SubmitBatch):
            out: list[Effect] = []
            for submit in event.submits:
                out.extend(self.router.handle(submit, now_ms))
            return self._absorb(out, now_ms)
        if isinstance(event, _AdminSubmit):
            admin = _AdminPending(self.client._admin_futures.pop(event.op_id), event)
            self.admin[event.op_id] = admin
            return self._admin_try(admin, now_ms)
        if isinstance(event, Receive):
            request_id = getattr(event.message, "request_id", None)
            if isinstance(request_id, int) and request_id >= _ADMIN_ID_BASE:
                return self._on_admin_reply(request_id - _ADMIN_ID_BASE, event.message, now_ms)
        if isinstance(event, TimerFired) and event.key.startswith("admin:"):
            return self._on_admin_timeout(int(event.key.split(":", 1)[1]), now_ms)
        return self._absorb(self.router.handle(event, now_ms), now_ms)

    # ---------------------------------------------------------------- operations

    def _absorb(self, effects: list[Effect], now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Completed):
                out.extend(self._on_completed(effect, now_ms))
            else:
                out.append(effect)
        return out

    def _on_completed(self, done: Completed, now_ms: int) -> list[Effect]:
        pending = self.pending.pop(done.op_id, None)
        if pending is None:
            return []
        if (
            done.outcome == "fail"
            and done.code is not None
            and done.code in RETRYABLE_CODES
            and pending.retries_left > 0
        ):
            pending.retries_left -= 1
            op_id = self.client._next_op_id()
            submit = dataclasses.replace(pending.submit, op_id=op_id)
            pending.submit = submit
            self.pending[op_id] = pending
            return self._absorb(self.router.handle(submit, now_ms), now_ms)
        self.client._record_completion(pending, done)
        if done.outcome == "ok":
            _resolve(pending.future, done.value)
            return []
        reason = done.reason
        if self.router.map is None:
            overlords = ", ".join(self.router.overlords)
            reason = f"{reason.rstrip(': ')}: no cluster map from any Overlord yet (tried {overlords})"
        _fail(pending.future, error_for(done.outcome, done.code, reason))
        return []

    # ---------------------------------------------------------------- admin

    def _admin_try(self, admin: _AdminPending, now_ms: int) -> list[Effect]:
        request = admin.request
        target = request.targets[admin.index]
        message = AdminRequest(_ADMIN_ID_BASE + request.op_id, request.action, dict(request.params))
        return [
            Send(target, message),
            SetTimer(f"admin:{request.op_id}", now_ms + request.try_timeout_ms),
        ]

    def _admin_next(self, op_id: int, error: AdminError, now_ms: int) -> list[Effect]:
        admin = self.admin.get(op_id)
        if admin is None:
            return []
        admin.index += 1
        if admin.index < len(admin.request.targets):
            return self._admin_try(admin, now_ms)
        del self.admin[op_id]
        _fail(admin.future, error)
        return []

    def _on_admin_reply(self, op_id: int, message: Any, now_ms: int) -> list[Effect]:
        admin = self.admin.get(op_id)
        if admin is None:
            return []
        target = admin.request.targets[admin.index]
        if isinstance(message, ErrorReply) and message.code in _ADMIN_NEXT_CODES:
            return self._admin_next(op_id, AdminError(message.code, f"{target}: {message.reason}"), now_ms)
        del self.admin[op_id]
        if isinstance(message, AdminReply):
            _resolve(admin.future, message.result)
        elif isinstance(message, ErrorReply):
            _fail(admin.future, AdminError(message.code, f"{target}: {message.reason}"))
        else:
            _fail(admin.future, AdminError(None, f"{target} answered with {type(message).__name__}"))
        return [CancelTimer(f"admin:{op_id}")]

    def _on_admin_timeout(self, op_id: int, now_ms: int) -> list[Effect]:
        admin = self.admin.get(op_id)
        if admin is None:
            return []
        target = admin.request.targets[admin.index]
        error = AdminError(ErrorCode.TIMEOUT, f"no answer from {target} in {admin.request.try_timeout_ms} ms")
        return self._admin_next(op_id, error, now_ms)


def _resolve(future: Future[Any], value: Any) -> None:
    with contextlib.suppress(Exception):  # already cancelled or resolved by close()
        future.set_result(value)


def _fail(future: Future[Any], error: BaseException) -> None:
    with contextlib.suppress(Exception):
        future.set_exception(error)


# --------------------------------------------------------------------------------------------
# Calls: one logical command, possibly split into per-shard parts
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Part:
    command: str
    args: tuple[Any, ...]
    consistency: str
    keys: int = 1  # how many keys the part carries (a multi-key part may need re-splitting)


@dataclass(slots=True)
class _Call:
    parts: list[_Part]
    combine: Callable[[list[Any]], Any]
    #: (f, key, value) for the history when the call is a register operation, else None.
    record: tuple[str, str, Any] | None = None
    split: Callable[[], _Call] | None = None  # the all-single-key form, if the map moved mid-call
    futures: list[Future[Any]] = field(default_factory=list)


def _identity(values: list[Any]) -> Any:
    return values[0]


#: Most plain GETs or SETs of a pipeline sent to one shard as one ``mget``/``mset``.
_COALESCE_MAX = 1000


def _payload_bytes(args: Iterable[Any]) -> int:
    """The bytes a command's byte-string arguments carry: what decides whether it fits a frame."""
    payload = 0
    for arg in args:
        if type(arg) is bytes:
            payload += len(arg)
    return payload


def _plain(call: _Call) -> tuple[str, str] | None:
    """``(command, consistency)`` when ``call`` is one plain GET, or one SET with neither TTL nor
    nx/xx: the calls a pipeline may send as part of an ``mget``/``mset``; else None."""
    if len(call.parts) != 1 or call.combine is not _identity or call.split is not None:
        return None
    part = call.parts[0]
    if part.command == "get":
        return ("get", part.consistency)
    if part.command == "set" and part.args[2] is None and part.args[3] is None:
        return ("set", Consistency.STRONG)
    return None


@dataclass(slots=True)
class _Unit:
    """What a pipeline submits: one of its calls (``kind`` None), or a run of its plain GETs or
    SETs to one shard as one ``mget``/``mset`` call (``kind`` "get"/"set") standing for ``indices``."""

    call: _Call
    kind: str | None
    indices: list[int]


def _history_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, set):
        return {_decode(item) for item in value}
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    return value


class _Commands:
    """Every store command as a typed method. ``_call`` decides whether it runs now or is queued."""

    def _call(self, call: _Call) -> Any:
        raise NotImplementedError

    def _shard_of(self, key: bytes) -> int | None:
        raise NotImplementedError

    def _frame_limit(self) -> int:
        raise NotImplementedError

    def _check_frame_size(self, command: str, args: tuple[Any, ...]) -> None:
        """Refuse at once a request no node could receive (it would only time out, outcome unknown)."""
        limit = self._frame_limit()
        if _payload_bytes(args) < limit - 4096:
            return
        size = len(encode(Request(0, command, list(args)), check=False))
        if size > limit:
            raise ValueTooLargeError(
                ErrorCode.VALUE_TOO_LARGE, f"{command}: the request is {size} bytes, more than {limit}"
            )

    def _single(
        self,
        command: str,
        args: Sequence[Any],
        consistency: Consistency | str = Consistency.STRONG,
        combine: Callable[[list[Any]], Any] = _identity,
        record: tuple[str, str, Any] | None = None,
    ) -> Any:
        normalised = _validate(command, args)
        _check_consistency(consistency)
        self._check_frame_size(command, normalised)
        return self._call(_Call([_Part(command, normalised, consistency)], combine, record))

    def _multi_key(
        self,
        command: str,
        keys: Sequence[Any],
        consistency: str,
        combine: Callable[[list[Any], list[list[int]]], Any],
        values: Sequence[Any] | None = None,
    ) -> Any:
        """Split a multi-key command per shard; ``combine(part_values, part_positions)``."""
        flat: list[Any] = []
        for index, key in enumerate(keys):
            flat.append(key)
            if values is not None:
                flat.append(values[index])
        normalised = _validate(command, flat)
        _check_consistency(consistency)
        width = 2 if values is not None else 1
        items = [normalised[i : i + width] for i in range(0, len(normalised), width)]

        def build(groups: list[list[int]]) -> _Call:
            parts = [
                _Part(command, tuple(x for i in group for x in items[i]), consistency, len(group))
                for group in groups
            ]
            for part in parts:
                self._check_frame_size(command, part.args)
            return _Call(parts, lambda results: combine(results, groups))

        by_shard: dict[Any, list[int]] = {}
        for index, item in enumerate(items):
            shard = self._shard_of(item[0])
            by_shard.setdefault(shard if shard is not None else ("key", index), []).append(index)
        call = build(list(by_shard.values()))
        call.split = lambda: build([[i] for i in range(len(items))])
        return self._call(call)

    # ---------------------------------------------------------------- strings and keys

    def get(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """The value at ``key`` (bytes or int), or None when absent."""
        return self._single("get", [key], consistency, record=("read", _key_text(key), None))

    def set(
        self,
        key: Any,
        value: str | bytes | int,
        ex: float | None = None,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> Any:
        """Store ``value``; ``ex`` seconds or ``px`` ms of TTL; ``nx``/``xx`` only if absent/present.

        Returns True if written (False when ``nx``/``xx`` prevented it).
        """
        if nx and xx:
            raise BadArgumentError(ErrorCode.BAD_ARGUMENT, "set: nx and xx exclude each other")
        if ex is not None and px is not None:
            raise BadArgumentError(ErrorCode.BAD_ARGUMENT, "set: give ex or px, not both")
        ttl_ms = px
        if ex is not None:
            if isinstance(ex, bool) or not isinstance(ex, int | float):
                raise BadArgumentError(
                    ErrorCode.BAD_ARGUMENT, f"set: ex must be a number of seconds, got {ex!r}"
                )
            ttl_ms = round(ex * 1000)
        cond = "nx" if nx else "xx" if xx else None
        plain = cond is None and ttl_ms is None
        record = ("write", _key_text(key), _history_text(value)) if plain else None
        return self._single("set", [key, value, ttl_ms, cond], record=record)

    def delete(self, *keys: Any) -> Any:
        """Delete keys; returns how many existed."""
        if len(keys) == 1:
            return self._single("delete", list(keys), record=("delete", _key_text(keys[0]), None))
        return self._multi_key("delete", keys, Consistency.STRONG, lambda values, _groups: sum(values))

    def exists(self, *keys: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """How many of ``keys`` exist."""
        return self._multi_key("exists", keys, consistency, lambda values, _groups: sum(values))

    def type(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """``"string"``, ``"integer"``, ``"list"``, ``"hash"``, ``"set"`` or ``"none"``."""
        return self._single("type", [key], consistency)

    key_type = type

    def ttl(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """Milliseconds left to live; -1 without a TTL, -2 when the key does not exist."""
        return self._single("ttl", [key], consistency)

    def expire(self, key: Any, ttl_ms: int) -> Any:
        """Give ``key`` a TTL of ``ttl_ms`` ms (<= 0 deletes it); False when the key does not exist."""
        return self._single("expire", [key, ttl_ms])

    def persist(self, key: Any) -> Any:
        """Remove the TTL; False when the key does not exist or had none."""
        return self._single("persist", [key])

    def incr(self, key: Any, by: int = 1) -> Any:
        """Add ``by`` to the integer at ``key`` (absent counts as 0); returns the new value."""
        return self._single("incr", [key, by])

    def decr(self, key: Any, by: int = 1) -> Any:
        """Subtract ``by``; returns the new value."""
        return self._single("decr", [key, by])

    def mget(self, *keys: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """Values of ``keys`` in order (None for absent keys or keys of another type)."""
        keys = _flatten_keys(keys)

        def combine(values: list[Any], groups: list[list[int]]) -> list[Any]:
            result: list[Any] = [None] * len(keys)
            for group, part in zip(groups, values, strict=True):
                for index, value in zip(group, part, strict=True):
                    result[index] = value
            return result

        return self._multi_key("mget", keys, consistency, combine)

    def mset(self, mapping: Mapping[Any, Any]) -> Any:
        """Set several keys (atomically per shard, not across shards). Returns True."""
        if not isinstance(mapping, Mapping) or not mapping:
            raise BadArgumentError(ErrorCode.BAD_ARGUMENT, "mset takes a non-empty mapping of key -> value")
        return self._multi_key(
            "mset",
            list(mapping),
            Consistency.STRONG,
            lambda values, _groups: all(values),
            list(mapping.values()),
        )

    # ---------------------------------------------------------------- lists

    def lpush(self, key: Any, *items: Any) -> Any:
        """Push items to the head, one by one; returns the new length."""
        return self._single("lpush", [key, *items])

    def rpush(self, key: Any, *items: Any) -> Any:
        """Push items to the tail; returns the new length."""
        return self._single("rpush", [key, *items])

    def lpop(self, key: Any) -> Any:
        """Pop the head item (None when empty)."""
        return self._single("lpop", [key])

    def rpop(self, key: Any) -> Any:
        """Pop the tail item (None when empty)."""
        return self._single("rpop", [key])

    def lrange(
        self, key: Any, start: int = 0, stop: int = -1, consistency: Consistency | str = Consistency.STRONG
    ) -> Any:
        """Items ``start..stop`` inclusive (negative counts from the end)."""
        return self._single("lrange", [key, start, stop], consistency)

    def llen(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        return self._single("llen", [key], consistency)

    # ---------------------------------------------------------------- hashes

    def hset(
        self, key: Any, field: Any = None, value: Any = None, mapping: Mapping[Any, Any] | None = None
    ) -> Any:
        """Set one field (``field``, ``value``) and/or several (``mapping``); returns fields added."""
        flat: list[Any] = []
        if field is not None:
            flat += [field, value]
        for name, item in (mapping or {}).items():
            flat += [name, item]
        return self._single("hset", [key, *flat])

    def hget(self, key: Any, field: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        return self._single("hget", [key, field], consistency)

    def hdel(self, key: Any, *fields: Any) -> Any:
        """Delete fields; returns how many existed."""
        return self._single("hdel", [key, *fields])

    def hgetall(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """Every field and value, as a dict."""
        return self._single("hgetall", [key], consistency)

    def hlen(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        return self._single("hlen", [key], consistency)

    # ---------------------------------------------------------------- sets

    def sadd(self, key: Any, *members: Any) -> Any:
        """Add members; returns how many were new."""
        return self._single("sadd", [key, *members])

    def srem(self, key: Any, *members: Any) -> Any:
        """Remove members; returns how many were there."""
        return self._single("srem", [key, *members])

    def smembers(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        """The members, as a Python set."""
        return self._single("smembers", [key], consistency, combine=lambda values: set(values[0]))

    def sismember(self, key: Any, member: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        return self._single("sismember", [key, member], consistency)

    def scard(self, key: Any, consistency: Consistency | str = Consistency.STRONG) -> Any:
        return self._single("scard", [key], consistency)

    # ---------------------------------------------------------------- anything

    def execute_command(
        self, command: str, *args: Any, consistency: Consistency | str = Consistency.STRONG
    ) -> Any:
        """Any command of ``dimint.core.commands.COMMANDS`` by name, raw result (multi-key commands
        must keep to one shard here; the typed methods split them for you)."""
        return self._single(command, list(args), consistency)


def _validate(command: str, args: Sequence[Any]) -> tuple[Any, ...]:
    try:
        return validate_command(command, list(args))
    except CommandError as exc:
        raise error_for("fail", exc.code, exc.reason) from None


def _check_consistency(consistency: str) -> None:
    if consistency not in CONSISTENCIES:
        raise BadArgumentError(
            ErrorCode.BAD_ARGUMENT, f"consistency must be 'strong' or 'weak', got {consistency!r}"
        )


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(key)


def _flatten_keys(keys: tuple[Any, ...]) -> list[Any]:
    if len(keys) == 1 and isinstance(keys[0], list | tuple):
        return list(keys[0])
    return list(keys)


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class Client(_Commands):
    """A thread-safe connection to a DiMint cluster. Use as a context manager, or call ``close()``.

    ``overlords``: Overlord addresses (``"host:port"`` or ``"tcp://host:port"``), from which the
    client learns the cluster map. ``timeout``: seconds an operation may take, retries included,
    before it fails (or, if it may have applied, ends unknown). ``request_timeout``: seconds to wait
    for one attempt's reply. ``retries``: resubmissions after a definite retryable failure.
    ``read_preference``: where weak reads go (``"slave"``, ``"master"`` or ``"any"``).
    ``decode_responses``: return ``str`` instead of ``bytes``. ``history``: a ``HistoryRecorder``
    to record register operations into (see the module docstring).
    """

    def __init__(
        self,
        overlords: Iterable[str],
        *,
        timeout: float = 5.0,
        request_timeout: float = 1.0,
        retries: int = 1,
        read_preference: str = "slave",
        decode_responses: bool = False,
        history: HistoryRecorder | None = None,
        client_id: str | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        addresses = [normalise_address(a) for a in overlords]
        if not addresses:
            raise ValueError("a client needs at least one Overlord address")
        if timeout <= 0 or request_timeout <= 0:
            raise ValueError("timeout and request_timeout must be > 0 seconds")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.overlords = tuple(addresses)
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.retries = retries
        self.decode_responses = decode_responses
        self.history = history
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:16]}"
        config = dataclasses.replace(
            RouterConfig(),
            request_timeout_ms=max(1, int(request_timeout * 1000)),
            operation_deadline_ms=max(1, int(timeout * 1000)),
            read_preference=ReadPreference(read_preference),
        )
        import random

        self.router = ClientRouter(self.client_id, self.overlords, config, random.Random())
        self._ops = itertools.count(1)
        self._history_lock = threading.Lock()
        self._processes: dict[int, int] = {}
        self._process_counter = itertools.count(1)
        self._admin_futures: dict[int, Future[Any]] = {}
        self._closed = False
        options = TransportOptions() if max_message_bytes is None else TransportOptions(max_message_bytes)
        self._max_message_bytes = options.max_message_bytes
        self._context = zmq.Context()
        # Requests are built from arguments ``validate_command`` normalised already (``_validate``).
        transport = Transport(self.client_id, None, options, self._context, trusted=frozenset({Request}))
        self._machine = _ClientMachine(self, self.router)
        self._host = RealHost(self._machine, transport, address=self.client_id)
        self._host.start(thread=True)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the loop and close the sockets; operations still waiting fail with ``ClientClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._host.stop()
        self._host.join(5.0)
        self._host.close()
        with contextlib.suppress(zmq.ZMQError):
            self._context.term()
        closed = ClientClosedError(None, "the client was closed")
        for pending in list(self._machine.pending.values()):
            _fail(pending.future, closed)
        for admin in list(self._machine.admin.values()):
            _fail(admin.future, closed)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cluster_map(self, timeout: float | None = None) -> Any:
        """The router's cached ``ClusterMap``, waiting for the first one if need be.

        The map is what the router last learned (it refreshes on MOVED and similar answers), so it
        may trail the Overlords' by a moment; raises ``UnavailableError`` if none arrives in time.
        """
        return self.router.map if self.router.map is not None else self.wait_for_map(timeout)

    def wait_for_map(self, timeout: float | None = None) -> Any:
        """Block until the router holds a cluster map; returns it (raises ``UnavailableError``)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.router.map is None:
            if time.monotonic() > deadline:
                raise UnavailableError(ErrorCode.UNAVAILABLE, "no cluster map from any Overlord yet")
            time.sleep(0.02)
        return self.router.map

    # ---------------------------------------------------------------- plumbing

    def _next_op_id(self) -> int:
        return next(self._ops)

    def _shard_of(self, key: bytes) -> int | None:
        cmap = self.router.map  # an immutable object: safe to read from this thread
        if cmap is None:
            return None
        owner = getattr(cmap, "owner_of_hash", None) or cmap.placement.owner_of_hash
        return owner(key_hash(as_key(key)))

    def _frame_limit(self) -> int:
        return self._max_message_bytes

    def _check_open(self) -> None:
        if self._closed or not self._host.running:
            failure = self._host.failure
            raise ClientClosedError(
                None, f"the client is closed{f' (loop failed: {failure!r})' if failure else ''}"
            )

    def _process(self, fresh: bool) -> int:
        if fresh:
            return 1_000_000 + next(self._process_counter)
        ident = threading.get_ident()
        with self._history_lock:
            if ident not in self._processes:
                self._processes[ident] = len(self._processes) + 1
            return self._processes[ident]

    def _submit_calls(self, calls: list[_Call], pipelined: bool) -> None:
        """Turn calls into router submissions, record invokes, and hand them to the loop at once."""
        self._check_open()
        submits: list[Submit] = []
        for call in calls:
            call.futures = []
            for part in call.parts:
                future: Future[Any] = Future()
                op_id = self._next_op_id()
                submit = Submit(op_id, part.command, part.args, part.consistency, validated=True)
                pending = _Pending(future, submit, self.retries)
                if call.record is not None and self.history is not None and len(call.parts) == 1:
                    f, key, value = call.record
                    extra = {"consistency": part.consistency} if f == "read" else {}
                    process = self._process(pipelined)
                    with self._history_lock:
                        pending.history_token = self.history.invoke(
                            process, f, key, value, _now_ms(), **extra
                        )
                    pending.history_read = f == "read"
                    pending.history_value = value
                self._machine.pending[op_id] = pending  # dict assignment is atomic; the loop reads later
                call.futures.append(future)
                submits.append(submit)
        # No wake-up: ``_wait`` drives the loop on this thread, which takes the batch from there.
        self._host.enqueue(_SubmitBatch(tuple(submits)))

    def _record_completion(self, pending: _Pending, done: Completed) -> None:
        """On the loop thread, the moment the router reports the outcome."""
        if pending.history_token is None or self.history is None:
            return
        with self._history_lock:
            token, pending.history_token = pending.history_token, None
            if token is None:
                return  # the caller gave up waiting and recorded it as unknown already
            if pending.history_read:
                value = _history_text(done.value) if done.outcome == "ok" else None
            else:
                value = pending.history_value
            extra: dict[str, Any] = {"node": done.node}
            if done.outcome != "ok":
                extra["error"] = done.code.value if done.code else None
            self.history.complete(token, done.outcome, value, _now_ms(), **extra)

    def _abandon(self, futures: list[Future[Any]]) -> None:
        """A caller gave up waiting: record its still-open register operations as unknown."""
        if self.history is None:
            return
        waiting = set(map(id, futures))
        with self._history_lock:
            for pending in list(self._machine.pending.values()):
                if id(pending.future) in waiting and pending.history_token is not None:
                    token, pending.history_token = pending.history_token, None
                    value = None if pending.history_read else pending.history_value
                    self.history.complete(token, "info", value, _now_ms(), error="TIMEOUT")

    def _wait(self, calls: list[_Call]) -> list[Any]:
        """Results per call: a value or the exception instance."""
        futures = [f for call in calls for f in call.futures]
        deadline = time.monotonic() + self.timeout * (1 + self.retries) + self.request_timeout + 5.0
        self._drive(futures, deadline)
        results: list[Any] = []
        abandoned = False
        for call in calls:
            values: list[Any] = []
            error: BaseException | None = None
            for future in call.futures:
                try:
                    values.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
                except FutureTimeout:
                    abandoned = True
                    error = OutcomeUnknownError(ErrorCode.TIMEOUT, "the client loop did not answer in time")
                except DimintClientError as exc:
                    error = error or exc
            if error is None:
                try:
                    value = call.combine(values)
                except Exception as exc:  # a reply of an unexpected shape from a node
                    error = CommandFailed(ErrorCode.INTERNAL, f"unexpected reply: {exc!r}")
            if error is not None:
                results.append(error)
            else:
                results.append(_decode(value) if self.decode_responses else value)
        if abandoned:
            self._abandon(futures)
        # A multi-key call whose keys turned out to span shards (the map moved): redo key by key.
        redo = [
            index
            for index, (call, result) in enumerate(zip(calls, results, strict=True))
            if isinstance(result, BadArgumentError)
            and call.split is not None
            and any(p.keys > 1 for p in call.parts)
        ]
        if redo:
            again = [calls[i].split() for i in redo]  # type: ignore[misc]
            self._submit_calls(again, pipelined=True)
            for index, result in zip(redo, self._wait(again), strict=True):
                results[index] = result
        return results

    def _drive(self, futures: list[Future[Any]], deadline: float) -> None:
        """Run the client loop on this thread until every future is resolved (or the deadline)."""
        unresolved = 0

        def done() -> bool:
            nonlocal unresolved
            while unresolved < len(futures) and futures[unresolved].done():
                unresolved += 1
            return unresolved == len(futures)

        if not done():
            self._host.drive(done, max(0.0, deadline - time.monotonic()))

    def _run_pipeline(self, calls: list[_Call]) -> list[Any]:
        """Run a pipeline's calls; consecutive plain GETs (SETs) to one shard go as one ``mget``
        (``mset``), so a batch costs a request per shard and run instead of one per command.

        Each command's result stays the one it would have had alone:

        * the units go out in the pipeline's order, and a command joins an mget/mset only if no
          later command touches its key, so a GET after a SET of the same key reads it, as when
          every command was its own request (and the few commands run again on their own at the
          end overtake nothing);
        * a key ``mget`` reports as None is absent *or of another type*: those GETs run again on
          their own, which says which (None, or ``WrongTypeError``);
        * an ``mset`` is atomic on its shard, so a definite failure (``CommandFailed``) means none
          of its SETs applied, and they run again on their own for their own outcomes (an ``mget``
          refused, say because its reply would be too large, is read again per key). Any other
          error is each command's own: an unknown outcome of an ``mset`` is each SET's unknown
          outcome, and a SET that may have applied is never repeated (see ``dimint.core.routing``).

        With a history recorder the calls go one by one: the recorder's model is the single command.
        """
        units = (
            self._coalesce(calls)
            if self.history is None
            else [_Unit(c, None, [i]) for i, c in enumerate(calls)]
        )
        unit_calls = [unit.call for unit in units]
        self._submit_calls(unit_calls, pipelined=True)
        results: list[Any] = [None] * len(calls)
        again: list[int] = []
        for unit, result in zip(units, self._wait(unit_calls), strict=True):
            if unit.kind is None:
                results[unit.indices[0]] = result
            elif isinstance(result, BaseException):
                if isinstance(result, CommandFailed):
                    again.extend(unit.indices)
                else:  # unknown, or the client closed: so is each command's outcome, and none is sent again
                    for index in unit.indices:
                        results[index] = result
            elif unit.kind == "set":
                for index in unit.indices:
                    results[index] = True
            else:
                for index, value in zip(unit.indices, result, strict=True):
                    if value is None:
                        again.append(index)
                    else:
                        results[index] = value
        if again:
            again.sort()
            alone = [calls[index] for index in again]
            try:
                self._submit_calls(alone, pipelined=True)
            except ClientClosedError as closed:  # the results so far still stand
                for index in again:
                    results[index] = closed
                return results
            for index, result in zip(again, self._wait(alone), strict=True):
                results[index] = result
        return results

    def _coalesce(self, calls: list[_Call]) -> list[_Unit]:
        """The units for ``calls``, in order: runs of plain GETs/SETs grouped per shard (see above)."""
        units: list[_Unit] = []
        limit = self._frame_limit() // 2
        # A command joins an mget/mset only if no later command of the pipeline touches its key: the
        # few that run again on their own at the end must not overtake anything that follows them.
        kinds = [_plain(call) for call in calls]
        last_touch: dict[bytes, int] = {}
        for index, call in enumerate(calls):
            if kinds[index] is not None:
                last_touch[call.parts[0].args[0]] = index  # a plain command's one key, normalised
                continue
            for part in call.parts:
                for key in request_keys(part.command, part.args):
                    last_touch[key] = index
        for index, call in enumerate(calls):
            if kinds[index] is not None and last_touch[call.parts[0].args[0]] != index:
                kinds[index] = None

        start = 0
        while start < len(calls):
            kind = kinds[start]
            end = start + 1
            while kind is not None and end < len(calls) and kinds[end] == kind:
                end += 1
            if kind is None or end - start < 2:
                units.extend(_Unit(calls[index], None, [index]) for index in range(start, end))
                start = end
                continue
            by_shard: dict[int | None, list[int]] = {}
            for index in range(start, end):
                by_shard.setdefault(self._shard_of(calls[index].parts[0].args[0]), []).append(index)
            for shard, members in by_shard.items():
                for first in range(0, len(members), _COALESCE_MAX):
                    chunk = members[first : first + _COALESCE_MAX]
                    args = [
                        arg
                        for index in chunk
                        for arg in calls[index].parts[0].args[: 1 if kind[0] == "get" else 2]
                    ]
                    if shard is None or len(chunk) < 2 or _payload_bytes(args) > limit:
                        units.extend(_Unit(calls[index], None, [index]) for index in chunk)
                        continue
                    command = "mget" if kind[0] == "get" else "mset"
                    part = _Part(command, tuple(args), kind[1], len(chunk))
                    units.append(_Unit(_Call([part], _identity), kind[0], chunk))
            start = end
        return units

    def _call(self, call: _Call) -> Any:
        self._submit_calls([call], pipelined=False)
        (result,) = self._wait([call])
        if isinstance(result, BaseException):
            raise result
        return result

    def pipeline(self) -> Pipeline:
        """A batch: queue commands, then ``execute()`` (or leave the ``with`` block) to send them all."""
        return Pipeline(self)

    # ---------------------------------------------------------------- dict-style access

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return bool(self.exists(key))

    # ---------------------------------------------------------------- administration

    def _admin(self, action: str, params: dict[str, Any], targets: Sequence[str], timeout: float) -> Any:
        self._check_open()
        op_id = self._next_op_id()
        future: Future[Any] = Future()
        self._admin_futures[op_id] = future
        try_timeout_ms = max(1, int(timeout * 1000))
        self._host.inject(_AdminSubmit(op_id, action, params, tuple(targets), try_timeout_ms))
        try:
            return future.result(timeout=timeout * len(targets) + 5.0)
        except FutureTimeout:
            raise AdminError(ErrorCode.TIMEOUT, f"admin {action!r}: no answer") from None

    def overlord_statuses(self, timeout: float = 2.0) -> dict[str, Any]:
        """Every Overlord's status document (or the error it gave), by address."""
        self._check_open()
        futures: dict[str, Future[Any]] = {}
        for address in self.overlords:
            op_id = self._next_op_id()
            future: Future[Any] = Future()
            self._admin_futures[op_id] = future
            futures[address] = future
            self._host.inject(_AdminSubmit(op_id, "status", {}, (address,), max(1, int(timeout * 1000))))
        result: dict[str, Any] = {}
        for address, future in futures.items():
            try:
                result[address] = future.result(timeout=timeout + 5.0)
            except (AdminError, FutureTimeout) as exc:
                result[address] = (
                    exc if isinstance(exc, AdminError) else AdminError(ErrorCode.TIMEOUT, "no answer")
                )
        return result

    def leader(self, timeout: float = 2.0) -> str | None:
        """The address of the Overlord that says it leads, if any answers so."""
        for address, status in self.overlord_statuses(timeout).items():
            if isinstance(status, dict) and status.get("role") == "leader":
                return address
        return None

    def cluster_status(self, timeout: float = 2.0) -> dict[str, Any]:
        """The leading Overlord's status document (shards, nodes, events), plus every Overlord's role.

        Falls back to any Overlord's view when none leads right now; raises ``AdminError`` when none
        answers at all.
        """
        statuses = self.overlord_statuses(timeout)
        documents = {a: s for a, s in statuses.items() if isinstance(s, dict)}
        if not documents:
            errors = "; ".join(f"{a}: {s}" for a, s in statuses.items())
            raise AdminError(ErrorCode.UNAVAILABLE, f"no Overlord answered: {errors}")
        leaders = [a for a, s in documents.items() if s.get("role") == "leader"]
        chosen = leaders[0] if leaders else next(iter(documents))
        status = dict(documents[chosen])
        status["answered_by"] = chosen
        status["overlords"] = [
            {
                "address": address,
                "overlord": s.get("overlord") if isinstance(s, dict) else None,
                "role": s.get("role") if isinstance(s, dict) else "unreachable",
                "error": None if isinstance(s, dict) else str(s),
            }
            for address, s in statuses.items()
        ]
        return status

    def _leader_first(self, timeout: float) -> list[str]:
        leader = self.leader(timeout)
        return ([leader] if leader else []) + [a for a in self.overlords if a != leader]

    def admin(self, action: str, params: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        """Send an ``AdminRequest`` to the leader (then the others); returns its result."""
        return self._admin(action, params or {}, self._leader_first(min(timeout, 2.0)), timeout)

    def add_shard(self, timeout: float = 10.0) -> Any:
        """Ask the Overlord leader to add a shard (from spare nodes) and rebalance."""
        return self.admin("add_shard", {}, timeout)

    def remove_shard(self, shard_id: int, timeout: float = 10.0) -> Any:
        """Ask the Overlord leader to drain and remove shard ``shard_id``."""
        if isinstance(shard_id, bool) or not isinstance(shard_id, int):
            raise BadArgumentError(ErrorCode.BAD_ARGUMENT, f"shard_id must be an int, got {shard_id!r}")
        return self.admin("remove_shard", {"shard_id": shard_id}, timeout)


class Pipeline(_Commands):
    """Queued commands sent together, many in flight at once; ``execute()`` returns their results.

    Each queueing method returns the pipeline (so calls chain). Results come back in order; with
    ``raise_on_error`` (the default) the first error is raised after every command completed,
    otherwise errors stand in the result list as exception instances. Commands of one pipeline
    are independent: they are not a transaction.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[_Call] = []
        self.results: list[Any] | None = None

    def _call(self, call: _Call) -> Pipeline:
        self.calls.append(call)
        return self

    def _shard_of(self, key: bytes) -> int | None:
        return self.client._shard_of(key)

    def _frame_limit(self) -> int:
        return self.client._frame_limit()

    def __len__(self) -> int:
        return len(self.calls)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        calls, self.calls = self.calls, []
        if not calls:
            self.results = []
            return []
        results = self.client._run_pipeline(calls)
        self.results = results
        if raise_on_error:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and self.calls:
            self.execute()


def _now_ms() -> float:
    """History timestamps: one monotonic clock for every client of this process."""
    return time.monotonic() * 1000.0
