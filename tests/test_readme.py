"""The README's tour and Python example, run as a new user would copy them (in a fresh
directory, through the installed `vidt` command), with budgets cut to fit CI."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving_util import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Budgets only: every command, flag and path stays as the README has it.
SMALLER = [
    (r"--steps 10000", "--steps 1200"),
    (r"--preset small", "--preset tiny"),
    (r"--online-steps 12000", "--online-steps 400"),
    (r"--episodes 10", "--episodes 2"),
]


def _block(heading: str, lang: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


@pytest.mark.timeout(600)
def test_readme_tour_and_python_client(tmp_path):
    tour = _block("## A five-minute tour", "bash")
    for old, new in SMALLER:
        assert old in tour, f"README tour no longer has {old!r}: update this test"
        tour = tour.replace(old, new)
    port = str(free_port())
    tour = tour.replace("50051", port)
    client = _block("## Driving a Gymnasium env from Python", "python").replace("50051", port)
    (tmp_path / "client.py").write_text(client)
    # Run the Python example while the server from the tour is still up (before `kill %1`).
    tour = tour.replace("kill %1", f"{sys.executable} client.py\nkill %1\nwait")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", tour], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=550)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "pendulum.onnx").exists()
    assert "return" in res.stdout.lower()
    total = float(res.stdout.strip().splitlines()[-1])  # the example prints the return
    assert -2000 < total <= 0  # a Pendulum episode's return
