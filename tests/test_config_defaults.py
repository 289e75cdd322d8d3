"""One place for each default: a TrainConfig made field by field cannot pass for a resolved
one, the CLI's defaults are the dataclasses', and a flag and a --set that disagree are
refused rather than one silently winning."""

from __future__ import annotations

from dataclasses import fields

import pytest

from vidt.errors import ConfigError
from vidt.train.config import TrainConfig, resolve


def test_a_bare_config_is_refused_not_mistaken_for_a_resolved_one():
    with pytest.raises(ConfigError, match="resolve"):
        TrainConfig(env_id="Hopper-v5", preset="paper")
    cfg = resolve("Hopper-v5", "vidt", "paper")
    assert cfg.eval.target_return == 3600
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # a resolved config round-trips


def test_train_cli_defaults_are_the_dataclass_defaults(run_cli):
    from vidt.cli.train import train as cmd

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    helps = {p.name: p.help or "" for p in cmd.params}
    for name in ("algo", "preset", "seed", "device"):
        assert f"[default: {defaults[name]}]" in helps[name], name
    res = run_cli("train", "--env", "vidt/OneState-v0", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert resolve("vidt/OneState-v0", defaults["algo"], defaults["preset"]).to_json() in res.stdout


def test_serve_cli_defaults_are_the_server_config_defaults():
    from vidt.cli.serve import serve as cmd
    from vidt.serving.server import ServerConfig

    want = {f.name: f.default for f in fields(ServerConfig)}
    option_to_field = {"idle_timeout": "idle_timeout_s", "grace": "grace_s"}
    checked = 0
    for p in cmd.params:
        name = option_to_field.get(p.name, p.name)
        if name in want and p.default is not None and not p.is_flag:
            assert p.default == want[name], p.name
            checked += 1
    assert checked >= 7


@pytest.mark.parametrize("args, named", [
    (("--algo", "odt", "--set", "algo=td3"), "--algo odt and --set algo=td3"),
    (("--online-steps", "7", "--set", "online.online_steps=5"), "--online-steps 7"),
    (("--seed", "3", "--set", "seed=4"), "--seed 3"),
])
def test_a_flag_and_a_set_that_disagree_are_refused(run_cli, args, named):
    res = run_cli("train", "--env", "Pendulum-v1", *args, "--dry-run")
    assert res.exit_code == 2
    assert named in res.stderr and "disagree" in res.stderr


def test_a_flag_and_a_set_that_agree_are_fine(run_cli):
    res = run_cli("train", "--env", "vidt/OneState-v0", "--seed", "3", "--set", "seed=3.0",
                  "--dry-run")
    assert res.exit_code == 0 and '"seed": 3' in res.stdout
