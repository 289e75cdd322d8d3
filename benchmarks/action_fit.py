"""How closely does a run's actor imitate its dataset's actions, at the bounds and inside them?

The action an evaluation takes (the deterministic head's output; for ODT's tanh-Gaussian
head, tanh of its mean) against the data's action at the last step of sampled context
windows, split into the actions at the bounds of the action space (|a| > 0.99 once scaled
to [-1, 1]: a bang-bang controller's) and the rest. For a tanh-Gaussian head also its
standard deviation (before the tanh) on each part: a wide Gaussian puts most of its mass
near both bounds, so it can score a saturated action well while its mean, which is what
the evaluation uses, stays near 0.

    python benchmarks/action_fit.py DATASET RUN_DIR [RUN_DIR ...] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vidt.data import load
from vidt.train.buffer import SegmentSampler
from vidt.train.checkpoint import load_actor
from vidt.train.losses import Batch

BOUND = 0.99  # |action| in [-1, 1] beyond which an action counts as at the bound


def fit(run_dir: str, dataset: str, windows: int, seed: int) -> dict:
    actor, meta = load_actor(run_dir)
    episodes = load(dataset, meta["env_id"])
    sampler = SegmentSampler(episodes, meta["context_len"], meta["reward_scale"])
    b = Batch.from_segments(sampler.sample(windows, np.random.default_rng(seed)), actor, "cpu")
    with torch.no_grad():
        taken = actor.model(*b.inputs)[:, -1]  # (N, A) what an evaluation does
        data = b.actions[:, -1]  # (N, A)
        at_bound = data.abs() > BOUND
        err = (taken - data).abs()
        mean = lambda x: float(x.mean()) if x.numel() else None  # noqa: E731 (None: no such action)
        out = {"run": run_dir, "algo": meta["algo"], "windows": windows,
               "share_at_bound": float(at_bound.float().mean()),
               "err_at_bound": mean(err[at_bound]), "err_inside": mean(err[~at_bound])}
        if meta["stochastic"]:
            std = actor.model.distribution(*b.inputs).base.stddev[:, -1]  # (N, A)
            out["std_at_bound"] = mean(std[at_bound])
            out["std_inside"] = mean(std[~at_bound])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--windows", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [fit(r, args.dataset, args.windows, args.seed) for r in args.runs]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'run (last 3 parts)':30} {'algo':5} {'at bound':>8} {'|err| bound':>11} {'|err| inside':>12} "
          f"{'std bound':>9} {'std inside':>10}")
    def cell(x, width):
        return f"{'-':>{width}}" if x is None else f"{x:{width}.3f}"

    for r in rows:
        print(f"{'/'.join(Path(r['run']).parts[-3:]):30} {r['algo']:5} {r['share_at_bound']:8.3f} "
              f"{cell(r['err_at_bound'], 11)} {cell(r['err_inside'], 12)} "
              f"{cell(r.get('std_at_bound'), 9)} {cell(r.get('std_inside'), 10)}")


if __name__ == "__main__":
    main()
