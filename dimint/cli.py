"""The ``dimint`` command line: experiments now; simulation, cluster and web commands as they land."""

from __future__ import annotations

from pathlib import Path

import click


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            low, high = part.split("-", 1)
            seeds.extend(range(int(low), int(high) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise click.BadParameter("no seeds given")
    return seeds


@click.group()
@click.version_option(package_name="dimint")
def main() -> None:
    """DiMint: a sharded, replicated in-memory key-value store and its simulation testbed."""


@main.group()
def experiment() -> None:
    """Run the research experiments (results under results/<experiment>/)."""


@experiment.command("list")
def experiment_list() -> None:
    """Name every experiment with its one-line purpose."""
    from experiments import EXPERIMENTS, load

    for name in EXPERIMENTS:
        doc = (load(name).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:14s} {doc}")


@experiment.command("run")
@click.argument("name")
@click.option("--quick", is_flag=True, help="A small, fast variant (for notebooks and smoke tests).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory (default results/<name>).",
)
@click.option("--seeds", default=None, help="Seeds, e.g. '1-10' or '1,5,9' (default 1-10, quick 1-3).")
def experiment_run(name: str, quick: bool, out_dir: Path | None, seeds: str | None) -> None:
    """Run experiment NAME, writing CSV and PNG files and printing a one-line summary."""
    from experiments import load

    try:
        module = load(name)
    except KeyError as exc:
        raise click.ClickException(str(exc)) from exc
    seed_list = _parse_seeds(seeds) if seeds else list(range(1, 4 if quick else 11))
    out = out_dir or Path("results") / name
    click.echo(module.run(out, seed_list, quick=quick))


@main.group()
def sim() -> None:
    """Deterministic fault-injection simulation (SimPy): one run, or sweeps over seeds."""


def _load_scenario(path: Path | None):  # type: ignore[no-untyped-def]
    from dimint.core.errors import ConfigError
    from dimint.sim.scenario import Scenario

    try:
        return Scenario.load(path) if path is not None else Scenario()
    except ConfigError as exc:
        raise click.ClickException(f"bad scenario {path}: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read scenario: {exc}") from exc


@sim.command("run")
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML scenario (default: built-in defaults).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Directory for history.jsonl and summary.json (default results/sim/<name>-<seed>).",
)
@click.option("--trace", is_flag=True, help="Also write every trace record to trace.jsonl.")
def sim_run(scenario_path: Path | None, seed: int, out_dir: Path | None, trace: bool) -> None:
    """Run one scenario with one seed; exit 1 when a safety or liveness check fails."""
    from dimint.sim.runner import run_scenario

    scenario = _load_scenario(scenario_path)
    out = out_dir or Path("results") / "sim" / f"{scenario.name}-{seed}"
    result = run_scenario(scenario, seed, out, write_trace=trace)
    summary = result.summary
    outcomes = summary["operations"]["by_outcome"]
    click.echo(
        f"scenario {scenario.name!r} seed {seed}: {summary['operations']['total']} operations "
        f"{dict(outcomes)}, {len(summary['faults'])} faults, {summary['promotions']} promotions"
    )
    click.echo(
        f"lost acknowledged writes: {summary['lost_acknowledged_writes']}; "
        f"writes applied twice: {summary['replayed_writes']}; "
        f"linearizability: {summary['linearizability'].get('verdict')}; "
        f"converged after heal: {summary['converged_after_ms']} ms"
    )
    for rebalance in summary.get("rebalances", []):
        during = rebalance.get("during") or {}
        click.echo(
            f"rebalance {rebalance['rebalance']} ({rebalance['reason']}): {len(rebalance['moves'])} moves, "
            f"{rebalance['keys_moved']} keys / {rebalance['bytes_moved']} bytes moved in "
            f"{rebalance.get('duration_ms', float('nan')):.0f} ms simulated, "
            f"longest freeze {max((m['frozen_ms'] for m in rebalance['moves']), default=0)} ms, "
            f"clients {during.get('ops_per_s', 'n/a')} ops/s meanwhile"
        )
    click.echo(f"trace digest {result.digest}")
    click.echo(f"wrote {out}/history.jsonl and {out}/summary.json")
    if not result.ok:
        for failure in result.failures:
            click.echo(f"FAILED: {failure}", err=True)
        raise SystemExit(1)


@sim.command("sweep")
@click.option("--scenario", "scenario_path", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--seeds", default="1-100", show_default=True, help="e.g. '1-10000' or '3,17,42'.")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
@click.option(
    "--mode",
    type=click.Choice(["async", "semi-sync", "sync"]),
    default=None,
    help="Override the scenario's replication mode.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write one row per seed here.",
)
def sim_sweep(
    scenario_path: Path | None, seeds: str, workers: int | None, mode: str | None, csv_path: Path | None
) -> None:
    """Run a scenario over many seeds on all cores; exit 1 if any seed fails a check."""
    import os

    from tqdm import tqdm

    from dimint.sim.sweep import sweep

    scenario = _load_scenario(scenario_path)
    if mode is not None:
        scenario = scenario.with_changes(cluster={"replication_mode": mode})
    seed_list = _parse_seeds(seeds)
    with tqdm(total=len(seed_list), desc=f"sweep {scenario.name}") as bar:
        result = sweep(
            scenario,
            seed_list,
            workers=workers or os.cpu_count() or 1,
            progress=bar.update,
            csv_path=csv_path,
        )
    click.echo(" ".join(f"{k}={v}" for k, v in result.totals().items()))
    where = f"--scenario {scenario_path} " if scenario_path else ""
    for row in result.failed[:20]:
        click.echo(
            f"FAILED seed {row['seed']}: {row['failures']}\n  replay: dimint sim run {where}"
            f"--seed {row['seed']} --trace",
            err=True,
        )
    if result.failed:
        raise SystemExit(1)


@main.command("web")
@click.option("--overlords", default=None, help="Overlord addresses, host:port,... (the live dashboard).")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="A 'dimint sim run' output directory to show as a timeline.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--allow-remote", is_flag=True, help="Allow binding to a non-loopback interface.")
def web(overlords: str | None, run_dir: Path | None, host: str, port: int, allow_remote: bool) -> None:
    """The monitoring dashboard and web test client (loopback only unless --allow-remote)."""
    import ipaddress

    from dimint.real.web import create_app, serve

    if not overlords and run_dir is None:
        raise click.UsageError("give --overlords host:port,... or --run DIR")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise click.BadParameter(f"{host!r} is not an IP address", param_hint="--host") from None
    if not loopback and not allow_remote:
        raise click.UsageError(
            f"refusing to serve on {host}: the dashboard has no authentication; add --allow-remote"
        )
    addresses = [a.strip() for a in overlords.split(",") if a.strip()] if overlords else None
    app = create_app(addresses, run_dir)
    click.echo(f"DiMint dashboard on http://{host}:{port}/ (Ctrl-C to stop)")
    serve(app, host=host, port=port)


from dimint.real.cli import register as _register_real  # noqa: E402  (after the local commands)

_register_real(main)


if __name__ == "__main__":
    main()
