"""`vidt collect`: record a Minari dataset from an env and a policy."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from .options import DiskPath, FiniteFloat


@click.command()
@click.option("--env", "env_id", required=True, help="Gymnasium env id, e.g. Pendulum-v1, Hopper-v5.")
@click.option("--policy", default="random", show_default=True,
              help="'random', or the path of an ONNX actor from `vidt export`.")
@click.option("--steps", type=click.IntRange(min=1), required=True, help="Env steps to record.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the first reset and the random policy: same seed, same data.")
@click.option("--target-return", type=FiniteFloat(), default=None,
              help="Return an ONNX policy is conditioned on (default: the one in its file).")
@click.option("--action-noise", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Gaussian noise added to an ONNX policy's actions, as a fraction of half "
                   "the action range (0.3: a good policy's data with spread), then clipped; "
                   "seeded by --seed and recorded in the dataset.")
@click.option("--out", type=DiskPath(), required=True,
              help="New directory for the Minari dataset (must not exist).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def collect(env_id, policy, steps, seed, target_return, action_noise, out, as_json):
    """Record a dataset by running POLICY in ENV, and write it as a local Minari dataset.

    \b
    Examples:
      vidt collect --env Pendulum-v1 --policy random --steps 10000 --seed 0 --out data/pendulum
      vidt collect --env Hopper-v5 --policy policy.onnx --steps 5000 --out data/hopper-onnx

    Terminated and truncated episode ends are kept apart; the seed is recorded in the
    dataset, and so are an ONNX policy's model_version and the target return it was given.
    Read it back with `vidt datasets info DIR` or `vidt train --dataset DIR`.
    """
    from vidt.data.collect import collect as run_collect
    from vidt.envs import normalized_score

    # No tqdm monitor thread: collection forks its writer process only from a process with
    # one thread (a fork beside other threads can inherit a held lock), and spawning instead
    # costs ~0.7 s of imports.
    tqdm.monitor_interval = 0
    with tqdm(total=steps, desc=f"collect {env_id}", unit="step", leave=False,
              disable=None) as bar:
        report = run_collect(env_id, out, steps, seed=seed, policy=policy,
                             target_return=target_return, on_step=bar.update,
                             action_noise=action_noise)
    rets, rec = report.returns, report.policy_record
    mean = sum(rets) / len(rets)
    result = {"out": report.out, "env_id": env_id, "policy": policy, "seed": seed,
              "steps": report.steps, "episodes": report.episodes, "return_mean": mean,
              "normalized_score": normalized_score(env_id, mean),
              "model_version": rec["model_version"] if rec else None,
              "target_return": rec["target_return"] if rec else None}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"Wrote {report.episodes} episodes ({report.steps} steps) to {report.out}; "
                   f"mean return {mean:.1f}")
        if rec:
            click.echo(f"Policy: model_version {rec['model_version']}, target return "
                       f"{rec['target_return']:g} (recorded in the dataset's metadata)")
