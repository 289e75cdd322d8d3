"""The paper's claim on the one-state task (docs/algorithm.md), end to end through the CLI: the RL
gradient is what finds the peak. ViDT is compared with its own control, the same trainer,
settings, exploration noise and budget with the RL term off (`--set loss.rl_coef=0`).

A claim like this passes just as well when the control or ODT is broken, so both are also run
where they must succeed: on data that holds the good actions, return-conditioned supervision
alone reaches the peak."""

from __future__ import annotations

import csv
import subprocess
import sys

import h5py
import numpy as np
import pytest

from vidt.envs.onestate import OBS, onestate_offline_actions, onestate_reward

SEED = "0"


def _run(out, algo: str, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "vidt.cli.main", "train", "--env", "vidt/OneState-v0",
         "--preset", "tiny", "--algo", algo, "--seed", SEED, "--device", "cpu",
         "--out", str(out), "--no-progress", "--json", *extra],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(out / "metrics.csv") as f:
        return [{**r, "ret": float(r["eval_return_mean"])} for r in csv.DictReader(f)
                if r["eval_return_mean"]]


def _first_crossing(rows: list[dict], level: float) -> int | None:
    for r in rows:
        if r["phase"] == "online" and r["ret"] > level:
            return int(r["online_env_steps"])
    return None


def _good_data(path) -> str:
    """The built-in data plus 28 actions in [-0.05, 0.05] (reward >= 0.9), as D4RL HDF5."""
    acts = np.concatenate([onestate_offline_actions(0),
                           np.random.default_rng(1).uniform(-0.05, 0.05, 28)]).astype(np.float32)
    n = len(acts)
    with h5py.File(path, "w") as f:
        f["observations"] = np.repeat(OBS[None], n, axis=0)
        f["next_observations"] = np.repeat(OBS[None], n, axis=0)
        f["actions"] = acts[:, None]
        f["rewards"] = np.array([onestate_reward(float(a)) for a in acts], np.float32)
        f["terminals"] = np.ones(n, bool)
        f["timeouts"] = np.zeros(n, bool)
    return str(path)


# Five runs of under a minute each on an idle 2-core CPU; the margin is for a busy one.
@pytest.mark.timeout(1200)
def test_the_rl_gradient_finds_the_peak_that_its_control_does_not(tmp_path):
    vidt = _run(tmp_path / "vidt", "vidt")
    control = _run(tmp_path / "control", "vidt", "--set", "loss.rl_coef=0")
    odt = _run(tmp_path / "odt", "odt")
    budget = int(vidt[-1]["online_env_steps"])
    assert budget == int(control[-1]["online_env_steps"]) == int(odt[-1]["online_env_steps"]) > 0
    assert vidt[-1]["ret"] > 0.9
    v, c = _first_crossing(vidt, 0.5), _first_crossing(control, 0.5)
    assert v is not None
    assert c is None or c - v >= 0.1 * budget, (v, c, budget)
    # An untrained actor outputs a near 0, the peak: after pretraining on this data, the
    # control and ODT must have moved to where the data is (a near -1, reward near 0).
    for rows in (control, odt):
        assert rows[0]["phase"] == "pretrain" and rows[0]["ret"] < 0.2, rows[0]["ret"]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("algo, extra", [("vidt", ("--set", "loss.rl_coef=0")), ("odt", ())],
                         ids=["control", "odt"])
def test_control_and_odt_learn_where_supervision_suffices(tmp_path, algo, extra):
    # The same trainers, given data that shows the peak's actions, reach the peak: with the
    # test above (where they moved to a near -1), supervision follows what the data shows.
    data = _good_data(tmp_path / "good.hdf5")
    rows = _run(tmp_path / algo, algo, "--dataset", data, *extra)
    assert max(r["ret"] for r in rows) > 0.9, [round(r["ret"], 3) for r in rows]
