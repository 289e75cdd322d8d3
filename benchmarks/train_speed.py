"""Time one online iteration's updates (every actor and critic step included) for vidt, odt
and td3, at the given presets, in one run, and report the vidt/odt ratio.

    python benchmarks/train_speed.py --presets small paper --env Hopper-v5 --threads 2

Data: random transitions of the env's own sizes (the update cost does not depend on them).
The per-iteration time is the measured time per actor update x updates_per_iter (300).
Timed updates per algorithm default to the preset's (`small` 20, `paper` 10 after 2 untimed:
a paper-size update takes 6-11 s on 2 CPU cores, and with 2 timed after 1 untimed the ratio
moved between 1.16 and 1.72 from run to run); `--updates` sets one count for all.

Where vidt's time goes (printed per preset): sampling, the TD target (the target actor's
no-grad forward over the `interval` critic batches, then the target critic), the critic
steps, the actor step (with the RL term through Q1) and the soft updates. The TD target's
forward over 2 batches costs about 2/3 of the actor's forward+backward over one, so vidt/odt
cannot fall below about 1 + td_targets / actor_step without skipping work; that floor is
printed beside the ratio. So is the ratio of arithmetic: FLOPs of one update of each, counted
by torch's FlopCounterMode (matrix products, forward and backward; elementwise work is not
counted): a time ratio below the FLOP ratio means vidt's extra work runs at least as
efficiently as odt's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vidt.data.episode import random_episodes
from vidt.envs import env_dims
from vidt.model.dt import DecisionTransformer, ModelSpec
from vidt.train.algos import ALGORITHMS
from vidt.train.buffer import SegmentSampler
from vidt.train.config import parse_set, resolve
from vidt.train.learner import Learner

DEFAULT_UPDATES = {"tiny": 50, "small": 20, "paper": 10}


def time_updates(env_id: str, algo: str, preset: str, updates: int, device: str,
                 warmup: int = 3, width: int | None = None, sets: dict | None = None) -> dict:
    over = {"device": device, **({"model.d_model": width} if width else {}), **(sets or {})}
    cfg = resolve(env_id, algo, preset, overrides=over)
    S, A = env_dims(env_id)
    torch.manual_seed(0)
    L = Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A), device)
    sampler = SegmentSampler(random_episodes(S, A, [200] * 20), cfg.model.context_len,
                             cfg.data.reward_scale)
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
    phases = time_phases(L, sampler, rng, updates, device) if cfg.algorithm.critic else {}
    with FlopCounterMode(display=False) as flops:  # matmul-like ops, forward and backward
        L.update(sampler, rng, rl=True)
    return {"phases_s": phases, "gflop_per_update": flops.get_total_flops() / 1e9, "env": env_id, "algo": algo, "preset": preset, "device": device,
            "d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer, "K": cfg.model.context_len,
            "batch": cfg.data.batch_size, "critic_steps_per_update":
                cfg.loss.actor_update_interval if cfg.algorithm.critic else 0,
            "timed_updates": updates, "s_per_actor_update": per_update,
            "s_per_iteration": per_update * cfg.online.updates_per_iter}


@contextlib.contextmanager
def plain_encode():
    """Time the plain path: every token through the last block (what encode() did before it
    computed the s_t tokens alone), for a side-by-side comparison."""
    cut = DecisionTransformer.encode
    DecisionTransformer.encode = DecisionTransformer.encode_every_token
    try:
        yield
    finally:
        DecisionTransformer.encode = cut


def time_phases(L: Learner, sampler, rng, updates: int, device: str) -> dict:
    """Learner.update's phases, timed by wrapping the learner's own step methods on this
    instance (the update itself carries no timing code). What no wrapper covers (splitting
    the batch, the loop) is reported as "other"."""
    sums: dict[str, float] = {}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            sums[name] = sums.get(name, 0.0) + time.perf_counter() - t
            return out
        return wrapper

    for name in ("batch", "td_targets", "critic_step", "actor_step", "soft_update_targets"):
        setattr(L, name, timed(name, getattr(L, name)))
    try:
        sync()
        t = time.perf_counter()
        for _ in range(updates):
            L.update(sampler, rng, rl=True)
        sync()
        total = time.perf_counter() - t
    finally:
        for name in ("batch", "td_targets", "critic_step", "actor_step", "soft_update_targets"):
            delattr(L, name)
    sums["other"] = total - sum(sums.values())
    return {k: v / updates for k, v in sums.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--updates", type=int, default=None,
                    help="timed updates per algorithm (default: tiny 50, small 20, paper 10)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed updates first (default: 3, paper 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--width", type=int, default=None, help="override model.d_model")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, e.g. amp_bf16=true")
    ap.add_argument("--compare-plain", action="store_true",
                    help="also time vidt and odt with every token through the last block")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = parse_set(args.sets)
    rows = []
    for preset in args.presets:
        updates = args.updates or DEFAULT_UPDATES[preset]
        warmup = args.warmup if args.warmup is not None else (2 if preset == "paper" else 3)
        res = {algo: time_updates(args.env, algo, preset, updates, args.device, warmup, args.width,
                                  sets)
               for algo in ALGORITHMS}
        ratio = res["vidt"]["s_per_actor_update"] / res["odt"]["s_per_actor_update"]
        flop_ratio = res["vidt"]["gflop_per_update"] / res["odt"]["gflop_per_update"]
        for r in res.values():
            r["vidt_over_odt"], r["flop_vidt_over_odt"] = ratio, flop_ratio
            r["path"] = "s_t only"
            rows.append(r)
        if args.compare_plain:
            with plain_encode():
                plain = {algo: time_updates(args.env, algo, preset, updates, args.device,
                                            warmup, args.width, sets) for algo in ("vidt", "odt")}
            ratio = plain["vidt"]["s_per_actor_update"] / plain["odt"]["s_per_actor_update"]
            flop_ratio = plain["vidt"]["gflop_per_update"] / plain["odt"]["gflop_per_update"]
            for algo, r in plain.items():
                r["vidt_over_odt"], r["flop_vidt_over_odt"] = ratio, flop_ratio
                r["path"] = "plain"
                r["cut_time_over_plain"] = (res[algo]["s_per_actor_update"]
                                            / r["s_per_actor_update"])
                r["cut_flop_over_plain"] = res[algo]["gflop_per_update"] / r["gflop_per_update"]
                rows.append(r)
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(),
                          "threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.env}, {dev}" + "".join(f", {k}={v}" for k, v in sets.items()))
    print(f"{'preset':7} {'algo':5} {'path':8} {'width':>5} {'K':>3} {'batch':>5} {'timed':>5} "
          f"{'s/actor upd':>11} {'s/iteration':>11} {'GFLOP/upd':>9} {'vidt/odt':>8} "
          f"{'in FLOPs':>8}")
    for r in rows:
        print(f"{r['preset']:7} {r['algo']:5} {r['path']:8} {r['d_model']:5d} {r['K']:3d} "
              f"{r['batch']:5d} {r['timed_updates']:5d} {r['s_per_actor_update']:11.4f} "
              f"{r['s_per_iteration']:11.2f} {r['gflop_per_update']:9.2f} "
              f"{r['vidt_over_odt']:8.2f} {r['flop_vidt_over_odt']:8.2f}")
    for r in rows:
        if "cut_time_over_plain" in r:
            print(f"{r['preset']} {r['algo']}: the s_t-only last block takes "
                  f"{r['cut_time_over_plain']:.3f}x the plain path's time and "
                  f"{r['cut_flop_over_plain']:.3f}x its FLOPs")
    for r in rows:
        ph = r["phases_s"]
        if r["algo"] != "vidt" or r["path"] != "s_t only" or not ph:
            continue
        floor = 1 + ph["td_targets"] / ph["actor_step"]
        print(f"vidt at {r['preset']} (width {r['d_model']}), s per update: "
              + ", ".join(f"{k} {v:.4f}" for k, v in ph.items())
              + f" (sum {sum(ph.values()):.4f}); floor without skipping work ~{floor:.2f}")


if __name__ == "__main__":
    main()
