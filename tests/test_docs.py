"""Every command block in README.md, SECURITY.md and docs/ is run, here or by a test named in
RUN_BY, copied as a new user would (same commands, flags and paths; only budgets, ports and
seeds cut to fit CI). A new block without an entry fails `test_every_command_block_is_run`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from serving_util import free_port, health_status, make_policy_onnx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "SECURITY.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
COMMAND_LANGS = {"bash", "sh", "python"}

# (file, first line of the block) -> the test that runs it, or why nothing here can.
RUN_BY = {
    ("README.md", "make demo    # creates .venv, installs, runs collect -> train -> export -> serve -> eval"):
        "test_make_demo_runs_the_demo_script (make demo = install + scripts/demo.py); "
        ".ci/run runs make test",
    ("README.md", "vidt collect --env Pendulum-v1 --policy random --steps 10000 --seed 0 --out data/pendulum\n"
                  "vidt datasets info data/pendulum            # episodes, steps, returns, normalized score\n"):
        "test_readme_data_block",
    ("README.md", "vidt collect --env Pendulum-v1 --policy random --steps 10000 --seed 0 --out data/pendulum\n"
                  "vidt datasets info data/pendulum\n"):
        "test_readme_tour_and_python_client",
    ("README.md", "import gymnasium as gym"): "test_readme_tour_and_python_client",
    ("README.md", "from vidt.envs import normalized_score"): "test_readme_normalized_score_block",
    ("docs/serving.md", "vidt serve --model policy.onnx --port 50051 --metrics-port 9090"):
        "test_serving_doc_serve_health_reflection_metrics",
    ("README.md", "vidt sweep pendulum.toml --dry-run   # the runs and their directories; checks the whole file"):
        "test_readme_many_runs",
    ("docs/serving.md", "python deploy/haproxy/replicas.py --model policy.onnx -n 3 --port 50051 \\"):
        "test_serving_doc_replicas_behind_haproxy",
    ("docs/serving.md", '  python deploy/haproxy/replicas.py admin runs/replicas/haproxy.sock "set server vidt/r1 state drain"'):
        "test_serving_doc_replicas_behind_haproxy",
    ("docs/serving.md", "vidt eval --server 127.0.0.1:50051 --env Pendulum-v1 --episodes 4"):
        "test_serving_doc_replicas_behind_haproxy",
    ("docs/serving.md", "mkdir models && vidt models promote models policy-v1.onnx   # copies the file in"):
        "test_serving_doc_upgrading_a_fleet",
    ("docs/serving.md", "vidt models canary models policy-v2.onnx --fraction 0.2   # new episodes of 1 robot in 5"):
        "test_serving_doc_upgrading_a_fleet",
    ("SECURITY.md", "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \\"):
        "test_security_doc_tls_and_token",
    ("SECURITY.md", "from vidt.serving.client import PolicyClient"): "test_security_doc_tls_and_token",
    ("SECURITY.md", "docker run -p 50051:50051 \\"):
        "not run: as written it needs an engine; tests/test_image.py runs the image (make image-smoke) with a "
        "token mounted the same way, where an engine and the image are present; "
        "test_security_doc_tls_and_token runs the same serve flags without a container",
    ("docs/deploy.md", 'make image-base-offline ENGINE=podman BUILD_FLAGS="--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 -v $SSL_CERT_FILE:$SSL_CERT_FILE:ro --build-arg PIP_CERT=$SSL_CERT_FILE"'):
        "not run: it builds an image (minutes, a container engine); tests/test_image.py runs "
        "what the second line runs, on the image the first builds",
    ("docs/deploy.md", "docker run -p 50051:50051 -v $PWD/policy.onnx:/models/policy.onnx:ro \\"):
        "not run: as written it needs Docker; tests/test_image.py runs the image the same way",
    ("SECURITY.md", "chgrp 10001 tls.key vidt_token && chmod 640 tls.key vidt_token"):
        "not run: it needs root or the group; scripts/image_smoke.py, which "
        "tests/test_image.py runs, gives its token the same owner group and mode",
}


def command_blocks() -> list[tuple[str, str, str]]:
    """(file, key, text) for every fenced block in a command language. The key is the first
    line, or the first two when another block starts with the same line."""
    found = []
    for name in DOCS:
        for lang, text in re.findall(r"```(\w*)\n(.*?)```", (ROOT / name).read_text(), re.S):
            if lang in COMMAND_LANGS:
                found.append((name, text))
    keys = []
    for name, text in found:
        first = text.splitlines()[0]
        twins = [t for n, t in found if n == name and t.splitlines()[0] == first]
        key = first if len(twins) == 1 else "\n".join(text.splitlines()[:2]) + "\n"
        keys.append((name, key, text))
    return keys


def block(name: str, first_line: str) -> str:
    for n, key, text in command_blocks():
        if n == name and key.startswith(first_line):
            return text
    raise AssertionError(f"{name} has no command block starting {first_line!r}: update RUN_BY")


def test_every_command_block_is_run():
    blocks = {(n, k) for n, k, _ in command_blocks()}
    missing = blocks - RUN_BY.keys()
    assert not missing, f"command blocks no test runs (add a test and a RUN_BY entry): {missing}"
    stale = RUN_BY.keys() - blocks
    assert not stale, f"RUN_BY names blocks the docs no longer have: {stale}"
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for who in RUN_BY.values():
        if who.startswith("not run:"):
            continue
        name = who.split()[0]
        assert f"def {name}(" in tests, f"RUN_BY names a test that does not exist: {name}"


def bash(script: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a docs block with the installed `vidt` first on PATH, failing on the first error."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def cut(text: str, *swaps: tuple[str, str]) -> str:
    for old, new in swaps:
        assert old in text, f"the docs no longer have {old!r}: update this test"
        text = text.replace(old, new)
    return text


# ---- README -------------------------------------------------------------------------------------

def test_readme_data_block(tmp_path):
    script = cut(block("README.md", "vidt collect --env Pendulum-v1 --policy random --steps 10000 "
                                    "--seed 0 --out data/pendulum\nvidt datasets info data/pendulum "),
                 ("--steps 10000", "--steps 600"))
    out = bash(script, tmp_path).stdout
    info = json.loads(out.strip().splitlines()[-1])  # the --json line is last
    assert info["steps"] == 600 and info["episodes"] == 3  # Pendulum truncates at 200 steps
    assert re.search(r"^episodes +3 \(0 terminated, 3 truncated\)$", out, re.M)  # the table


def test_readme_normalized_score_block():
    code = block("README.md", "from vidt.envs import normalized_score")
    expr, shown = re.search(r"^(normalized_score\(.*?\))\s*#\s*([-\d.]+)", code, re.M).groups()
    scope: dict = {}
    exec(code, scope)  # the block as written runs
    assert round(eval(expr, scope), 1) == float(shown)  # and prints the value the comment shows


@pytest.mark.timeout(600)
def test_make_demo_runs_the_demo_script(tmp_path):
    """`make demo` is the install plus `scripts/demo.py`; this runs the script with the knobs a
    user has, at a budget CI affords, then again (reuse), then with a broken stage."""
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/python scripts/demo\.py$", make, re.M)
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"), DEMO_PRESET="tiny",
               DEMO_DATA_STEPS="600", DEMO_STEPS="400", DEMO_EPISODES="2")

    def demo(**extra):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=tmp_path,
                              env={**env, **extra}, capture_output=True, text=True, timeout=280)

    first = demo()
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("1/5 collect", "2/5 train", "3/5 export", "4/5 serve", "5/5 eval"):
        assert stage in first.stderr
    report = (tmp_path / "demo" / "report.md").read_text()
    for row in ("dataset (random policy)", "training eval before finetuning",
                "training eval, final (", "served return (2 episodes)",
                "served normalized score", "Act latency p50 / p99"):
        assert row in report and row in first.stdout
    assert (tmp_path / "demo" / "learning_curve.png").stat().st_size > 1000
    served = re.search(r"served return \(2 episodes\) \| (-?[\d.]+)", report).group(1)
    assert -2000 < float(served) <= 0

    again = demo()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stderr
    assert re.search(r"served return \(2 episodes\) \| (-?[\d.]+)", again.stdout).group(1) == served

    other = demo(DEMO_DATA_STEPS="400")  # other knobs: a dataset and run of their own
    assert other.returncode == 0, other.stderr[-3000:]
    assert "reusing" not in other.stderr
    assert "3 episodes, 600 steps" in report and "2 episodes, 400 steps" in other.stdout

    broken = demo(DEMO_DIR=str(tmp_path / "broken"), DEMO_ENV="NoSuchEnv-v9")
    assert broken.returncode == 1
    assert "Demo failed: stage 'collect' failed" in broken.stderr
    assert "Traceback" not in broken.stderr


# ---- docs/serving.md ----------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="haproxy is not on the PATH (apt-get install haproxy)")
def test_serving_doc_replicas_behind_haproxy(tmp_path):
    make_policy_onnx(tmp_path / "policy.onnx", obs_dim=3, act_dim=1, env_id="Pendulum-v1",
                     low=-2.0, high=2.0)
    port = free_port()
    start = cut(block("docs/serving.md", "python deploy/haproxy/replicas.py"),
                ("--port 50051", f"--port {port}"), ("deploy/", f"{ROOT}/deploy/"))
    run_eval = cut(block("docs/serving.md", "vidt eval --server 127.0.0.1:50051"),
                   ("127.0.0.1:50051", f"127.0.0.1:{port}"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    from vidt.procs import with_parent

    proc = subprocess.Popen(with_parent(["bash", "-c", "exec " + start.split("#")[0].strip()],
                                        signal.SIGINT),  # ends with pytest
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the script prints its addresses once all is up
            lines.append(line)
            if "Ctrl-C stops all" in line:
                break
        assert f"HAProxy on 127.0.0.1:{port}" in "".join(lines), "".join(lines)
        out = subprocess.run(["bash", "-c", run_eval.strip() + " --json --no-progress"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["episodes"] == 4
        # The documented drain, against the socket the launcher made in its --workdir.
        drain = cut(block("docs/serving.md", "  python deploy/haproxy/replicas.py admin"),
                    ("deploy/", f"{ROOT}/deploy/"))
        out = subprocess.run(["bash", "-c", drain.strip()], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        stat = subprocess.run([sys.executable, f"{ROOT}/deploy/haproxy/replicas.py", "admin",
                               "runs/replicas/haproxy.sock", "show stat"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60).stdout
        assert any(line.startswith("vidt,r1,") and ",DRAIN," in line
                   for line in stat.splitlines()), stat
        proc.send_signal(signal.SIGINT)  # "Ctrl-C stops all"
        assert proc.wait(timeout=30) == 0
        leftover = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True)
        assert leftover.returncode == 1, leftover.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not on the PATH")
def test_serving_doc_upgrading_a_fleet(tmp_path):
    """The fleet on one model repository, as the doc runs it: canary, promote, rollback, each
    reaching every replica."""
    from vidt.serving.client import PolicyClient
    from vidt.serving.repository import ModelRepository

    for i in (1, 2):
        make_policy_onnx(tmp_path / f"policy-v{i}.onnx", obs_dim=3, act_dim=1, seed=i,
                         env_id="Pendulum-v1", low=-2.0, high=2.0)
    port = free_port()
    first, start = block("docs/serving.md", "mkdir models && vidt models").strip().splitlines()
    start = cut(start, ("--port 50051", f"--port {port}"), ("deploy/", f"{ROOT}/deploy/"))
    steps = block("docs/serving.md", "vidt models canary models").strip().splitlines()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    def sh(line: str) -> str:
        out = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, (line, out.stderr)
        return out.stdout

    sh(first)
    repo = ModelRepository(tmp_path / "models")
    v1, v2 = (repo.resolve(str(tmp_path / f"policy-v{i}.onnx")).version for i in (1, 2))
    from vidt.procs import with_parent

    proc = subprocess.Popen(with_parent(["bash", "-c", "exec " + start.split("#")[0].strip()],
                                        signal.SIGINT),
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops all" in line:
                break
        replicas = re.findall(r"grpc (127\.0\.0\.1:\d+)", "".join(lines))
        assert len(replicas) == 3, "".join(lines)

        def everywhere(current: str, canary: str = "") -> None:
            deadline = time.monotonic() + 20  # the replicas reread the pointer every 2 s
            for address in replicas:
                with PolicyClient(address, retries=0, failover=False) as c:
                    while (c.info(refresh=True).model_version,
                           c.info().canary_version) != (current, canary):
                        assert time.monotonic() < deadline, (address, c.info())
                        time.sleep(0.1)

        everywhere(v1)
        canary, listing, promote, rollback = steps
        sh(canary)
        everywhere(v1, v2)
        assert v2 in sh(listing)
        sh(promote)
        everywhere(v2)
        sh(rollback)
        everywhere(v1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serving_doc_serve_health_reflection_metrics(tmp_path):
    doc = (ROOT / "docs" / "serving.md").read_text()
    make_policy_onnx(tmp_path / "policy.onnx", obs_dim=3, act_dim=1)
    port, mport = free_port(), free_port()
    cmd = cut(block("docs/serving.md", "vidt serve --model policy.onnx --port 50051"),
              ("--port 50051", f"--port {port}"), ("--metrics-port 9090", f"--metrics-port {mport}"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["bash", "-c", "exec " + cmd.strip()], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        from vidt.serving.client import PolicyClient, ServerError, wait_serving

        assert wait_serving(address, timeout=60, alive=lambda: proc.poll() is None), \
            (tmp_path / "serve.log").read_text()
        # "Health reports ... for "" and vidt.v1.PolicyService"
        assert health_status(address, "") == health_status(address, "vidt.v1.PolicyService") == "SERVING"
        # "Server reflection is on": what `grpcurl -plaintext 127.0.0.1:50051 list` prints,
        # asked through grpc's own reflection client (grpcurl is not installed here).
        import grpc
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        listed = re.search(r"`grpcurl -plaintext 127\.0\.0\.1:50051 list` lists\s+(.*?)\.\n", doc, re.S)
        with grpc.insecure_channel(address) as ch:
            services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        assert services == set(re.findall(r"`([\w.]+)`", listed.group(1)))
        with PolicyClient(address) as client, client.session() as s:
            for t in range(3):
                s.act([0.1 * t, 0.0, 1.0], -1.0)
            with pytest.raises(ServerError, match="INVALID_ARGUMENT"):  # so errors_total has a sample
                s.act([0.0], 0.0)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        section = doc.split("## Health, reflection, metrics", 1)[1].split("##", 1)[0]
        documented = set(re.findall(r"`(vidt_[a-z_]+)", section))
        assert len(documented) >= 8
        for name in documented:
            assert re.search(rf"^{name}(_bucket|_count|_sum)?[{{ ]", metrics, re.M), f"{name} not in /metrics"
        # At start the log says what it serves, on which address and provider.
        started = next(line for line in (tmp_path / "serve.log").read_text().splitlines()
                       if "vidt.serving.server: serving" in line)
        assert f"127.0.0.1:{port}" in started and "CPUExecutionProvider" in started, started
        # "SIGTERM or SIGINT ... the process exits 0"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.timeout(600)
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray (vidt[sweep])")
def test_readme_many_runs(tmp_path):
    """The README's sweep file and its commands, at the tiny preset on a small dataset, one
    seed of one algorithm (its two variants)."""
    readme = (ROOT / "README.md").read_text()
    toml = re.search(r"## Many runs.*?```toml\n(.*?)```", readme, re.S).group(1)
    toml = cut(toml, ('preset = "small"', 'preset = "tiny"'), ("online_steps = 12000",
               "online_steps = 200"), ("steps = 10000", "steps = 600"),
               ('algos = ["vidt", "odt", "td3"]', 'algos = ["vidt"]'),
               ("seeds = [0, 1, 2, 3, 4]", "seeds = [0]"))
    (tmp_path / "pendulum.toml").write_text(toml)
    res = bash(block("README.md", "vidt sweep pendulum.toml --dry-run"), tmp_path, timeout=600)
    root = tmp_path / "runs" / "sweeps" / "pendulum"
    assert (root / "Pendulum-v1-random-10k" / "vidt-alpha=0.1" / "s0" / "metrics.csv").exists()
    assert "| vidt (alpha=1) |" in res.stdout and "| vidt (alpha=0.1) |" in res.stdout
    assert (root / "report" / "Pendulum-v1-random-10k.png").exists()


# ---- SECURITY.md --------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command the doc uses")
def test_security_doc_tls_and_token(tmp_path):
    doc = (ROOT / "SECURITY.md").read_text()
    bash(block("SECURITY.md", "openssl req -x509"), tmp_path)
    assert oct((tmp_path / "tls.key").stat().st_mode)[-3:] == "600"
    assert len((tmp_path / "vidt_token").read_text().strip()) >= 40
    make_policy_onnx(tmp_path / "policy.onnx", obs_dim=3, act_dim=1)
    # "Without Docker: `vidt serve ...`", as written, on a free port.
    serve = re.search(r"Without Docker: `(vidt serve [^`]*)`", doc).group(1).replace("\n", " ")
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["bash", "-c", f"exec {serve} --port {port}"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        client = cut(block("SECURITY.md", "from vidt.serving.client import PolicyClient"),
                     ("robot-policy.internal:50051", f"127.0.0.1:{port}"),
                     ("    ...", "    print(client.info().model_version)"))
        (tmp_path / "client.py").write_text(
            "import time\nfor _ in range(300):\n    try:\n"
            + "".join("        " + line + "\n" for line in client.splitlines())
            + "        break\n    except Exception as e:\n        err = e; time.sleep(0.1)\n"
            "else:\n    raise SystemExit(f'no answer: {err}')\n")
        out = bash(f"{sys.executable} client.py", tmp_path, timeout=120).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{16}", out), out
        # Without the token, the same TLS connection is refused.
        (tmp_path / "no_token.py").write_text(
            client.replace("token=token, ", "") + "\n")
        res = subprocess.run([sys.executable, "no_token.py"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode != 0 and "UNAUTHENTICATED" in res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert (tmp_path / "vidt_token").read_text().strip() not in (tmp_path / "serve.log").read_text()


# ---- docs/algorithm.md --------------------------------------------------------------------------

def test_algorithm_doc_pendulum_reference_script():
    doc = (ROOT / "docs" / "algorithm.md").read_text()
    assert "`python benchmarks/pendulum_reference.py`" in doc
    res = subprocess.run([sys.executable, "benchmarks/pendulum_reference.py", "--episodes", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: float(line.split()[2]) for line in res.stdout.splitlines()
            if " mean " in line}
    assert len(rows) == 2 and min(rows.values()) < -500 < max(rows.values())  # random vs controller
