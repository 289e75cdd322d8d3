"""`vidt sweep`: a grid of training runs as Ray tasks, on this machine or a Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import InputPath


@click.command("sweep")
@click.argument("sweep_file", type=InputPath(dir_okay=False))
@click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
              help="A running Ray cluster ('auto': the one this machine belongs to)  "
                   "[default: start a local Ray for this sweep and stop it after]")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Most runs at once  [default: as many as the resources allow]")
@click.option("--dry-run", is_flag=True,
              help="List the runs, their directories and state; start nothing.")
def sweep(sweep_file, address, max_concurrent, dry_run):
    """Run the grid of SWEEP_FILE: each point (dataset x algo x variant x seed) is one
    ordinary `vidt train` run in its own directory under the file's root, as one Ray task
    with the file's [resources] (CPUs, fractional GPUs).

    The file is checked whole first (unknown keys, an empty grid, overrides the trainer would
    refuse). Ctrl-C (or `kill PID`, for a sweep in the background) stops the sweep and every
    running run writes a checkpoint; running the
    same command again skips finished runs and resumes the others. The exit status is 0 when
    every run has finished, 1 when any failed (their logs are named) or stopped on its own,
    130 when interrupted. Each run's log, ROOT/logs/<run>.log, holds its command line, the
    trainer's messages, a line per evaluation, how it ended and its JSON summary.

    \b
    Example:
      vidt sweep benchmarks/sweeps/random-mujoco.toml --dry-run
      vidt sweep benchmarks/sweeps/random-mujoco.toml
      vidt report runs/sweeps/random-mujoco
    """
    from vidt.sweep.run import is_finished, run_sweep
    from vidt.sweep.spec import check, parse

    spec = parse(Path(sweep_file))
    check(spec)
    if dry_run:
        for p in spec.points:
            state = ("finished" if is_finished(p.run_dir) else
                     "resume" if (p.run_dir / "config.json").exists() else "new")
            click.echo(f"{state:8} {p.run_dir}")
        click.echo(f"{len(spec.points)} runs; each: {spec.cpus:g} CPU, {spec.gpus:g} GPU")
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise click.ClickException("vidt sweep needs Ray: pip install 'vidt[sweep]'") from None
    result = run_sweep(spec, address=address, max_concurrent=max_concurrent,
                       echo=lambda m: click.echo(m, err=True))
    failed = [o for o in result.outcomes if o.status == "failed"]
    click.echo(f"{result.count('finished')} finished, {result.count('skipped')} already "
               f"finished, {len(failed)} failed, {result.count('interrupted')} interrupted, "
               f"{result.count('not started')} not started; `vidt report {spec.root}` "
               "summarizes them", err=True)
    for o in failed:
        click.echo(f"failed: {o.point.run_dir}: {o.detail}; log: {o.log}", err=True)
    if result.interrupted:
        click.echo("interrupted: run the same command again to go on", err=True)
        sys.exit(130)
    if failed:
        sys.exit(1)
    if not result.ok:  # a run stopped by itself being signalled, not by this sweep
        click.echo(f"{result.count('interrupted')} run(s) stopped before finishing: run the "
                   "same command again to go on", err=True)
        sys.exit(1)
