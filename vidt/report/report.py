"""The report over a root of runs: per task and method (final and last-3 score, mean ± std
over seeds, first crossing of a threshold), across tasks (IQM with a stratified bootstrap 95%
interval, probability of improvement), as Markdown, CSV, one PNG of curves per task and a
JSON summary. Only finished runs enter the statistics; runs still going are listed apart."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import numpy as np

from vidt.files import atomic_write_bytes, atomic_write_text, training_pid

from .runs import Run
from .stats import first_crossing, iqm, probability_of_improvement, stratified_bootstrap_ci


def _mean_std(xs) -> tuple[float, float]:
    return float(np.mean(xs)), float(np.std(xs))


def summarize(runs: list[Run], threshold: float | None = None, reps: int = 2000,
              pending: list[Path] = (), waiting: list[Path] = ()) -> dict:
    """Everything the report says, as plain data. threshold: the score whose first crossing
    is reported (default: per task, half the best method's mean final score). pending: runs
    started but not evaluated yet; waiting: a sweep's runs not started. Unfinished runs are
    listed apart, as running where a trainer holds their directory, as stopped otherwise."""
    tasks = sorted({r.task for r in runs})
    methods = sorted({r.method for r in runs})
    done = [r for r in runs if r.finished]
    per_task = []
    for task in tasks:
        here = [r for r in done if r.task == task]
        finals = {m: [r.final for r in here if r.method == m] for m in methods}
        best = max((np.mean(v) for v in finals.values() if v), default=None)
        thr = threshold if threshold is not None else (
            None if best is None else 0.5 * float(best))
        for m in methods:
            mine = [r for r in here if r.method == m]
            going = [r for r in runs if r.task == task and r.method == m and not r.finished]
            if not mine and not going:
                continue
            row = {"env_id": task[0], "dataset": task[1], "method": m, "seeds": len(mine),
                   "unfinished": len(going), "normalized": all(r.normalized for r in mine),
                   "threshold": thr}
            if mine:
                row["final_mean"], row["final_std"] = _mean_std([r.final for r in mine])
                row["last3_mean"], row["last3_std"] = _mean_std([r.last3 for r in mine])
                cross = [first_crossing(r.steps, r.scores, thr) for r in mine] \
                    if thr is not None else []
                hits = [c for c in cross if c is not None]
                row["crossed"] = len(hits)
                row["first_crossing_mean"] = float(np.mean(hits)) if hits else None
            per_task.append(row)

    # Across tasks: methods with finished runs on every task, the same number of runs per
    # task (the fewest any task has, first seeds first) so the matrix is (runs, tasks).
    aggregate, improvement, notes = [], [], []
    matrices = {}
    for m in methods:
        cols = [sorted((r for r in done if r.method == m and r.task == t),
                       key=lambda r: r.seed) for t in tasks]
        n = min(len(c) for c in cols)
        if n == 0:
            missing = ", ".join(f"{t[0]} {t[1]}" for t, c in zip(tasks, cols) if not c)
            notes.append(f"{m}: left out, no finished run on {missing}")
            continue
        if any(len(c) > n for c in cols):
            notes.append(f"{m}: {n} run(s) per task, the lowest seeds, of {sum(map(len, cols))} "
                         "finished (the score matrix has the same runs on every task)")
        mat = np.array([[c[i].final for c in cols] for i in range(n)])
        matrices[m] = mat
        lo, hi = stratified_bootstrap_ci(mat, iqm, reps=reps)
        aggregate.append({"method": m, "iqm": iqm(mat), "ci_low": lo, "ci_high": hi,
                          "runs_per_task": n, "tasks": len(tasks)})
    for a, b in itertools.permutations(matrices, 2):
        improvement.append({"x": a, "y": b,
                            "p_x_better": probability_of_improvement(matrices[a], matrices[b])})
    unfinished = [r.path for r in runs if not r.finished] + list(pending)
    held = {p: training_pid(p) for p in unfinished}  # read once: a run may end meanwhile
    return {"tasks": [list(t) for t in tasks], "methods": methods, "per_task": per_task,
            "aggregate": aggregate, "improvement": improvement,
            "running": [str(p) for p in unfinished if held[p]],
            "stopped": [str(p) for p in unfinished if not held[p]],
            "aggregate_notes": notes,
            "not_started": [str(p) for p in waiting],
            "runs": len(runs) + len(pending) + len(waiting), "finished": len(done)}


def _fmt(x, digits=1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict) -> str:
    out = [f"# vidt report\n\n{summary['finished']} finished runs of {summary['runs']}; "
           "scores are D4RL-normalized where the env has reference returns, returns "
           "otherwise.\n",
           "## Per task\n",
           "| env | dataset | method | seeds | final | last 3 | first crossing (steps) | "
           "unfinished |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["per_task"]:
        if r["seeds"]:
            final = f"{r['final_mean']:.1f} ± {r['final_std']:.1f}"
            last3 = f"{r['last3_mean']:.1f} ± {r['last3_std']:.1f}"
            thr = "" if r["threshold"] is None else (
                f"{_fmt(r['first_crossing_mean'], 0) or 'never'} ({r['crossed']}/{r['seeds']} "
                f"reach {r['threshold']:.1f})")
        else:
            final = last3 = thr = "(no finished run)"
        out.append(f"| {r['env_id']} | {r['dataset']} | {r['method']} | {r['seeds']} | "
                   f"{final} | {last3} | {thr} | {r['unfinished'] or ''} |")
    if summary["aggregate"]:
        n = summary["aggregate"][0]["tasks"]
        out += [f"\n## Across {n} task(s): IQM of the final score\n",
                "| method | IQM | 95% CI (stratified bootstrap) | runs per task |",
                "|---|---|---|---|"]
        for a in summary["aggregate"]:
            out.append(f"| {a['method']} | {a['iqm']:.1f} | [{a['ci_low']:.1f}, "
                       f"{a['ci_high']:.1f}] | {a['runs_per_task']} |")
    if summary["aggregate_notes"]:
        out += ["\nLeft out of the aggregate:\n"] + [f"- {n}" for n in summary["aggregate_notes"]]
    if summary["improvement"]:
        out += ["\n## Probability of improvement, P(X > Y)\n", "| X | Y | P(X > Y) |",
                "|---|---|---|"]
        out += [f"| {p['x']} | {p['y']} | {p['p_x_better']:.2f} |"
                for p in summary["improvement"]]
    if summary["running"]:
        out += ["\n## Still running (not in the statistics)\n"]
        out += [f"- {p}" for p in summary["running"]]
    if summary["stopped"]:
        out += ["\n## Stopped before finishing, no trainer running (not in the statistics; "
                "rerun the sweep, or `vidt train --resume`)\n"]
        out += [f"- {p}" for p in summary["stopped"]]
    if summary["not_started"]:
        out += ["\n## Not started yet (listed by the sweep)\n"]
        out += [f"- {p}" for p in summary["not_started"]]
    return "\n".join(out) + "\n"


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def mean_curve(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and std over `runs` of their scores, each run linearly interpolated onto
    common steps: runs evaluate where their episodes end, so at different online steps and
    not always as often. The steps run to the shortest run's last evaluation, as many as the
    most evaluated run has."""
    end = min(int(r.steps[-1]) for r in runs)
    x = np.linspace(0, end, max(len(r.steps) for r in runs))
    y = np.stack([np.interp(x, r.steps, r.scores) for r in runs])
    return x, y.mean(0), y.std(0)


def plot_task(runs: list[Run], task: tuple[str, str], path: Path) -> None:
    """Curves of one task: per method, the mean over finished seeds with a ±1 std band
    (`mean_curve`); runs still going as thin dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    here = [r for r in runs if r.task == task]
    for i, m in enumerate(sorted({r.method for r in here})):
        color = f"C{i}"
        mine = [r for r in here if r.method == m and r.finished]
        if mine:
            x, mu, sd = mean_curve(mine)
            ax.plot(x, mu, color=color, label=f"{m} ({len(mine)} seeds)")
            ax.fill_between(x, mu - sd, mu + sd, color=color, alpha=0.2)
        for r in (r for r in here if r.method == m and not r.finished):
            ax.plot(r.steps, r.scores, color=color, lw=0.8, ls=":",
                    label=None if mine else f"{m} (unfinished)")
    ax.set_xlabel("online env steps")
    ax.set_ylabel("normalized score" if all(r.normalized for r in here) else "return")
    ax.set_title(f"{task[0]} ({task[1]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


def write(summary: dict, runs: list[Run], out: Path) -> dict[str, str]:
    """report.md, per_task.csv, aggregate.csv, improvement.csv, summary.json and one PNG per
    task into `out`, each written whole (temp file, then rename); returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, text in (("report.md", markdown(summary)),
                       ("per_task.csv", _csv(summary["per_task"])),
                       ("aggregate.csv", _csv(summary["aggregate"])),
                       ("improvement.csv", _csv(summary["improvement"]))):
        if text:
            atomic_write_text(text, out / name)
            files[name] = str(out / name)
    for task in summary["tasks"]:
        name = f"{task[0]}-{task[1]}.png".replace("/", "-")
        plot_task(runs, tuple(task), out / name)
        files[name] = str(out / name)
    summary = {**summary, "files": files}
    atomic_write_text(json.dumps(summary, indent=1), out / "summary.json")
    files["summary.json"] = str(out / "summary.json")
    return files
