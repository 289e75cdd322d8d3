"""Actor latency: PyTorch eager vs onnxruntime, batch 1 and batch 64, `small` and `paper` sizes.

Hopper-v5 sizes (obs 11, act 3), random weights (latency does not depend on training), full
windows. Both runtimes get the same thread count. Each cell is timed for about --seconds
after a warm-up and reported as the median and p90 of single calls. The onnxruntime column
times `OnnxPolicy.predict`, the call the server and collection make (input checks included).
With onnxruntime-gpu and a GPU, the CUDA provider is timed too.

    python benchmarks/inference.py                 # both sizes, about a minute on 2 cores
    python benchmarks/inference.py --sizes small --json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vidt.export import export_actor, random_windows
from vidt.model import Actor, DecisionTransformer, ModelConfig, ModelSpec
from vidt.policy_file import OnnxPolicy, _gpu_visible

OBS, ACT = 11, 3  # Hopper-v5


def model_config(size: str) -> ModelConfig:
    if size == "paper":  # the paper's MuJoCo setting
        return ModelConfig(context_len=20, d_model=512, n_layer=4, n_head=4)
    try:  # the trainer's own `small` preset, so the numbers describe what it trains
        from vidt.train.config import default_dict

        m = default_dict("Hopper-v5", preset="small")["model"]
        return ModelConfig(context_len=m["context_len"], d_model=m["d_model"],
                           n_layer=m["n_layer"], n_head=m["n_head"])
    except (ImportError, KeyError):
        return ModelConfig(context_len=20, d_model=128, n_layer=3, n_head=1)


def make_actor(cfg: ModelConfig) -> Actor:
    torch.manual_seed(0)
    dt = DecisionTransformer(ModelSpec(OBS, ACT), cfg)
    return Actor(dt, np.zeros(OBS), np.ones(OBS), 0.001, -np.ones(ACT), np.ones(ACT)).eval()


def time_calls(fn, seconds: float, min_calls: int = 5, max_calls: int = 5000) -> np.ndarray:
    """Latencies (ms) of single calls: warm-up, then until `seconds` or max_calls."""
    for _ in range(5):
        fn()
    out = []
    end = time.perf_counter() + seconds
    while len(out) < max_calls and (len(out) < min_calls or time.perf_counter() < end):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return np.asarray(out)


def bench_size(size: str, batches: list[int], threads: int, seconds: float, tmp: Path) -> list[dict]:
    cfg = model_config(size)
    actor = make_actor(cfg)
    meta = dict(env_id="Hopper-v5", algo="vidt", eval_context_len=cfg.context_len,
                eval_target_return=3600.0, max_episode_steps=1000)
    path = tmp / f"{size}.onnx"
    report = export_actor(actor, meta, path, n_windows=128)
    runtimes = {"onnxruntime-cpu": OnnxPolicy(path, provider="cpu", intra_op_threads=threads,
                                              inter_op_threads=1)}
    if "CUDAExecutionProvider" in ort.get_available_providers() and _gpu_visible():
        runtimes["onnxruntime-cuda"] = OnnxPolicy(path, provider="cuda")
    params = sum(p.numel() for p in actor.parameters())
    rows = []
    for B in batches:
        w = random_windows(actor, B, np.random.default_rng(B), 3600.0)
        w = type(w)(w.observations, w.actions, w.returns_to_go, np.ones_like(w.mask), w.timesteps)
        feed = [torch.from_numpy(v) for v in w.as_feed().values()]

        def eager(feed=feed):
            with torch.inference_mode():
                return actor(*feed).numpy()

        row = {"size": size, "batch": B, "params": params, "K": cfg.context_len,
               "d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
               "parity_max_abs_diff": report.max_abs_diff}
        lat = {"torch-eager": time_calls(eager, seconds)}
        for name, policy in runtimes.items():
            lat[name] = time_calls(lambda policy=policy, w=w: policy.predict(w), seconds)
        for name, ms in lat.items():
            row[f"{name}_p50_ms"] = float(np.median(ms))
            row[f"{name}_p90_ms"] = float(np.percentile(ms, 90))
            row[f"{name}_calls"] = len(ms)
        for name in runtimes:
            row[f"speedup_{name}"] = row["torch-eager_p50_ms"] / row[f"{name}_p50_ms"]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="intra-op threads for both runtimes (default: torch's default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for s in args.sizes
                for r in bench_size(s, args.batches, args.threads, args.seconds, Path(tmp))]
    env = {"torch": torch.__version__, "onnxruntime": ort.__version__, "threads": args.threads,
           "machine": f"{platform.machine()}, {platform.processor() or '?'}"}
    if args.json:
        print(json.dumps({"env": env, "rows": rows}))
        return
    print(f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {args.threads} threads each; "
          "Hopper-v5 sizes (obs 11, act 3); median (p90) ms per call")
    for r in rows:
        cells = [f"{n} {r[f'{n}_p50_ms']:.3f} ({r[f'{n}_p90_ms']:.3f})"
                 for n in ("torch-eager", "onnxruntime-cpu", "onnxruntime-cuda")
                 if f"{n}_p50_ms" in r]
        ratios = [f"{k[len('speedup_'):]} x{v:.2f}" for k, v in r.items() if k.startswith("speedup_")]
        print(f"{r['size']:>5} (d {r['d_model']}, {r['n_layer']} layers, {r['n_head']} heads, "
              f"K {r['K']}, {r['params'] / 1e6:.2f}M params) batch {r['batch']:>3}: "
              + " | ".join(cells) + " | speedup " + ", ".join(ratios))


if __name__ == "__main__":
    main()
