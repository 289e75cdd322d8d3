"""Aggregate statistics across tasks, as rliable defines them (Agarwal et al., 2021), in numpy:
rliable 1.2.0 fails to import next to pandas 3, and scipy is not a dependency.

A score matrix is (runs, tasks): column j holds the normalized scores of one algorithm's runs
(seeds) on task j. Tasks may have different numbers of runs only where noted.
"""

from __future__ import annotations

import numpy as np


def iqm(scores) -> float:
    """Interquartile mean of all the scores: drop the lowest and highest 25% (int(0.25 n) of
    each, as scipy.stats.trim_mean(x, 0.25) does) and average the rest."""
    x = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("iqm of no scores")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def stratified_bootstrap_ci(scores, statistic=iqm, reps: int = 2000, alpha: float = 0.05,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `statistic` over stratified bootstrap resamples: each task's
    runs are resampled with replacement within that task (rliable's StratifiedBootstrap)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores must be a non-empty (runs, tasks) matrix, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    n, m = x.shape
    cols = np.arange(m)
    stats = np.empty(reps)
    for r in range(reps):
        rows = rng.integers(0, n, size=(n, m))  # a resample of each column's runs
        stats[r] = statistic(x[rows, cols])
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def probability_of_improvement(x, y) -> float:
    """P(X > Y): for each task, the probability that a run of X scores above a run of Y (ties
    count half: the Mann-Whitney U statistic over n*m), averaged over tasks. x (n, tasks) and
    y (m, tasks) may have different numbers of runs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.size == 0 or y.size == 0:
        raise ValueError(f"x and y must be (runs, tasks) with the same tasks, got {x.shape} "
                         f"and {y.shape}")
    per_task = []
    for j in range(x.shape[1]):
        a, b = x[:, j][:, None], y[:, j][None, :]
        per_task.append(float(((a > b) + 0.5 * (a == b)).mean()))
    return float(np.mean(per_task))


def first_crossing(steps, values, threshold: float):
    """The first step at which `values` reach `threshold`, or None."""
    for s, v in zip(steps, values):
        if v >= threshold:
            return s
    return None
