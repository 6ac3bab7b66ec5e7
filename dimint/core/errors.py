"""The one exception tree of DiMint, and the error codes that travel on the wire.

Theory of operation: three kinds of failure must never be confused.

* ``InvariantViolation`` is a bug in DiMint itself: a state machine found its own state impossible.
  It is never caught to "keep going"; tests and simulations fail loudly on it.
* ``LocalProtocolError`` is misuse of an API by the caller in this process (a bad argument to a
  constructor, a command issued in the wrong role).
* ``RemoteProtocolError`` is a bad peer: bytes that do not decode, a message that makes no sense.
  A process answers it with an error reply and changes nothing; it never dies of it.

``CommandError`` carries an ``ErrorCode``: the store and the state machines raise it, the shells turn
it into an ``ErrorReply`` with the same code and reason, so a client sees exactly why.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Machine-readable reasons. Strings, so they stay readable in traces and on the wire."""

    # Bad input from a client: answered, nothing changes.
    MALFORMED = "MALFORMED"  # bytes that are not a message
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    BAD_ARGUMENT = "BAD_ARGUMENT"  # wrong arity or argument type
    WRONG_TYPE = "WRONG_TYPE"  # command does not apply to the key's value type
    NOT_INTEGER = "NOT_INTEGER"  # incr/decr of a value that is not an integer
    OVERFLOW = "OVERFLOW"  # integer result outside signed 64 bits
    KEY_TOO_LARGE = "KEY_TOO_LARGE"
    VALUE_TOO_LARGE = "VALUE_TOO_LARGE"
    NO_SUCH_KEY = "NO_SUCH_KEY"
    BAD_CONFIG = "BAD_CONFIG"
    # Routing and fencing: the client refreshes its map and retries.
    MOVED = "MOVED"  # this node does not own the key under the current map
    NOT_MASTER = "NOT_MASTER"  # a write or strong read reached a slave
    STALE_EPOCH = "STALE_EPOCH"  # a message from an older map or shard epoch
    FENCED = "FENCED"  # master lost or suspended its coordination session
    FROZEN = "FROZEN"  # range briefly frozen for a migration switch; retry soon
    TOO_STALE = "TOO_STALE"  # weak read refused: slave lag above max_staleness_ms
    NOT_ENOUGH_REPLICAS = "NOT_ENOUGH_REPLICAS"  # fewer in-sync slaves than required
    TIMEOUT = "TIMEOUT"
    UNAVAILABLE = "UNAVAILABLE"
    # At-most-once (dimint.core.dedup): a copy of a write the client has finished with is refused
    # unexecuted; a copy of an executed write whose result was too large to keep is not repeated.
    STALE_REQUEST = "STALE_REQUEST"
    RESULT_NOT_KEPT = "RESULT_NOT_KEPT"
    INTERNAL = "INTERNAL"


#: Codes after which a client should refresh its cluster map and retry.
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.MOVED,
        ErrorCode.NOT_MASTER,
        ErrorCode.STALE_EPOCH,
        ErrorCode.FENCED,
        ErrorCode.FROZEN,
        ErrorCode.TOO_STALE,
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.TIMEOUT,
        ErrorCode.UNAVAILABLE,
    }
)


class DimintError(Exception):
    """Root of every exception DiMint raises on purpose."""


class InvariantViolation(DimintError):
    """A state machine's own invariant does not hold: a bug in DiMint, never the caller's fault."""


class LocalProtocolError(DimintError):
    """The caller in this process used an API wrongly."""


class RemoteProtocolError(DimintError):
    """A peer sent something that is not valid: answer with an error, change nothing."""


class ConfigError(LocalProtocolError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


class CommandError(DimintError):
    """A command was refused with a wire-visible code and a human-readable reason."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode to a valid message: the only exception the codec raises.

    ``request_id`` is set when the frame was request-shaped enough to recover one, so the shell can
    still send an ``ErrorReply`` that the client can match to its request.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode = ErrorCode.MALFORMED,
        request_id: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.request_id = request_id
