"""`vidt eval`: Gymnasium episodes against a live policy server."""

from __future__ import annotations

import json
import sys

import click

from .options import DiskPath, FiniteFloat, InputPath, ServerAddress
from .serve import _read_token


@click.command("eval")
@click.option("--server", type=ServerAddress(), required=True, help="Address of `vidt serve`.")
@click.option("--env", "env_id", default=None,
              help="Gymnasium env id, e.g. Hopper-v5  [default: the served policy's env]")
@click.option("--episodes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Episodes to run.")
@click.option("--target-return", type=FiniteFloat(), default=None,
              help="Return to condition on  [default: the policy's]")
@click.option("--num-envs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sub-envs of a vector env, stepped with ActBatch when > 1.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Episode e (sub-env i) is reset with seed + e (seed + i).")
@click.option("--auth-token-file", "--token-file", "token_file", type=DiskPath(dir_okay=False),
              default=None, help="File holding the server's bearer token (as `vidt serve "
                                 "--auth-token-file`).")
@click.option("--tls-ca", type=InputPath(dir_okay=False), default=None,
              help="PEM certificate (or CA) to trust: connect with TLS.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Deadline of each call, seconds.")
@click.option("--record", "record_dir", type=DiskPath(file_okay=False), default=None,
              help="Also write the first --record-episodes episodes to this folder as GIFs, "
                   "rendered offscreen (needs --num-envs 1).")
@click.option("--record-episodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many episodes --record writes.")
@click.option("--no-failover", is_flag=True,
              help="Fail when the server is lost, instead of resuming the episode through the "
                   "same address (a proxy's other replicas).")
@click.option("--model-version", default="",
              help="Run every episode on this model version (the server refuses one it does "
                   "not hold)  [default: the server's current]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def eval_cmd(server, env_id, episodes, target_return, num_envs, seed, token_file, tls_ca,
             timeout, record_dir, record_episodes, no_failover, model_version, as_json,
             no_progress):
    """Run episodes of ENV against the policy served at --server and report returns,
    normalized score, episode lengths and Act latency.

    \b
    Example:
      vidt eval --server 127.0.0.1:50051 --env Hopper-v5 --episodes 10 --num-envs 4
      vidt eval --server 127.0.0.1:50051 --episodes 3 --record videos/
    """
    from tqdm import tqdm

    from vidt.serving.client import PolicyClient

    if record_dir is not None and num_envs != 1:
        raise click.UsageError("--record needs --num-envs 1")
    from vidt.serving.evaluate import evaluate

    with PolicyClient(server, token=_read_token(token_file), tls=tls_ca,
                      timeout_s=timeout, failover=not no_failover) as client:
        if env_id is None:
            env_id = client.info().env_id
            if not env_id:
                raise click.UsageError("the served policy names no env: pass --env")
        with tqdm(total=episodes, desc=f"eval {env_id}", unit="ep", file=sys.stderr,
                  disable=no_progress or None, leave=False) as bar:
            res = evaluate(client, env_id, episodes, target_return=target_return,
                           num_envs=num_envs, seed=seed, record_dir=record_dir,
                           record_episodes=record_episodes, model_version=model_version,
                           on_episode=lambda ret, n: (bar.update(1),
                                                      bar.set_postfix(ret=f"{ret:.1f}")))
    if as_json:
        click.echo(json.dumps(res.to_json()))
    else:
        _print(res, env_id, num_envs, record_dir, record_episodes, episodes)
    if res.failed or res.not_run:
        # Every finished episode is reported above; the status says the run was not whole.
        raise click.ClickException(f"{len(res.failed)} of {episodes} episode(s) failed"
                                   + (f", {res.not_run} not run" if res.not_run else "")
                                   + f": {res.failed[-1]}")


def _print(res, env_id, num_envs, record_dir, record_episodes, episodes) -> None:
    lat = res.latency_ms
    how = "ActBatch" if num_envs > 1 else "Act"
    if res.returns:
        score = ("n/a (no reference)" if res.normalized_score is None
                 else f"{res.normalized_score:.1f}")
        click.echo(f"{env_id}: return {res.return_mean:.2f} ± {res.return_std:.2f} over "
                   f"{len(res.returns)} episodes\n"
                   f"normalized score: {score}\n"
                   f"episode length: mean {res.mean_length:.1f} (min {min(res.lengths)}, "
                   f"max {max(res.lengths)})\n"
                   f"{how} latency: p50 {lat['p50']:.3f} ms, p95 {lat['p95']:.3f} ms, "
                   f"p99 {lat['p99']:.3f} ms ({res.calls} calls)")
    else:
        click.echo(f"{env_id}: no episode finished")
    versions = res.by_version()
    if len(versions) > 1:  # a run that spanned a model change: one line per model
        for v, r in versions.items():
            click.echo(f"  model_version {v}: return {r['return_mean']:.2f} ± "
                       f"{r['return_std']:.2f} over {r['episodes']} episodes")
    elif versions:
        click.echo(f"model_version: {next(iter(versions))}")
    if res.failovers:
        click.echo(f"failovers: {res.failovers} session(s) resumed on another server")
    if res.failed:
        click.echo(f"failed: {len(res.failed)} episode(s)")
        for why in res.failed:
            click.echo(f"  {why}")
    if record_dir is not None:
        click.echo(f"recorded: the first {min(record_episodes, episodes)} episode(s) as GIFs "
                   f"in {record_dir}")
