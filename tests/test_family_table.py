"""docs/algorithm.md's per-family table, read as data: every "ours" cell equals what the
registry and the config resolution give (paper preset), so the published table and the code
cannot drift apart. And the registry rows as the one home of per-env settings: no family
named in the training code, a row's settings kept by every preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidt.envs import get_family, list_families
from vidt.errors import ConfigError
from vidt.train.algos import ALGORITHMS
from vidt.train.config import PRESETS, flatten_dict, resolve

DOC = Path(__file__).resolve().parents[1] / "docs" / "algorithm.md"
FAMILIES = {"MuJoCo": "mujoco", "Adroit": "adroit", "AntMaze": "antmaze", "PointMaze": "pointmaze"}
RANDOM_DATA = "hopper-random-v2.hdf5"  # a name is enough: only its labels are read


def _rows() -> list[dict]:
    text = DOC.read_text()
    body = text.split("<!-- family-table:start -->")[1].split("<!-- family-table:end -->")[0]
    lines = [ln for ln in body.strip().splitlines() if ln.startswith("|")][2:]
    rows = []
    for ln in lines:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        assert len(cells) == 6, ln
        rows.append(dict(zip(("envs", "key", "authors", "source", "ours", "why"), cells)))
    return rows


def _envs(spec: str) -> list[tuple[str, str | None]]:
    """'MuJoCo, random data' -> [(Hopper-v5, <random dataset>), ...]."""
    parts = [p.strip() for p in spec.split(",")]
    dataset = RANDOM_DATA if "random data" in parts else None
    out = []
    for p in parts:
        if p == "random data":
            continue
        if p in FAMILIES:
            out += [f.env_id for f in list_families() if f.family == FAMILIES[p]]
        else:
            out.append(p)
    return [(e, dataset) for e in out]


def _value(cell: str):
    if cell in ("true", "false"):
        return cell == "true"
    return float(cell)


ROWS = _rows()


def test_the_table_is_there_and_covers_every_family():
    assert len(ROWS) > 80
    covered = {e for r in ROWS for e, _ in _envs(r["envs"])}
    paper = {f.env_id for f in list_families() if f.family in FAMILIES.values()}
    assert paper <= covered
    for r in ROWS:
        assert r["authors"] and r["source"], r
        if r["why"]:
            continue
        # no reason given: then ours must be the authors' value
        assert r["authors"].split(" ")[0] in (r["ours"], {"true": "on", "false": "off"}.get(
            r["ours"]), {"true": "1", "false": "0"}.get(r["ours"])), r


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['envs']}:{r['key']}" for r in ROWS])
def test_ours_is_what_runs(row):
    want = _value(row["ours"])
    for env_id, dataset in _envs(row["envs"]):
        over = {"dataset": dataset} if dataset else {}
        cfg = flatten_dict(resolve(env_id, "vidt", "paper", overrides=over).to_dict())
        assert cfg[row["key"]] == pytest.approx(want), (env_id, row["key"])


# ---------------------------------------------------------------- settings live in the rows


def test_no_family_is_named_in_the_training_code():
    # Per-env behaviour comes from the registry's rows, never from comparing family names.
    import importlib
    import inspect
    import pkgutil

    import vidt.train

    names = {f.family for f in list_families()} | {get_family("Unregistered-v0").family}
    for m in pkgutil.iter_modules(vidt.train.__path__):
        src = inspect.getsource(importlib.import_module(f"vidt.train.{m.name}"))
        for name in names:
            assert f'"{name}"' not in src and f"'{name}'" not in src, (m.name, name)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_rows_settings_hold_on_every_preset(preset):
    rows = [f for f in list_families() if f.overrides or f.rl_coef is not None]
    assert rows  # the one-state task has both
    for fam in rows:
        for algo in ALGORITHMS:
            cfg = flatten_dict(resolve(fam.env_id, algo, preset).to_dict())
            for key, value in fam.overrides.items():
                assert cfg[key] == value, (fam.env_id, algo, key)
            # the row's alpha replaces an RL term's; an algorithm without one keeps 0
            alpha = fam.rl_coef if ALGORITHMS[algo].rl_coef > 0 else 0.0
            assert cfg["loss.rl_coef"] == alpha, (fam.env_id, algo)


def test_an_env_outside_the_registry_needs_its_returns_and_scale():
    fam = get_family("MountainCarContinuous-v0")
    assert set(fam.needs) == {"eval.target_return", "online.target_return", "data.reward_scale"}
    with pytest.raises(ConfigError, match="--set data.reward_scale"):
        resolve(fam.env_id, overrides={"eval.target_return": 90, "online.target_return": 90})
    given = {k: 1.0 for k in fam.needs}
    assert resolve(fam.env_id, overrides=given).data.reward_scale == 1.0
    assert all(not f.needs for f in list_families())


def test_small_is_the_default_preset_everywhere():
    import dataclasses
    import inspect

    from vidt.train.config import DEFAULT_PRESET, TrainConfig, default_dict

    assert DEFAULT_PRESET == "small" and DEFAULT_PRESET in PRESETS
    assert {f.name: f.default for f in dataclasses.fields(TrainConfig)}["preset"] == DEFAULT_PRESET
    for fn in (resolve, default_dict):
        assert inspect.signature(fn).parameters["preset"].default == DEFAULT_PRESET
