"""`make gpu-check`: everything vidt does on CUDA, measured in one call (at most ~8 minutes).

    python scripts/gpu_check.py [--out DIR]          # on a CUDA machine: the table + gpu_check.json
    python scripts/gpu_check.py --device cpu --quick # the same code paths on the CPU, tiny sizes

Sections (each reports "skipped: why" instead of failing when a package is missing):
  updates   ODT / ViDT / TD3 updates per second at the paper preset: fp32, bf16 (amp_bf16) and
            the bf16 TD target, with the ViDT/ODT ratios
  switches  the bf16 and compile tests (tests/test_train_switches.py) on CUDA
  hopper    a short ViDT run on Hopper-v5 with --device cuda: wall time and peak GPU memory
  ort       onnxruntime's CUDA provider (onnxruntime-gpu): parity with the CPU provider, and
            batch-1 / batch-64 latency of the paper-size actor
Without CUDA (and without --device cpu) it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # train_speed's timing code


def section(name: str, fn, results: dict, budget_end: float) -> None:
    if time.monotonic() > budget_end:
        results[name] = {"skipped": "out of the time budget"}
        return
    t0 = time.monotonic()
    try:
        results[name] = fn()
    except ModuleNotFoundError as e:
        results[name] = {"skipped": f"{e.name} is not installed"}
    except Exception as e:  # one section failing must not hide the others
        results[name] = {"failed": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc(limit=5)}
    results[name]["seconds"] = round(time.monotonic() - t0, 1)


def updates(device: str, preset: str, n: int) -> dict:
    from train_speed import time_updates

    out = {}
    for label, sets in (("fp32", {}), ("bf16", {"amp_bf16": True}),
                        ("bf16_td_target", {"bf16_td_target": True})):
        row = {}
        for algo in ("odt", "vidt", "td3"):
            r = time_updates("Hopper-v5", algo, preset, n, device, warmup=2, sets=sets)
            row[algo] = {"updates_per_s": 1.0 / r["s_per_actor_update"],
                         "gflop_per_update": r["gflop_per_update"]}
        row["vidt_over_odt_time"] = row["odt"]["updates_per_s"] / row["vidt"]["updates_per_s"]
        row["vidt_over_odt_flops"] = (row["vidt"]["gflop_per_update"]
                                      / row["odt"]["gflop_per_update"])
        out[label] = row
    out["bf16_speedup_vidt"] = (out["bf16"]["vidt"]["updates_per_s"]
                                / out["fp32"]["vidt"]["updates_per_s"])
    return out


def switches(device: str) -> dict:
    import pytest  # noqa: F401  (a clear "skipped" when pytest is absent)

    sel = "cuda" if device == "cuda" else "cpu"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_train_switches.py"), "-k", sel],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    # pytest's own failures (a conftest that cannot import) go to stderr.
    last = ((res.stdout.strip() or res.stderr.strip()).splitlines() or ["(no output)"])[-1]
    return {"passed": res.returncode == 0, "summary": last}


def hopper(device: str, quick: bool) -> dict:
    import torch

    from vidt.data.collect import collect
    from vidt.train.config import resolve
    from vidt.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hopper-random"
        collect("Hopper-v5", data, 500 if quick else 5000, seed=0, policy="random")
        cfg = resolve("Hopper-v5", "vidt", "tiny" if quick else "small", overrides={
            "dataset": str(data), "device": device,
            "online.pretrain_updates": 20 if quick else 500,
            "online.online_steps": 100 if quick else 2000,
            "online.updates_per_iter": 10 if quick else 300, "eval.episodes": 1})
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        res = train(cfg, Path(tmp) / "run", progress=False)
        wall = time.monotonic() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"preset": cfg.preset, "online_steps": res.online_env_steps,
            "actor_updates": res.actor_updates, "wall_s": wall,
            "final_eval_return": res.final_eval_return_mean, "peak_gpu_mib": peak}


def ort(device: str, quick: bool) -> dict:
    import numpy as np
    import onnxruntime

    from vidt.serving.runtime import OnnxPolicy
    from vidt.window import WindowInputs

    have = onnxruntime.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in have:
        return {"skipped": f"onnxruntime {onnxruntime.__version__} has no CUDA provider "
                           f"(providers: {', '.join(have)}); install onnxruntime-gpu"}
    from serve_latency import make_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "actor.onnx", "Hopper-v5", "small" if quick else "paper")
        cpu = OnnxPolicy(model, provider="cpu")
        dev = OnnxPolicy(model, provider=device)
        m = cpu.metadata
        rng = np.random.default_rng(0)
        windows = []
        for _ in range(64):
            w = m.new_window()
            for _t in range(m.eval_context_len):
                x = w.observe(rng.normal(size=m.obs_dim).astype(np.float32), 1.0)
                w.record_action(cpu.predict(x)[0])
            windows.append(w.observe(rng.normal(size=m.obs_dim).astype(np.float32), 1.0))
        batch = WindowInputs.stack(windows)
        diff = float(np.abs(cpu.predict(batch) - dev.predict(batch)).max())

        def ms(inputs, n=50):
            for _ in range(5):
                dev.predict(inputs)
            t = []
            for _ in range(n):
                t0 = time.perf_counter()
                dev.predict(inputs)
                t.append(time.perf_counter() - t0)
            return float(np.percentile(np.array(t) * 1e3, 50))

        return {"provider": dev.provider, "max_abs_diff_vs_cpu": diff,
                "batch1_p50_ms": ms(windows[0]), "batch64_p50_ms": ms(batch)}


def table(r: dict) -> str:
    lines = [f"gpu-check on {r['device_name']} (torch {r['torch']}, CUDA {r['cuda']})", ""]
    u = r["updates"]
    if "fp32" in u:
        lines.append(f"| {u['preset']} preset, updates/s | odt | vidt | td3 | vidt/odt time | "
                     "vidt/odt FLOPs |")
        lines.append("|---|---|---|---|---|---|")
        for label in ("fp32", "bf16", "bf16_td_target"):
            row = u[label]
            lines.append(f"| {label} | {row['odt']['updates_per_s']:.2f} | "
                         f"{row['vidt']['updates_per_s']:.2f} | {row['td3']['updates_per_s']:.2f}"
                         f" | {row['vidt_over_odt_time']:.2f} | {row['vidt_over_odt_flops']:.2f} |")
        lines.append(f"bf16 speed-up of vidt: {u['bf16_speedup_vidt']:.2f}x")
    else:
        lines.append(f"updates: {u}")
    for name in ("switches", "hopper", "ort"):
        lines.append(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                             f"{k}={v}" for k, v in r[name].items()
                                             if k != "traceback"))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (to try the code paths)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."),
                    help="where gpu_check.json goes (default: $OUT or .)")
    ap.add_argument("--budget-s", type=float, default=480.0)
    a = ap.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device on this machine (torch {torch.__version__}); "
              "nothing to measure")
        return 0
    end = time.monotonic() + a.budget_s
    r = {"device": a.device, "device_name": torch.cuda.get_device_name() if a.device == "cuda"
         else platform.processor() or "CPU", "torch": torch.__version__,
         "cuda": torch.version.cuda, "python": platform.python_version(), "quick": a.quick}
    preset = "tiny" if a.quick else "paper"
    section("updates", lambda: {"preset": preset, **updates(a.device, preset,
                                                            3 if a.quick else 10)}, r, end)
    section("switches", lambda: switches(a.device), r, end)
    section("hopper", lambda: hopper(a.device, a.quick), r, end)
    section("ort", lambda: ort(a.device, a.quick), r, end)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".gpu_check.json.tmp"
    tmp.write_text(json.dumps(r, indent=1))
    tmp.replace(out / "gpu_check.json")
    print(table(r))
    print(f"written: {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
