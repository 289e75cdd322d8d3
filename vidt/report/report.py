"""The report over a root of runs: per task and method (final and last-3 score, mean ± std
over seeds, how many seeds that start below a threshold reach it and when), per run the
same, across tasks (IQM with a stratified bootstrap 95%
interval, probability of improvement), as Markdown, CSV, one PNG of curves per task and a
JSON summary. Runs trained with eval.target_returns add return conditioning: per task, method
and phase (after pretraining, at the end), the return achieved at each return asked, with a
PNG of achieved against asked. Only finished runs enter the statistics; runs still going are
listed apart."""

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


def task_threshold(runs: list[Run], given: float | None) -> tuple[float | None, str]:
    """The score whose first crossing a task's rows report, and where it comes from: `given`
    (the command line), else the one its sweep file declares, else half the best method's
    mean final score, which means something only for positive scores (half of -3.9 is
    above it). None with the reason where there is no meaningful one."""
    if given is not None:
        return given, "given"
    declared = {r.threshold for r in runs if r.threshold is not None}
    if len(declared) == 1:
        return declared.pop(), "the sweep file's"
    finals: dict[str, list[float]] = {}
    for r in runs:
        if r.finished:
            finals.setdefault(r.method, []).append(r.final)
    if not finals:
        return None, "no finished run"
    best = max(float(np.mean(v)) for v in finals.values())
    if best <= 0:
        return None, "the best mean final score is not positive, so half of it is no bar"
    return 0.5 * best, "half the best mean final score"


def crossing(run: Run, threshold: float) -> tuple[bool, float | None]:
    """(whether the run starts below `threshold`, the online step at which it first reaches
    it from there, or None). A run that starts at or above it has no crossing."""
    if run.start >= threshold:
        return False, None
    step = first_crossing(run.steps, run.scores, threshold)
    return True, None if step is None else int(step)


def digits(runs: list[Run]) -> int:
    """Decimals for a task's scores: 3 where they lie within [-1, 1] (the one-state task's
    returns), 1 otherwise (returns and normalized scores)."""
    return 3 if all(np.all(np.abs(r.scores) <= 1.0) for r in runs) else 1


def summarize(runs: list[Run], threshold: float | None = None, reps: int = 2000,
              pending: list[Path] = (), waiting: list[Path] = (),
              datasets: dict[tuple[str, str], dict] | None = None) -> dict:
    """Everything the report says, as plain data. threshold: the score whose first crossing
    is reported (default: per task, `task_threshold`); a crossing counts only for a run that
    starts below it. pending: runs started but not evaluated yet; waiting: a sweep's runs not
    started. Unfinished runs are listed apart, as running where a trainer holds their
    directory, as stopped otherwise. datasets: what a sweep recorded of each task's data
    (`runs.find_datasets`), set beside the task's runs."""
    tasks = sorted({r.task for r in runs})
    methods = sorted({r.method for r in runs})
    done = [r for r in runs if r.finished]
    per_task, per_run, thresholds = [], [], []
    for task in tasks:
        here = [r for r in done if r.task == task]
        thr, source = task_threshold([r for r in runs if r.task == task], threshold)
        below = {id(r): crossing(r, thr) for r in here} if thr is not None else {}
        starts_below = sum(b for b, _ in below.values())
        if thr is not None and here and not starts_below:
            source += "; every run starts at or above it, so no crossing to report"
        thresholds.append({"env_id": task[0], "dataset": task[1], "threshold": thr,
                           "source": source, "runs_starting_below": starts_below,
                           "digits": digits([r for r in runs if r.task == task])})
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
                if thr is not None:
                    from_below = [below[id(r)] for r in mine if below[id(r)][0]]
                    hits = [c for _, c in from_below if c is not None]
                    row["below_at_start"] = len(from_below)
                    row["crossed"] = len(hits)
                    row["first_crossing_mean"] = float(np.mean(hits)) if hits else None
            per_task.append(row)
            for r in sorted(mine, key=lambda r: r.seed):
                b, c = below.get(id(r), (None, None))
                per_run.append({"env_id": task[0], "dataset": task[1], "method": m,
                                "seed": r.seed, "start": r.start, "final": r.final,
                                "last3": r.last3, "final_return": r.final_return,
                                "starts_below": b, "first_crossing": c,
                                "wall_time_s": r.wall_time})

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
    data_rows = [{**datasets[t], "worst_online": worst_online(done, t)}
                 for t in tasks if t in (datasets or {})]
    return {"tasks": [list(t) for t in tasks], "methods": methods, "per_task": per_task,
            # Only where a sweep recorded its data: older indexes make the same report as before.
            **({"datasets": data_rows} if data_rows else {}),
            "conditioning": conditioning(done),
            "per_run": per_run, "thresholds": thresholds, "aggregate": aggregate, "improvement": improvement,
            "running": [str(p) for p in unfinished if held[p]],
            "stopped": [str(p) for p in unfinished if not held[p]],
            "aggregate_notes": notes,
            "not_started": [str(p) for p in waiting],
            "runs": len(runs) + len(pending) + len(waiting), "finished": len(done)}


def worst_online(done: list[Run], task: tuple[str, str]) -> dict[str, list[float]]:
    """Per method, the mean ± std over seeds of each run's lowest score after an online step:
    how much of what pretraining reached a method gives up on the way (data that is already
    good), where final and last 3 say only where it ends."""
    out = {}
    for m in sorted({r.method for r in done if r.task == task}):
        lows = [float(np.min(r.scores[r.steps > 0])) for r in done
                if r.task == task and r.method == m and np.any(r.steps > 0)]
        if lows:
            out[m] = list(_mean_std(lows))
    return out


PHASES = ("pretrained", "final")  # conditioning.csv's phases, in the order a run makes them


def conditioning(done: list[Run]) -> list[dict]:
    """Per task, method, phase and return asked: the return achieved (each run's mean over
    its evaluation episodes; mean ± std over seeds), with the task's data mean and best."""
    out = []
    for task in sorted({r.task for r in done if r.conditioning}):
        here = [r for r in done if r.task == task and r.conditioning]
        for m in sorted({r.method for r in here}):
            mine = [r for r in here if r.method == m]
            for phase in PHASES:
                rows = [x for r in mine for x in r.conditioning if x["phase"] == phase]
                for target in sorted({x["target_return"] for x in rows}):
                    got = [x for x in rows if x["target_return"] == target]
                    mean, std = _mean_std([x["return_mean"] for x in got])
                    out.append({"env_id": task[0], "dataset": task[1], "method": m,
                                "phase": phase, "target_return": target, "seeds": len(got),
                                "return_mean": mean, "return_std": std,
                                "data_return_mean": got[0]["data_return_mean"],
                                "data_return_max": got[0]["data_return_max"]})
    return out


def _datasets_md(summary: dict, nd: dict) -> list[str]:
    """Per dataset: what its episodes return, and each method's final score / its mean over
    the last 3 evaluations / its worst evaluation online (mean ± std over seeds) after
    finetuning from it."""
    methods = summary["methods"]
    out = ["\n## Each dataset and what finetuning from it reached\n",
           "The data's mean and best episode return (normalized score in brackets, where the "
           "env has references); then per method the final score / the mean of the last 3 "
           "evaluations / the lowest evaluation after an online step, each mean ± std over "
           "seeds.\n",
           "| env | dataset | collected by | episodes | data mean | data best | "
           + " | ".join(methods) + " |", "|---|---|---|---|---|---|" + "---|" * len(methods)]
    cells = {(r["env_id"], r["dataset"], r["method"]): r for r in summary["per_task"]}

    def data(ret, score, n):
        return f"{ret:.{n}f}" + ("" if score is None else f" ({score:.{n}f})")

    for d in summary["datasets"]:
        task = (d["env_id"], d["dataset"])
        n = nd[task]
        source = d.get("collected_by", "")
        row = []
        for m in methods:
            r = cells.get((*task, m))
            low = d["worst_online"].get(m)
            row.append("" if r is None or not r["seeds"] else
                       f"{r['final_mean']:.{n}f} ± {r['final_std']:.{n}f} / "
                       f"{r['last3_mean']:.{n}f} ± {r['last3_std']:.{n}f}"
                       + ("" if low is None else f" / {low[0]:.{n}f} ± {low[1]:.{n}f}"))
        out.append(f"| {task[0]} | {task[1]} | {source} | {d['episodes']} | "
                   f"{data(d['return_mean'], d['score_mean'], n)} | "
                   f"{data(d['return_max'], d['score_max'], n)} | " + " | ".join(row) + " |")
    return out


def _conditioning_md(rows: list[dict]) -> list[str]:
    out = ["\n## Return conditioning: return achieved at each return asked\n",
           "Mean ± std over seeds of each run's mean return over its evaluation episodes, "
           "after pretraining and at the end of the run; the data's mean and best episode "
           "return for reference.\n"]
    for task in sorted({(r["env_id"], r["dataset"]) for r in rows}):
        here = [r for r in rows if (r["env_id"], r["dataset"]) == task]
        targets = sorted({r["target_return"] for r in here})
        d = 3 if max(abs(t) for t in targets) <= 1 else 0
        out += [f"\n{task[0]} ({task[1]}): data mean {here[0]['data_return_mean']:.{d}f}, "
                f"best {here[0]['data_return_max']:.{d}f}\n",
                "| method | phase | seeds | " + " | ".join(f"asked {t:.{d}f}" for t in targets)
                + " |", "|---|---|---|" + "---|" * len(targets)]
        for m in sorted({r["method"] for r in here}):
            for phase in PHASES:
                cells = {r["target_return"]: r for r in here
                         if r["method"] == m and r["phase"] == phase}
                if not cells:
                    continue
                seeds = max(c["seeds"] for c in cells.values())
                out.append(f"| {m} | {phase} | {seeds} | " + " | ".join(
                    f"{cells[t]['return_mean']:.{d}f} ± {cells[t]['return_std']:.{d}f}"
                    if t in cells else "" for t in targets) + " |")
    return out


def plot_conditioning(rows: list[dict], task: tuple[str, str], path: Path) -> None:
    """Achieved against asked for one task: per method, the end of the run (solid) and after
    pretraining (dashed), ±1 std over seeds; y = x, the data's mean and best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    here = [r for r in rows if (r["env_id"], r["dataset"]) == task]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    targets = sorted({r["target_return"] for r in here})
    ax.plot(targets, targets, color="0.6", lw=1, ls=":", label="y = x")
    for name, value, ls in (("data mean", here[0]["data_return_mean"], "-."),
                            ("data best", here[0]["data_return_max"], "--")):
        ax.axhline(value, color="0.4", lw=0.8, ls=ls, label=name)
    for i, m in enumerate(sorted({r["method"] for r in here})):
        for phase, ls in (("final", "-"), ("pretrained", "--")):
            pts = sorted((r["target_return"], r["return_mean"], r["return_std"]) for r in here
                         if r["method"] == m and r["phase"] == phase)
            if pts:
                x, y, e = map(np.array, zip(*pts))
                ax.errorbar(x, y, yerr=e, color=f"C{i}", ls=ls, marker="o", ms=3, capsize=2,
                            label=f"{m}, {'end' if phase == 'final' else 'pretrained'}")
    ax.set_xlabel("return asked (target return)")
    ax.set_ylabel("return achieved")
    ax.set_title(f"{task[0]} ({task[1]}): return conditioning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_png(fig, path)


def _fmt(x, nd=1) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _crossing_cell(r: dict, nd: int) -> str:
    """How many of a row's seeds start below the threshold and how many of those reach it,
    and the mean online step at which they do; blank without a threshold."""
    if r["threshold"] is None:
        return ""
    thr = _fmt(r["threshold"], nd)
    if not r["below_at_start"]:
        return f"none start below {thr}"
    steps = _fmt(r["first_crossing_mean"], 0) or "never"
    return f"{steps} ({r['crossed']} of {r['below_at_start']} starting below {thr} reach it)"


def markdown(summary: dict) -> str:
    nd = {(t["env_id"], t["dataset"]): t["digits"] for t in summary["thresholds"]}
    out = [f"# vidt report\n\n{summary['finished']} finished runs of {summary['runs']}; "
           "scores are D4RL-normalized where the env has reference returns, returns "
           "otherwise. A crossing counts only for a run that starts below the threshold "
           "(its first evaluation, after pretraining).\n",
           "## Per task\n",
           "| env | dataset | method | seeds | final | last 3 | first crossing (online steps) | "
           "unfinished |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["per_task"]:
        d = nd[(r["env_id"], r["dataset"])]
        if r["seeds"]:
            final = f"{r['final_mean']:.{d}f} ± {r['final_std']:.{d}f}"
            last3 = f"{r['last3_mean']:.{d}f} ± {r['last3_std']:.{d}f}"
            thr = _crossing_cell(r, d)
        else:
            final = last3 = thr = "(no finished run)"
        out.append(f"| {r['env_id']} | {r['dataset']} | {r['method']} | {r['seeds']} | "
                   f"{final} | {last3} | {thr} | {r['unfinished'] or ''} |")
    out += ["\nThresholds:\n"]
    for t in summary["thresholds"]:
        value = "none" if t["threshold"] is None else _fmt(t["threshold"], t["digits"])
        out.append(f"- {t['env_id']} {t['dataset']}: {value} ({t['source']})")
    if summary["per_run"]:
        out += ["\n## Per run\n",
                "| env | dataset | method | seed | after pretraining | final | last 3 | "
                "final return | first crossing (online steps) | wall time (s) |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in summary["per_run"]:
            d = nd[(r["env_id"], r["dataset"])]
            cross = ("" if r["starts_below"] is None else "starts above" if not r["starts_below"]
                     else _fmt(r["first_crossing"], 0) or "never")
            out.append(f"| {r['env_id']} | {r['dataset']} | {r['method']} | {r['seed']} | "
                       f"{r['start']:.{d}f} | {r['final']:.{d}f} | {r['last3']:.{d}f} | "
                       f"{r['final_return']:.{d}f} | {cross} | {_fmt(r['wall_time_s'], 0)} |")
    if summary["aggregate"]:
        n = summary["aggregate"][0]["tasks"]
        out += [f"\n## Across {n} task(s): IQM of the final score\n",
                "| method | IQM | 95% CI (stratified bootstrap) | runs per task |",
                "|---|---|---|---|"]
        d = max(nd.values())
        for a in summary["aggregate"]:
            out.append(f"| {a['method']} | {a['iqm']:.{d}f} | [{a['ci_low']:.{d}f}, "
                       f"{a['ci_high']:.{d}f}] | {a['runs_per_task']} |")
    if summary["aggregate_notes"]:
        out += ["\nLeft out of the aggregate:\n"] + [f"- {n}" for n in summary["aggregate_notes"]]
    if summary["improvement"]:
        out += ["\n## Probability of improvement, P(X > Y)\n", "| X | Y | P(X > Y) |",
                "|---|---|---|"]
        out += [f"| {p['x']} | {p['y']} | {p['p_x_better']:.2f} |"
                for p in summary["improvement"]]
    if summary.get("datasets"):
        out += _datasets_md(summary, nd)
    if summary["conditioning"]:
        out += _conditioning_md(summary["conditioning"])
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
    _save_png(fig, path)


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    # No "Software" stamp (matplotlib's version): the same runs make the same bytes.
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


def write(summary: dict, runs: list[Run], out: Path, plots: bool = True) -> dict[str, str]:
    """report.md, per_task.csv, per_run.csv, aggregate.csv, improvement.csv, summary.json
    and (with `plots`) one PNG per task into `out`, each written whole (temp file, then
    rename); returns name -> path. The same runs make the same files, byte for byte. Files
    an earlier report in `out` listed and this one does not make are removed, so `out` never
    mixes two reports."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        before = set(json.loads((out / "summary.json").read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        before = set()  # no earlier report here (or not ours): nothing to remove
    files = {}
    for name, text in (("report.md", markdown(summary)),
                       ("per_task.csv", _csv(summary["per_task"])),
                       ("per_run.csv", _csv(summary["per_run"])),
                       ("aggregate.csv", _csv(summary["aggregate"])),
                       ("improvement.csv", _csv(summary["improvement"])),
                       ("conditioning.csv", _csv(summary["conditioning"]))):
        if text:
            atomic_write_text(text, out / name)
            files[name] = str(out / name)
    for task in summary["tasks"]:
        name = f"{task[0]}-{task[1]}.png".replace("/", "-")
        if plots:
            plot_task(runs, tuple(task), out / name)
        files[name] = str(out / name)
    for task in sorted({(r["env_id"], r["dataset"]) for r in summary["conditioning"]}):
        name = f"conditioning-{task[0]}-{task[1]}.png".replace("/", "-")
        if plots:
            plot_conditioning(summary["conditioning"], task, out / name)
        files[name] = str(out / name)
    # File names, not paths: where the report was written is no part of what it says.
    atomic_write_text(json.dumps({**summary, "files": sorted([*files, "summary.json"])},
                                 indent=1) + "\n", out / "summary.json")
    files["summary.json"] = str(out / "summary.json")
    for name in before - set(files):
        if "/" not in name and name != "..":  # a name of ours, never a path elsewhere
            (out / name).unlink(missing_ok=True)
    return files


def report(runs_root: Path, out: Path, threshold: float | None = None, reps: int = 2000,
           plots: bool = True) -> tuple[dict, dict[str, str]]:
    """`vidt report RUNS_ROOT --out OUT`: the summary of every run under `runs_root`, and
    the files written."""
    from .runs import find_datasets, find_runs

    runs, pending, waiting = find_runs(Path(runs_root))
    summary = summarize(runs, threshold=threshold, reps=reps, pending=pending, waiting=waiting,
                        datasets=find_datasets(Path(runs_root)))
    return summary, write(summary, runs, Path(out), plots=plots)
