"""`vidt serve` and `vidt eval` as a user runs them, and a whole Gymnasium episode through the
server against the same exported actor run locally in onnxruntime."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serving_util import NumpyActor, free_port, health_status, make_policy_onnx, running_server

from vidt.envs import make_env
from vidt.serving.client import PolicyClient, ServerError
from vidt.serving.runtime import OnnxPolicy

VIDT = [sys.executable, "-m", "vidt.cli.main"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dt_policy_file(tmp_path_factory) -> Path:
    """A real (untrained, small) decision transformer for Pendulum-v1, through vidt's exporter."""
    import torch

    from vidt.export.export import export_actor
    from vidt.model.dt import Actor, DecisionTransformer, ModelConfig, ModelSpec

    torch.manual_seed(0)
    dt = DecisionTransformer(ModelSpec(3, 1), ModelConfig(context_len=5, d_model=32, n_layer=1,
                                                          n_head=2))
    actor = Actor(dt, np.zeros(3), np.ones(3), 0.001, [-2.0], [2.0])
    out = tmp_path_factory.mktemp("dt") / "pendulum.onnx"
    export_actor(actor, dict(env_id="Pendulum-v1", algo="vidt", eval_context_len=5,
                             eval_target_return=-150.0, max_episode_steps=200), out, n_windows=32)
    return out


@pytest.fixture(scope="module")
def tiny_pendulum_file(tmp_path_factory) -> Path:
    return make_policy_onnx(tmp_path_factory.mktemp("tiny") / "pendulum.onnx", obs_dim=3,
                            act_dim=1, K=5, eval_len=5, env_id="Pendulum-v1", low=-2.0,
                            high=2.0, default_target_return=-150.0, max_episode_steps=200)


def test_whole_episode_server_equals_local_onnxruntime(dt_policy_file):
    served = OnnxPolicy(dt_policy_file, provider="cpu", intra_op_threads=1)
    local = OnnxPolicy(dt_policy_file, provider="cpu", intra_op_threads=1)
    env = make_env("Pendulum-v1")
    with running_server(served) as srv, PolicyClient(srv.address) as c, c.session() as s:
        obs, _ = env.reset(seed=3)
        local.reset()
        reward, steps, worst = 0.0, 0, 0.0
        while True:
            a_server = s.act(obs, reward)
            a_local = local.act(obs, reward)
            worst = max(worst, float(np.abs(a_server - a_local).max()))
            obs, reward, terminated, truncated, _ = env.step(a_server)
            steps += 1
            if terminated or truncated:
                break
        assert s.return_to_go == pytest.approx(local.window.return_to_go, rel=1e-9)
    assert steps == 200 and worst <= 1e-6


def test_eval_json_single_and_vector(run_cli, dt_policy_file):
    policy = OnnxPolicy(dt_policy_file, provider="cpu", intra_op_threads=1)
    with running_server(policy) as srv:
        r = run_cli("eval", "--server", srv.address, "--env", "Pendulum-v1", "--episodes", "2",
                    "--seed", "5", "--json")
        assert r.exit_code == 0, r.stderr
        one = json.loads(r.stdout)
        assert set(one) == {"episodes", "return_mean", "return_std", "normalized_score",
                            "mean_length", "latency_ms", "returns", "lengths", "failovers",
                            "model_versions", "by_version", "failed", "failures", "not_run"}
        version = policy.metadata.model_version
        assert one["model_versions"] == [version] * 2 and one["failed"] == 0
        assert one["by_version"] == {version: {"episodes": 2, "return_mean": one["return_mean"],
                                               "return_std": one["return_std"]}}
        assert one["episodes"] == 2 and one["mean_length"] == 200.0
        assert one["lengths"] == [200, 200] and one["failovers"] == 0
        assert one["return_mean"] == pytest.approx(np.mean(one["returns"]))
        assert set(one["latency_ms"]) == {"p50", "p95", "p99"}
        assert one["latency_ms"]["p50"] <= one["latency_ms"]["p99"]
        assert one["normalized_score"] is not None  # Pendulum-v1 has a reference
        # The same episodes (seeds 5 and 6) with a vector env and ActBatch: same returns.
        r = run_cli("eval", "--server", srv.address, "--env", "Pendulum-v1", "--episodes", "2",
                    "--num-envs", "2", "--seed", "5", "--json")
        assert r.exit_code == 0, r.stderr
        vec = json.loads(r.stdout)
        assert vec["episodes"] == 2
        assert vec["return_mean"] == pytest.approx(one["return_mean"], abs=1e-3)
        # Human output.
        r = run_cli("eval", "--server", srv.address, "--env", "Pendulum-v1", "--episodes", "1",
                    "--no-progress")
        assert r.exit_code == 0 and "normalized score" in r.stdout and "p99" in r.stdout


class _FailingActor(NumpyActor):
    """A policy whose inference fails on the calls named: the server answers INTERNAL."""

    def __init__(self, fail_on: set[int]):
        super().__init__(obs_dim=3, act_dim=1, K=4, eval_len=3, low=-2.0, high=2.0)
        self.fail_on, self.calls = fail_on, 0

    def predict(self, inputs):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("the accelerator fell off the bus")
        return super().predict(inputs)


@pytest.mark.parametrize("num_envs", [1, 2])
def test_eval_counts_a_failed_episode_goes_on_and_exits_1(run_cli, num_envs):
    """One inference fails mid-run: its episodes are counted as failed, the others finish
    and are reported (those of a single env exactly as in an undisturbed run), and the exit
    status says the run was not whole."""
    args = ["eval", "--env", "Pendulum-v1", "--episodes", "4", "--num-envs", str(num_envs),
            "--seed", "3", "--json"]
    with running_server(_FailingActor(set())) as srv:
        clean = json.loads(run_cli(*args, "--server", srv.address).stdout)
    assert clean["episodes"] == 4 and clean["failed"] == 0
    with running_server(_FailingActor({250})) as srv:  # in the 2nd episode (one env)
        r = run_cli(*args, "--server", srv.address)
    assert r.exit_code == 1 and "episode(s) failed" in r.stderr, r.stderr
    got = json.loads(r.stdout)
    assert got["failed"] == num_envs and len(got["failures"]) == num_envs
    assert got["episodes"] == 4 - num_envs and got["not_run"] == 0
    assert all("INTERNAL" in why for why in got["failures"])
    if num_envs == 1:
        assert got["returns"] == [clean["returns"][0], *clean["returns"][2:]]
        assert "episode 1 (seed 4" in got["failures"][0]
    # Human output: the finished episodes, then what failed.
    with running_server(_FailingActor({250})) as srv:
        r = run_cli(*args[:-1], "--no-progress", "--server", srv.address)
    assert r.exit_code == 1 and "failed: " in r.stdout and "return" in r.stdout


def test_eval_on_a_pinned_model_version(run_cli):
    actor = _FailingActor(set())
    args = ["eval", "--env", "Pendulum-v1", "--episodes", "2", "--json"]
    with running_server(actor) as srv:
        r = run_cli(*args, "--server", srv.address, "--model-version", "numpy")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["model_versions"] == ["numpy", "numpy"]
        r = run_cli(*args, "--server", srv.address, "--model-version", "v-elsewhere")
    # Refused before any episode: one line, nothing on stdout.
    assert r.exit_code == 1 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "model_version 'v-elsewhere' is not held" in r.stderr


def test_eval_fails_clearly_on_a_mismatched_env(run_cli, tiny_pendulum_file, tmp_path):
    with running_server(OnnxPolicy(tiny_pendulum_file, provider="cpu")) as srv:
        r = run_cli("eval", "--server", srv.address, "--env", "Hopper-v5", "--episodes", "1")
        assert r.exit_code == 1
        assert "serves a policy for 'Pendulum-v1', not 'Hopper-v5'" in r.stderr
    # A file that names no env is checked by its sizes.
    anon = make_policy_onnx(tmp_path / "anon.onnx", obs_dim=5, act_dim=1)
    with running_server(OnnxPolicy(anon, provider="cpu")) as srv:
        r = run_cli("eval", "--server", srv.address, "--env", "Pendulum-v1", "--episodes", "1")
        assert r.exit_code == 1 and "size mismatch" in r.stderr and "Pendulum-v1 has 3" in r.stderr
    r = run_cli("eval", "--server", f"127.0.0.1:{free_port()}", "--env", "Pendulum-v1",
                "--episodes", "1", "--timeout", "0.5")
    assert r.exit_code == 1 and "UNAVAILABLE" in r.stderr


def test_eval_vector_env_more_envs_than_episodes(dt_policy_file):
    from vidt.serving.evaluate import evaluate

    policy = OnnxPolicy(dt_policy_file, provider="cpu", intra_op_threads=1)
    with running_server(policy) as srv, PolicyClient(srv.address) as c:
        res = evaluate(c, "Pendulum-v1", 3, num_envs=4, seed=0)
        assert len(res.returns) == 3 and res.lengths == (200, 200, 200)
        assert srv.store.active == 0  # every session was closed
        assert srv.store.created_total == 4


def test_serve_refuses_a_public_address_without_tls_or_token(run_cli, tiny_pendulum_file):
    r = run_cli("serve", "--model", str(tiny_pendulum_file), "--host", "0.0.0.0")
    assert r.exit_code == 2 and "beyond loopback" in r.stderr and "--insecure" in r.stderr
    r = run_cli("serve", "--model", str(tiny_pendulum_file), "--auth-token-file", "/nonexistent")
    assert r.exit_code == 1 and "cannot read the token file" in r.stderr


def test_serve_help_teaches_the_choices_and_leaves_measurements_to_results():
    # Figures quoted in --help go stale apart from the runs that measured them; the help says
    # what each choice does and when to pick it, and where the numbers are.
    import click

    from vidt.cli.serve import serve

    helps = {p.name: p.help for p in serve.params if isinstance(p, click.Option)}
    transport = helps["transport"]
    assert "benchmarks/RESULTS.md" in transport and (ROOT / "benchmarks/RESULTS.md").exists()
    assert not re.search(r"\d|twice|times", transport), transport
    assert "/ready" in helps["metrics_port"] and "503" in helps["metrics_port"]


def _wait_serving(address: str, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if health_status(address, "vidt.v1.PolicyService") == "SERVING":
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become SERVING")


@pytest.mark.parametrize("transport", ["threads", "asyncio"])
def test_serve_subprocess_drains_on_sigterm_and_port_is_exclusive(tiny_pendulum_file, tmp_path,
                                                                  transport):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*VIDT, "serve", "--model", str(tiny_pendulum_file), "--port",
                             str(port), "--auth-token-file", str(token_file), "--grace", "20",
                             "--transport", transport],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(address, proc)
        # A second server on the same port fails (no SO_REUSEPORT sharing).
        second = subprocess.run([*VIDT, "serve", "--model", str(tiny_pendulum_file), "--port",
                                 str(port)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in second.stderr

        with PolicyClient(address, token="tok-123", retries=0, failover=False) as c:
            s = c.session()
            s.act([1.0, 0.0, 0.0])
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while health_status(address) != "NOT_SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health_status(address, "vidt.v1.PolicyService") == "NOT_SERVING"
            with pytest.raises(ServerError, match="draining"):
                c.session()
            assert s.act([0.9, 0.1, 0.0], -1.0).shape == (1,)  # the open episode finishes
            assert proc.poll() is None
            s.close()
        t0 = time.monotonic()
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 5  # it did not wait out the 20 s grace
        log = proc.stderr.read()
        assert f"on 127.0.0.1:{port} with CPUExecutionProvider" in log
        assert "tiny-test-actor" in log and "SIGTERM received: draining" in log
        assert f"transport={transport}" in log
        assert "tok-123" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()

