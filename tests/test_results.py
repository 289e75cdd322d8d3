"""`make results` from the committed runs makes the committed reports, and every table
RESULTS.md and README.md quote from a report is still in it.

A quote is a Markdown table under a line `<!-- report: NAME -->`: each of its lines (the header
and separator included) must be a line of NAME's report.md under benchmarks/sweeps/results as the
committed runs make it today. Rows may be left out; none may be changed."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SWEEPS = Path("benchmarks/sweeps")  # relative, as `make results` names the runs
TEXT = ("report.md", "per_task.csv", "per_run.csv", "aggregate.csv", "improvement.csv",
        "summary.json")
QUOTE = re.compile(r"^<!-- report: ([\w.-]+) -->$")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """Every report, as `make results` makes it (no PNGs: their pixels are not what is
    checked here), in a temp directory."""
    from vidt.report.report import report

    out = tmp_path_factory.mktemp("results")
    with contextlib.chdir(REPO):
        for runs in sorted(p for p in (SWEEPS / "runs").iterdir() if p.is_dir()):
            report(runs, out / runs.name, plots=False)
    return out


def test_every_committed_report_is_what_make_results_makes(regenerated):
    committed = REPO / SWEEPS / "results"
    assert sorted(p.name for p in committed.iterdir()) == \
        sorted(p.name for p in regenerated.iterdir()), "a report without runs, or runs without " \
        "a report: `make results`, and commit what it writes"
    for made in sorted(regenerated.iterdir()):
        for name in TEXT:
            mine, theirs = made / name, committed / made.name / name
            assert mine.exists() == theirs.exists(), theirs
            if mine.exists():
                assert theirs.read_text() == mine.read_text(), \
                    f"{theirs} is not what its runs make: `make results`"
        pngs = {p.name for p in (committed / made.name).glob("*.png")}
        from json import loads

        listed = {f for f in loads((made / "summary.json").read_text())["files"]
                  if f.endswith(".png")}
        assert pngs == listed, made.name


def quotes(path: Path) -> list[tuple[str, int, list[str]]]:
    """(report name, line number, table lines) of each quoted table in `path`."""
    lines = path.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        m = QUOTE.match(line.strip())
        if m:
            table = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                table.append(row)
            assert table, f"{path}:{i + 1}: a report marker with no table under it"
            found.append((m.group(1), i + 1, table))
    return found


@pytest.mark.parametrize("doc", ["benchmarks/RESULTS.md", "README.md"])
def test_the_tables_a_document_quotes_are_in_the_reports(regenerated, doc):
    found = quotes(REPO / doc)
    if doc.startswith("benchmarks"):
        assert len(found) >= 5  # one per learning question at least
    for name, at, table in found:
        report = regenerated / name / "report.md"
        assert report.exists(), f"{doc}:{at} quotes a report that no runs make: {name}"
        made = set(report.read_text().splitlines())
        for row in table:
            assert row in made, f"{doc}:{at}: not in {name}'s report as the runs make it " \
                                f"today: {row}"
