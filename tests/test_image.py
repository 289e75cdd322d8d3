"""The serving image, run as a user runs it (scripts/image_smoke.py, what `make image-smoke`
runs): healthy through its own HEALTHCHECK, `vidt eval` through it with the token,
UNAUTHENTICATED without, SIGTERM drains and exits 0. Needs a container engine and the image
(`make image`); skips with the reason otherwise. VIDT_IMAGE, VIDT_IMAGE_ENGINE and
VIDT_IMAGE_RUN_FLAGS choose the image, the engine and extra `run` flags (docs/deploy.md)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("image_smoke", ROOT / "scripts" / "image_smoke.py")
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)

ENGINE = os.environ.get("VIDT_IMAGE_ENGINE") or ("podman" if shutil.which("podman") else "docker")
IMAGE = os.environ.get("VIDT_IMAGE", "vidt-serve:cpu")


def test_the_image_serves_refuses_without_the_token_and_drains():
    why = smoke.engine_usable(ENGINE)
    if why:
        pytest.skip(f"no container engine: {why}")
    if not smoke.image_present(ENGINE, IMAGE):
        pytest.skip(f"no image {IMAGE}: build it with `make image`")
    flags = shlex.split(os.environ.get("VIDT_IMAGE_RUN_FLAGS", ""))
    why = smoke.cannot_run(ENGINE, IMAGE, flags)
    if why:
        pytest.skip(f"{ENGINE} cannot start {IMAGE} here ({why}): set VIDT_IMAGE_RUN_FLAGS")
    said = []
    smoke.smoke(ENGINE, IMAGE, flags, log=said.append)
    assert [s.split(":")[0] for s in said] == ["ok"] * 4, said
