"""Configuration of ``dimint node`` and ``dimint overlord`` processes: file, environment, flags.

Why this shape: an operator deploying on several machines wants one file per cluster (shared
keys at the top, ``[node]`` and ``[overlord]`` tables for the rest), environment variables for what
differs per machine (``DIMINT_ADVERTISE_HOST``), and flags for one-off overrides. Precedence is
flags > environment > file > defaults, key by key.

Every value is validated where it came from, and errors name the key and its source
(``environment variable DIMINT_PORT: port must be a number, got 'abc'``): numbers must be numbers
(a TOML string ``"100"`` is refused, not coerced; only environment and ``-o key=value`` strings are
parsed, since they cannot be anything else), an unknown key is an error, ports are in range, the
replication mode is one of the known ones. A key that belongs to the other kind of process is
ignored, so one file and one environment can serve both.

The core machines' knobs are not listed twice: every field of ``NodeConfig`` (and of its
``StoreLimits``, flattened, and its ``DedupConfig``, flattened with a ``dedup_`` prefix:
``dedup_retention_ms``) and of ``OverlordConfig`` is a key, typed by its annotation, so a knob
added to the core is configurable at once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from dimint.core.dedup import DedupConfig
from dimint.core.errors import ConfigError
from dimint.core.node import NodeConfig
from dimint.core.overlord import OverlordConfig
from dimint.core.placement import KINDS as PLACEMENT_KINDS
from dimint.core.protocol import MAX_FRAME_BYTES
from dimint.core.store import StoreLimits
from dimint.real.transport import TransportOptions, normalise_address

__all__ = [
    "ENV_PREFIX",
    "NodeProcessConfig",
    "OverlordProcessConfig",
    "load_node_config",
    "load_overlord_config",
]

ENV_PREFIX = "DIMINT_"
#: DIMINT_* variables that are not configuration keys (read by the CLI itself).
_RESERVED_ENV = frozenset({"DIMINT_CONFIG", "DIMINT_STATE_FILE"})
LOG_LEVELS = ("debug", "info", "warning", "error")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class _Key:
    """One configuration key: its annotated type, default and which process kinds know it."""

    name: str
    annotation: Any
    default: Any
    kinds: frozenset[str]
    help: str = ""


class _Addresses:
    """The ZeroMQ endpoints a process binds and is reached at (bind and advertised may differ)."""

    __slots__ = ()
    bind_host: str
    port: int
    advertise_host: str
    advertise_port: int

    @property
    def bind_address(self) -> str:
        return f"tcp://{self.bind_host}:{self.port}"

    @property
    def address(self) -> str:
        return f"tcp://{self.advertise_host}:{self.advertise_port}"


@dataclass(frozen=True, slots=True)
class NodeProcessConfig(_Addresses):
    """Everything ``run_node`` needs. ``address`` is what peers and the map know us by."""

    node_id: str
    bind_host: str
    port: int
    advertise_host: str
    advertise_port: int
    zookeeper: str
    session_timeout_ms: int
    overlords: tuple[str, ...]
    node: NodeConfig
    transport: TransportOptions = field(default_factory=TransportOptions)
    stall_threshold_ms: int | None = None
    log_file: str | None = None
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class OverlordProcessConfig(_Addresses):
    """Everything ``run_overlord`` needs."""

    overlord_id: str
    bind_host: str
    port: int
    advertise_host: str
    advertise_port: int
    zookeeper: str
    session_timeout_ms: int
    overlord: OverlordConfig
    transport: TransportOptions = field(default_factory=TransportOptions)
    stall_threshold_ms: int | None = None
    log_file: str | None = None
    log_level: str = "info"


# --------------------------------------------------------------------------------------------
# The key table
# --------------------------------------------------------------------------------------------

_BOTH = frozenset({"node", "overlord"})
_NODE = frozenset({"node"})
_OVERLORD = frozenset({"overlord"})

_PROCESS_KEYS: list[_Key] = [
    _Key("id", str | None, None, _BOTH, "process id (default: derived from the advertised host:port)"),
    _Key("bind_host", str, "127.0.0.1", _BOTH, "interface the ROUTER socket binds (0.0.0.0: all)"),
    _Key("port", int, None, _BOTH, "TCP port to bind (node default 7100, overlord 7000)"),
    _Key("advertise_host", str | None, None, _BOTH, "host others reach us at (default: bind_host)"),
    _Key("advertise_port", int | None, None, _BOTH, "port others reach us at (default: port)"),
    _Key("zookeeper", str, "127.0.0.1:2181", _BOTH, "ZooKeeper connection string, optional /chroot"),
    _Key("session_timeout_ms", int, 4000, _BOTH, "ZooKeeper session timeout"),
    _Key("stall_threshold_ms", int | None, None, _BOTH, "loop stall that fences (0 off; default timeout/3)"),
    _Key("log_file", str | None, None, _BOTH, "JSON log file (default: stderr)"),
    _Key("log_level", str, "info", _BOTH, "debug, info, warning or error"),
    _Key("max_message_bytes", int, MAX_FRAME_BYTES, _BOTH, "largest frame accepted (zmq MAXMSGSIZE)"),
    _Key("send_hwm", int, 10_000, _BOTH, "zmq send high-water mark per peer"),
    _Key("receive_hwm", int, 10_000, _BOTH, "zmq receive high-water mark"),
    _Key("overlords", list[str], None, _NODE, "Overlord addresses (host:port), required"),
]


def _machine_keys(
    config_type: type, kinds: frozenset[str], skip: frozenset[str], prefix: str = ""
) -> list[_Key]:
    hints = typing.get_type_hints(config_type)
    keys = []
    for item in dataclasses.fields(config_type):
        if item.name in skip:
            continue
        default = item.default
        if default is dataclasses.MISSING and item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        keys.append(
            _Key(prefix + item.name, hints[item.name], default, kinds, f"{config_type.__name__}.{item.name}")
        )
    return keys


_NODE_MACHINE_KEYS = _machine_keys(NodeConfig, _NODE, frozenset({"store_limits", "dedup"}))
_STORE_KEYS = _machine_keys(StoreLimits, _NODE, frozenset())
_DEDUP_PREFIX = "dedup_"
_DEDUP_KEYS = _machine_keys(DedupConfig, _NODE, frozenset(), prefix=_DEDUP_PREFIX)
_OVERLORD_MACHINE_KEYS = _machine_keys(OverlordConfig, _OVERLORD, frozenset())

KEYS: dict[str, _Key] = {}
for _key in [*_PROCESS_KEYS, *_NODE_MACHINE_KEYS, *_STORE_KEYS, *_DEDUP_KEYS, *_OVERLORD_MACHINE_KEYS]:
    if _key.name in KEYS:  # a name shared by both kinds' machine configs: known to both
        _key = dataclasses.replace(_key, kinds=KEYS[_key.name].kinds | _key.kinds)
    KEYS[_key.name] = _key


def keys_for(kind: str) -> dict[str, _Key]:
    """The keys a ``node`` or ``overlord`` process understands."""
    return {name: key for name, key in KEYS.items() if kind in key.kinds}


# --------------------------------------------------------------------------------------------
# Typing values
# --------------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    if annotation in (int, float):
        return "a number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a table"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in annotation)
    return getattr(annotation, "__name__", repr(annotation))


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return f"{type(value).__name__} {value!r}"


def _refusal(name: str, annotation: Any, value: Any, error: msgspec.ValidationError) -> ConfigError:
    """msgspec's account of a bad value, naming the key (and the list item) as the operator wrote it."""
    at = str(error).partition(" - at `")[2]
    index = re.fullmatch(r"\$\[(\d+)\]", at.rstrip("`"))
    if index is not None and isinstance(value, list):
        item = int(index.group(1))
        return _refusal(f"{name}[{item}]", typing.get_args(annotation)[0], value[item], error)
    wanted = _type_name(annotation)
    if annotation is int or (
        typing.get_origin(annotation) in (typing.Union, types.UnionType)
        and typing.get_args(annotation)[0] is int
    ):
        wanted = wanted.replace("a number", "a number (an integer)", 1)
    return ConfigError(f"{name} must be {wanted}, got {_describe(value)}")


def _check_typed(name: str, annotation: Any, value: Any) -> Any:
    """A value from a typed source (TOML, JSON, a click option) must already have the right type
    (msgspec, strict: ``"7100"`` is not a port). A string is a comma-separated list where a list is
    expected, everywhere."""
    if typing.get_origin(annotation) is list and isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, tuple):
        value = list(value)
    try:
        return msgspec.convert(value, annotation, strict=True)
    except msgspec.ValidationError as error:
        raise _refusal(name, annotation, value, error) from None


_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _parse_text(name: str, annotation: Any, text: str) -> Any:
    """A value from an untyped source (environment, ``-o key=value``): parsed by the key's type
    (msgspec's lax conversion), after the spellings operators use that it does not know: ``yes``
    and ``off``, ``1_000``, ``none`` for an unset optional value, a JSON object for a table."""
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else ()
    )
    word = text.strip().lower()
    if type(None) in options and word in ("", "none", "null"):
        return None
    kinds = [a for a in options if a is not type(None)] or [annotation]
    value: Any = text
    if bool in kinds and word in _TRUE_WORDS | _FALSE_WORDS:
        value = word in _TRUE_WORDS
    elif int in kinds and re.fullmatch(r"[+-]?\d[\d_]*", text.strip()):
        value = int(text.strip().replace("_", ""))
    elif typing.get_origin(kinds[0]) is list:
        return _check_typed(name, annotation, text)
    elif typing.get_origin(kinds[0]) is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} must be a JSON object, got {text!r} ({exc.msg})") from None
        return _check_typed(name, annotation, value)
    try:
        return msgspec.convert(value, annotation, strict=False)
    except msgspec.ValidationError as error:
        wanted = _type_name(annotation)
        if int in kinds:
            wanted = wanted.replace("a number", "a number (an integer)", 1)
        raise ConfigError(f"{name} must be {wanted}, got {text!r}") from error


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (or, by extension, JSON) file into a dict; errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of keys at the top level")
    return data


def _file_values(kind: str, data: Mapping[str, Any], origin: str) -> dict[str, tuple[Any, str]]:
    """Top-level keys shared by both kinds, then this kind's own table; the other kind's is skipped."""
    other = "overlord" if kind == "node" else "node"
    values: dict[str, tuple[Any, str]] = {}
    tables: dict[str, Mapping[str, Any]] = {}
    for name, value in data.items():
        if name in ("node", "overlord") and isinstance(value, Mapping):
            tables[name] = value
            continue
        key = KEYS.get(name)
        if key is None:
            raise ConfigError(f"{origin}: unknown key {name!r}{_suggest(name)}")
        if kind in key.kinds:
            values[name] = (value, f"{origin}")
    for name, value in tables.get(kind, {}).items():
        key = KEYS.get(name)
        if key is None or kind not in key.kinds:
            raise ConfigError(f"{origin} [{kind}]: unknown key {name!r}{_suggest(name, kind)}")
        values[name] = (value, f"{origin} [{kind}]")
    for name in tables.get(other, {}):
        if name not in KEYS:
            raise ConfigError(f"{origin} [{other}]: unknown key {name!r}{_suggest(name)}")
    return values


def _env_values(kind: str, environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {}
    for variable, text in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable in _RESERVED_ENV:
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        key = KEYS.get(name)
        origin = f"environment variable {variable}"
        if key is None:
            raise ConfigError(f"{origin}: unknown key {name!r}{_suggest(name)}")
        if kind in key.kinds:
            try:
                values[name] = (_parse_text(name, key.annotation, text), origin)
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
    return values


def _flag_values(kind: str, flags: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """Typed flags (None means "not given") and ``-o key=value`` strings under the ``options`` flag."""
    known = keys_for(kind)
    values: dict[str, tuple[Any, str]] = {}
    for name, value in flags.items():
        if name == "options":
            for item in value or ():
                option_name, sep, text = str(item).partition("=")
                option_name = option_name.strip().replace("-", "_")
                origin = f"option -o {item}"
                if not sep:
                    raise ConfigError(f"{origin}: expected KEY=VALUE")
                if option_name not in known:
                    raise ConfigError(f"{origin}: unknown key {option_name!r}{_suggest(option_name, kind)}")
                try:
                    parsed = _parse_text(option_name, known[option_name].annotation, text)
                except ConfigError as exc:
                    raise ConfigError(f"{origin}: {exc}") from None
                values[option_name] = (parsed, origin)
            continue
        if value is None:
            continue
        if name not in known:
            raise ConfigError(f"flag --{name.replace('_', '-')}: unknown key {name!r}")
        values[name] = (value, f"flag --{name.replace('_', '-')}")
    return values


def _suggest(name: str, kind: str | None = None) -> str:
    import difflib

    candidates = keys_for(kind) if kind else KEYS
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(
    kind: str,
    file: str | Path | None,
    environ: Mapping[str, str] | None,
    flags: Mapping[str, Any] | None,
) -> dict[str, Any]:
    known = keys_for(kind)
    merged: dict[str, Any] = {name: key.default for name, key in known.items()}
    layers: list[dict[str, tuple[Any, str]]] = []
    if file is not None:
        layers.append(_file_values(kind, read_config_file(file), f"config file {file}"))
    layers.append(_env_values(kind, os.environ if environ is None else environ))
    layers.append(_flag_values(kind, flags or {}))
    for layer in layers:
        for name, (value, origin) in layer.items():
            try:
                merged[name] = _check_typed(name, known[name].annotation, value)
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
    return merged


# --------------------------------------------------------------------------------------------
# Building the process configurations
# --------------------------------------------------------------------------------------------


def _check_port(name: str, value: int | None, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if value is not None and not low <= value <= 65535:
        raise ConfigError(f"{name} must be a port number in {low}..65535, got {value}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _common(kind: str, merged: dict[str, Any]) -> dict[str, Any]:
    port = merged["port"] if merged["port"] is not None else (7100 if kind == "node" else 7000)
    _check_port("port", port, allow_zero=True)
    _check_port("advertise_port", merged["advertise_port"], allow_zero=False)
    bind_host = merged["bind_host"].strip()
    if not bind_host:
        raise ConfigError("bind_host must not be empty")
    advertise_host = (merged["advertise_host"] or "").strip() or bind_host
    if advertise_host in ("0.0.0.0", "*", "::", "[::]"):
        raise ConfigError(
            f"advertise_host is {advertise_host!r}, which nobody can connect to: set advertise_host to "
            "this machine's reachable name or IP when bind_host binds every interface"
        )
    advertise_port = merged["advertise_port"] or port
    if advertise_port == 0:
        raise ConfigError("with port 0 (any free port) set advertise_port, or pick a port")
    _positive("session_timeout_ms", merged["session_timeout_ms"])
    if merged["stall_threshold_ms"] is not None and merged["stall_threshold_ms"] < 0:
        raise ConfigError(
            f"stall_threshold_ms must be >= 0 (0 turns it off), got {merged['stall_threshold_ms']}"
        )
    level = merged["log_level"].lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {merged['log_level']!r}")
    zookeeper = merged["zookeeper"].strip()
    if not zookeeper:
        raise ConfigError("zookeeper must name at least one host:port")
    for part in zookeeper.split("/", 1)[0].split(","):
        host, sep, zk_port = part.strip().rpartition(":")
        if not sep or not host or not zk_port.isdigit() or not 0 < int(zk_port) < 65536:
            raise ConfigError(f"zookeeper must be host:port[,host:port...][/chroot], got {zookeeper!r}")
    for name in ("max_message_bytes", "send_hwm", "receive_hwm"):
        _positive(name, merged[name])
    identifier = merged["id"] or f"{kind}-{advertise_host}-{advertise_port}"
    if not _ID_PATTERN.match(identifier):
        raise ConfigError(
            f"id must be 1-128 letters, digits, '.', ':' or '-' (starting with a letter or digit), "
            f"got {identifier!r}"
        )
    return {
        "bind_host": bind_host,
        "port": port,
        "advertise_host": advertise_host,
        "advertise_port": advertise_port,
        "zookeeper": zookeeper,
        "session_timeout_ms": merged["session_timeout_ms"],
        "stall_threshold_ms": merged["stall_threshold_ms"],
        "log_file": merged["log_file"],
        "log_level": level,
        "transport": TransportOptions(
            max_message_bytes=merged["max_message_bytes"],
            send_hwm=merged["send_hwm"],
            receive_hwm=merged["receive_hwm"],
        ),
        "id": identifier,
    }


def _build(config_type: type, merged: Mapping[str, Any], names: list[str], **extra: Any) -> Any:
    try:
        return config_type(**{name: merged[name] for name in names}, **extra)
    except (ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(str(exc)) from None


def load_node_config(
    file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> NodeProcessConfig:
    """A validated node configuration from ``file``, ``environ`` (default ``os.environ``) and ``flags``."""
    merged = _merge("node", file, environ, flags)
    common = _common("node", merged)
    overlords = merged["overlords"]
    if not overlords:
        raise ConfigError("overlords is required: the addresses (host:port) of the Overlords")
    try:
        overlord_addresses = tuple(normalise_address(a) for a in overlords)
    except ValueError as exc:
        raise ConfigError(f"overlords: {exc}") from None
    limits = _build(StoreLimits, merged, [k.name for k in _STORE_KEYS])
    try:
        dedup = _build(
            DedupConfig,
            {k.name.removeprefix(_DEDUP_PREFIX): merged[k.name] for k in _DEDUP_KEYS},
            [k.name.removeprefix(_DEDUP_PREFIX) for k in _DEDUP_KEYS],
        )
    except ConfigError as exc:  # name the key as the operator writes it
        raise ConfigError(str(exc).replace("DedupConfig.", _DEDUP_PREFIX)) from None
    node = _build(NodeConfig, merged, [k.name for k in _NODE_MACHINE_KEYS], store_limits=limits, dedup=dedup)
    identifier = common.pop("id")
    return NodeProcessConfig(node_id=identifier, overlords=overlord_addresses, node=node, **common)


def load_overlord_config(
    file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> OverlordProcessConfig:
    """A validated Overlord configuration from ``file``, ``environ`` and ``flags``."""
    merged = _merge("overlord", file, environ, flags)
    common = _common("overlord", merged)
    kind = merged.get("placement_kind")
    if kind not in PLACEMENT_KINDS:
        raise ConfigError(f"placement_kind must be one of {', '.join(PLACEMENT_KINDS)}, got {kind!r}")
    for name in ("initial_shards", "min_in_sync", "position_query_timeout_ms", "reconcile_interval_ms"):
        if (
            name in merged
            and isinstance(merged[name], int)
            and merged[name] < (0 if name == "min_in_sync" else 1)
        ):
            raise ConfigError(
                f"{name} must be {'>= 0' if name == 'min_in_sync' else '> 0'}, got {merged[name]}"
            )
    overlord = _build(OverlordConfig, merged, [k.name for k in _OVERLORD_MACHINE_KEYS])
    identifier = common.pop("id")
    return OverlordProcessConfig(overlord_id=identifier, overlord=overlord, **common)
