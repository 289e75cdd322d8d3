"""Collection speed of `vidt collect` (random policy, Minari output) against a plain Gymnasium
loop on the same env, measured side by side in one run (these machines are noisy, so the
two alternate and the ratio of medians is what counts).

    python benchmarks/collect_speed.py --env Hopper-v5 --steps 20000 --repeats 3

Target: at least 0.8x the plain loop.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from vidt.data.collect import collect
from vidt.envs import make_env


def plain_loop(env_id: str, steps: int, seed: int) -> float:
    t0 = time.perf_counter()
    env = make_env(env_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    env.close()
    return steps / (time.perf_counter() - t0)


def vidt_collect(env_id: str, steps: int, seed: int, tmp: Path, i: int) -> float:
    t0 = time.perf_counter()
    collect(env_id, tmp / f"run{i}", steps, seed=seed)  # includes writing the Minari dataset
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", action="append", help="repeatable; default Hopper-v5 and Pendulum-v1")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'env':14s} {'plain steps/s':>14s} {'vidt steps/s':>13s} {'ratio':>6s}")
    for env_id in args.env or ["Hopper-v5", "Pendulum-v1"]:
        tmp = Path(tempfile.mkdtemp(prefix="vidt-bench-"))
        try:
            plain, ours = [], []
            for i in range(args.repeats):  # alternate so drift hits both alike
                plain.append(plain_loop(env_id, args.steps, seed=i))
                ours.append(vidt_collect(env_id, args.steps, i, tmp, i))
            p, o = statistics.median(plain), statistics.median(ours)
            print(f"{env_id:14s} {p:14.0f} {o:13.0f} {o / p:6.2f}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
