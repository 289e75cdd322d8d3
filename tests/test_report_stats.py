"""`vidt report`'s statistics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vidt.report.stats import (
    first_crossing,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
)


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm(np.arange(1, 9)) == 4.5  # [1..8] -> mean(3, 4, 5, 6)
    # 4 runs x 2 tasks, pooled: sorted 0 1 2 3 10 11 12 13 -> mean(2, 3, 10, 11)
    assert iqm([[0, 10], [1, 11], [2, 12], [3, 13]]) == 6.5
    assert iqm([1, 2, 3]) == 2.0  # int(0.75) = 0 cut: the plain mean
    assert iqm([7, 1, 100, 4, 5]) == pytest.approx((4 + 5 + 7) / 3)  # cut 1 each end
    with pytest.raises(ValueError):
        iqm([])


def test_probability_of_improvement_counts_ties_half_and_averages_tasks():
    assert probability_of_improvement([[1], [3]], [[2], [2]]) == 0.5  # 2 of 4 pairs
    # (2,2) tie 0.5, (2,1) 1, (3,2) 1, (3,1) 1 -> 3.5 / 4
    assert probability_of_improvement([[2], [3]], [[2], [1]]) == 0.875
    # Two tasks: 1.0 on the first (every x above every y), 0.0 on the second -> 0.5
    x = [[5, 0], [6, 1]]
    y = [[1, 5], [2, 6], [3, 7]]  # 3 runs against 2: allowed
    assert probability_of_improvement(x, y) == 0.5
    assert probability_of_improvement(y, x) == 0.5
    with pytest.raises(ValueError):
        probability_of_improvement([[1, 2]], [[1]])


def test_bootstrap_resamples_within_each_task():
    # Task 0's runs all score 0, task 1's all 10: every stratified resample holds two of each,
    # so the IQM (cut 1 of 4 at each end) is always 5; pooling the runs would vary it.
    x = np.array([[0.0, 10.0], [0.0, 10.0]])
    assert stratified_bootstrap_ci(x, reps=500) == (5.0, 5.0)


def test_bootstrap_interval_of_a_two_run_task():
    # Resamples of (0, 1): means 0, 0.5, 0.5, 1 with probability 1/4 each; over 2000 draws the
    # 2.5th and 97.5th percentiles are the extremes.
    lo, hi = stratified_bootstrap_ci([[0.0], [1.0]], reps=2000)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = stratified_bootstrap_ci([[0.0], [1.0]], reps=2000, alpha=0.6)  # 30th..70th
    assert (lo, hi) == (0.5, 0.5)


def test_first_crossing():
    assert first_crossing([0, 10, 20, 30], [0.1, 0.4, 0.6, 0.5], 0.5) == 20
    assert first_crossing([0, 10], [0.1, 0.2], 0.5) is None


def test_bootstrap_resamples_each_task_on_its_own_not_whole_runs():
    # Run 0 scores (0, 10) and run 1 (10, 0): resampling whole runs keeps one 0 and one 10 per
    # run, so the IQM would always be 5; resampling each task on its own also draws all zeros
    # (1 in 16) and all tens, so the 95% interval spans both.
    assert stratified_bootstrap_ci([[0.0, 10.0], [10.0, 0.0]], reps=2000) == (0.0, 10.0)


def test_the_report_says_what_the_aggregate_leaves_out(tmp_path):
    from vidt.report.report import summarize
    from vidt.report.runs import Run

    def run(env, algo, seed, final):
        return Run(tmp_path / f"{env}-{algo}-{seed}", env, "d", algo, "", seed,
                   np.array([0, 10]), np.array([0.0, final]), True, 10, True)

    runs = [run("E1", "a", 0, 1.0), run("E1", "a", 1, 3.0), run("E2", "a", 0, 5.0),
            run("E1", "b", 0, 2.0)]
    s = summarize(runs, reps=50)
    assert s["aggregate_notes"] == [
        "a: 1 run(s) per task, the lowest seeds, of 3 finished (the score matrix has the same "
        "runs on every task)",
        "b: left out, no finished run on E2 d"]
    (a,) = s["aggregate"]  # seed 0 on each task: finals 1 and 5
    assert (a["method"], a["iqm"], a["runs_per_task"]) == ("a", 3.0, 1)


def test_curves_are_averaged_at_common_steps_not_by_evaluation_index(tmp_path):
    from vidt.report.report import mean_curve
    from vidt.report.runs import Run

    def run(steps, scores):
        return Run(tmp_path, "E", "d", "a", "", 0, np.array(steps), np.array(scores, float),
                   True, 10, True)

    # One run evaluates at 0, 10, 20; the other at 0, 5, 15, 25 (longer episodes, one more
    # evaluation). Both score = step, so their mean at any common step is that step.
    x, mu, sd = mean_curve([run([0, 10, 20], [0, 10, 20]), run([0, 5, 15, 25], [0, 5, 15, 25])])
    np.testing.assert_allclose(x, [0, 20 / 3, 40 / 3, 20])
    np.testing.assert_allclose(mu, x)
    np.testing.assert_allclose(sd, 0, atol=1e-12)


def _run(tmp_path, algo, seed, scores, task="E", threshold=None):
    from vidt.report.runs import Run

    steps = np.arange(len(scores)) * 1000
    return Run(tmp_path / f"{task}-{algo}-{seed}", task, "d", algo, "", seed, steps,
               np.asarray(scores, float), False, int(steps[-1]), True, threshold=threshold)


def test_a_crossing_counts_only_for_runs_that_start_below_the_threshold(tmp_path):
    from vidt.report.report import markdown, summarize

    # Best mean final 16 (b) -> threshold 8. Seed 0 of a starts at 9, above it: no crossing,
    # though every evaluation after its dip is "a first evaluation at or above 8"; seed 1
    # starts at 1 and reaches 8 at 3000; seed 2 starts at 1 and never does; b starts above.
    runs = [_run(tmp_path, "a", 0, [9, 2, 10, 10]), _run(tmp_path, "a", 1, [1, 3, 5, 10]),
            _run(tmp_path, "a", 2, [1, 2, 3, 4]), _run(tmp_path, "b", 0, [8, 9, 16, 16])]
    s = summarize(runs, reps=50)
    a = next(r for r in s["per_task"] if r["method"] == "a")
    assert s["thresholds"][0]["threshold"] == 8.0
    assert (a["below_at_start"], a["crossed"], a["first_crossing_mean"]) == (2, 1, 3000.0)
    b = next(r for r in s["per_task"] if r["method"] == "b")
    assert (b["below_at_start"], b["crossed"]) == (0, 0)
    md = markdown(s)
    assert "| 3000 (1 of 2 starting below 8.0 reach it) |" in md
    assert "| none start below 8.0 |" in md
    per_run = {(r["method"], r["seed"]): r["first_crossing"] for r in s["per_run"]}
    assert per_run == {("a", 0): None, ("a", 1): 3000, ("a", 2): None, ("b", 0): None}


def test_a_task_whose_runs_all_start_above_it_says_so(tmp_path):
    from vidt.report.report import markdown, summarize

    runs = [_run(tmp_path, "a", 0, [6, 2, 10]), _run(tmp_path, "a", 1, [7, 8, 10])]
    md = markdown(summarize(runs, reps=50))
    assert "| none start below 5.0 |" in md
    assert "- E d: 5.0 (half the best mean final score; every run starts at or above it, so " \
           "no crossing to report)" in md
    assert "| E | d | a | 0 | 6.0 | 10.0 | 6.0 | 10.0 | starts above |  |" in md


def test_negative_scores_have_no_default_threshold(tmp_path):
    from vidt.report.report import markdown, summarize

    # Half of -3.9 is -1.95, above every run's start: "reached" the moment pretraining ended.
    runs = [_run(tmp_path, "a", 0, [-9, -5, -3.9]), _run(tmp_path, "a", 1, [-9, -6, -3.9])]
    s = summarize(runs, reps=50)
    assert s["thresholds"][0]["threshold"] is None
    (a,) = s["per_task"]
    assert "crossed" not in a and a["threshold"] is None
    md = markdown(s)
    assert "| E | d | a | 2 | -3.9 ± 0.0 | -6.1 ± 0.2 |  |  |" in md
    assert "- E d: none (the best mean final score is not positive, so half of it is no bar)" \
           in md
    # A threshold given on the command line, or by the sweep file, is used as it is.
    assert summarize(runs, threshold=-6.0, reps=50)["per_task"][0]["crossed"] == 2
    declared = [_run(tmp_path, "a", s, [-9, -5, -3.9], threshold=-4.5) for s in (0, 1)]
    t = summarize(declared, reps=50)["thresholds"][0]
    assert (t["threshold"], t["source"]) == (-4.5, "the sweep file's")


def test_a_report_written_over_an_earlier_one_removes_what_it_no_longer_makes(tmp_path):
    from vidt.report.report import summarize, write

    def run(algo):
        return _run(tmp_path, algo, 0, [0.0, 1.0])

    out = tmp_path / "report"
    write(summarize([run("a"), run("b")], reps=50), [], out, plots=False)
    assert (out / "improvement.csv").exists()  # two methods: P(a > b) and P(b > a)
    (out / "notes.txt").write_text("a user's own file")
    write(summarize([run("a")], reps=50), [], out, plots=False)
    assert not (out / "improvement.csv").exists()
    assert (out / "notes.txt").exists()  # never listed by a report: left alone
