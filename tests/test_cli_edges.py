"""Mistakes a new user makes, through the real CLI: each gets one line naming its cause and
an exit status by one rule (`vidt --help`): 2 for a mistake in the command line itself,
whoever finds it, click or vidt; 1 for a right command line naming something wrong."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import click
import numpy as np
import pytest
from serving_util import free_port, make_policy_onnx, running_server

from vidt.serving.client import PolicyClient
from vidt.serving.runtime import OnnxPolicy

VIDT = [sys.executable, "-m", "vidt.cli.main"]


def _cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*VIDT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_policy_onnx(tmp_path_factory.mktemp("m") / "p.onnx", obs_dim=3, act_dim=1,
                            env_id="Pendulum-v1", low=-2.0, high=2.0)


@pytest.mark.parametrize("args", [
    ("export", "/nonexistent/run"),
    ("export", "RUN", "--checkpoint", "/nonexistent.pt"),
    ("serve", "--model", "/nonexistent.onnx"),
    ("serve", "--model", "MODEL", "--tls-cert", "/nonexistent.pem", "--tls-key", "/x.pem"),
    ("eval", "--server", "127.0.0.1:1", "--env", "Pendulum-v1", "--tls-ca", "/nonexistent"),
    ("train", "--env", "Pendulum-v1", "--dataset", "/nonexistent", "--out", "OUT"),
    ("datasets", "info", "/nonexistent"),
    ("collect", "--env", "Pendulum-v1", "--policy", "/nonexistent.onnx", "--steps", "5",
     "--out", "OUT"),
])
def test_a_missing_input_path_is_exit_1_everywhere(run_cli, args, tiny, tmp_path):
    (tmp_path / "run").mkdir()
    subst = {"RUN": str(tmp_path / "run"), "MODEL": str(tiny), "OUT": str(tmp_path / "out")}
    res = run_cli(*[subst.get(a, a) for a in args])
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    assert "nonexistent" in _one_error_line(res.stderr)


@pytest.mark.parametrize("args, says", [
    (("serve", "--model", "DIR"), "is a directory"),
    (("train", "--env", "vidt/OneState-v0", "--config", "DIR", "--dry-run"), "is a directory"),
    (("train", "--env", "vidt/OneState-v0", "--out", "FILE"), "is a file"),
    (("export", "RUN", "--out", "DIR"), "is a directory"),
    (("eval", "--server", "127.0.0.1:1", "--record", "FILE"), "is a file"),
    (("collect", "--env", "Pendulum-v1", "--steps", "5", "--out", "FILE/x"), "FILE"),
])
def test_a_path_naming_the_wrong_kind_of_thing_is_exit_1(run_cli, args, says, tmp_path):
    # As a missing one: the path is well formed, what it names is wrong.
    (tmp_path / "run").mkdir()
    (tmp_path / "file").write_text("x")
    subst = {"DIR": str(tmp_path), "FILE": str(tmp_path / "file"),
             "FILE/x": str(tmp_path / "file" / "x"), "RUN": str(tmp_path / "run")}
    res = run_cli(*[subst.get(a, a) for a in args])
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    assert says.replace("FILE", str(tmp_path / "file")) in _one_error_line(res.stderr)


@pytest.mark.parametrize("value, traceback", [("0", False), ("", False), ("false", False),
                                              ("1", True)])
def test_vidt_debug_is_on_only_when_set_true(value, traceback):
    res = _cli("datasets", "info", "/nonexistent", env={"VIDT_DEBUG": value})
    assert res.returncode == 1
    assert ("Traceback" in res.stderr) is traceback


def test_busy_ports_are_named(tiny):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for args in (("--port", str(port)), ("--port", "0", "--metrics-port", str(port))):
            res = _cli("serve", "--model", str(tiny), *args)
            assert res.returncode == 1
            line = _one_error_line(res.stderr)
            assert f"{args[-2]} {port}" in line and "in use" in line, line
            assert "add_port" not in res.stderr and "GRPC_VERBOSITY" not in res.stderr


def test_a_server_address_without_a_port_is_refused(run_cli):
    res = run_cli("eval", "--server", "localhost", "--env", "Pendulum-v1")
    assert res.exit_code == 2
    assert "needs a port" in _one_error_line(res.stderr)


TRAIN = ("train", "--env", "vidt/OneState-v0", "--dry-run")


@pytest.mark.parametrize("flag, setting, toml, says", [
    (("--preset", "huge"), "preset=huge", 'preset = "huge"', "huge"),
    (("--online-steps", "-1"), "online.online_steps=-1", "[online]\nonline_steps = -1",
     "online_steps"),
    (("--seed", "x"), "seed=x", 'seed = "x"', "seed"),
    (None, "model.nope=1", "[model]\nnope = 1", "nope"),
    (None, "model.n_head=0", "[model]\nn_head = 0", "n_head"),
    (None, "model.d_model", None, "key=value"),
])
def test_a_config_mistake_exits_2_on_the_command_line_and_1_in_a_file(run_cli, tmp_path, flag,
                                                                      setting, toml, says):
    # The same mistake gets the same status whichever option carries it: a flag (click's
    # check) and --set (vidt's) both exit 2; in a --config file it is the file's problem, 1.
    if flag is not None:
        res = run_cli(*TRAIN, *flag)
        assert res.exit_code == 2, res.stderr
    res = run_cli(*TRAIN, "--set", setting)
    assert res.exit_code == 2 and says in _one_error_line(res.stderr), res.stderr
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml + "\n")
        res = run_cli(*TRAIN, "--config", str(tmp_path / "c.toml"))
        assert res.exit_code == 1 and says in _one_error_line(res.stderr), res.stderr


@pytest.mark.parametrize("args, says", [
    (("train", "--env", "vidt/OneState-v0", "--seed", "1", "--set", "seed=2", "--dry-run"),
     "disagree"),
    (("train", "--preset", "tiny", "--dry-run"), "--env"),
    (("train", "--env", "vidt/OneState-v0"), "--out"),
    (("eval", "--server", "127.0.0.1:1", "--num-envs", "2", "--record", "v"), "--num-envs 1"),
    (("eval", "--server", "127.0.0.1:1", "--target-return", "nan"), "finite"),
    (("collect", "--env", "Pendulum-v1", "--steps", "5", "--target-return", "inf", "--out",
      "OUT"), "finite"),
    (("serve", "--model", "MODEL", "--host", "0.0.0.0"), "--insecure"),
    (("serve", "--model", "MODEL", "--tls-cert", "MODEL"), "--tls-key"),
    (("datasets", "info"), "SOURCE"),
])
def test_options_that_do_not_go_together_exit_2(run_cli, tiny, tmp_path, args, says):
    subst = {"MODEL": str(tiny), "OUT": str(tmp_path / "out")}
    res = run_cli(*[subst.get(a, a) for a in args])
    assert res.exit_code == 2 and says in _one_error_line(res.stderr), res.stderr
    assert not (tmp_path / "out").exists()


def test_host_names_are_loopback_when_they_resolve_to_it():
    from vidt.serving.server import ServerConfig, is_loopback

    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("10.1.2.3") and not is_loopback("no-such-host.invalid")
    try:
        aliases = socket.gethostbyaddr("127.0.0.1")[1] + [socket.gethostbyaddr("127.0.0.1")[0]]
    except OSError:
        aliases = []
    for name in aliases:  # e.g. localhost.localdomain in /etc/hosts
        if name != "localhost":
            ServerConfig(host=name)  # no "beyond loopback" refusal
            break


def test_a_failed_dataset_lookup_creates_nothing(tmp_path):
    root = tmp_path / "minari" / "datasets"
    res = _cli("datasets", "info", "someone/nothing-v0", env={"MINARI_DATASETS_PATH": str(root)})
    assert res.returncode == 1 and "nothing-v0" in _one_error_line(res.stderr)
    assert not (tmp_path / "minari").exists()


def test_eval_defaults_to_the_served_env_and_takes_the_serve_token_option(run_cli, tiny,
                                                                            tmp_path):
    token = tmp_path / "token"
    token.write_text("t-1\n")
    policy = OnnxPolicy(tiny, provider="cpu")
    with running_server(policy, auth_token="t-1") as srv:
        res = run_cli("eval", "--server", f"127.0.0.1:{srv.port}", "--episodes", "1",
                      "--auth-token-file", str(token), "--json", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert '"episodes": 1' in res.stdout


def test_every_option_teaches_something():
    import importlib

    from vidt.cli.main import COMMANDS

    bare = []
    for name, (module, attr, _, _needs) in COMMANDS.items():
        cmd = getattr(importlib.import_module(module), attr)
        cmds = cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]
        for c in cmds:
            for p in c.params:
                if isinstance(p, click.Option) and not p.help and p.name != "help":
                    bare.append(f"{name} {c.name}: {'/'.join(p.opts)}")
    assert not bare, bare


@pytest.mark.timeout(300)
def test_train_draws_no_progress_bar_without_a_terminal(tmp_path):
    res = _cli("train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--online-steps", "64",
               "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "it/s" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Next: vidt export")


def test_the_server_logs_sessions(tiny):
    port = free_port()
    proc = subprocess.Popen([*VIDT, "serve", "--model", str(tiny), "--port", str(port),
                             "--idle-timeout", "1"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with PolicyClient(f"127.0.0.1:{port}", retries=20, backoff_s=0.2) as c:
            with c.session() as s:
                s.act([0.1, 0.2, 0.3])
            c.session().act([0.1, 0.2, 0.3])  # left open: expires after 1 s
            time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log = proc.stderr.read()
        assert "opened" in log and "closed after 1 steps" in log and "expired" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


@pytest.mark.parametrize("args, says", [
    (("--env", "Hoper-v5"), "Did you mean: `Hopper`"),
    (("--env", "Pendulum-v1", "--dataset", "/nonexistent"), "/nonexistent"),
    (("--env", "Pendulum-v1"), "pass --dataset"),
    (("--env", "MountainCarContinuous-v0"), "not in vidt's registry"),
])
def test_dry_run_checks_what_a_run_would(run_cli, args, says):
    res = run_cli("train", *args, "--dry-run")
    assert res.exit_code == 1 and says in _one_error_line(res.stderr)


def test_an_unregistered_env_trains_once_its_settings_are_given(run_cli, tmp_path):
    from vidt.data.collect import collect

    collect("MountainCarContinuous-v0", tmp_path / "data", 500, seed=0, policy="random")
    res = run_cli("train", "--env", "MountainCarContinuous-v0", "--dataset", str(tmp_path / "data"),
                  "--set", "eval.target_return=90", "--set", "online.target_return=100",
                  "--set", "data.reward_scale=0.01", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert '"target_return": 90.0' in res.stdout


def test_vidt_envs_lists_the_registry(run_cli):
    import json

    from vidt.envs import list_families

    res = run_cli("envs")
    assert res.exit_code == 0
    for f in list_families():
        assert f.env_id in res.stdout
    res = run_cli("envs", "--json")
    assert [d["env_id"] for d in json.loads(res.stdout)] == [f.env_id for f in list_families()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from vidt.train.config import resolve
    from vidt.train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "onestate"
    train(resolve("vidt/OneState-v0", "vidt", "tiny", overrides={"online.online_steps": 64}), out)
    return out


def test_export_refuses_to_overwrite_without_force(run_cli, finished_run, tmp_path):
    out = tmp_path / "p.onnx"
    assert run_cli("export", str(finished_run), "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    res = run_cli("export", str(finished_run), "--out", str(out))
    assert res.exit_code == 1 and "--force" in _one_error_line(res.stderr)
    assert out.read_bytes() == before
    assert run_cli("export", str(finished_run), "--out", str(out), "--force").exit_code == 0


def test_export_of_a_run_in_training_says_so(run_cli, finished_run, tmp_path):
    from vidt.train.checkpoint import RunDirLock

    lock = RunDirLock(finished_run)  # as a live trainer holds it
    try:
        res = run_cli("export", str(finished_run), "--out", str(tmp_path / "p.onnx"))
    finally:
        lock.release()
    assert res.exit_code == 0 and "still being trained" in res.stderr


def test_force_removes_an_old_export_with_the_old_run(run_cli, tmp_path):
    run = tmp_path / "run"
    args = ("train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--online-steps", "64",
            "--out", str(run))
    assert run_cli(*args).exit_code == 0
    assert run_cli("export", str(run)).exit_code == 0 and (run / "policy.onnx").exists()
    assert run_cli(*args, "--force").exit_code == 0
    assert not (run / "policy.onnx").exists()


def test_resume_of_a_finished_run_says_what_happens(run_cli, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--online-steps",
                   "64", "--out", str(run)).exit_code == 0
    res = run_cli("train", "--out", str(run), "--resume")
    assert res.exit_code == 0 and "Nothing to do" in res.stderr and "Done" not in res.stderr
    res = run_cli("train", "--out", str(run), "--resume", "--online-steps", "128", "--set",
                  "loss.gamma=0.9")
    assert res.exit_code == 1 and "loss.gamma: 0.99 -> 0.9" in res.stderr, res.stderr
    # The thread count is the machine's business (a sweep gives each run its CPU share).
    res = run_cli("train", "--out", str(run), "--resume", "--online-steps", "128", "--json",
                  "--set", "threads=2")
    assert res.exit_code == 0 and "Extending the finished run from 64" in res.stderr
    assert '"online_env_steps": 128' in res.stdout


@pytest.mark.timeout(300)
def test_eval_records_a_playable_hopper_episode(run_cli, tmp_path):
    from PIL import Image

    model = make_policy_onnx(tmp_path / "hopper.onnx", obs_dim=11, act_dim=3, K=5, eval_len=5,
                             env_id="Hopper-v5", default_target_return=3600.0,
                             max_episode_steps=1000)
    with running_server(OnnxPolicy(model, provider="cpu")) as srv:
        args = ("eval", "--server", f"127.0.0.1:{srv.port}", "--episodes", "2", "--json",
                "--no-progress")
        plain = run_cli(*args)
        recorded = run_cli(*args, "--record", str(tmp_path / "videos"))
    if recorded.exit_code != 0 and "cannot render" in recorded.stderr:
        pytest.skip(recorded.stderr.strip())  # no EGL/OSMesa on this machine
    assert plain.exit_code == 0 and recorded.exit_code == 0, recorded.stderr
    assert plain.stdout.split('"latency_ms"')[0] == recorded.stdout.split('"latency_ms"')[0]
    gifs = sorted((tmp_path / "videos").glob("*.gif"))
    assert [g.name for g in gifs] == ["Hopper-v5-seed0.gif"]  # --record-episodes 1
    with Image.open(gifs[0]) as im:
        assert im.format == "GIF" and im.is_animated and im.n_frames > 2
        assert max(im.size) <= 320
        im.seek(im.n_frames // 2)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # a rendered scene, not a blank


def test_eval_records_a_classic_control_episode(run_cli, tmp_path):
    # Pendulum renders through pygame (gymnasium's classic-control extra), not MuJoCo's GL:
    # the tour's env must record with what `pip install vidt` brings.
    from PIL import Image

    model = make_policy_onnx(tmp_path / "p.onnx", obs_dim=3, act_dim=1, env_id="Pendulum-v1",
                             low=-2.0, high=2.0)
    with running_server(OnnxPolicy(model, provider="cpu")) as srv:
        res = run_cli("eval", "--server", f"127.0.0.1:{srv.port}", "--episodes", "1",
                      "--no-progress", "--record", str(tmp_path / "videos"))
    assert res.exit_code == 0, res.stderr
    with Image.open(tmp_path / "videos" / "Pendulum-v1-seed0.gif") as im:
        assert im.is_animated and im.n_frames > 2
        im.seek(im.n_frames // 2)
        assert len(np.unique(np.asarray(im.convert("L")))) > 2  # the pendulum drawn, not a blank


def test_a_serving_only_install_lists_what_it_can_run_and_says_what_the_rest_needs():
    """As in the serving image (no torch, Ray, Minari, matplotlib): those commands are absent
    from --help, and asking for one is one line naming what is missing, exit 1."""
    block = "import sys\nfor m in ('torch', 'ray', 'minari', 'matplotlib'): sys.modules[m] = None\n"
    run = [sys.executable, "-c", block + "from vidt.cli.main import main\nmain(sys.argv[1:])"]
    p = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    listed = p.stdout.split("Commands:")[1].split()
    assert {"serve", "eval", "envs"} <= set(listed)
    assert not {"train", "export", "sweep", "collect", "report"} & set(listed)
    p = subprocess.run([*run, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "needs torch" in p.stderr
