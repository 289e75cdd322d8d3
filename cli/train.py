"""`vidt train`: offline pretraining, then online finetuning (the algorithms of
vidt.train.algos)."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import click

from vidt.train.algos import ALGORITHMS
from vidt.train.config import DEVICES, PRESETS, TrainConfig

from .options import DiskPath

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


class AlgorithmChoice(click.Choice):
    """The algorithm table's names, read when the option is parsed (an entry added to
    ALGORITHMS is a valid --algo at once)."""

    def __init__(self):
        super().__init__(ALGORITHMS)

    @property
    def choices(self):
        return tuple(ALGORITHMS)

    @choices.setter
    def choices(self, value):
        pass


def _parse_sets(ctx, param, items) -> dict[str, str]:
    """--set KEY=VALUE entries, each checked on its own as click checks a typed option: the
    form, a key the config has, a value that key can hold. A mistake is a usage error."""
    from vidt.errors import ConfigError
    from vidt.train.config import parse_set, typed_value

    try:
        sets = parse_set(items)
        for key, value in sets.items():
            typed_value(key, value)
    except ConfigError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    return sets


def _algo_help() -> str:
    names = "; ".join(f"{a.name}: {a.notes}" for a in ALGORITHMS.values())
    return f"Algorithm. {names}  [default: {DEFAULTS['algo']}]"


@click.command()
@click.option("--env", "env_id", default=None, help="Gymnasium env id, e.g. Pendulum-v1 or vidt/OneState-v0.")
@click.option("--dataset", default=None,
              help="Offline data: Minari dir or id, or D4RL .hdf5 file. Optional for vidt/OneState-v0.")
@click.option("--algo", type=AlgorithmChoice(), default=None, help=_algo_help())
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help=f"Model and budget size: tiny (tests), small (CPU), paper (GPU)  "
                   f"[default: {DEFAULTS['preset']}]")
@click.option("--online-steps", type=click.IntRange(min=0), default=None, help="Online env-step budget.")
@click.option("--pretrain-updates", type=click.IntRange(min=0), default=None,
              help="Offline actor updates before going online.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help=f"Random seed  [default: {DEFAULTS['seed']}]")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help=f"auto: CUDA when available  [default: {DEFAULTS['device']}]")
@click.option("--config", "config_file", type=DiskPath(dir_okay=False), default=None,
              help="TOML file of config values ([model], [online], ... tables).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", callback=_parse_sets,
              help="Override any config field, e.g. --set model.d_model=64 (repeatable).")
@click.option("--out", "out", type=DiskPath(file_okay=False), default=None,
              help="Run directory (required, except with --dry-run).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--force", is_flag=True, help="Start over in a non-empty --out (replaces our files only).")
@click.option("--pretrained-from", "pretrained_from", type=DiskPath(file_okay=False, exists=True),
              default=None, metavar="RUN_DIR",
              help="Skip pretraining: start from RUN_DIR/pretrained.pt, the state another run "
                   "reached when its pretraining ended. Its settings must equal this run's "
                   "except algo (one pretrained alike) and the online loss coefficients.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config as JSON and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(env_id, dataset, algo, preset, online_steps, pretrain_updates, seed, device, config_file,
          sets, out, resume, force, pretrained_from, dry_run, as_json, no_progress):
    """Pretrain a decision transformer offline, then finetune it online.

    \b
    Examples:
      vidt train --env vidt/OneState-v0 --preset tiny --out runs/onestate
      vidt train --env Pendulum-v1 --dataset data/pendulum --preset small --out runs/p
      vidt train --env Pendulum-v1 --dataset data/pendulum --set model.d_model=128 --out runs/p2

    Precedence, later wins: the env family's settings, the preset, the algorithm, the
    --config file, then the flags and --set (a flag and a --set naming the same field must
    agree). --dry-run prints the result.

    The run directory gets config.json, metrics.csv, TensorBoard events (tb/),
    learning_curve.png, checkpoint.pt (resumable), actor.pt (for `vidt export`) and
    pretrained.pt (the state when pretraining ended, for `--pretrained-from`).
    Ctrl-C writes a checkpoint; `--resume` continues from it.
    """
    from vidt.train.config import TrainConfig, flatten_dict, read_run_config, read_toml, typed_value

    if out is None and not dry_run:
        raise click.UsageError("Missing option '--out' (the run directory).")
    run_dir = Path(out or ".")
    flags = {"env_id": env_id, "dataset": dataset, "algo": algo, "preset": preset,
             "online.online_steps": online_steps, "online.pretrain_updates": pretrain_updates,
             "seed": seed, "device": device}
    flags = {k: v for k, v in flags.items() if v is not None}
    for key in flags.keys() & sets.keys():
        if typed_value(key, sets[key]) != typed_value(key, flags[key]):
            option = "--" + key.rsplit(".", 1)[-1].replace("_", "-").replace("env-id", "env")
            raise click.UsageError(f"{option} {flags[key]} and --set {key}={sets[key]} "
                                   f"disagree: give the value once")
    # Under the command line's values: the run's own config when resuming (read_run_config
    # says "nothing to resume" when there is no config.json), then the --config file.
    base = read_run_config(run_dir) if resume else None
    below = {**(flatten_dict(base) if base else {}),
             **(read_toml(config_file) if config_file else {})}
    if "env_id" not in {**below, **flags, **sets}:
        raise click.UsageError("--env is required (or env_id in --config)")
    cfg = _resolve(below, {**flags, **sets})
    assert isinstance(cfg, TrainConfig)
    from vidt.train.trainer import check_inputs
    from vidt.train.trainer import train as run_train

    if dry_run:
        check_inputs(cfg)  # everything a real run checks before training
        click.echo(cfg.to_json())
        return
    if resume and not _say_what_resume_does(run_dir, base, cfg):
        return

    result = run_train(cfg, run_dir, resume=resume, force=force, pretrained_from=pretrained_from,
                       progress=not no_progress and not as_json and sys.stderr.isatty())
    summary = {
        "run_dir": str(result.run_dir), "env_id": cfg.env_id, "algo": cfg.algo,
        "online_env_steps": result.online_env_steps, "actor_updates": result.actor_updates,
        "wall_time_s": round(result.wall_time_s, 2),
        "final_eval_return_mean": result.final_eval_return_mean,
        "final_eval_return_std": result.final_eval_return_std,
        "final_normalized_score": result.final_normalized_score,
        "interrupted": result.interrupted,
        "pretrained_from": result.pretrained_from,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        ev = result.final_eval_return_mean
        if result.pretrained_from:
            click.echo(f"Pretraining: {result.pretrained_from}", err=True)
        click.echo(f"{'Interrupted' if result.interrupted else 'Done'}: {cfg.algo} on {cfg.env_id}, "
                   f"{result.online_env_steps} online steps, {result.actor_updates} actor updates, "
                   f"{result.wall_time_s:.1f} s; last eval return "
                   f"{'-' if ev is None else f'{ev:.4g} ± {result.final_eval_return_std:.3g}'}",
                   err=True)
        if result.interrupted:
            click.echo(f"Checkpoint written. Continue with: vidt train --out {run_dir} --resume",
                       err=True)
        else:
            click.echo(f"Next: vidt export {run_dir}", err=True)
    if result.interrupted:
        sys.exit(130)


# What names a thing outside the command line (an env, a dataset): a wrong one is a problem
# with that thing, exit 1, wherever it is named. Every other value the command line gives is
# checked as part of it.
_NAMES = ("env_id", "dataset")


def _resolve(below: dict, given: dict):
    """The run's config: `given` (the flags and --set) over `below` (a resumed run's config,
    the --config file). A value the config check refuses only once the command line's own
    values are applied is a mistake in the command line: a usage error, as click's range
    checks make it. Anything else wrong (the file's values, an env or dataset that does not
    fit) stays a ConfigError, exit 1."""
    from vidt.errors import ConfigError
    from vidt.train.config import resolve

    def build(over: dict):
        over = {**below, **over}
        return resolve(over["env_id"], over.get("algo", DEFAULTS["algo"]),
                       over.get("preset", DEFAULTS["preset"]), overrides=over)

    try:
        return build(given)
    except ConfigError as e:
        try:
            build({k: v for k, v in given.items() if k in _NAMES})
        except ConfigError:
            raise e from None
        raise click.UsageError(str(e)) from None


def _say_what_resume_does(run_dir: Path, saved: dict, cfg) -> bool:
    """Whether there is anything to train; says so when the budget changes or is spent. Reads
    the checkpoint as the trainer would, so a damaged one is reported either way."""
    from vidt.train.checkpoint import CHECKPOINT, load_file
    from vidt.train.trainer import online_done

    if not (run_dir / CHECKPOINT).exists():
        return True  # nothing checkpointed yet: the trainer starts the run over
    state = load_file(run_dir / CHECKPOINT)
    try:
        done = int(state["counters"]["online_env_steps"])
        midway = bool(state["counters"]["iter_collected"])
    except (KeyError, TypeError, ValueError):
        return True  # the trainer reports what is wrong with it
    was, now = int(saved["online"]["online_steps"]), cfg.online.online_steps
    if online_done(done, midway, now):
        click.echo(f"{run_dir} has finished: {done} online steps, its budget is {now}. "
                   f"Nothing to do; pass --online-steps N (more than {done}) to extend it.",
                   err=True)
        return False
    if now != was:
        what = "Extending the finished run" if done >= was else "Continuing the run"
        click.echo(f"{what} from {done} online steps with a budget of {now} (was {was}).",
                   err=True)
    return True
