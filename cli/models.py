"""`vidt models`: the versions in a model repository and which of them serve: promote, canary,
rollback. Torch free: it runs where `vidt serve` does (the serving image)."""

from __future__ import annotations

import json

import click

from .options import FiniteFloat, InputPath

DIR = click.argument("root", metavar="DIR", type=InputPath(file_okay=False))
JSON = click.option("--json", "as_json", is_flag=True,
                    help="Print one JSON object on stdout: the pointer before and after.")


def _repo(root):
    from vidt.serving.repository import ModelRepository

    return ModelRepository(root)


@click.group("models")
def models():
    """A model repository: the policy files a `vidt serve --model-repo DIR` fleet serves, and
    which of them new sessions run on.

    \b
    DIR holds exported policy files (*.onnx, each known by its model version, the hash of
    its content) and DIR/pointer.toml, the pointer:
      current          the version new sessions run on
      canary           a version that a fraction of new sessions run on instead
      canary_fraction  that fraction, in (0, 1]
      previous         the version a rollback makes current again
    These commands rewrite the pointer atomically (a server never reads half of it). Running
    servers reread it on SIGHUP and every few seconds; open sessions finish on the version
    they began on. A file from outside DIR is copied in as DIR/<version>.onnx; a file for
    another env, other sizes or other action bounds than the current version is refused.

    \b
    Example:
      vidt models promote models/ runs/a/policy.onnx   # the first version
      vidt models canary models/ runs/b/policy.onnx --fraction 0.1
      vidt models list models/
      vidt models promote models/ VERSION              # the canary, for every new session
      vidt models rollback models/                     # back to the one before
    """


def _repo_changed(root, as_json, command, change):
    """Run change(repo) -> new pointer and say what it changed: one line, or one object."""
    repo = _repo(root)
    before = repo.read_pointer()
    after = change(repo)
    if as_json:
        click.echo(json.dumps({"command": command, "repository": str(repo.root),
                               "before": before.as_dict(), "after": after.as_dict()}))
    else:
        click.echo(_describe(before, after))
    if after != before:
        click.echo(f"Running servers take it up on SIGHUP or within a few seconds "
                   f"({repo.pointer_path}).", err=True)


def _describe(before, after) -> str:
    def canary(p):
        return f"{p.canary} at {_percent(p.canary_fraction)}" if p.canary else "none"

    changes = [f"{key} {old or 'none'} -> {new or 'none'}"
               for key, old, new in (("current", before.current, after.current),
                                     ("previous", before.previous, after.previous))
               if old != new]
    if canary(before) != canary(after):
        changes.append(f"canary {canary(before)} -> {canary(after)}")
    return ", ".join(changes) or f"no change (current {after.current or 'none'}, canary " \
                                 f"{canary(after)})"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@models.command("list", short_help="The versions in DIR, which serve, and the files that cannot.")
@DIR
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout: the pointer, the valid files and the "
                   "invalid ones with why.")
def list_cmd(root, as_json):
    """The policy files in DIR (version, env, sizes, which serve) and those that cannot serve,
    each with why. A pointer that names a missing or broken file is reported after the list
    (exit status 1).

    \b
    Example:
      vidt models list models/
      vidt models list models/ --json
    """
    from vidt.errors import VidtError

    repo = _repo(root)
    valid, invalid = repo.scan()
    try:
        pointer, pointer_error = repo.read_pointer(), None
    except VidtError as e:
        pointer, pointer_error = None, e
    roles = {}
    if pointer is not None:
        roles = {v: r for v, r in ((pointer.previous, "previous"),
                                   (pointer.canary, f"canary {_percent(pointer.canary_fraction)}"),
                                   (pointer.current, "current")) if v}
    order = {"current": 0, "canary": 1, "previous": 2}
    entries = sorted(valid.values(), key=lambda e: (order.get(roles.get(e.version, "-")
                                                              .split()[0], 3), e.path.name))
    if as_json:
        click.echo(json.dumps({
            "repository": str(repo.root),
            "pointer": pointer.as_dict() if pointer else None,
            "pointer_error": str(pointer_error) if pointer_error else None,
            "models": [{"version": e.version, "file": e.path.name, "model_name": e.model_name,
                        "env_id": e.env_id, "obs_dim": e.obs_dim, "act_dim": e.act_dim,
                        "context_len": e.context_len, "size": e.size,
                        "role": roles.get(e.version, "").split(" ")[0] or None}
                       for e in entries],
            "invalid": [{"file": p.name, "reason": why} for p, why in invalid.items()],
        }))
    else:
        if not valid and not invalid:
            click.echo(f"no policy files (*.onnx) in {repo.root}")
        if entries:
            rows = [("version", "file", "env", "obs/act", "K", "size", "serving")]
            rows += [(e.version, e.path.name, e.env_id or "-", f"{e.obs_dim}/{e.act_dim}",
                      str(e.context_len), _size(e.size), roles.get(e.version, ""))
                     for e in entries]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for path, why in invalid.items():
            click.echo(f"{path.name}: cannot serve: {why}")
    if pointer_error is not None:
        raise pointer_error


@models.command(short_help="Make a version current (the current one becomes previous).")
@DIR
@click.argument("ref", metavar="FILE|VERSION")
@JSON
def promote(root, ref, as_json):
    """Make FILE|VERSION the version new sessions run on; the current one becomes previous
    (for `vidt models rollback`). A canary of the same version ends.

    \b
    FILE|VERSION: a model version in DIR, a file name in DIR, or the path of a policy file
    anywhere (copied into DIR as <version>.onnx).
    """
    _repo_changed(root, as_json, "promote", lambda repo: repo.promote(ref))


@models.command(short_help="Run a version beside the current one for a share of new sessions.")
@DIR
@click.argument("ref", metavar="[FILE|VERSION]", required=False)
@click.option("--fraction", type=FiniteFloat(), required=True,
              help="Share of new sessions sent to the canary, in [0, 1]; 0 ends the canary "
                   "(then no FILE|VERSION is needed).")
@JSON
def canary(root, ref, fraction, as_json):
    """Run FILE|VERSION beside the current version for a fraction of new sessions, until it is
    promoted or ended with --fraction 0. It must fit the current version: same env, sizes and
    action bounds.

    \b
    Example:
      vidt models canary models/ runs/b/policy.onnx --fraction 0.1
      vidt models canary models/ --fraction 0          # end it
    """
    if not 0 <= fraction <= 1:
        raise click.BadParameter(f"{fraction:g} is not in [0, 1]", param_hint="--fraction")
    if ref is None and fraction > 0:
        raise click.UsageError("name the canary (FILE|VERSION), or give --fraction 0 to end "
                               "the canary")
    _repo_changed(root, as_json, "canary", lambda repo: repo.set_canary(ref, fraction))


@models.command(short_help="Make the previous version current again.")
@DIR
@JSON
def rollback(root, as_json):
    """Make the previous version current again (and the current one previous: a second
    rollback undoes the first)."""
    _repo_changed(root, as_json, "rollback", lambda repo: repo.rollback())
