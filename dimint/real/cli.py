"""Commands of the real runtime: ``node``, ``overlord``, ``cluster ...`` and the ``cli`` shell.

``register(main)`` adds them to the top-level ``dimint`` group; ``python -m dimint.real.cli`` runs
them on their own (that is how ``LocalCluster`` starts its processes, so a cluster works from a
checkout without the console script installed).

Why flags default to "not given": configuration comes from a file, ``DIMINT_*`` variables and
flags, with flags winning key by key (``dimint.real.config``); a flag with a default value would
silently override the file.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from dimint.core.commands import COMMANDS
from dimint.core.errors import ConfigError

__all__ = ["register"]


def _common_options(function: Any) -> Any:
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="DIMINT_CONFIG",
            default=None,
            help="TOML (or .json) configuration file. Env: DIMINT_CONFIG.",
        ),
        click.option("--id", "id_", default=None, help="Process id (default: kind-host-port)."),
        click.option("--bind-host", default=None, help="Interface to bind (default 127.0.0.1)."),
        click.option("--port", type=int, default=None, help="Port to bind."),
        click.option("--advertise-host", default=None, help="Host others connect to (default: bind host)."),
        click.option(
            "--advertise-port", type=int, default=None, help="Port others connect to (default: port)."
        ),
        click.option("--zookeeper", default=None, help="ZooKeeper hosts, e.g. zk1:2181,zk2:2181[/chroot]."),
        click.option("--session-timeout-ms", type=int, default=None, help="ZooKeeper session timeout."),
        click.option("--log-file", default=None, help="JSON log file (default: stderr)."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None),
        click.option(
            "-o",
            "--option",
            "options",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any configuration key, e.g. -o heartbeat_interval_ms=50 (repeatable).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _flags(**given: Any) -> dict[str, Any]:
    flags = {name: value for name, value in given.items() if name not in ("config_file", "id_")}
    flags["id"] = given.get("id_")
    return flags


def _config_failure(kind: str, exc: Exception) -> None:
    click.echo(f"dimint {kind}: configuration error: {exc}", err=True)
    raise SystemExit(2)


@click.command("node")
@_common_options
@click.option("--overlords", default=None, help="Overlord addresses, comma-separated host:port.")
def node_command(config_file: Path | None, overlords: str | None, **given: Any) -> None:
    """Run a data node (master or slave of a shard, as the cluster map says) until SIGTERM."""
    from dimint.real.config import load_node_config
    from dimint.real.processes import StartError, run_node

    try:
        config = load_node_config(config_file, flags={**_flags(**given), "overlords": overlords})
    except ConfigError as exc:
        _config_failure("node", exc)
        return
    try:
        code = run_node(config)
    except StartError as exc:
        click.echo(f"dimint node: cannot start: {exc}", err=True)
        raise SystemExit(2) from None
    raise SystemExit(code)


@click.command("overlord")
@_common_options
@click.option("--shards", type=int, default=None, help="Shards of the initial map (initial_shards).")
@click.option("--replicas", type=int, default=None, help="Slaves per shard.")
@click.option(
    "--mode", type=click.Choice(["async", "semi-sync", "sync"]), default=None, help="Replication mode."
)
@click.option("--placement", default=None, help="Placement kind: ring, modulo, rendezvous, jump, bounded.")
def overlord_command(
    config_file: Path | None,
    shards: int | None,
    replicas: int | None,
    mode: str | None,
    placement: str | None,
    **given: Any,
) -> None:
    """Run an Overlord (one of them leads, through a ZooKeeper election) until SIGTERM."""
    from dimint.real.config import load_overlord_config
    from dimint.real.processes import StartError, run_overlord

    flags = {
        **_flags(**given),
        "initial_shards": shards,
        "replicas": replicas,
        "replication_mode": mode,
        "placement_kind": placement,
    }
    try:
        config = load_overlord_config(config_file, flags=flags)
    except ConfigError as exc:
        _config_failure("overlord", exc)
        return
    try:
        code = run_overlord(config)
    except StartError as exc:
        click.echo(f"dimint overlord: cannot start: {exc}", err=True)
        raise SystemExit(2) from None
    raise SystemExit(code)


# --------------------------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------------------------


_STATE_FILE_OPTION = click.option(
    "--state-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Cluster state file (default $DIMINT_STATE_FILE or a per-user file in the temp directory).",
)


def _state_file(path: Path | None) -> Path:
    from dimint.real.local import default_state_file

    return path if path is not None else default_state_file()


def _load_cluster(path: Path | None) -> Any:
    from dimint.real.local import ClusterError, LocalCluster

    try:
        return LocalCluster.load(_state_file(path))
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("cluster")
def cluster_group() -> None:
    """A local cluster on loopback: ZooKeeper, nodes and Overlords as real processes."""


@cluster_group.command("up")
@click.option("--shards", type=int, default=2, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True, help="Slaves per shard.")
@click.option("--overlords", type=int, default=3, show_default=True)
@click.option(
    "--mode", type=click.Choice(["async", "semi-sync", "sync"]), default="semi-sync", show_default=True
)
@click.option("--zookeeper", default=None, help="Use this ZooKeeper ensemble instead of starting one.")
@click.option("--session-timeout-ms", type=int, default=2000, show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@_STATE_FILE_OPTION
def cluster_up(
    shards: int,
    replicas: int,
    overlords: int,
    mode: str,
    zookeeper: str | None,
    session_timeout_ms: int,
    log_level: str,
    state_file: Path | None,
) -> None:
    """Start a cluster and return once it serves; the processes keep running."""
    from dimint.real.local import ClusterError, LocalCluster

    path = _state_file(state_file)
    if path.exists():
        try:
            existing = LocalCluster.load(path)
            if any(existing.alive(p) for p in existing.processes):
                raise click.ClickException(
                    f"a cluster is already running (state file {path}); run `dimint cluster down` first"
                )
        except ClusterError:
            pass
    try:
        cluster = LocalCluster(
            shards,
            replicas,
            overlords,
            mode,
            zookeeper=zookeeper,
            state_file=path,
            session_timeout_ms=session_timeout_ms,
            log_level=log_level,
        ).up()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        cluster.write_state()
        click.echo(f"cluster up: {shards} shard(s) x {1 + replicas} node(s), {overlords} Overlord(s), {mode}")
        click.echo(f"ZooKeeper:  {cluster.zookeeper_hosts}")
        click.echo(f"Overlords:  {','.join(a.removeprefix('tcp://') for a in cluster.overlord_addresses)}")
        click.echo(f"logs:       {cluster.base_dir / 'logs'}")
        click.echo(f"state file: {path}")
        click.echo(
            f"try:        dimint cli --overlords {cluster.overlord_addresses[0].removeprefix('tcp://')}"
        )
    finally:
        if cluster._client is not None:
            cluster._client.close()


@cluster_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the full status document as JSON.")
@_STATE_FILE_OPTION
def cluster_status(as_json: bool, state_file: Path | None) -> None:
    """Every process with its role, shard, pid and address; the shards and their epochs."""
    cluster = _load_cluster(state_file)
    try:
        status = cluster.status()
    finally:
        if cluster._client is not None:
            cluster._client.close()
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
        return
    if status.get("error"):
        click.echo(f"warning: {status['error']}", err=True)
    click.echo(
        f"map epoch {status.get('map_epoch')}, mode {status.get('replication_mode')}, "
        f"answered by {status.get('answered_by')}"
    )
    click.echo(f"{'KIND':9} {'ID':6} {'ROLE':10} {'SHARD':5} {'PID':>7}  ADDRESS")
    for row in status["processes"]:
        shard = "" if row.get("shard") is None else str(row["shard"])
        click.echo(
            f"{row['kind']:9} {row['id']:6} {row['role']:10} {shard:5} {row['pid']:>7}  {row['address']}"
        )
    for shard in status.get("shards") or []:
        click.echo(
            f"shard {shard['shard_id']}: master {shard['master']} slaves {','.join(shard['slaves']) or '-'} "
            f"in-sync {','.join(shard['in_sync']) or '-'} epoch {shard['shard_epoch']}"
        )


@cluster_group.command("add-shard")
@_STATE_FILE_OPTION
def cluster_add_shard(state_file: Path | None) -> None:
    """Start 1 + replicas new nodes and ask the Overlord leader for a new shard."""
    from dimint.real.client import DimintClientError

    cluster = _load_cluster(state_file)
    try:
        result = cluster.add_shard()
        click.echo(json.dumps(result, default=str))
    except DimintClientError as exc:
        raise click.ClickException(f"add-shard refused: {exc}") from None
    finally:
        cluster.write_state()
        if cluster._client is not None:
            cluster._client.close()


@cluster_group.command("remove-shard")
@click.argument("shard_id", type=int)
@_STATE_FILE_OPTION
def cluster_remove_shard(shard_id: int, state_file: Path | None) -> None:
    """Ask the Overlord leader to drain and remove shard SHARD_ID."""
    from dimint.real.client import DimintClientError

    cluster = _load_cluster(state_file)
    try:
        click.echo(json.dumps(cluster.remove_shard(shard_id), default=str))
    except DimintClientError as exc:
        raise click.ClickException(f"remove-shard refused: {exc}") from None
    finally:
        if cluster._client is not None:
            cluster._client.close()


@cluster_group.command("down")
@_STATE_FILE_OPTION
def cluster_down(state_file: Path | None) -> None:
    """Stop every process of the cluster, ZooKeeper included, and delete its files."""
    cluster = _load_cluster(state_file)
    count = len(cluster.processes)
    cluster.down()
    click.echo(f"cluster down: stopped {count} process(es)")


# --------------------------------------------------------------------------------------------
# The interactive shell
# --------------------------------------------------------------------------------------------

_SHELL_HELP = """\
Commands are typed like redis-cli:  set k v   get k   hset h f v   sadd s a b   mget a b c
  reads take --weak (may be served by a slave) or --strong (default)
  set takes --ex SECONDS, --px MS, --nx, --xx
  status        the cluster: shards, masters, Overlords
  history       commands typed in this session
  help [CMD]    this text, or the arguments of CMD
  quit          (or end of input) leaves
Data commands: {commands}"""


def _format(value: Any, indent: str = "") -> str:
    if value is None:
        return "(nil)"
    if isinstance(value, bool):
        return "(true)" if value else "(false)"
    if isinstance(value, int):
        return f"(integer) {value}"
    if isinstance(value, bytes):
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, set):
        value = sorted(value)
    if isinstance(value, dict):
        if not value:
            return "(empty hash)"
        lines = []
        for index, (name, item) in enumerate(sorted(value.items()), start=1):
            lines.append(f"{indent}{index}) {_format(name)} => {_format(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "(empty list)"
        return "\n".join(f"{indent}{i}) {_format(item, indent + '   ')}" for i, item in enumerate(value, 1))
    return repr(value)


def _arg_for(command: str, index: int, text: str) -> Any:
    """Convert one typed argument by the command's argument kinds (ints where ints are expected)."""
    spec = COMMANDS[command]
    kinds = list(spec.args)
    kind = kinds[index] if index < len(kinds) else kinds[-1]
    if kind.endswith("*") or kind == "pairs":
        kind = kind.rstrip("*")
    if kind in ("int", "opt_int"):
        try:
            return int(text)
        except ValueError:
            return text  # the codec refuses it with a clear message
    return text


def run_shell_line(client: Any, line: str) -> tuple[str, bool]:
    """Execute one shell line; returns (output, ok). Used by the shell and its tests."""
    from dimint.real.client import DimintClientError, OutcomeUnknownError

    try:
        words = shlex.split(line)
    except ValueError as exc:
        return f"(error) cannot parse the line: {exc}", False
    if not words:
        return "", True
    name = words[0].lower()
    flags = {w for w in words[1:] if w in ("--weak", "--strong", "--nx", "--xx")}
    rest: list[str] = []
    options: dict[str, str] = {}
    iterator = iter(words[1:])
    for word in iterator:
        if word in flags:
            continue
        if word in ("--ex", "--px"):
            options[word] = next(iterator, "")
            continue
        rest.append(word)
    consistency = "weak" if "--weak" in flags else "strong"
    if name == "help":
        if rest and rest[0].lower() in COMMANDS:
            spec = COMMANDS[rest[0].lower()]
            kind = "write" if spec.is_write else "read"
            return f"{spec.name} {' '.join(spec.args)}   ({kind})", True
        return _SHELL_HELP.format(commands=" ".join(sorted(COMMANDS))), True
    if name == "status":
        try:
            status = client.cluster_status()
        except DimintClientError as exc:
            return f"(error) {exc}", False
        lines = [f"map epoch {status.get('map_epoch')}, mode {status.get('replication_mode')}"]
        for shard in status.get("shards") or []:
            slaves = ", ".join(shard["slaves"]) or "-"
            lines.append(f"shard {shard['shard_id']}: master {shard['master']}, slaves {slaves}")
        for overlord in status.get("overlords") or []:
            lines.append(f"overlord {overlord['address']}: {overlord['role']}")
        return "\n".join(lines), True
    if name not in COMMANDS:
        return f"(error) UNKNOWN_COMMAND: unknown command {words[0]!r}; type help", False
    try:
        if name == "set":
            if len(rest) != 2:
                return (
                    "(error) BAD_ARGUMENT: usage: set KEY VALUE [--ex SECONDS] [--px MS] [--nx|--xx]",
                    False,
                )
            ex = float(options["--ex"]) if "--ex" in options else None
            px = int(options["--px"]) if "--px" in options else None
            result = client.set(rest[0], rest[1], ex=ex, px=px, nx="--nx" in flags, xx="--xx" in flags)
            return ("OK" if result else "(nil)"), True
        if name == "mget":
            return _format(client.mget(*rest, consistency=consistency)), True
        if name == "mset":
            if len(rest) % 2 or not rest:
                return "(error) BAD_ARGUMENT: usage: mset KEY VALUE [KEY VALUE ...]", False
            return _format(client.mset(dict(zip(rest[0::2], rest[1::2], strict=True)))), True
        if name == "delete":
            return _format(client.delete(*rest)), True
        if name == "exists":
            return _format(client.exists(*rest, consistency=consistency)), True
        args = [_arg_for(name, index, text) for index, text in enumerate(rest)]
        read = not COMMANDS[name].is_write
        value = client.execute_command(name, *args, consistency=consistency if read else "strong")
        return _format(value), True
    except OutcomeUnknownError as exc:
        return f"(unknown outcome) {exc}", False
    except DimintClientError as exc:
        return f"(error) {exc}", False
    except ValueError as exc:
        return f"(error) BAD_ARGUMENT: {exc}", False


@click.command("cli")
@click.option(
    "--overlords",
    envvar="DIMINT_OVERLORDS",
    default=None,
    help="Overlord addresses, comma-separated host:port (default: the local cluster's).",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds per operation.")
@click.option("-c", "--command", "commands", multiple=True, help="Run this line and exit (repeatable).")
@_STATE_FILE_OPTION
def shell_command(
    overlords: str | None, timeout: float, commands: tuple[str, ...], state_file: Path | None
) -> None:
    """An interactive shell: `set k v`, `get k --weak`, `hset h f v`, `status`, `help`."""
    from dimint.real.client import Client

    if overlords:
        addresses = [a.strip() for a in overlords.split(",") if a.strip()]
    else:
        addresses = _load_cluster(state_file).overlord_addresses
    try:
        client = Client(addresses, timeout=timeout)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    failures = 0
    history: list[str] = []
    try:
        if commands:
            for line in commands:
                output, ok = run_shell_line(client, line)
                click.echo(output)
                failures += not ok
            raise SystemExit(1 if failures else 0)
        interactive = sys.stdin.isatty()
        if interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and arrow-key history)
            click.echo(f"connected to {', '.join(addresses)}; type help, or quit")
        while True:
            try:
                line = input("dimint> ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not interactive and line == "":
                break
            line = line.strip()
            if not line:
                continue
            if line.lower() in ("quit", "exit"):
                break
            if line.lower() == "history":
                click.echo("\n".join(f"{i:4}  {text}" for i, text in enumerate(history, 1)) or "(empty)")
                continue
            history.append(line)
            output, ok = run_shell_line(client, line)
            if output:
                click.echo(output)
            failures += not ok
    finally:
        client.close()


def register(main: click.Group) -> None:
    """Add ``node``, ``overlord``, ``cluster`` and ``cli`` to the top-level ``dimint`` group."""
    main.add_command(node_command, "node")
    main.add_command(overlord_command, "overlord")
    main.add_command(cluster_group, "cluster")
    main.add_command(shell_command, "cli")


@click.group()
def _standalone() -> None:
    """DiMint's real runtime (the same commands as `dimint node|overlord|cluster|cli`)."""


register(_standalone)

if __name__ == "__main__":
    _standalone()
