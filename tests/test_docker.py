"""What can be checked of the Dockerfile without building it (tests/test_image.py runs a built
image where an engine and the image are present): every path it copies exists, its serving
requirements match the project's, and its entrypoint with its default command parses as
`vidt serve` arguments."""

import json
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)  # join continued lines
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.strip().upper().startswith(name + " ")]


def test_every_copied_path_exists():
    copies = [c for c in _instructions("COPY") if not c.startswith("--from")]
    assert copies
    for c in copies:
        *sources, _dest = c.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_serving_requirements_are_project_dependencies_and_exclude_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in deps}
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "docker/requirements-serve.txt").read_text().splitlines()]
    req_names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in reqs if r}
    assert req_names <= names
    assert "torch" not in req_names and "onnxruntime" not in req_names  # chosen per variant


def test_entrypoint_and_default_command_parse():
    from vidt.cli.serve import serve

    entry = json.loads(_instructions("ENTRYPOINT")[0])
    cmd = json.loads(_instructions("CMD")[-1])
    assert entry == ["vidt", "serve"]
    # parses without running: every option in the default command is one `vidt serve` knows
    ctx = serve.make_context("serve", list(cmd), resilient_parsing=True)
    assert ctx.params["host"] == "0.0.0.0"
    assert ctx.params["auth_token_file"] == "/run/secrets/vidt_token"


def test_dockerignore_keeps_runs_and_venvs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)
