"""`vidt report`: tables, statistics and curves over a root of run directories."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import InputPath


@click.command("report")
@click.argument("runs_root", type=InputPath(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where report.md, the CSVs, the PNGs and summary.json go  "
                   "[default: RUNS_ROOT/report]")
@click.option("--threshold", type=float, default=None,
              help="Score whose first crossing from below is reported  [default: per task, "
                   "the sweep file's, else half the best method's mean final score when that "
                   "is positive, else none]")
@click.option("--reps", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples for the IQM's 95% interval.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def report(runs_root, out_dir, threshold, reps, as_json):
    """Summarize every run under RUNS_ROOT (directories holding config.json and metrics.csv,
    e.g. a `vidt sweep` root): per (env, dataset, method) the final and last-3 score, mean ±
    std over seeds, and how many seeds that start below a threshold reach it, and when; per
    run the same; across tasks the interquartile
    mean with a stratified bootstrap 95% interval and the probability of improvement between
    methods (as rliable defines them); curves with bands, one PNG per task. Where a sweep
    recorded its datasets, each one's mean and best return beside what each method reached
    from it; where runs asked for several returns (eval.target_returns), the return
    achieved at each, with a PNG per task.

    Only finished runs enter the statistics; unfinished runs are listed apart, as
    running (a trainer holds the directory) or stopped.

    \b
    Example:
      vidt report runs/sweeps/random-mujoco
      vidt report runs/sweeps/random-mujoco --json | jq .aggregate
    """
    from vidt.report.report import markdown
    from vidt.report.report import report as make_report

    out = Path(out_dir) if out_dir else Path(runs_root) / "report"
    summary, files = make_report(Path(runs_root), out, threshold=threshold, reps=reps)
    if as_json:
        click.echo(json.dumps({**summary, "files": files}))
        return
    click.echo(markdown(summary))
    click.echo(f"written: {', '.join(sorted(files))} in {out}")
