"""`vidt envs`: the env registry and each env's settings."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command("envs")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout.")
def envs(as_json):
    """List the envs vidt has settings for: context lengths, target returns, reward units and
    reference scores. Other Gymnasium envs train too, given their target returns and reward
    scale (`vidt train --set eval.target_return=... --set online.target_return=... --set
    data.reward_scale=...`). The per-family settings with the authors' values:
    docs/algorithm.md.
    """
    from vidt.envs import list_families

    fams = list_families()
    if as_json:
        click.echo(json.dumps([asdict(f) for f in fams]))
        return
    rows = [("env", "family", "K/T_eval", "eval/online target", "reward scale, offset, divisor",
             "reference min..max", "needs")]
    for f in fams:
        ref = f"{f.ref_min:g}..{f.ref_max:g}" if f.has_reference else "-"
        rows.append((f.env_id, f.family, f"{f.context_len}/{f.eval_context_len}",
                     f"{f.eval_target_return:g} / {f.online_target_return:g}",
                     f"{f.reward_scale:g}, {f.reward_offset:g}, {f.reward_divisor:g}", ref,
                     f"vidt[{f.requires}]" if f.requires else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
