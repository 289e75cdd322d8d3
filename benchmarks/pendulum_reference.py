"""Measure Pendulum-v1's reference returns (there is no D4RL reference for it).

min: a uniform random policy. max: an energy-pumping swing-up with a PD stabiliser near the
top, a classical controller that needs no learning. Each over the same seeds.

    python benchmarks/pendulum_reference.py --episodes 200
"""

from __future__ import annotations

import argparse

import numpy as np

from vidt.envs import make_env


def controller(obs: np.ndarray) -> np.ndarray:
    # Pendulum-v1: thetadd = 3g/(2l) sin(theta) + 3u/(m l^2), theta = 0 upright, g=10, m=l=1.
    cos_t, sin_t, thdot = (float(x) for x in obs)
    theta = np.arctan2(sin_t, cos_t)
    if cos_t > 0.8:  # near the top: PD stabiliser
        u = -12.0 * theta - 2.5 * thdot
    else:  # swing up: push along the velocity while energy is short of the upright's
        energy = 0.5 * thdot**2 + 15.0 * cos_t  # 15 = 3g/(2l): energy of resting upright
        u = 2.0 * np.sign(thdot or 1.0) if energy < 15.0 else -0.5 * thdot
    return np.array([np.clip(u, -2.0, 2.0)], dtype=np.float32)


def run(policy: str, episodes: int) -> np.ndarray:
    env = make_env("Pendulum-v1")
    env.action_space.seed(12345)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        done, ret = False, 0.0
        while not done:
            act = env.action_space.sample() if policy == "random" else controller(obs)
            obs, r, term, trunc, _ = env.step(act)
            ret += float(r)
            done = term or trunc
        returns.append(ret)
    return np.asarray(returns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    for name in ("random", "controller"):
        r = run(name, args.episodes)
        print(f"{name:10s} mean {r.mean():9.1f}  std {r.std():7.1f}  min {r.min():8.1f}  max {r.max():8.1f}")


if __name__ == "__main__":
    main()
