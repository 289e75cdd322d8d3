"""Time one online iteration's updates (every actor and critic step included) for vidt, odt
and td3, at the given presets, in one run, and report the vidt/odt ratio.

    python benchmarks/train_speed.py --presets small paper --env Hopper-v5 --updates 20

Data: random transitions of the env's own sizes (the update cost does not depend on them).
The per-iteration time is the measured time per actor update x updates_per_iter (300).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from vidt.data.episode import Episode
from vidt.envs import env_dims
from vidt.model.dt import ModelSpec
from vidt.train.buffer import SegmentSampler
from vidt.train.config import resolve
from vidt.train.learner import Learner


def random_episodes(S: int, A: int, n: int = 20, T: int = 200, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = rng.normal(size=(T + 1, S)).astype(np.float32)
        out.append(Episode(obs[:-1], rng.uniform(-1, 1, (T, A)).astype(np.float32),
                           rng.normal(size=T).astype(np.float32), obs[1:], truncated=True))
    return out


def time_updates(env_id: str, algo: str, preset: str, updates: int, device: str,
                 warmup: int = 3) -> dict:
    cfg = resolve(env_id, algo, preset, overrides={"device": device})
    S, A = env_dims(env_id)
    torch.manual_seed(0)
    L = Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A), device)
    sampler = SegmentSampler(random_episodes(S, A), cfg.model.context_len, cfg.data.reward_scale)
    rng = np.random.default_rng(0)
    for _ in range(warmup):
        L.update(sampler, rng, rl=True)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(updates):
        L.update(sampler, rng, rl=True)
    if device == "cuda":
        torch.cuda.synchronize()
    per_update = (time.perf_counter() - t) / updates
    return {"env": env_id, "algo": algo, "preset": preset, "device": device,
            "d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer, "K": cfg.model.context_len,
            "batch": cfg.data.batch_size, "critic_steps_per_update":
                cfg.loss.actor_update_interval if cfg.uses_critic else 0,
            "s_per_actor_update": per_update,
            "s_per_iteration": per_update * cfg.online.updates_per_iter}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets:
        res = {algo: time_updates(args.env, algo, preset, args.updates, args.device, args.warmup)
               for algo in ("odt", "vidt", "td3")}
        ratio = res["vidt"]["s_per_actor_update"] / res["odt"]["s_per_actor_update"]
        for r in res.values():
            r["vidt_over_odt"] = ratio
            rows.append(r)
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(),
                          "threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.env}, {dev}, {args.updates} timed updates each")
    print(f"{'preset':7} {'algo':5} {'width':>5} {'K':>3} {'batch':>5} {'s/actor upd':>11} "
          f"{'s/iteration':>11} {'vidt/odt':>8}")
    for r in rows:
        print(f"{r['preset']:7} {r['algo']:5} {r['d_model']:5d} {r['K']:3d} {r['batch']:5d} "
              f"{r['s_per_actor_update']:11.4f} {r['s_per_iteration']:11.2f} {r['vidt_over_odt']:8.2f}")


if __name__ == "__main__":
    main()
