"""`make image-smoke`: the serving image run as a user runs it, checked end to end.

    python scripts/image_smoke.py [--engine podman] [--image vidt-serve:cpu] [--run-flags "..."]

An exported Decision Transformer (untrained, Pendulum-v1) and a token readable by the image's
group (gid 10001) are mounted; the container serves on a free port published on 127.0.0.1
only, with VIDT_PORT set to it. Then: the HEALTHCHECK reports healthy, `vidt eval` through it
with the token finishes its episodes, without the token it is UNAUTHENTICATED, and SIGTERM
(engine stop) drains and exits 0. Prints one line per check; exit status 1 on the first
failure, with the container's log.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIDT = str(Path(sys.executable).with_name("vidt"))
GID = 10001  # the image's user and group (Dockerfile)


class Failed(Exception):
    pass


def sh(*cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Failed(f"{shlex.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


def engine_usable(engine: str) -> str | None:
    """None when `engine` can run containers here, else why not (one line)."""
    if shutil.which(engine) is None:
        return f"{engine} is not installed"
    p = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return f"`{engine} info` fails: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def image_present(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "inspect", image], capture_output=True,
                          timeout=60).returncode == 0


def cannot_run(engine: str, image: str, run_flags: list[str]) -> str | None:
    """None when a container of `image` starts here with `run_flags`, else the engine's
    reason (e.g. limits this machine refuses: see docs/deploy.md)."""
    p = subprocess.run([engine, "run", "--rm", *run_flags, "--entrypoint", "python3", image,
                        "-c", "pass"], capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.strip().splitlines() if "level=" not in ln]
    return (lines or [f"exit status {p.returncode}"])[-1]


def export_model(out: Path) -> Path:
    """An untrained Decision Transformer for Pendulum-v1, through vidt's exporter."""
    import numpy as np
    import torch

    from vidt.envs import env_dims, get_family, make_env
    from vidt.export.export import export_actor
    from vidt.model.dt import Actor, DecisionTransformer, ModelConfig, ModelSpec

    env_id = "Pendulum-v1"
    fam, (S, A) = get_family(env_id), env_dims(env_id)
    torch.manual_seed(0)
    dt = DecisionTransformer(ModelSpec(S, A), ModelConfig(context_len=5, d_model=32, n_layer=1,
                                                          n_head=2))
    env = make_env(env_id)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    actor = Actor(dt, np.zeros(S), np.ones(S), fam.reward_scale, low, high)
    export_actor(actor, dict(env_id=env_id, algo="vidt", eval_context_len=5,
                             eval_target_return=fam.eval_target_return, max_episode_steps=200),
                 out, n_windows=16)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(engine: str, name: str, timeout: float = 120) -> float:
    """Seconds until the image's own HEALTHCHECK passes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if engine.endswith("podman"):  # podman runs checks on demand without systemd timers
            ok = subprocess.run([engine, "healthcheck", "run", name], capture_output=True,
                                timeout=60).returncode == 0
        else:
            ok = sh(engine, "inspect", "--format", "{{.State.Health.Status}}",
                    name).stdout.strip() == "healthy"
        if ok:
            return time.monotonic() - t0
        state = sh(engine, "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state in ("exited", "dead"):
            raise Failed(f"the container {state} before it was healthy")
        time.sleep(1)
    raise Failed(f"not healthy after {timeout:g} s")


def smoke(engine: str, image: str, run_flags: list[str], log=print) -> None:
    with tempfile.TemporaryDirectory(prefix="vidt-image-smoke-") as tmp:
        tmp = Path(tmp)
        model = export_model(tmp / "policy.onnx")
        token = tmp / "token"
        token.write_text(secrets.token_urlsafe(24) + "\n")
        # SECURITY.md's recipe: the token readable by the image's group, by nobody else.
        os.chmod(token, 0o640)
        if os.geteuid() == 0:
            os.chown(token, 0, GID)
        else:
            os.chmod(token, 0o644)  # a rootless engine maps ids: see SECURITY.md
        port = free_port()
        name = f"vidt-smoke-{secrets.token_hex(4)}"
        sh(engine, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{port}",
           "-e", f"VIDT_PORT={port}", "-v", f"{model}:/models/policy.onnx:ro",
           "-v", f"{token}:/run/secrets/vidt_token:ro", *run_flags, image)
        try:
            log(f"ok: healthy after {wait_healthy(engine, name):.1f} s (HEALTHCHECK on "
                f"VIDT_PORT={port})")
            address = f"127.0.0.1:{port}"
            r = sh(VIDT, "eval", "--server", address, "--auth-token-file", str(token),
                   "--episodes", "2", "--json", "--no-progress", check=False)
            if r.returncode != 0:
                raise Failed(f"vidt eval with the token failed: {r.stderr.strip()}")
            got = json.loads(r.stdout)
            if got["episodes"] != 2 or got["lengths"] != [200, 200]:
                raise Failed(f"vidt eval: {got}")
            log(f"ok: vidt eval through the image: 2 episodes, return {got['return_mean']:.1f}")
            r = sh(VIDT, "eval", "--server", address, "--episodes", "1", "--no-progress",
                   check=False)
            if r.returncode == 0 or "UNAUTHENTICATED" not in r.stderr:
                raise Failed(f"vidt eval without the token: exit {r.returncode}: {r.stderr}")
            log("ok: without the token: UNAUTHENTICATED")
            t0 = time.monotonic()
            sh(engine, "stop", "-t", "30", name)  # SIGTERM, then SIGKILL after 30 s
            code = int(sh(engine, "inspect", "--format", "{{.State.ExitCode}}",
                          name).stdout.strip())
            logs = sh(engine, "logs", name).stderr + sh(engine, "logs", name).stdout
            if code != 0 or "draining" not in logs or "stopped after" not in logs:
                raise Failed(f"SIGTERM: exit code {code}; log:\n{logs[-3000:]}")
            log(f"ok: SIGTERM drained and exited 0 in {time.monotonic() - t0:.2f} s")
        except Failed:
            log(sh(engine, "logs", name, check=False).stderr[-3000:])
            raise
        finally:
            sh(engine, "rm", "-f", name, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="podman" if shutil.which("podman") else "docker")
    ap.add_argument("--image", default="vidt-serve:cpu")
    ap.add_argument("--run-flags", default="", help="extra `run` flags, e.g. --runtime runc")
    a = ap.parse_args()
    why = engine_usable(a.engine)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    if not image_present(a.engine, a.image):
        print(f"error: no image {a.image}: run `make image` first", file=sys.stderr)
        return 1
    why = cannot_run(a.engine, a.image, shlex.split(a.run_flags))
    if why:
        print(f"error: {a.engine} cannot start {a.image} here: {why} (see docs/deploy.md "
              "for RUN_FLAGS)", file=sys.stderr)
        return 1
    try:
        smoke(a.engine, a.image, shlex.split(a.run_flags))
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("image smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
