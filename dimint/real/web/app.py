"""The dashboard people keep open: a live cluster view, an event log, a test client, admin actions.

Theory of operation
-------------------
The Flask app talks to the cluster only through ``dimint.real.client.Client``, exactly as any
program would: the cluster map and every Overlord's status document come from ``AdminRequest``
``status``, commands go through the smart client's routing, and admin actions are the same
``add_shard``/``remove_shard`` requests the CLI sends. Nothing here knows a node's socket.

The browser polls ``/api/status`` (every two seconds) and renders it; the server adds what a single
status document cannot show: operations per second (from the difference of two samples of each
node's served-operations counter), replication lag (the master's log position minus each slave's)
and each shard's share of the hash space (exact ranges for the ring, a dense sample of hashes for
the other placements, with moves already switched in a rebalance taken into account).

Admin actions change the cluster, so they take two steps: the first request returns what would
happen and a single-use confirmation token (valid 60 seconds); only a second request carrying that
token acts. Every input is validated before anything is sent: command names against the command
table, arguments against their kinds (integers parsed, sizes bounded), consistency against
``strong``/``weak``; a bad request gets a 400 with the reason, never a stack trace.

``--run DIR`` opens a simulation run directory instead (``summary.json``, ``history.jsonl``): a
timeline of client throughput with faults, failovers and migrations drawn over it.

Safety: it binds to 127.0.0.1 unless told otherwise, is served by waitress (never Flask's debug
server), and sets no cookies; it is a local tool, not a multi-user service.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, render_template, request

from dimint.core.commands import COMMANDS, CONSISTENCIES
from dimint.core.errors import CommandError, DimintError
from dimint.core.protocol import validate_command

MAX_ARGS = 64
MAX_ARG_BYTES = 1 << 20
CONFIRM_TTL_S = 60.0
# 16,384 evenly spaced hashes, one in the middle of each 2**50-wide slice of the hash space.
_SAMPLE_HASHES = (np.arange(1 << 14, dtype=np.uint64) << np.uint64(50)) + np.uint64(1 << 49)


class BadInput(ValueError):
    """A request the dashboard refuses before contacting the cluster (answered with HTTP 400)."""


def display(value: Any) -> Any:
    """Plain JSON for a store value: bytes as text (undecodable bytes escaped), containers recursed."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(display(k)): display(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [display(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return value


def parse_command(payload: Any) -> tuple[str, tuple[Any, ...], str]:
    """Validate a test-client request ``{"command", "args": [str...], "consistency"}``.

    Form fields arrive as strings; arguments whose kind is an integer are parsed here, an empty
    optional integer or condition means "absent". The command table then checks the whole call.
    """
    if not isinstance(payload, dict):
        raise BadInput("the request body must be a JSON object")
    unknown = sorted(set(payload) - {"command", "args", "consistency"})
    if unknown:
        raise BadInput(f"unknown field(s): {', '.join(unknown)}")
    command = payload.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise BadInput(f"unknown command {command!r}; known: {', '.join(sorted(COMMANDS))}")
    raw = payload.get("args", [])
    if not isinstance(raw, list) or len(raw) > MAX_ARGS:
        raise BadInput(f"args must be a list of at most {MAX_ARGS} strings")
    consistency = payload.get("consistency", "strong")
    if consistency not in CONSISTENCIES:
        raise BadInput("consistency must be 'strong' or 'weak'")
    spec = COMMANDS[command]
    args: list[Any] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            raise BadInput(f"argument {index} must be a string, got {type(item).__name__}")
        if len(item.encode("utf-8")) > MAX_ARG_BYTES:
            raise BadInput(f"argument {index} is larger than {MAX_ARG_BYTES} bytes")
        kind = spec.args[index] if index < len(spec.args) else ""
        if kind in ("int", "opt_int"):
            if kind == "opt_int" and item.strip() == "":
                args.append(None)
                continue
            try:
                args.append(int(item.strip()))
            except ValueError:
                raise BadInput(f"argument {index} of {command!r} must be an integer, got {item!r}") from None
        elif kind == "cond":
            args.append(item.strip().lower() or None)
        else:
            args.append(item)
    # Trailing absent optionals need not be sent at all.
    while args and args[-1] is None and len(args) > 2 and command == "set":
        args.pop()
    try:
        validate_command(command, args)
    except CommandError as exc:
        raise BadInput(exc.reason) from None
    if COMMANDS[command].is_write and consistency == "weak":
        raise BadInput("weak consistency applies to reads only")
    return command, tuple(args), consistency


def hash_shares(cluster_map: Any) -> dict[int, dict[str, Any]]:
    """Each shard's share of the hash space (and its number of ranges, for the ring)."""
    shares: dict[int, dict[str, Any]] = {}
    owners = cluster_map.owners_of_hashes(_SAMPLE_HASHES)
    ids, counts = np.unique(owners, return_counts=True)
    sampled = {int(i): int(c) / len(_SAMPLE_HASHES) for i, c in zip(ids, counts, strict=True)}
    for shard_id in sorted(cluster_map.shards):
        ranges = (
            cluster_map.placement.ranges_of(shard_id) if shard_id in cluster_map.placement.shard_ids else ()
        )
        exact = ranges is not None and cluster_map.rebalance is None
        share = sum(r.size for r in ranges) / 2**64 if exact and ranges else sampled.get(shard_id, 0.0)
        shares[shard_id] = {
            "share": round(share, 4),
            "ranges": len(ranges) if ranges is not None else None,
            "exact": bool(exact),
        }
    return shares


class Dashboard:
    """State the web app keeps between requests: the client, counters for rates, pending confirmations."""

    def __init__(
        self, client: Any | None, run_dir: Path | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.client = client
        self.run_dir = run_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}
        self._confirmations: dict[str, tuple[float, str, dict[str, Any]]] = {}

    # ---------------------------------------------------------------- live cluster

    def status(self) -> dict[str, Any]:
        if self.client is None:
            raise BadInput("this dashboard was started without --overlords")
        status = self.client.cluster_status()
        now = self._clock()
        nodes = status.get("nodes", {})
        with self._lock:
            for node_id, node in nodes.items():
                ops = int(node.get("ops") or 0)
                previous = self._ops.get(node_id)
                if previous is not None and now > previous[0] and ops >= previous[1]:
                    self._rates[node_id] = (ops - previous[1]) / (now - previous[0])
                self._ops[node_id] = (now, ops)
                node["ops_per_s"] = round(self._rates.get(node_id, 0.0), 1)
        for shard in status.get("shards", []):
            master = nodes.get(shard.get("master") or "", {})
            head = master.get("applied_seq")
            shard["keys"] = master.get("keys")
            shard["bytes"] = master.get("bytes")
            shard["ops_per_s"] = round(
                sum(nodes.get(m, {}).get("ops_per_s", 0.0) for m in _members(shard)), 1
            )
            shard["lag"] = {
                slave: (head - nodes[slave]["applied_seq"])
                if head is not None and slave in nodes and nodes[slave].get("applied_seq") is not None
                else None
                for slave in shard.get("slaves", [])
            }
        try:
            shares = hash_shares(self.client.cluster_map())
        except Exception as exc:  # the map is advisory here; the rest of the view still helps
            shares = {}
            status["placement_error"] = str(exc)
        for shard in status.get("shards", []):
            shard["placement"] = shares.get(shard["shard_id"])
        status["ops_per_s"] = round(sum(s.get("ops_per_s", 0.0) for s in status.get("shards", [])), 1)
        return display(status)

    def command(self, payload: Any) -> dict[str, Any]:
        if self.client is None:
            raise BadInput("this dashboard was started without --overlords")
        command, args, consistency = parse_command(payload)
        started = time.perf_counter()
        try:
            value = self.client.execute_command(command, *args, consistency=consistency)
        except DimintError as exc:
            code = getattr(exc, "code", None)
            return {
                "ok": False,
                "error": str(code.value if hasattr(code, "value") else code or type(exc).__name__),
                "reason": getattr(exc, "reason", None) or str(exc),
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        return {"ok": True, "value": display(value), "ms": round((time.perf_counter() - started) * 1000, 1)}

    # ---------------------------------------------------------------- admin, in two steps

    def admin(self, payload: Any) -> dict[str, Any]:
        if self.client is None:
            raise BadInput("this dashboard was started without --overlords")
        if not isinstance(payload, dict) or set(payload) - {"action", "shard_id", "confirm"}:
            raise BadInput("admin requests are {action, shard_id?, confirm?}")
        action = payload.get("action")
        token = payload.get("confirm")
        now = self._clock()
        with self._lock:
            for old in [t for t, (at, _, _) in self._confirmations.items() if now - at > CONFIRM_TTL_S]:
                del self._confirmations[old]
            if token is not None:
                entry = self._confirmations.pop(token, None) if isinstance(token, str) else None
                if entry is None:
                    raise BadInput("unknown or expired confirmation; ask again")
                action, params = entry[1], entry[2]
            else:
                params = self._admin_params(action, payload)
                token = secrets.token_urlsafe(16)
                self._confirmations[token] = (now, action, params)
                what = (
                    "start a new shard from spare processes and move its share of the keys to it"
                    if action == "add_shard"
                    else f"drain shard {params['shard_id']}: move every key it owns to the other shards"
                )
                return {"confirm": token, "action": action, "params": params, "message": f"This will {what}."}
        try:
            if action == "add_shard":
                result = self.client.add_shard()
            else:
                result = self.client.remove_shard(params["shard_id"])
        except DimintError as exc:
            return {"ok": False, "error": str(getattr(exc, "code", type(exc).__name__)), "reason": str(exc)}
        return {"ok": True, "result": display(result)}

    @staticmethod
    def _admin_params(action: Any, payload: dict[str, Any]) -> dict[str, Any]:
        if action == "add_shard":
            if "shard_id" in payload:
                raise BadInput("add_shard takes no shard_id")
            return {}
        if action == "remove_shard":
            shard_id = payload.get("shard_id")
            if isinstance(shard_id, str) and shard_id.strip().isdigit():
                shard_id = int(shard_id.strip())
            if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
                raise BadInput("remove_shard needs a shard_id (a non-negative integer)")
            return {"shard_id": shard_id}
        raise BadInput(f"unknown admin action {action!r}; known: add_shard, remove_shard")

    # ---------------------------------------------------------------- simulation runs

    def run_summary(self) -> dict[str, Any]:
        if self.run_dir is None:
            raise BadInput("this dashboard was started without --run")
        path = self.run_dir / "summary.json"
        if not path.is_file():
            raise BadInput(f"{path} does not exist: is {self.run_dir} a 'dimint sim run' output directory?")
        return json.loads(path.read_text())

    def run_timeline_png(self) -> bytes:
        from dimint.real.web.timeline import timeline_png

        assert self.run_dir is not None
        return timeline_png(self.run_dir, self.run_summary())


def _members(shard: dict[str, Any]) -> list[str]:
    return ([shard["master"]] if shard.get("master") else []) + list(shard.get("slaves", []))


def create_app(
    overlords: list[str] | None = None,
    run_dir: Path | None = None,
    *,
    client: Any | None = None,
    client_timeout_s: float = 3.0,
) -> Flask:
    """The Flask app. ``client`` overrides the one built from ``overlords`` (tests share theirs)."""
    if client is None and overlords:
        from dimint.real.client import Client

        client = Client(overlords=overlords, timeout=client_timeout_s)
    dashboard = Dashboard(client, run_dir)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_ARGS * MAX_ARG_BYTES // 8, JSON_SORT_KEYS=False)
    app.extensions["dimint"] = dashboard

    def body() -> Any:
        data = request.get_json(silent=True)
        if data is None:
            raise BadInput("send a JSON body with Content-Type: application/json")
        return data

    @app.errorhandler(BadInput)
    def bad_input(exc: BadInput) -> tuple[Response, int]:
        return jsonify({"ok": False, "error": "BAD_INPUT", "reason": str(exc)}), 400

    @app.errorhandler(413)
    def too_large(_exc: Any) -> tuple[Response, int]:
        return jsonify({"ok": False, "error": "BAD_INPUT", "reason": "request too large"}), 413

    @app.errorhandler(DimintError)
    def cluster_error(exc: DimintError) -> tuple[Response, int]:
        return jsonify({"ok": False, "error": type(exc).__name__, "reason": str(exc)}), 503

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index() -> Any:
        if dashboard.client is None and dashboard.run_dir is not None:
            return run_page()
        return render_template(
            "index.html",
            overlords=list(getattr(dashboard.client, "overlords", []) or []),
            commands={
                name: {"args": list(spec.args), "write": spec.is_write} for name, spec in COMMANDS.items()
            },
        )

    @app.get("/api/status")
    def api_status() -> Any:
        return jsonify(dashboard.status())

    @app.post("/api/command")
    def api_command() -> Any:
        return jsonify(dashboard.command(body()))

    @app.post("/api/admin")
    def api_admin() -> Any:
        return jsonify(dashboard.admin(body()))

    @app.get("/run")
    def run_page() -> Any:
        summary = dashboard.run_summary()
        return render_template("run.html", summary=summary, run_dir=str(dashboard.run_dir))

    @app.get("/run/summary.json")
    def run_summary() -> Any:
        return jsonify(dashboard.run_summary())

    @app.get("/run/timeline.png")
    def run_timeline() -> Any:
        return Response(dashboard.run_timeline_png(), mimetype="image/png")

    return app


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8080, threads: int = 8) -> None:
    """Serve with waitress (a production WSGI server): Flask's debug server is never used."""
    from waitress import serve as waitress_serve

    waitress_serve(app, host=host, port=port, threads=threads, ident="dimint")


__all__ = ["BadInput", "Dashboard", "create_app", "display", "hash_shares", "parse_command", "serve"]
