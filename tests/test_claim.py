"""The paper's claim on the one-state task (ALGORITHM.md), end to end through the CLI:
ViDT (the RL gradient added to ODT) reaches the peak, and crosses half of it clearly earlier
than ODT under the same settings. The settings are the env's defaults (see
vidt.train.config._family_overrides for why they are what they are)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import pytest

SEED = "0"


def _run(algo: str, out) -> tuple[list[dict], float]:
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "vidt.cli.main", "train", "--env", "vidt/OneState-v0",
         "--preset", "tiny", "--algo", algo, "--seed", SEED, "--device", "cpu",
         "--out", str(out), "--no-progress", "--json"],
        capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f)), elapsed


def _first_crossing(rows: list[dict], level: float) -> int | None:
    for r in rows:
        if r["phase"] == "online" and float(r["eval_return_mean"]) > level:
            return int(r["online_env_steps"])
    return None


# Two runs of under two minutes each on an idle 2-core CPU; the margin is for a busy one.
@pytest.mark.timeout(900)
def test_vidt_reaches_the_peak_and_beats_odt(tmp_path):
    vidt_rows, vidt_s = _run("vidt", tmp_path / "vidt")
    odt_rows, odt_s = _run("odt", tmp_path / "odt")
    assert vidt_s < 120 and odt_s < 120, (vidt_s, odt_s)
    budget = int(vidt_rows[-1]["online_env_steps"])
    assert budget == int(odt_rows[-1]["online_env_steps"]) > 0

    assert float(vidt_rows[-1]["eval_return_mean"]) > 0.9
    v, o = _first_crossing(vidt_rows, 0.5), _first_crossing(odt_rows, 0.5)
    assert v is not None
    assert o is None or o - v >= 0.1 * budget, (v, o, budget)
