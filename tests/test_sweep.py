"""`vidt sweep` on a real local Ray, as a user runs it: a 2x2 grid, the same grid interrupted
and rerun (nothing finished is redone, resumed runs equal uninterrupted ones), a failing
point reported while the others finish, and bad sweep files refused in one line."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# find_spec, not import: importing Ray here would load it (and its fork handlers) into the
# whole test process.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                 reason="vidt sweep needs Ray (pip install 'vidt[sweep]')"),
              pytest.mark.timeout(900)]  # a 2x2 grid of real runs on 2 busy cores

GRID = """
root = "{root}"
[train]
preset = "tiny"
pretrain_updates = 60
online_steps = 384
device = "cpu"
[resources]
cpus = 1
[[datasets]]
env = "vidt/OneState-v0"
[grid]
algos = {algos}
seeds = [0, 1]
"""


def sweep_file(tmp: Path, name: str, algos='["vidt", "odt"]') -> tuple[Path, Path]:
    root = tmp / name
    f = tmp / f"{name}.toml"
    f.write_text(GRID.format(root=root, algos=algos))
    return f, root


def vidt(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidt.cli.main", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"},
                          **kw)


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        out = list(csv.DictReader(f))
    for r in out:
        r.pop("wall_time_s")  # the only column allowed to differ
    return out


def runs(root: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(root)): p.parent for p in root.rglob("config.json")}


def trainer_of(run_dir: Path, sweep: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of the `vidt train` at work in run_dir, once it has started."""
    from vidt.files import training_pid

    deadline = time.monotonic() + timeout
    while not training_pid(run_dir):
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.05)
    return int(training_pid(run_dir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 2x2 grid run once, uninterrupted."""
    tmp = tmp_path_factory.mktemp("sweep")
    f, root = sweep_file(tmp, "ref")
    res = vidt("sweep", str(f))
    assert res.returncode == 0, res.stderr
    return root, res


def test_a_2x2_sweep_runs_every_point_and_report_reads_it(reference):
    root, res = reference
    assert sorted(runs(root)) == ["vidt-OneState-v0-builtin/odt/s0",
                                  "vidt-OneState-v0-builtin/odt/s1",
                                  "vidt-OneState-v0-builtin/vidt/s0",
                                  "vidt-OneState-v0-builtin/vidt/s1"]
    assert "4 finished, 0 already finished, 0 failed" in res.stderr
    assert "progress: 4 done, 0 running, 0 failed, 0 waiting" in res.stderr
    index = json.loads((root / "sweep.json").read_text())["runs"]
    assert index["vidt-OneState-v0-builtin/odt/s1"]["algo"] == "odt"
    out = vidt("report", str(root), "--json", "--reps", "200")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["runs"], summary["finished"], summary["running"]) == (4, 4, [])
    assert {r["method"]: r["seeds"] for r in summary["per_task"]} == {"odt": 2, "vidt": 2}
    assert {a["method"] for a in summary["aggregate"]} == {"odt", "vidt"}
    assert Path(summary["files"]["vidt-OneState-v0-builtin.png"]).stat().st_size > 10_000
    again = vidt("sweep", str(reference[0].parent / "ref.toml"))  # nothing left to do
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_a_run_s_log_holds_its_command_progress_end_and_summary(reference):
    root, _ = reference
    log = (root / "logs" / "vidt-OneState-v0-builtin" / "odt" / "s1.log").read_text()
    lines = log.strip().splitlines()
    assert lines[0].startswith("$ vidt train --env vidt/OneState-v0 --algo odt --seed 1")
    evals = [line for line in lines if " online steps, " in line]
    assert "pretrain: 0 online steps" in evals[0]
    assert "online: 384 online steps" in evals[-1]
    assert " finished after " in lines[-2]
    summary = json.loads(lines[-1])
    assert (summary["algo"], summary["online_env_steps"], summary["interrupted"]) == (
        "odt", 384, False)


def test_a_stopped_sweep_counts_what_finished_before_the_stop_and_what_never_started(
        tmp_path):
    """`kill PID` the moment the first of two runs (one at a time) reaches its budget: that
    run has finished, as `vidt report` and a rerun count it, and the second never started."""
    from vidt.report.runs import read_run

    f, root = sweep_file(tmp_path, "stop", algos='["odt"]')
    first = root / "vidt-OneState-v0-builtin" / "odt" / "s0"
    proc = subprocess.Popen([sys.executable, "-m", "vidt.cli.main", "sweep", str(f),
                             "--max-concurrent", "1"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline and proc.poll() is None
            try:
                if (first / "metrics.csv").exists() and read_run(first).finished:
                    break
            except Exception:  # a row half written
                pass
            time.sleep(0.02)
        proc.terminate()  # kill PID
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == 130, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "1 finished, 0 already finished, 0 failed, 0 interrupted, 1 not started" in rest


def test_an_interrupted_sweep_goes_on_without_redoing_and_ends_as_uninterrupted(
        reference, tmp_path):
    ref_root, _ = reference
    f, root = sweep_file(tmp_path, "cut")
    # One run at a time, so that Ctrl-C lands after one run finished and inside the next.
    # (with_parent also gives it SIGINT's default handling: a test run started in the
    # background, e.g. `make test &`, passes SIGINT on ignored.)
    from vidt.procs import with_parent

    # Its own process group, which Ctrl-C below signals whole, as a terminal does.
    proc = subprocess.Popen(with_parent([sys.executable, "-m", "vidt.cli.main", "sweep",
                                         str(f), "--max-concurrent", "1"], signal.SIGINT),
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        started = []
        for line in proc.stderr:
            if line.startswith("start"):
                started.append(Path(line.split()[1].rstrip(";")))
            if line.startswith("done"):
                break
        for line in proc.stderr:  # the second run's start
            if line.startswith("start"):
                started.append(Path(line.split()[1].rstrip(";")))
                break
        pid = trainer_of(started[-1], proc)
        # Ctrl-C reaches the trainer once, from its task: outside the group a terminal signals
        # (a second SIGINT would make it stop without a checkpoint).
        assert os.getpgid(pid) != proc.pid
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == 130, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted: run the same command again" in rest
    finished = {k for k, p in runs(root).items()
                if (p / "metrics.csv").exists() and len(rows(p)) == len(rows(ref_root / k))}
    stamps = {k: (runs(root)[k] / "metrics.csv").stat().st_mtime_ns for k in finished}
    assert len(finished) == 1
    assert str(started[-1].relative_to(root)) not in finished  # stopped mid-run
    res = vidt("sweep", str(f))
    assert res.returncode == 0, res.stderr
    assert f"{len(finished)} already finished" in res.stderr
    assert "(resuming)" in res.stderr
    for k in finished:  # not redone
        assert (runs(root)[k] / "metrics.csv").stat().st_mtime_ns == stamps[k]
    assert sorted(runs(root)) == sorted(runs(ref_root))
    for k, p in runs(root).items():  # resumed runs end exactly as uninterrupted ones
        assert rows(p) == rows(ref_root / k), k


def test_a_failing_point_is_reported_and_the_others_finish(tmp_path):
    f, root = sweep_file(tmp_path, "fail", algos='["odt"]')
    broken = root / "vidt-OneState-v0-builtin" / "odt" / "s1"
    dry = vidt("train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--algo", "odt",
               "--dry-run")
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(dry.stdout)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a damaged run
    res = vidt("sweep", str(f))
    assert res.returncode == 1
    assert "1 finished, 0 already finished, 1 failed" in res.stderr
    log = root / "logs" / "vidt-OneState-v0-builtin" / "odt" / "s1.log"
    assert f"failed: {broken}: vidt train exited with 1; log: {log}" in res.stderr
    assert "checkpoint" in log.read_text()
    assert "Traceback" not in res.stderr


def test_a_run_stopped_by_itself_makes_the_sweep_exit_non_zero(tmp_path):
    """Someone stops one run's trainer (kill -INT PID): it checkpoints, the sweep goes on with
    the others, and its exit status says not all finished."""
    f, root = sweep_file(tmp_path, "self", algos='["odt"]')
    f.write_text(f.read_text().replace("seeds = [0, 1]", "seeds = [0]"))
    proc = subprocess.Popen([sys.executable, "-m", "vidt.cli.main", "sweep", str(f)],
                            stderr=subprocess.PIPE, text=True)
    try:
        os.kill(trainer_of(root / "vidt-OneState-v0-builtin" / "odt" / "s0", proc),
                signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == 1, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "0 finished, 0 already finished, 0 failed, 1 interrupted, 0 not started" in rest
    assert "1 run(s) stopped before finishing: run the same command again" in rest


@pytest.mark.parametrize("text, message", [
    ('root = "R"\nbogus = 1\n', "unknown key 'bogus'"),
    ('root = "R"\n[grid]\nalgos = ["vidt"]\nseeds = [0]\n', "no [[datasets]]: the grid is empty"),
    ('root = "R"\n[[datasets]]\nenv = "vidt/OneState-v0"\n[grid]\nalgos = []\nseeds = [0]\n',
     "[grid] algos must be a non-empty list"),
    ('root = "R"\n[[datasets]]\nenv = "vidt/OneState-v0"\n[grid]\nalgos = ["vidt"]\n'
     'seeds = [0, 0]\n', "seeds must be distinct"),
    ('root = "R"\n[train]\nset = ["model.nope=3"]\n[[datasets]]\nenv = "vidt/OneState-v0"\n'
     '[grid]\nalgos = ["vidt"]\nseeds = [0]\n', "model.nope"),
    ('root = "R"\n[[datasets]]\nenv = "vidt/OneState-v0"\n[grid]\nalgos = ["vidt"]\n'
     'seeds = [0]\n[grid.variants]\n"big" = ["model.d_model=-4"]\n', "[big]"),
    ('root = "R"\n[[datasets]]\nenv = "vidt/OneState-v0"\n[grid]\nalgos = ["sac"]\n'
     'seeds = [0]\n', "sac"),
    ('root = "R"\n[[datasets]]\nenv = "Hopper-v5"\npath = "/nonexistent.hdf5"\n[grid]\n'
     'algos = ["vidt"]\nseeds = [0]\n', "/nonexistent.hdf5"),
    ('root = \n', "not valid TOML"),
    ('root = "R"\ntrain = 5\n', "[train] must be a table"),
    ('root = "R"\ndatasets = [1]\n', "[[datasets]] #1 must be a table"),
    ('root = "R"\n[[datasets]]\nenv = "Hopper-v5"\ncollect = 5\n', "collect must be a table"),
    ('root = "R"\n[[datasets]]\nenv = "Hopper-v5"\nname = 5\n', "'name' must be a non-empty"),
    ('root = "R"\n[[datasets]]\nenv = "Hopper-v5"\nname = "random 20k"\n'
     'collect = { steps = 10 }\n[[datasets]]\nenv = "Hopper-v5"\nname = "random_20k"\n'
     'collect = { steps = 10 }\n', "listed twice"),
])
def test_bad_sweep_files_are_refused_in_one_line(run_cli, tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = run_cli("sweep", str(f), "--dry-run")
    assert r.exit_code != 0
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not Path("R").exists()  # nothing was started


def test_dry_run_lists_the_runs_and_collects_nothing(run_cli, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(f'root = "{tmp_path / "root"}"\n[resources]\ncpus = 0.5\ngpus = 0.25\n'
                 '[[datasets]]\nenv = "Pendulum-v1"\nname = "random-1k"\n'
                 'collect = { policy = "random", steps = 1000 }\n'
                 '[grid]\nalgos = ["vidt", "td3"]\nseeds = [3]\n'
                 '[grid.variants]\n"" = []\n"wide critic" = ["model.critic_hidden=512"]\n')
    r = run_cli("sweep", str(f), "--dry-run")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == [f"new      {tmp_path}/root/Pendulum-v1-random-1k/vidt/s3",
                         f"new      {tmp_path}/root/Pendulum-v1-random-1k/vidt-wide_critic/s3"]
    assert lines[-1] == "4 runs; each: 0.5 CPU, 0.25 GPU"
    assert not (tmp_path / "root").exists()


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "sweeps").glob("*.toml")),
                         ids=lambda p: p.name)
def test_the_committed_sweep_files_pass_the_checks_a_sweep_makes_first(path):
    """Every override a committed sweep file gives is one the trainer takes, every env can be
    made, and its runs stay under benchmarks/sweeps/runs/, where finished runs' results are
    committed (benchmarks/sweeps/runs/.gitignore)."""
    from vidt.sweep.spec import check, parse

    sweep = parse(path)
    check(sweep)
    assert sweep.root == Path("benchmarks/sweeps/runs") / path.stem
    assert sweep.points and len({p.run_dir for p in sweep.points}) == len(sweep.points)


def test_datasets_a_sweep_collects_are_made_once_and_then_checked(tmp_path):
    from vidt.sweep.run import collect_missing
    from vidt.sweep.spec import check, parse

    f = tmp_path / "s.toml"
    f.write_text(f'root = "{tmp_path / "root"}"\n[[datasets]]\nenv = "Pendulum-v1"\n'
                 'name = "r"\ncollect = { policy = "random", steps = 400, seed = 2 }\n'
                 '[grid]\nalgos = ["odt"]\nseeds = [0]\n')
    spec = parse(f)
    assert len(set(spec.points)) == len(spec.points)  # a rerun keeps points in a set
    said = []
    collect_missing(spec, said.append)
    data = tmp_path / "root" / "data" / "Pendulum-v1-r"
    assert said == [f"collecting Pendulum-v1 r: 400 steps, policy random, seed 2 -> {data}"]
    assert data.is_dir()
    check(spec)  # the dataset loads and fits the env
    collect_missing(spec, said.append)  # there already: nothing more
    assert len(said) == 1


def test_the_index_records_each_dataset_s_returns_and_the_report_sets_runs_beside_them(
        tmp_path):
    from vidt.data import load
    from vidt.report.report import markdown, summarize
    from vidt.report.runs import Run, find_datasets
    from vidt.sweep.run import collect_missing, write_index
    from vidt.sweep.spec import parse

    f = tmp_path / "s.toml"
    f.write_text(f'root = "{tmp_path / "root"}"\n[[datasets]]\nenv = "Pendulum-v1"\n'
                 'name = "r"\ncollect = { policy = "random", steps = 400, seed = 2 }\n'
                 '[grid]\nalgos = ["odt", "vidt"]\nseeds = [0]\n')
    spec = parse(f)
    write_index(spec)  # before collection: nothing to say of the data yet
    assert find_datasets(tmp_path / "root") == {}
    collect_missing(spec, lambda line: None)
    write_index(spec)
    returns = [e.episode_return for e in load(spec.datasets[0].path, "Pendulum-v1")]
    rec = find_datasets(tmp_path / "root")[("Pendulum-v1", "r")]
    assert (rec["episodes"], rec["steps"]) == (2, 400)
    assert rec["return_mean"] == pytest.approx(np.mean(returns))
    assert rec["return_max"] == pytest.approx(max(returns))
    assert rec["score_max"] > rec["score_mean"] and "collected_with" not in rec
    assert rec["collected_by"] == "a random policy"
    shutil.rmtree(spec.datasets[0].path)
    write_index(spec)  # the data deleted since: what was recorded stays
    assert find_datasets(tmp_path / "root")[("Pendulum-v1", "r")] == rec

    def run(algo, seed, scores):
        return Run(tmp_path / algo / str(seed), "Pendulum-v1", "r", algo, "", seed,
                   np.array([0, 1000, 2000, 3000]), np.array(scores, float), True, 3000, True)

    runs = [run("odt", 0, [1, 2, 3, 4]), run("odt", 1, [1, 2, 3, 6]), run("vidt", 0, [0, 3, 9, 9])]
    md = markdown(summarize(runs, reps=50, datasets=find_datasets(tmp_path / "root")))
    data = (f"{rec['return_mean']:.1f} ({rec['score_mean']:.1f}) | "
            f"{rec['return_max']:.1f} ({rec['score_max']:.1f})")
    # odt: finals 4 and 6, last 3 means 3 and 11/3, lowest online 2 and 2; vidt: one run,
    # final 9, last 3 7, lowest online 3 (its 0 came after pretraining, before any online step)
    assert (f"| Pendulum-v1 | r | a random policy | 2 | {data} | 5.0 ± 1.0 / 3.3 ± 0.3 / 2.0 ± 0.0 | "
            f"9.0 ± 0.0 / 7.0 ± 0.0 / 3.0 ± 0.0 |" in md.splitlines())
    # Without a recorded dataset, no such section: the report of an older index is unchanged.
    assert "Each dataset" not in markdown(summarize(runs, reps=50))


def test_without_ray_the_sweep_says_how_to_get_it(run_cli, tmp_path, monkeypatch):
    f, _ = sweep_file(tmp_path, "noray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = run_cli("sweep", str(f))
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: vidt sweep needs Ray: pip install 'vidt[sweep]'"


def test_report_keeps_runs_still_going_apart(reference, tmp_path, run_cli):
    import shutil

    ref_root, _ = reference
    root = tmp_path / "copy"
    shutil.copytree(ref_root, root, ignore=shutil.ignore_patterns("report", "tb", "*.pt"))
    going = root / "vidt-OneState-v0-builtin" / "odt" / "s1" / "metrics.csv"
    lines = going.read_text().splitlines()
    going.write_text("\n".join(lines[:4]) + "\n")  # stopped after a few evaluations
    pretraining = root / "vidt-OneState-v0-builtin" / "vidt" / "s1" / "metrics.csv"
    pretraining.write_text(pretraining.read_text().splitlines()[0] + "\n")  # no eval yet
    # A point the sweep lists but has not started yet.
    index = json.loads((root / "sweep.json").read_text())
    index["runs"]["vidt-OneState-v0-builtin/td3/s0"] = {**next(iter(index["runs"].values())),
                                                        "algo": "td3"}
    (root / "sweep.json").write_text(json.dumps(index))
    from vidt.train.checkpoint import RunDirLock

    lock = RunDirLock(going.parent)  # a trainer at work there; none in the other one
    try:
        r = run_cli("report", str(root), "--json", "--reps", "200")
    finally:
        lock.release()
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["runs"], s["finished"]) == (5, 2)
    assert s["running"] == [str(going.parent)]
    assert s["stopped"] == [str(pretraining.parent)]
    assert s["not_started"] == [str(root / "vidt-OneState-v0-builtin" / "td3" / "s0")]
    odt = next(row for row in s["per_task"] if row["method"] == "odt")
    assert (odt["seeds"], odt["unfinished"]) == (1, 1)
    assert next(a for a in s["aggregate"] if a["method"] == "odt")["runs_per_task"] == 1
    assert s["aggregate_notes"] == []  # both methods: 1 finished run on the one task
    md = (root / "report" / "report.md").read_text()
    assert "## Still running (not in the statistics)" in md and str(going.parent) in md
    assert "## Stopped before finishing" in md and str(pretraining.parent) in md
    assert "## Not started yet (listed by the sweep)" in md and "td3" in md
    assert run_cli("report", str(tmp_path / "nothing-here")).exit_code == 1
    (tmp_path / "empty").mkdir()
    empty = run_cli("report", str(tmp_path / "empty"))
    assert empty.exit_code == 1 and "no runs with an evaluation yet" in empty.stderr


def test_report_reads_a_run_without_online_steps_and_refuses_a_broken_one(run_cli, tmp_path):
    from vidt.report.runs import read_run

    run = tmp_path / "runs" / "pretrain-only"
    run.mkdir(parents=True)
    config = {"env_id": "Pendulum-v1", "algo": "odt", "seed": 0, "dataset": "d",
              "online": {"online_steps": 0}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.csv").write_text("phase,iteration,online_env_steps,eval_return_mean\n"
                                     "pretrain,0,0,-900.5\n")
    assert read_run(run).finished  # its one row ends pretraining, and with it the run
    del config["online"]
    (run / "config.json").write_text(json.dumps(config))
    r = run_cli("report", str(tmp_path / "runs"))
    assert r.exit_code == 1
    assert "not a vidt run" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_index_keeps_the_points_of_variants_since_removed_while_their_runs_exist(tmp_path):
    from vidt.sweep.run import write_index
    from vidt.sweep.spec import parse

    f = tmp_path / "s.toml"
    grid = (f'root = "{tmp_path / "root"}"\n[[datasets]]\nenv = "vidt/OneState-v0"\n'
            '[grid]\nalgos = ["vidt"]\nseeds = [0]\n[grid.variants]\n"a=1" = ["loss.rl_coef=1.0"]\n')
    f.write_text(grid + '"a=0" = ["loss.rl_coef=0.0"]\n')
    first = parse(f)
    write_index(first)
    for p in first.points:
        p.run_dir.mkdir(parents=True)
    (tmp_path / "root" / "vidt-OneState-v0-builtin" / "vidt-a=1" / "s0").rmdir()
    f.write_text(grid)  # "a=0" removed; "a=1" kept, its run not started
    write_index(parse(f))
    runs = json.loads((tmp_path / "root" / "sweep.json").read_text())["runs"]
    assert runs == {"vidt-OneState-v0-builtin/vidt-a=1/s0": {
                        "env_id": "vidt/OneState-v0", "dataset": "builtin", "algo": "vidt",
                        "variant": "a=1", "sets": ["loss.rl_coef=1.0"], "seed": 0},
                    "vidt-OneState-v0-builtin/vidt-a=0/s0": {
                        "env_id": "vidt/OneState-v0", "dataset": "builtin", "algo": "vidt",
                        "variant": "a=0", "sets": ["loss.rl_coef=0.0"], "seed": 0}}


def test_a_variant_of_some_algos_only_and_a_threshold_per_dataset(tmp_path):
    from vidt.sweep.run import write_index
    from vidt.sweep.spec import parse

    f = tmp_path / "s.toml"
    text = (f'root = "{tmp_path / "root"}"\n[[datasets]]\nenv = "vidt/OneState-v0"\n'
            'threshold = 0.5\n[grid]\nalgos = ["vidt", "odt"]\nseeds = [0]\n[grid.variants]\n'
            '"" = []\n"rl-off" = {{ algos = [{algos}], set = ["loss.rl_coef=0.0"] }}\n')
    f.write_text(text.format(algos='"vidt"'))
    spec = parse(f)
    assert [str(p.run_dir.relative_to(tmp_path / "root")) for p in spec.points] == [
        "vidt-OneState-v0-builtin/vidt/s0", "vidt-OneState-v0-builtin/vidt-rl-off/s0",
        "vidt-OneState-v0-builtin/odt/s0"]
    assert spec.points[1].sets == ("loss.rl_coef=0.0",)
    write_index(spec)
    index = json.loads((tmp_path / "root" / "sweep.json").read_text())["runs"]
    assert {p["threshold"] for p in index.values()} == {0.5}
    f.write_text(text.format(algos='"td3"'))
    from vidt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"algos \['td3'\] are not in \[grid\] algos"):
        parse(f)


def test_a_control_that_differs_only_online_starts_from_its_method_s_pretraining(tmp_path):
    f, root = sweep_file(tmp_path, "share", algos='["vidt"]')
    f.write_text(f.read_text().replace("seeds = [0, 1]", "seeds = [0]")
                 + '[grid.variants]\n"" = []\n"rl-off" = ["loss.rl_coef=0.0"]\n')
    # Two at once where there are two cores: the control waits for ViDT's pretraining.
    res = vidt("sweep", str(f), "--max-concurrent", "2")
    assert res.returncode == 0, res.stderr
    base = root / "vidt-OneState-v0-builtin"
    assert f"{base / 'vidt-rl-off' / 's0'} (pretrained as {base / 'vidt' / 's0'})" in res.stderr
    if (os.cpu_count() or 1) >= 2:
        assert (f"wait   {base / 'vidt-rl-off' / 's0'} (for the pretraining of "
                f"{base / 'vidt' / 's0'})") in res.stderr
    assert "vidt/s0 (pretrained" not in res.stderr
    # The control ends exactly as when it pretrains itself, with the command its log holds.
    log = (root / "logs" / "vidt-OneState-v0-builtin" / "vidt-rl-off" / "s0.log").read_text()
    cmd = next(line for line in log.splitlines() if line.startswith("$ vidt train")).split()[3:]
    i = cmd.index("--pretrained-from")
    cmd[cmd.index("--out") + 1] = str(tmp_path / "own")
    own = vidt("train", *cmd[:i], *cmd[i + 2:])
    assert own.returncode == 0, own.stderr
    assert rows(base / "vidt-rl-off" / "s0") == rows(tmp_path / "own")
    assert rows(base / "vidt-rl-off" / "s0") != rows(base / "vidt" / "s0")


def test_a_donor_is_judged_by_the_config_it_ran_with_not_the_file_as_edited_since(tmp_path):
    from vidt.sweep.run import pretraining_donor
    from vidt.sweep.spec import parse
    from vidt.train.trainer import train

    f, root = sweep_file(tmp_path, "stale", algos='["vidt", "odt"]')
    f.write_text(f.read_text().replace("seeds = [0, 1]", "seeds = [0]")
                 + '[grid.variants]\n"" = []\n"rl-off" = { algos = ["vidt"], set = ["loss.rl_coef=0.0"] }\n')
    spec = parse(f)
    vidt_s0, rl_off, odt = (next(p for p in spec.points if (p.algo, p.variant) == k)
                            for k in (("vidt", ""), ("vidt", "rl-off"), ("odt", "")))
    assert pretraining_donor(spec, rl_off, {}) is None  # nothing pretrained yet
    train(spec.config(vidt_s0), vidt_s0.run_dir)
    assert pretraining_donor(spec, rl_off, {}) == vidt_s0.run_dir
    assert pretraining_donor(spec, odt, {}) is None  # ODT pretrains differently
    # The file edited since: vidt/s0 (finished, so not rerun) pretrained with 60 updates.
    f.write_text(f.read_text().replace("pretrain_updates = 60", "pretrain_updates = 80"))
    edited = parse(f)
    assert pretraining_donor(edited, next(p for p in edited.points if p.variant), {}) is None
