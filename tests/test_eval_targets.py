"""`vidt eval --target-returns`: the same seeds at several asked target returns against a live
server, as a table, JSON rows and a plot; the training data's returns carried by the exported
file; and `vidt collect --policy` recording which model (and target) made a dataset.

The model is a real one: a Decision Transformer trained for a few seconds on the one-state
task's built-in data with the RL term off, so it does what return-conditioned supervised
learning does inside the data's range of returns ([-1, 0]): it follows the asked return."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from serving_util import running_server

from vidt.data import onestate_episodes
from vidt.policy_file import OnnxPolicy

ENV = "vidt/OneState-v0"
TARGETS = [-1.0, -0.75, -0.5, -0.25, 0.0]  # -1:0:5, inside the data's returns


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Offline training only (no online steps, no RL term): ~10 s on one core."""
    from vidt.train.config import resolve
    from vidt.train.trainer import train

    out = tmp_path_factory.mktemp("run") / "onestate"
    cfg = resolve(ENV, "vidt", "tiny", overrides={
        "seed": 0, "device": "cpu", "threads": 1, "loss.rl_coef": 0.0,
        "online.online_steps": 0, "online.pretrain_updates": 1500, "model.dropout": 0.0})
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def policy_file(run_dir, tmp_path_factory):
    """The run exported through `vidt export`, as a user does."""
    from vidt.cli.main import main

    out = tmp_path_factory.mktemp("export") / "onestate.onnx"
    try:
        main(["export", str(run_dir), "--out", str(out), "--json"])
    except SystemExit as e:
        assert not e.code, f"vidt export exited {e.code}"
    return out


@pytest.fixture
def server(policy_file):
    with running_server(OnnxPolicy(policy_file, provider="cpu", intra_op_threads=1)) as srv:
        yield srv


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_the_exported_file_carries_the_training_data_returns_outside_its_version(
        run_dir, policy_file, tmp_path):
    from vidt.export import export_actor
    from vidt.train.checkpoint import load_actor

    meta = OnnxPolicy(policy_file, provider="cpu").metadata
    returns = [ep.episode_return for ep in onestate_episodes(seed=0)]
    assert meta.data_return_mean == pytest.approx(np.mean(returns), rel=1e-6)
    assert meta.data_return_max == pytest.approx(np.max(returns), rel=1e-6)
    # The same actor exported without them (its dataset unknown): the same model, one version.
    actor, run_meta = load_actor(run_dir)
    bare = export_actor(actor, run_meta, tmp_path / "bare.onnx", n_windows=64,
                        model_name=run_dir.name).metadata
    assert bare.data_return_mean is None and bare.data_return_max is None
    assert bare.model_version == meta.model_version


def test_target_returns_table_json_rows_and_plot(run_cli, server, policy_file, tmp_path):
    base = ["eval", "--server", server.address, "--episodes", "2", "--seed", "4",
            "--no-progress"]
    rows = _json(run_cli(*base, "--target-returns", "-1:0:5", "--json"))["rows"]
    assert [r["target_return"] for r in rows] == TARGETS
    assert all(r["episodes"] == 2 and r["failed"] == 0 and r["lengths"] == [1, 1] for r in rows)
    # Each row is what one `--target-return T` run on the same seeds gives.
    for r in rows[::2]:
        one = _json(run_cli(*base, "--target-return", str(r["target_return"]), "--json"))
        assert one["returns"] == r["returns"]
    # A comma list, a vector env: the same rows.
    listed = _json(run_cli(*base, "--target-returns", "-1,-0.75,-0.5,-0.25,0", "--num-envs",
                           "2", "--json"))
    for got, want in zip(listed["rows"], rows, strict=True):
        assert got["returns"] == pytest.approx(want["returns"], abs=1e-6)
    assert listed["data_return_mean"] is None  # not asked for: no --model

    # The table and the plot, with the data's returns read from the served file.
    png = tmp_path / "plots" / "targets.png"  # a folder of its own, made for it
    res = run_cli(*base, "--target-returns", "-1:0:5", "--plot", str(png), "--model",
                  str(policy_file))
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    table = {float(ln.split()[0]): ln.split() for ln in lines[2:7]}
    assert sorted(table) == TARGETS
    for r in rows:
        got = table[r["target_return"]]
        assert float(got[1]) == pytest.approx(r["return_mean"], abs=0.005)
        assert got[4:] == ["2", "0"]  # n, failed
    meta = OnnxPolicy(policy_file, provider="cpu").metadata
    assert f"return mean {meta.data_return_mean:.2f}, best {meta.data_return_max:.2f}" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    got = _json(run_cli(*base, "--target-returns", "-1,0", "--model", str(policy_file),
                        "--json"))
    assert (got["data_return_mean"], got["data_return_max"]) == (meta.data_return_mean,
                                                                 meta.data_return_max)


def test_achieved_return_follows_the_asked_return(run_cli, server):
    rows = _json(run_cli("eval", "--server", server.address, "--episodes", "2",
                         "--target-returns", "-1:0:5", "--json", "--no-progress"))["rows"]
    achieved = [r["return_mean"] for r in rows]
    assert all(b > a for a, b in zip(achieved, achieved[1:])), achieved
    assert achieved[-1] - achieved[0] > 0.5, achieved  # it follows, not merely drifts
    assert all(abs(a - t) < 0.25 for a, t in zip(achieved, TARGETS)), achieved


@pytest.mark.parametrize("args, says", [
    (("--target-returns", "-1,0", "--target-return", "0"), "do not go together"),
    (("--target-returns", "1:2:1"), "N in LO:HI:N"),
    (("--target-returns", "1,x"), "neither a comma list"),
    (("--target-returns", "0,inf"), "finite"),
    (("--plot", "p.png"), "--plot needs --target-returns"),
    (("--model", "MODEL"), "--model needs --target-returns"),
    (("--target-returns", "0,1", "--record", "videos"), "do not go together"),
])
def test_mistakes_in_the_targets_are_usage_errors(run_cli, policy_file, args, says):
    args = [str(policy_file) if a == "MODEL" else a for a in args]
    res = run_cli("eval", "--server", "127.0.0.1:1", *args)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and says in errors[0], res.stderr


def test_eval_needs_matplotlib_only_for_the_plot(server, tmp_path):
    """A serving-only install has no matplotlib: --target-returns still runs, and --plot
    says in one line how to get it, before any episode runs."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from vidt.cli.main import main; main(sys.argv[1:])")
    base = [sys.executable, "-c", code, "eval", "--server", server.address, "--episodes", "1",
            "--target-returns", "-1,0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0 and "target" in ok.stdout, ok.stderr
    png = tmp_path / "p.png"
    res = subprocess.run([*base, "--plot", str(png)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 1 and not png.exists()
    assert res.stderr.strip().splitlines() == [
        "Error: --plot needs matplotlib, which this installation lacks: pip install matplotlib"]
    assert server.store.created_total == 2  # the plot's run never opened a session


def test_a_lost_server_ends_the_curve_and_keeps_what_finished(policy_file):
    """Failures count across targets: once GIVE_UP_AFTER episodes in a row have failed, the
    targets left are not run (each would only wait out the same dead server)."""
    from vidt.serving.client import PolicyClient
    from vidt.serving.evaluate import evaluate_targets

    policy = OnnxPolicy(policy_file, provider="cpu", intra_op_threads=1)
    with running_server(policy) as srv, PolicyClient(srv.address, failover=False,
                                                     timeout_s=0.5) as client:
        def on_target(t):
            if t == -0.5:  # the second target: the server goes away
                srv.stop(grace=0)

        curve = evaluate_targets(client, ENV, [-1.0, -0.5, -0.25, 0.0], 2,
                                 on_target=on_target)
    first, *rest = curve.results
    assert len(first.returns) == 2 and not first.failed
    assert [(len(r.returns), len(r.failed), r.not_run) for r in rest] == [
        (0, 2, 0), (0, 2, 0), (0, 0, 2)]
    rows = curve.to_json()["rows"]
    assert (curve.failed, curve.not_run) == (4, 2) and rows[3]["not_run"] == 2


def test_collect_records_the_policy_version_and_target_return(run_cli, policy_file, tmp_path):
    version = OnnxPolicy(policy_file, provider="cpu").metadata.model_version
    out = tmp_path / "asked"
    got = _json(run_cli("collect", "--env", ENV, "--policy", str(policy_file), "--steps", "6",
                        "--target-return", "-0.5", "--out", str(out), "--json"))
    assert (got["model_version"], got["target_return"]) == (version, -0.5)
    info = _json(run_cli("datasets", "info", str(out), "--json"))
    assert info["episodes"] == 6
    assert info["collected_with"]["model_version"] == version
    assert info["collected_with"]["target_return"] == -0.5
    assert info["collected_with"]["file"] == policy_file.name
    assert info["return_mean"] == pytest.approx(got["return_mean"], rel=1e-6)
    res = run_cli("datasets", "info", str(out))
    assert res.exit_code == 0
    assert f"collected by      {policy_file.name} (model_version {version}" in res.stdout
    assert "target return -0.5" in res.stdout
    # Without --target-return: the one the file gives is what was used, and is recorded.
    default = OnnxPolicy(policy_file, provider="cpu").metadata.default_target_return
    run_cli("collect", "--env", ENV, "--policy", str(policy_file), "--steps", "2", "--out",
            str(tmp_path / "default"))
    info = _json(run_cli("datasets", "info", str(tmp_path / "default"), "--json"))
    assert info["collected_with"]["target_return"] == default
    # Random data names no model.
    run_cli("collect", "--env", ENV, "--steps", "2", "--out", str(tmp_path / "random"))
    assert _json(run_cli("datasets", "info", str(tmp_path / "random"),
                         "--json"))["collected_with"] is None
