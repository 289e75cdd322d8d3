"""Return conditioning in the trainer and the report: `eval.target_returns` asks the actor for
each return after pretraining and at the end (conditioning.csv) without changing what the run
learns, and `vidt report` turns the runs' files into a table and a plot."""

from __future__ import annotations

import csv
import json

import pytest

from vidt.errors import ConfigError
from vidt.train.config import typed_value

TARGETS = "[-1, 0, 1]"
SHORT = ("--set", "online.pretrain_updates=60", "--set", "online.online_steps=256")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny one-state runs, alike but for eval.target_returns."""
    from vidt.cli.main import main

    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("asked", ("--set", f"eval.target_returns={TARGETS}")), ("plain", ())):
        try:
            main(["train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--seed", "0",
                  "--out", str(root / name), *SHORT, *extra])
        except SystemExit as e:
            assert not e.code
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_asking_for_returns_changes_nothing_the_run_learns(runs):
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"}
             for r in _rows(runs / "plain" / "metrics.csv")]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"}
                     for r in _rows(runs / "asked" / "metrics.csv")]
    assert not (runs / "plain" / "conditioning.csv").exists()


def test_each_return_asked_after_pretraining_and_at_the_end(runs):
    rows = _rows(runs / "asked" / "conditioning.csv")
    assert [(r["phase"], float(r["target_return"])) for r in rows] == [
        (p, t) for p in ("pretrained", "final") for t in (-1.0, 0.0, 1.0)]
    metrics = [r for r in _rows(runs / "asked" / "metrics.csv") if r["eval_return_mean"]]
    # The family's own target is 1.0: asked for it, the actor does what its evaluations did.
    first, last = float(metrics[0]["eval_return_mean"]), float(metrics[-1]["eval_return_mean"])
    by = {(r["phase"], float(r["target_return"])): float(r["return_mean"]) for r in rows}
    assert by[("pretrained", 1.0)] == pytest.approx(first)
    assert by[("final", 1.0)] == pytest.approx(last)
    # The data: built-in one-state episodes, returns in [-1, 0].
    assert -1 <= float(rows[0]["data_return_mean"]) <= float(rows[0]["data_return_max"]) <= 0.01
    assert json.loads((runs / "asked" / "config.json").read_text())["eval"][
        "target_returns"] == [-1.0, 0.0, 1.0]


def test_the_report_has_a_conditioning_table_and_plot(runs, run_cli, tmp_path):
    out = tmp_path / "report"
    r = run_cli("report", str(runs), "--out", str(out))
    assert r.exit_code == 0, r.stderr
    md = (out / "report.md").read_text()
    section = md.split("## Return conditioning", 1)[1]
    assert "| method | phase | seeds | asked -1.000 | asked 0.000 | asked 1.000 |" in section
    rows = _rows(out / "conditioning.csv")
    assert {(r["phase"], r["seeds"]) for r in rows} == {("pretrained", "1"), ("final", "1")}
    png = next(out.glob("conditioning-*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("given", ["[-1, 0.5, 2]", "-1,0.5,2", [-1, 0.5, 2]])
def test_target_returns_read_from_set_or_toml(given):
    assert typed_value("eval.target_returns", given) == (-1.0, 0.5, 2.0)


def test_a_target_return_that_is_not_a_number_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"eval.target_returns\[1\]: cannot read 'x' as float"):
        typed_value("eval.target_returns", "1,x")
