"""ZeroMQ transport: the real twin of ``dimint.sim.network`` (ROUTER in, one DEALER per peer out).

Theory of operation
-------------------
Each process binds one ROUTER socket at its bind address. Everything addressed *to* the process
arrives there as ``[identity, payload]``: the identity is the sender's routing id, which for a
DiMint process is its advertised address (``"tcp://10.0.0.5:7001"``) and for a client a unique
``"client-..."`` name. That identity becomes ``Receive.source``, so a machine can answer with
``Send(source, ...)`` (peer to peer) or ``Reply(source, ...)`` (back to a client) and the slave's
"is this from my master?" check compares the source with the address in the cluster map.

Outgoing ``Send(destination, msg)`` goes through a DEALER connected to ``destination`` whose routing
id is our own address. Keeping one DEALER per destination (rather than routing through the ROUTER)
lets zmq queue, reconnect and apply high-water marks per peer, and makes every peer see us under
the one name it knows us by. ``Reply(destination, msg)`` goes back through the ROUTER to the
identity that asked, so a client that is not listening anywhere still gets its answer; when that
identity is unknown (it disconnected, or the reply is really for a process) and the destination
looks like a ``tcp://`` address, the DEALER path is used instead.

Delivery is best effort, like the simulated network: the protocol handles loss with timers and
epochs. So the transport never blocks the loop: every send is non-blocking, and a full queue
(high-water mark), an unknown identity or an unreachable destination drops the message and counts
it. ``ROUTER_MANDATORY`` makes an unroutable reply an error we can see and count instead of a
silent drop; ``ROUTER_HANDOVER`` lets a restarted peer that reconnects under its old address take
its identity over at once; ``LINGER 0`` makes shutdown immediate; ``MAXMSGSIZE`` makes zmq
disconnect a peer that sends a frame larger than we would ever decode.

Bad input never raises out of the loop (invariant 7). A frame that is not exactly one payload
after the identity, bytes that do not decode, wrong field types, unknown commands: the codec turns
each into ``DecodeError``; when the frame was request-shaped (a request tag and an integer request
id) the sender gets an ``ErrorReply`` with that id, the code and the reason, so a client is never
left waiting; everything else is counted in ``stats`` and dropped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import zmq

from dimint.core.effects import Receive
from dimint.core.errors import DecodeError, ErrorCode, LocalProtocolError
from dimint.core.protocol import (
    MAX_FRAME_BYTES,
    AdminRequest,
    ErrorReply,
    GetMap,
    Message,
    Request,
    Response,
    decode,
    encode,
)

__all__ = ["Transport", "TransportOptions", "identity_bytes", "identity_text", "normalise_address"]

logger = logging.getLogger(__name__)

# Plain ints: pyzmq's enum members cost an enum construction per ``&`` on the receive path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def normalise_address(address: str) -> str:
    """``"host:port"`` or ``"tcp://host:port"`` -> ``"tcp://host:port"``; raises ``ValueError`` if neither."""
    text = address.strip()
    if not text.startswith("tcp://"):
        text = "tcp://" + text
    host, sep, port = text[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port or tcp://host:port address: {address!r}")
    return text


def identity_bytes(name: str) -> bytes:
    """A routing id on the wire. ``surrogateescape`` round-trips ids that are not UTF-8."""
    return name.encode("utf-8", "surrogateescape")


def identity_text(raw: bytes) -> str:
    """The inverse of ``identity_bytes``: any routing id, even zmq's binary auto ids, becomes a str."""
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Socket knobs. Messages beyond the high-water marks are dropped, never waited for."""

    max_message_bytes: int = MAX_FRAME_BYTES
    send_hwm: int = 10_000
    receive_hwm: int = 10_000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 1_000
    #: Most messages taken from one socket per call of ``receive``: keeps a flood on one socket
    #: from starving timers and coordination events.
    batch: int = 256

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "send_hwm", "receive_hwm", "reconnect_ivl_ms", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LocalProtocolError(f"TransportOptions.{name} must be a positive int, got {value!r}")


class Transport:
    """One process's sockets. Not thread-safe: only the loop thread may call it after construction.

    ``identity`` is how peers know us (our advertised address, or a client name). ``bind`` is the
    ROUTER's endpoint (``"tcp://127.0.0.1:7001"``, ``"tcp://0.0.0.0:7001"``, or ``None`` for a
    client, which receives only on its DEALERs). ``bound_address`` is the endpoint zmq actually
    bound (useful with port 0).
    """

    def __init__(
        self,
        identity: str,
        bind: str | None,
        options: TransportOptions | None = None,
        context: zmq.Context | None = None,
        *,
        trusted: frozenset[type[Message]] = frozenset(),
    ) -> None:
        self.identity = identity
        # Outbound types encoded without the codec's full check (``encode(check=False)``): messages
        # built only from values validated already, on a measured hot path. A value msgpack cannot
        # pack is still refused and counted; a peer's decoder validates everything it receives.
        self._trusted = trusted
        self.options = options or TransportOptions()
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.stats: Counter[str] = Counter()
        self._poller = zmq.Poller()
        self._dealers: dict[str, zmq.Socket] = {}
        self._dealer_names: dict[zmq.Socket, str] = {}
        self._bad_destinations: set[str] = set()
        self.router: zmq.Socket | None = None
        self.bound_address: str | None = None
        if bind is not None:
            router = self.context.socket(zmq.ROUTER)
            self._configure(router)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            try:
                router.bind(bind)
            except zmq.ZMQError:
                router.close(linger=0)
                self._term()
                raise
            self.router = router
            self.bound_address = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._poller.register(router, zmq.POLLIN)

    def _configure(self, sock: zmq.Socket) -> None:
        options = self.options
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, options.send_hwm)
        sock.setsockopt(zmq.RCVHWM, options.receive_hwm)
        # A little headroom over the codec's limit: zmq counts the frame, the codec the payload.
        sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes + 1024)
        sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every socket at once (LINGER 0: queued messages are dropped, as a crash would)."""
        for sock in list(self._dealers.values()):
            sock.close(linger=0)
        self._dealers.clear()
        self._dealer_names.clear()
        if self.router is not None:
            self.router.close(linger=0)
            self.router = None
        self._term()

    def _term(self) -> None:
        if self._own_context:
            with contextlib.suppress(zmq.ZMQError):
                self.context.term()

    def register_fd(self, fd: int) -> None:
        """Have ``wait`` also wake when ``fd`` is readable (the host's wake-up pipe)."""
        self._poller.register(fd, zmq.POLLIN)

    def disconnect(self, destination: str) -> None:
        """Drop the DEALER to ``destination`` and whatever it still queues (a peer known dead)."""
        sock = self._dealers.pop(destination, None)
        if sock is not None:
            self._dealer_names.pop(sock, None)
            self._poller.unregister(sock)
            sock.close(linger=0)

    # ------------------------------------------------------------ receiving

    def wait(self, timeout_ms: int | None) -> list[Any]:
        """Block until a socket or a registered fd is readable, or ``timeout_ms`` passes.

        Returns the readable sockets and fds (opaque; hand them to ``receive``).
        """
        return [item for item, _ in self._poller.poll(timeout_ms)]

    def receive(self, ready: list[Any]) -> list[Receive]:
        """Read up to ``options.batch`` frames from each ready socket; decoded inputs in arrival order."""
        inputs: list[Receive] = []
        for item in ready:
            if item is self.router:
                self._drain_router(inputs)
            elif item in self._dealer_names:
                self._drain_dealer(item, inputs)
        return inputs

    def _drain_router(self, inputs: list[Receive]) -> None:
        router = self.router
        assert router is not None
        for count in range(self.options.batch):
            if count == 1 and not router.get(_EVENTS) & _POLLIN:
                return  # cheaper than the raised zmq.Again when, as usual, one frame was waiting
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                self.stats["receive_error"] += 1
                logger.warning("ROUTER receive failed: %s", exc)
                return
            self.stats["received"] += 1
            if len(frames) < 2:
                self.stats["malformed_frames"] += 1  # an identity and nothing else: nobody to answer
                continue
            source = identity_text(frames[0])
            message = self._decode_frames(frames[1:], source, via_router=True)
            if message is not None:
                inputs.append(Receive(source, message))

    def _drain_dealer(self, sock: zmq.Socket, inputs: list[Receive]) -> None:
        source = self._dealer_names[sock]
        for count in range(self.options.batch):
            if count == 1 and not sock.get(_EVENTS) & _POLLIN:
                return  # see _drain_router
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                self.stats["receive_error"] += 1
                logger.warning("DEALER receive from %s failed: %s", source, exc)
                return
            self.stats["received"] += 1
            if not frames:
                self.stats["malformed_frames"] += 1
                continue
            message = self._decode_frames(frames, source, via_router=False)
            if message is not None:
                inputs.append(Receive(source, message))

    def _decode_frames(self, payload: list[bytes], source: str, via_router: bool) -> Message | None:
        """One payload frame -> a message; anything else is answered (if request-shaped) or dropped."""
        extra_frames = len(payload) != 1
        try:
            message = decode(payload[0], max_bytes=self.options.max_message_bytes)
        except DecodeError as exc:
            self.stats["malformed"] += 1
            if exc.request_id is not None:
                reason = exc.reason
                if extra_frames:
                    reason = f"expected 1 payload frame, got {len(payload)}; and the first: {reason}"
                self._answer_garbage(source, exc.request_id, exc.code, reason, via_router)
            else:
                self.stats["malformed_dropped"] += 1
            return None
        if extra_frames:
            self.stats["malformed"] += 1
            request_id = getattr(message, "request_id", None)
            if _is_request(message) and isinstance(request_id, int):
                self._answer_garbage(
                    source,
                    request_id,
                    ErrorCode.MALFORMED,
                    f"expected 1 payload frame, got {len(payload)}",
                    via_router,
                )
            else:
                self.stats["malformed_dropped"] += 1
            return None
        return message

    def _answer_garbage(
        self, source: str, request_id: int, code: ErrorCode, reason: str, via_router: bool
    ) -> None:
        self.stats["malformed_answered"] += 1
        reply = ErrorReply(request_id, code, reason[:1000])
        if via_router:
            self.reply(source, reply)
        else:
            self.send(source, reply)

    # ------------------------------------------------------------ sending

    def send(self, destination: str, message: Message) -> bool:
        """Send through our DEALER to ``destination``; False if dropped (counted, never raised)."""
        frame = self._encode(message)
        if frame is None:
            return False
        return self._send_frame(destination, frame)

    def reply(self, destination: str, message: Message) -> bool:
        """Answer ``destination`` through the ROUTER (its identity), else via a DEALER if it is an address."""
        frame = self._encode(message)
        if frame is None and type(message) is Response:
            # A result larger than a frame may be (a big mget, hgetall or lrange): say so, rather
            # than leave the client waiting out its timeout for an answer that cannot come.
            limit = self.options.max_message_bytes
            self.stats["reply_too_large"] += 1
            frame = self._encode(
                ErrorReply(
                    message.request_id,
                    ErrorCode.VALUE_TOO_LARGE,
                    f"the reply would be larger than the {limit}-byte frame limit; ask for less at a time",
                )
            )
        if frame is None:
            return False
        if self.router is not None:
            try:
                self.router.send_multipart([identity_bytes(destination), frame], zmq.NOBLOCK)
                self.stats["sent"] += 1
                return True
            except zmq.Again:
                self.stats["dropped_full"] += 1
                return False
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    self.stats["send_error"] += 1
                    logger.warning("reply to %s failed: %s", destination, exc)
                    return False
        if destination.startswith("tcp://"):
            return self._send_frame(destination, frame)
        self.stats["dropped_unroutable"] += 1
        return False

    def send_if_encodable(self, destination: str, message: Message) -> bool:
        """Like ``send``, but a message the codec refuses is neither sent nor counted: returns False
        so the caller can send it another way (the host's coalesced Replicates, as their parts)."""
        try:
            frame = encode(
                message,
                check=type(message) not in self._trusted,
                max_bytes=self.options.max_message_bytes,
            )
        except LocalProtocolError:
            return False
        self._send_frame(destination, frame)
        return True

    def send_raw(self, destination: str, frames: list[bytes]) -> bool:
        """Send arbitrary frames to ``destination`` (tests of the decoder's trust boundary)."""
        sock = self._dealer(destination)
        if sock is None:
            return False
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            self.stats["dropped_full"] += 1
            return False

    def _encode(self, message: Message) -> bytes | None:
        try:
            return encode(
                message, check=type(message) not in self._trusted, max_bytes=self.options.max_message_bytes
            )
        except LocalProtocolError as exc:
            # The machine produced a message the codec refuses: a bug, but one reply's worth of it.
            self.stats["encode_error"] += 1
            logger.error("cannot encode %s: %s", type(message).__name__, exc)
            return None

    def _send_frame(self, destination: str, frame: bytes) -> bool:
        sock = self._dealer(destination)
        if sock is None:
            return False
        try:
            sock.send(frame, zmq.NOBLOCK)
            self.stats["sent"] += 1
            return True
        except zmq.Again:
            self.stats["dropped_full"] += 1
            return False
        except zmq.ZMQError as exc:
            self.stats["send_error"] += 1
            logger.warning("send to %s failed: %s", destination, exc)
            return False

    def _dealer(self, destination: str) -> zmq.Socket | None:
        sock = self._dealers.get(destination)
        if sock is not None:
            return sock
        if not destination.startswith("tcp://"):
            self.stats["dropped_unroutable"] += 1
            if destination not in self._bad_destinations:
                self._bad_destinations.add(destination)
                logger.warning("cannot send to %r: not a tcp:// address", destination)
            return None
        sock = self.context.socket(zmq.DEALER)
        self._configure(sock)
        sock.setsockopt(zmq.ROUTING_ID, identity_bytes(self.identity))
        try:
            sock.connect(destination)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self.stats["dropped_unroutable"] += 1
            if destination not in self._bad_destinations:
                self._bad_destinations.add(destination)
                logger.warning("cannot connect to %r: %s", destination, exc)
            return None
        self._dealers[destination] = sock
        self._dealer_names[sock] = destination
        self._poller.register(sock, zmq.POLLIN)
        return sock

    @property
    def peers(self) -> list[str]:
        """Destinations we hold a DEALER for."""
        return sorted(self._dealers)


#: Messages a sender waits for an answer to (those registered with ``request=True``).
_REQUEST_TYPES = (Request, GetMap, AdminRequest)


def _is_request(message: Message) -> bool:
    return isinstance(message, _REQUEST_TYPES)
