"""docs/algorithm.md's per-family table, read as data: every "ours" cell equals what the
registry and the config resolution give (paper preset), so the published table and the code
cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidt.envs import list_families
from vidt.train.config import flatten_dict, resolve

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
