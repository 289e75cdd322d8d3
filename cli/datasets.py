"""`vidt datasets`: inspect offline datasets."""

from __future__ import annotations

import json

import click


@click.group()
def datasets():
    """Inspect offline datasets (Minari directories or ids, D4RL .hdf5 files, built-in)."""


@datasets.command()
@click.argument("source", required=False)
@click.option("--env", "env_id", default=None,
              help="Env to check sizes against and to score with (D4RL-normalized score).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def info(source, env_id, as_json):
    """Episodes, steps and returns of the dataset at SOURCE.

    \b
    SOURCE is a Minari dataset directory or id, a D4RL-layout .hdf5 file, or omitted for
    the built-in data of --env vidt/OneState-v0.
    \b
    Examples:
      vidt datasets info data/pendulum
      vidt datasets info hopper-random-v2.hdf5 --env Hopper-v5 --json
    """
    from vidt.data import load, policy_record, summarize

    if source is None and env_id is None:
        raise click.UsageError("give a SOURCE, or --env vidt/OneState-v0 for its built-in data")
    if env_id is None:
        env_id = _recorded_env(source)
    episodes = load(source, env_id)
    s = summarize(episodes, source or "built-in", env_id, policy_record(source))
    if as_json:
        click.echo(json.dumps(s.as_dict()))
        return
    score = f"{s.normalized_score:.1f}" if s.normalized_score is not None else "n/a (no reference)"
    click.echo(
        f"source            {s.source}\n"
        f"env               {s.env_id or 'unknown (pass --env)'}\n"
        f"episodes          {s.episodes} ({s.terminated} terminated, {s.truncated} truncated)\n"
        f"steps             {s.steps}\n"
        f"obs / act size    {s.obs_dim} / {s.act_dim}\n"
        f"return min/mean/max {s.return_min:.1f} / {s.return_mean:.1f} / {s.return_max:.1f}\n"
        f"normalized score  {score}"
    )
    p = s.collected_with
    if p is not None:
        click.echo(f"collected by      {p.get('file', '?')} (model_version "
                   f"{p.get('model_version', '?')}, {p.get('algo') or '?'}), target return "
                   f"{p.get('target_return', '?')}")


def _recorded_env(source: str) -> str | None:
    """The env id a Minari dataset directory records (None for D4RL files: they record none)."""
    from pathlib import Path

    from vidt.data import minari_metadata

    if not Path(source).is_dir():
        return None
    try:
        spec = json.loads((minari_metadata(source) or {}).get("env_spec") or "null")
    except (ValueError, TypeError):
        return None
    return spec.get("id") if isinstance(spec, dict) else None
