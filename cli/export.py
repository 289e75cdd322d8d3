"""`vidt export`: a trained run's actor -> one ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from .options import DiskPath, InputPath


@click.command()
@click.argument("run_dir", type=InputPath(file_okay=False))
@click.option("--out", type=DiskPath(dir_okay=False), default=None,
              help="ONNX file to write  [default: RUN_DIR/policy.onnx]")
@click.option("--actor", "which", type=click.Choice(["last", "best"]), default="last",
              show_default=True,
              help="last: the actor as training ended (or was stopped); best: the actor of the "
                   "run's best evaluation (kept as RUN_DIR/actor_best.pt). The file's metadata "
                   "says which.")
@click.option("--checkpoint", type=InputPath(dir_okay=False), default=None,
              help="Export this actor.pt or checkpoint.pt file instead of --actor's choice.")
@click.option("--opset", type=click.IntRange(14, 20), default=None,
              help="ONNX opset  [default: 17]")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def export(run_dir, out, which, checkpoint, opset, force, as_json):
    """Export the actor of RUN_DIR (from `vidt train`) to one self-describing ONNX file.

    \b
    Example:
      vidt export runs/hopper --out hopper.onnx
      vidt serve --model hopper.onnx

    The graph takes raw observations, actions, returns-to-go and a padding mask, and gives
    the action within the env's bounds. Before writing, it is checked against the PyTorch
    actor on 1,024 windows (random and from rollouts in the env); the file is written only if
    they agree within 1e-4.
    """
    from vidt.export import export as run_export
    from vidt.train.checkpoint import training_pid

    out = out or str(Path(run_dir) / "policy.onnx")
    if Path(out).exists() and not force:
        raise click.ClickException(f"{out} exists: pass --force to replace it, or another --out")
    pid = training_pid(run_dir)
    if pid is not None:
        click.echo(f"Note: {run_dir} is still being trained (pid {pid}): exporting its actor as "
                   f"of the last checkpoint", err=True)
    with tqdm(total=1024, desc="parity check", unit="window", leave=False,
              disable=None) as bar:
        report = run_export(run_dir, out, checkpoint=checkpoint, opset=opset, which=which,
                            progress=bar.update)
    m = report.metadata
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    click.echo(f"Wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, "
               f"model_version {m.model_version})")
    click.echo(f"Parity: max |torch - onnxruntime| = {report.max_abs_diff:.2e} over "
               f"{report.n_windows} windows ({report.n_real_windows} from {m.env_id} rollouts)")
    click.echo(f"Policy: {m.algo} on {m.env_id or '?'} ({m.actor_selection or 'last'} actor), "
               f"obs {m.obs_dim}, act {m.act_dim}, "
               f"K {m.context_len}, T_eval {m.eval_context_len}, "
               f"target return {m.default_target_return:g}")
    click.echo(f"Next: vidt serve --model {report.path}")
