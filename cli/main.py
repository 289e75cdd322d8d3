"""The `vidt` command: one click group; each command lives in its own module, loaded lazily
so that `vidt --help` stays fast and `vidt serve` never imports torch."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

import vidt
from vidt.errors import VidtError

from .options import debug_enabled

# name -> (module, attribute, one-line help, what it needs beyond a serving install). A command
# whose module is absent is not listed: nothing pretends to exist before it is built. One whose
# needs are missing (the serving image has no torch, Ray, Minari or matplotlib) is not listed
# either, and asking for it says so in one line.
COMMANDS = {
    "collect": ("vidt.cli.collect", "collect", "Record a dataset from an env and a policy.",
                ("tqdm", "minari", "h5py")),
    "datasets": ("vidt.cli.datasets", "datasets", "Inspect datasets.", ("minari", "h5py")),
    "envs": ("vidt.cli.envs", "envs", "List the envs vidt has settings for.", ()),
    "train": ("vidt.cli.train", "train", "Pretrain offline and finetune online: ViDT, ODT, TD3.",
              ("torch", "tqdm", "minari", "h5py")),
    "export": ("vidt.cli.export", "export", "Export a trained actor to one ONNX file.",
               ("torch", "onnx", "tqdm")),
    "serve": ("vidt.cli.serve", "serve", "Serve an ONNX policy over gRPC.", ()),
    "models": ("vidt.cli.models", "models",
               "A model repository: its versions; promote, canary, roll back.", ()),
    "eval": ("vidt.cli.eval", "eval_cmd", "Run Gymnasium episodes against a live server.",
             ("tqdm",)),
    "sweep": ("vidt.cli.sweep", "sweep", "Run a grid of trainings as Ray tasks.",
              ("torch",)),  # Ray is an extra of its own: `vidt sweep` says how to get it
    "report": ("vidt.cli.report", "report", "Tables, statistics and curves over many runs.",
               ("matplotlib",)),
}


def _missing(needs: tuple[str, ...]) -> list[str]:
    return [m for m in needs if importlib.util.find_spec(m) is None]


def _available() -> dict[str, tuple]:
    return {n: c for n, c in COMMANDS.items()
            if importlib.util.find_spec(c[0]) is not None and not _missing(c[3])}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_available())

    def get_command(self, ctx, name):
        entry = _available().get(name)
        if entry is None:
            known = COMMANDS.get(name)
            if known is not None and importlib.util.find_spec(known[0]) is not None:
                raise click.ClickException(
                    f"`vidt {name}` needs {', '.join(_missing(known[3]))}, which this "
                    "installation lacks (a serving-only one, such as the serving image): "
                    "install vidt with its training dependencies (pip install vidt)")
            return None
        return getattr(importlib.import_module(entry[0]), entry[1])

    def format_commands(self, ctx, formatter):
        rows = [(n, c[2]) for n, c in sorted(_available().items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vidt.__version__, prog_name="vidt")
def cli():
    """vidt: Decision Transformers from offline data to a served policy.

    \b
    A typical session:
      vidt collect --env Pendulum-v1 --policy random --steps 10000 --out data/pendulum
      vidt datasets info data/pendulum
      vidt train --env Pendulum-v1 --dataset data/pendulum --preset small --out runs/p
      vidt export runs/p --out p.onnx
      vidt serve --model p.onnx --port 50051
      vidt eval --server 127.0.0.1:50051 --env Pendulum-v1 --episodes 10

    \b
    Exit status (the message says what is wrong):
      0    success
      1    the command line is right but names something that is wrong: a file
           missing or broken, a dataset or env that does not fit, a server that
           refuses or cannot be reached, a busy port or run directory, a full disk
      2    a mistake in the command line itself: an unknown option or config key,
           a value its option or --set key cannot hold, a missing option, options
           that do not go together (`vidt CMD --help` says what each takes)
      130  interrupted

    VIDT_DEBUG=1 shows tracebacks.
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="vidt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except VidtError as e:
        if debug_enabled():
            raise
        click.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as e:  # the machine's problem, not a bug of ours: disk full, permissions...
        if debug_enabled():
            raise
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
