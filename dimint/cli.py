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


if __name__ == "__main__":
    main()
