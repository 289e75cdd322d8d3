"""Shared fixtures. Tests use real envs, real files and real servers; nothing we ship is mocked."""

from __future__ import annotations

import os

import pytest

from vidt.cli.main import main

os.environ.setdefault("MPLBACKEND", "Agg")


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.exit_code, self.stdout, self.stderr = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Run `vidt ARGS` in-process through the real entry point (error handling included)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
