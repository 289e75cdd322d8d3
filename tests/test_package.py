"""The installed package: import names, console script, lazy commands."""

import subprocess
import sys
from pathlib import Path

import vidt

ROOT = Path(__file__).resolve().parents[1]


def test_no_generic_top_level_modules_installed(tmp_path):
    # From outside the checkout, only the vidt.* names resolve.
    code = ("import importlib.util as u; "
            "print([n for n in ('serving', 'cli', 'v1') if u.find_spec(n)]); "
            "import vidt.serving, vidt.cli, vidt.v1; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["[]", "ok"]


def test_console_script_version_and_help(tmp_path):
    exe = Path(sys.executable).with_name("vidt")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and vidt.__version__ in res.stdout
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0
    for name in ("collect", "datasets"):
        assert name in res.stdout


def test_every_listed_command_has_help(run_cli):
    from vidt.cli.main import _available

    names = sorted(_available())
    assert {"collect", "datasets"} <= set(names)
    for name in names:
        res = run_cli(name, "--help")
        assert res.exit_code == 0 and "Usage:" in res.stdout, name
    res = run_cli("datasets", "info", "--help")
    assert res.exit_code == 0 and "SOURCE" in res.stdout


def test_unknown_command_is_a_usage_error(run_cli):
    res = run_cli("frobnicate")
    assert res.exit_code == 2 and "No such command" in res.stderr
