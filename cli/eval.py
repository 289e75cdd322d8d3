"""`vidt eval`: Gymnasium episodes against a live policy server."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import click

from .options import DiskPath, FiniteFloat, InputPath, ServerAddress
from .serve import _read_token


class TargetReturns(click.ParamType):
    """Target returns: a comma list (`100,200,400`) or LO:HI:N, N evenly spaced from LO to HI
    inclusive (`0:1000:5` is 0, 250, 500, 750, 1000)."""

    name = "LIST|LO:HI:N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        try:
            if ":" in text:
                lo, hi, n = text.split(":")
                if not n.strip().isdigit() or int(n) < 2:
                    self.fail(f"{value!r}: N in LO:HI:N must be a whole number >= 2", param, ctx)
                lo, hi, n = float(lo), float(hi), int(n)
                targets = tuple(lo + (hi - lo) * i / (n - 1) for i in range(n))
            else:
                targets = tuple(float(x) for x in text.split(","))
        except ValueError:
            self.fail(f"{value!r} is neither a comma list of numbers (100,200,400) nor "
                      f"LO:HI:N (0:1000:5)", param, ctx)
        if not all(math.isfinite(t) for t in targets):
            self.fail(f"{value!r}: every target must be a finite number", param, ctx)
        return targets


class VersionPair(click.ParamType):
    """Two model versions, V1,V2 (the same one twice is allowed: a check of the check)."""

    name = "V1,V2"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) != 2 or not all(parts):
            self.fail(f"{value!r} is not two model versions V1,V2 (as `vidt models list` "
                      f"shows them)", param, ctx)
        return tuple(parts)


@click.command("eval")
@click.option("--server", type=ServerAddress(), required=True, help="Address of `vidt serve`.")
@click.option("--env", "env_id", default=None,
              help="Gymnasium env id, e.g. Hopper-v5  [default: the served policy's env]")
@click.option("--episodes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Episodes to run.")
@click.option("--target-return", type=FiniteFloat(), default=None,
              help="Return to condition on  [default: the policy's]")
@click.option("--target-returns", type=TargetReturns(), default=None,
              help="Run the episodes once per target return, on the same seeds, and report "
                   "the return achieved at each: a list (100,200,400) or LO:HI:N (N evenly "
                   "spaced, ends included).")
@click.option("--plot", "plot_file", type=DiskPath(dir_okay=False), default=None,
              help="With --target-returns: also draw achieved against asked return to this "
                   "PNG file (needs matplotlib).")
@click.option("--model", "model_file", type=InputPath(dir_okay=False), default=None,
              help="With --target-returns: the served ONNX file, read for the mean and best "
                   "return of its training data (shown in the table and the plot).")
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
@click.option("--compare", "compare", type=VersionPair(), default=None,
              help="Before a promotion: run the same seeds on model versions V1 and V2, "
                   "alternating, and report each one's returns and V2 - V1 of their means "
                   "with a paired bootstrap 95% interval.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def eval_cmd(server, env_id, episodes, target_return, target_returns, plot_file, model_file,
             num_envs, seed, token_file, tls_ca, timeout, record_dir, record_episodes,
             no_failover, model_version, compare, as_json, no_progress):
    """Run episodes of ENV against the policy served at --server and report returns,
    normalized score, episode lengths and Act latency; with --target-returns, the return
    achieved at each of several asked target returns; with --compare, two model versions
    on the same seeds.

    --compare V1,V2 runs seed s on V1 then on V2, for each of the --episodes seeds (with
    --num-envs M, a batch of M seeds on each in turn), and bounds the difference of the mean
    returns (V2 minus V1) by resampling the seeds: an interval above 0 says V2 is better,
    below 0 V1, and one containing 0 that these episodes show no difference. A seed that
    failed on either version is left out. Versions are full ones, as `vidt models list`
    shows them.

    \b
    Example:
      vidt eval --server 127.0.0.1:50051 --env Hopper-v5 --episodes 10 --num-envs 4
      vidt eval --server 127.0.0.1:50051 --episodes 3 --record videos/
      vidt eval --server 127.0.0.1:50051 --target-returns 1000:4000:7 --plot targets.png \\
          --model hopper.onnx
      vidt eval --server 127.0.0.1:50051 --episodes 30 --compare V1,V2  # vidt models list
    """
    from tqdm import tqdm

    from vidt.serving.client import PolicyClient

    if record_dir is not None and num_envs != 1:
        raise click.UsageError("--record needs --num-envs 1")
    if compare is not None:
        for given, flag in ((model_version, "--model-version"),
                            (target_returns is not None, "--target-returns"),
                            (record_dir is not None, "--record")):
            if given:
                raise click.UsageError(f"--compare and {flag} do not go together: --compare "
                                       f"names both versions and runs one target return")
    if target_returns is not None:
        if target_return is not None:
            raise click.UsageError("--target-return and --target-returns do not go together: "
                                   "give one target, or a list")
        if record_dir is not None:
            raise click.UsageError("--record and --target-returns do not go together: record "
                                   "with one --target-return")
    elif plot_file is not None or model_file is not None:
        raise click.UsageError(f"{'--plot' if plot_file is not None else '--model'} needs "
                               f"--target-returns")
    if plot_file is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise click.ClickException("--plot needs matplotlib, which this installation "
                                       "lacks: pip install matplotlib")
        try:  # before the episodes, not after them
            Path(plot_file).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"cannot write {plot_file}: {e.strerror or e}") from None
    data = _data_returns(model_file) if model_file is not None else None
    from vidt.serving.evaluate import compare_versions, evaluate, evaluate_targets

    with PolicyClient(server, token=_read_token(token_file), tls=tls_ca,
                      timeout_s=timeout, failover=not no_failover) as client:
        if env_id is None:
            env_id = client.info().env_id
            if not env_id:
                raise click.UsageError("the served policy names no env: pass --env")
        if target_returns is not None:
            if data is not None:
                _check_model_file(data, model_version or client.info().model_version)
            with tqdm(total=episodes * len(target_returns), desc=f"eval {env_id}", unit="ep",
                      file=sys.stderr, disable=no_progress or None, leave=False) as bar:
                curve = evaluate_targets(
                    client, env_id, target_returns, episodes, num_envs=num_envs, seed=seed,
                    model_version=model_version,
                    on_target=lambda t: bar.set_description(f"eval {env_id} target {t:g}"),
                    on_episode=lambda ret, n: (bar.update(1), bar.set_postfix(ret=f"{ret:.1f}")),
                    **({} if data is None else data["returns"]))
            _report_curve(curve, episodes, seed, plot_file, data, as_json)
            return
        if compare is not None:
            with tqdm(total=2 * episodes, desc=f"compare {env_id}", unit="ep",
                      file=sys.stderr, disable=no_progress or None, leave=False) as bar:
                cmp = compare_versions(
                    client, env_id, compare, episodes, target_return=target_return,
                    num_envs=num_envs, seed=seed,
                    on_episode=lambda ret, n: (bar.update(1), bar.set_postfix(ret=f"{ret:.1f}")))
            _report_comparison(cmp, num_envs, as_json)
            return
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


def _data_returns(model_file: str) -> dict:
    """The served file's training-data returns (as TargetCurve takes them), its version and
    path; read before any episode runs, so a bad file costs nothing."""
    from vidt.policy_file import OnnxPolicy

    m = OnnxPolicy(model_file, provider="cpu", intra_op_threads=1).metadata
    if m.data_return_mean is None and m.data_return_max is None:
        click.echo(f"Note: {model_file} records no training-data returns (exported before vidt "
                   f"kept them, or its dataset could not be read then): no data lines",
                   err=True)
    return {"path": model_file, "model_version": m.model_version,
            "returns": {"data_return_mean": m.data_return_mean,
                        "data_return_max": m.data_return_max}}


def _check_model_file(data: dict, served: str) -> None:
    if served and data["model_version"] != served:
        click.echo(f"Note: {data['path']} is model_version {data['model_version']}, the episodes "
                   f"run on {served}: its data lines are another model's training data",
                   err=True)


def _report_curve(curve, episodes, seed, plot_file, data, as_json) -> None:
    from vidt.serving.evaluate import plot_targets

    if plot_file is not None:
        plot_targets(curve, plot_file)
    if as_json:
        click.echo(json.dumps({**curve.to_json(), "plot": plot_file,
                               "model_file": data["path"] if data else None}))
    else:
        _print_curve(curve, episodes, seed, plot_file, data)
    _exit_if_any_failed(curve, episodes * len(curve.targets))


def _print_curve(curve, episodes, seed, plot_file, data) -> None:
    seeds = f"seed {seed}" if episodes == 1 else f"seeds {seed}-{seed + episodes - 1}"
    click.echo(f"{curve.env_id}: achieved return at each asked target ({episodes} episode(s) "
               f"each, {seeds})")
    click.echo(f"{'target':>12}  {'return mean':>12}  {'± std':>10}  {'n':>4}  {'failed':>6}")
    for t, r in zip(curve.targets, curve.results):
        mean, std = (f"{r.return_mean:.2f}", f"{r.return_std:.2f}") if r.returns else ("-", "-")
        failed = len(r.failed) + r.not_run
        click.echo(f"{t:>12g}  {mean:>12}  {'± ' + std:>10}  {len(r.returns):>4}  {failed:>6}")
    if curve.data_return_mean is not None or curve.data_return_max is not None:
        def num(x):
            return "?" if x is None else f"{x:.2f}"

        click.echo(f"training data ({data['path']}): return mean {num(curve.data_return_mean)}, "
                   f"best {num(curve.data_return_max)}")
    versions: dict[str, int] = {}
    for r in curve.results:
        for v in r.versions:
            versions[v] = versions.get(v, 0) + 1
    if len(versions) > 1:
        click.echo("model_versions: " + ", ".join(f"{v} ({n} episodes)"
                                                  for v, n in versions.items()))
    elif versions:
        click.echo(f"model_version: {next(iter(versions))}")
    failovers = sum(r.failovers for r in curve.results)
    if failovers:
        click.echo(f"failovers: {failovers} session(s) resumed on another server")
    for t, r in zip(curve.targets, curve.results):
        for why in r.failed:
            click.echo(f"  failed at target {t:g}: {why}")
    if plot_file is not None:
        click.echo(f"plot: {plot_file}")


def _report_comparison(cmp, num_envs, as_json) -> None:
    if as_json:
        click.echo(json.dumps(cmp.to_json()))
    else:
        _print_comparison(cmp, num_envs)
    _exit_if_any_failed(cmp, 2 * cmp.episodes)


def _print_comparison(cmp, num_envs) -> None:
    seeds = (f"seed {cmp.seed}" if cmp.episodes == 1
             else f"seeds {cmp.seed}-{cmp.seed + cmp.episodes - 1}")
    turns = "one episode" if num_envs == 1 else f"a batch of {num_envs}"
    click.echo(f"{cmp.env_id}: model versions V1 and V2 on the same {seeds}, {turns} on each "
               f"in turn")
    how = "ActBatch" if num_envs > 1 else "Act"
    width = max(7, *(len(v) for v in cmp.versions))
    click.echo(f"    {'version':<{width}}  {'return mean':>12}  {'± std':>10}  {'n':>4}  "
               f"{'failed':>6}  {how + ' p50 ms':>11}")
    for i, (v, r) in enumerate(zip(cmp.versions, cmp.results)):
        mean, std = (f"{r.return_mean:.2f}", f"{r.return_std:.2f}") if r.returns else ("-", "-")
        p50 = f"{r.latency_ms['p50']:.3f}" if r.calls else "-"
        click.echo(f"V{i + 1}  {v:<{width}}  {mean:>12}  {'± ' + std:>10}  {len(r.returns):>4}  "
                   f"{len(r.failed) + r.not_run:>6}  {p50:>11}")
    n = cmp.pairs
    if n == 0:
        click.echo("no seed finished on both versions: no difference to report")
    else:
        line = f"V2 - V1: {cmp.difference:+.2f} over {n} pair(s)"
        if cmp.interval is not None:
            lo, hi = cmp.interval
            line += (f", {cmp.confidence:.0%} interval [{lo:+.2f}, {hi:+.2f}] (paired "
                     f"bootstrap, {cmp.resamples} resamples)")
        click.echo(line)
        name = ("V1", "V2") if cmp.versions[0] != cmp.versions[1] else ("the first run",
                                                                        "the second run")
        if cmp.constant and cmp.better is None:
            verdict = (f"no difference: both returned exactly the same on each of the {n} "
                       f"seeds (a deterministic env and policy), so the interval is [0, 0]")
        elif cmp.constant:
            verdict = (f"{name[cmp.better]} ({cmp.versions[cmp.better]}) is better by exactly "
                       f"{abs(cmp.difference):.2f} on each of the {n} seeds (nothing varies "
                       f"between seeds, so the interval is that one value)")
        elif n == 1:
            verdict = "one pair only: no interval (run more episodes)"
        elif cmp.better is not None:
            verdict = f"{name[cmp.better]} ({cmp.versions[cmp.better]}) is better: the " \
                      f"interval excludes 0"
        else:
            verdict = f"the interval contains 0: no difference shown at {n} pairs"
        click.echo(verdict)
        if cmp.interval is not None and n < 10:
            click.echo(f"note: a bootstrap interval over fewer than 10 pairs is narrower than "
                       f"{cmp.confidence:.0%} should be: run more episodes to rely on it")
    if cmp.pairs_dropped:
        click.echo(f"left out: {cmp.pairs_dropped} seed(s) that failed or did not run on "
                   f"either version")
    failovers = sum(r.failovers for r in cmp.results)
    if failovers:
        click.echo(f"failovers: {failovers} session(s) resumed on another server")
    for i, r in enumerate(cmp.results):
        for why in r.failed:
            click.echo(f"  failed on V{i + 1}: {why}")


def _exit_if_any_failed(runs, total: int) -> None:
    """After the report: exit 1 naming the failures (and the last one's reason) of several
    evaluations (a target curve, a comparison), if any episode failed or did not run."""
    if runs.failed or runs.not_run:
        last = next((r.failed[-1] for r in reversed(runs.results) if r.failed), "")
        raise click.ClickException(
            f"{runs.failed} of {total} episode(s) failed"
            + (f", {runs.not_run} not run" if runs.not_run else "")
            + (f": {last}" if last else ""))
