"""`make gpu-check` (scripts/gpu_check.py): one line and exit 0 without CUDA; and every
section's code path run on the CPU at tiny sizes, so the script is known to work before a GPU
is ever lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [
        f"gpu-check: no CUDA device on this machine (torch {torch.__version__}); "
        "nothing to measure"]
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.timeout(600)
def test_every_section_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    for name in ("updates", "switches", "hopper", "ort"):
        assert "failed" not in r[name] and "skipped" not in r[name], (name, r[name])
    u = r["updates"]
    for label in ("fp32", "bf16", "bf16_td_target"):
        assert set(u[label]) >= {"odt", "vidt", "td3", "vidt_over_odt_time"}
        assert all(u[label][a]["updates_per_s"] > 0 for a in ("odt", "vidt", "td3"))
    assert r["switches"]["passed"] is True
    assert r["hopper"]["actor_updates"] > 0 and r["hopper"]["online_steps"] > 0
    assert r["ort"]["max_abs_diff_vs_cpu"] == 0.0  # the CPU provider against itself here
    assert "| fp32 |" in res.stdout and "bf16 speed-up of vidt" in res.stdout
