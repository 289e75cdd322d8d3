"""Run a sweep's grid as Ray tasks: each task runs one ordinary `vidt train` in a subprocess,
so a run behaves (and resumes) exactly as it does from the command line.

Local Ray by default (started and stopped here); a cluster with `address`. On a cluster the
sweep root and datasets must be on storage every node sees, and vidt installed on each.
Stop and go on: Ctrl-C cancels the running tasks, whose `vidt train` gets SIGINT and writes a
checkpoint; a rerun skips finished runs and resumes the others. A run that would pretrain
exactly as another (pretraining_donor) starts from that run's pretrained.pt, and waits for it
while that run is still pretraining (pretraining_for).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vidt.errors import VidtError
from vidt.files import atomic_write_text, training_pid
from vidt.procs import with_parent

from .spec import Dataset, Point, Sweep

STOP_FILE = ".sweep-stop"  # in the root: tells the sweep's tasks to checkpoint and stop


@dataclass
class Outcome:
    point: Point
    # "finished", "skipped" (was finished), "failed", "interrupted", "not started" (the sweep
    # stopped before its trainer did)
    status: str
    seconds: float = 0.0
    log: Path | None = None
    detail: str = ""


@dataclass
class SweepResult:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.status in ("finished", "skipped")
                                            for o in self.outcomes)


def is_finished(run_dir: Path) -> bool:
    from vidt.report.runs import read_run

    if not (run_dir / "config.json").exists() or not (run_dir / "metrics.csv").exists():
        return False
    try:
        run = read_run(run_dir)
    except VidtError:
        return False
    return run is not None and run.finished


def pretraining_donor(sweep: Sweep, p: Point, configs: dict) -> Path | None:
    """A run of the sweep that has pretrained exactly as p would (same dataset and seed, its
    settings equal but for what only the online phase reads: ViDT and its RL-off control, or
    its anchored form), whose pretrained.pt p starts from instead of pretraining again. None when p
    has a checkpoint of its own or no such run has finished pretraining yet. The donor's
    config is the one it ran with (its config.json), not what the sweep file says now: a
    file edited since makes its finished runs no donors. `configs`: point -> the config p
    would run with, filled as needed."""
    from vidt.train.checkpoint import CHECKPOINT, PRETRAINED
    from vidt.train.config import TrainConfig, read_run_config
    from vidt.train.trainer import pretraining_differences

    if (p.run_dir / CHECKPOINT).exists():
        return None
    for q in sweep.points:
        if q == p or q.dataset != p.dataset or q.seed != p.seed:
            continue
        if not (q.run_dir / PRETRAINED).is_file():
            continue
        try:
            ran = TrainConfig.from_dict(read_run_config(q.run_dir))
        except VidtError:
            continue
        if p not in configs:
            configs[p] = sweep.config(p)
        if not pretraining_differences(ran, configs[p]):
            return q.run_dir
    return None


def pretraining_for(sweep: Sweep, p: Point, running: list[Point], configs: dict) -> Point | None:
    """A running point that is still pretraining exactly as p would: p waits for its
    pretrained.pt (pretraining_donor) rather than pretrain the same beside it. None when p
    has a checkpoint of its own or no such point is running."""
    from vidt.train.checkpoint import CHECKPOINT, PRETRAINED
    from vidt.train.trainer import pretraining_differences

    if (p.run_dir / CHECKPOINT).exists():
        return None
    for q in running:
        if q.dataset != p.dataset or q.seed != p.seed or (q.run_dir / PRETRAINED).exists():
            continue
        if any(r.get("eval_return_mean") for r in _metrics(q.run_dir)):  # resumed, past it
            continue
        for x in (p, q):
            if x not in configs:
                configs[x] = sweep.config(x)
        if not pretraining_differences(configs[q], configs[p]):
            return q
    return None


def log_path(sweep: Sweep, p: Point) -> Path:
    return sweep.root / "logs" / p.run_dir.relative_to(sweep.root).with_suffix(".log")


def _metrics(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.csv so far (none when it is not there or not readable)."""
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


class _Progress:
    """Each new evaluation in a run's metrics.csv, as one line for the run's log: `vidt train
    --json` prints nothing while it runs, and the log is where a sweep's user looks."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.seen = len(_metrics(run_dir))  # a resumed run's earlier rows are not news

    def lines(self) -> list[str]:
        rows = _metrics(self.run_dir)
        self.seen = min(self.seen, len(rows))  # a resume cut rows past its checkpoint
        new, self.seen = rows[self.seen:], len(rows)
        out = []
        for r in new:
            if not r.get("eval_return_mean"):
                continue
            norm = r.get("eval_normalized_score")
            out.append(f"{time.strftime('%H:%M:%S')} {r.get('phase')}: "
                       f"{r.get('online_env_steps')} online steps, {r.get('actor_updates')} "
                       f"actor updates, eval return {float(r['eval_return_mean']):.4g}"
                       + (f" (normalized {float(norm):.1f})" if norm else "")
                       + f", {r.get('wall_time_s')} s")
        return out


def _run_dir_of(args: list[str]) -> Path:
    return Path(args[args.index("--out") + 1])


def train_task(args: list[str], log: str, stop_file: str, cwd: str | None = None) -> dict:
    """Body of one Ray task: `vidt train ARGS`. Its log gets the command line, the trainer's
    stderr, a line per evaluation, how it ended and its JSON summary. When `stop_file`
    appears (the sweep was interrupted; it lives in the sweep's root, which every node sees)
    or a Ray cancel lands, the run gets SIGINT, writes its checkpoint and stops. cwd: the
    sweep's working directory, where the file's relative paths point (a task on another node
    starts elsewhere; the paths stay as written, so a resumed run's config still matches)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    progress = _Progress(Path(cwd or ".") / _run_dir_of(args))
    with open(log, "a", buffering=1) as err:
        err.write(f"\n$ vidt train {' '.join(args)}\n")
        result = _train(args, err, stop_file, cwd, progress, t0)
        for line in progress.lines():
            err.write(line + "\n")
        err.write(f"{time.strftime('%H:%M:%S')} {result['status']} after "
                  f"{result['seconds']:.0f} s" + (f": {result['detail']}" if result.get('detail')
                                                  else "") + "\n")
        if result.get("summary"):
            err.write(result["summary"] + "\n")
    return result


def _train(args: list[str], err, stop_file: str, cwd: str | None, progress: _Progress,
           t0: float) -> dict:
    """`vidt train ARGS` with stderr to `err`, until it ends or `stop_file` appears."""
    # SIGINT if this worker dies (Ray shutdown, a lost node): the run checkpoints and
    # stops instead of going on unseen and holding its directory's lock.
    # Its own session: a terminal's Ctrl-C goes to the whole foreground process group, and
    # a trainer that got it there and again from this task would take the second as "stop
    # now" and skip its checkpoint. Ray 2.x puts its workers in groups of their own; this
    # keeps it so whatever Ray does. One SIGINT, from here.
    proc = subprocess.Popen(with_parent([sys.executable, "-m", "vidt.cli.main", "train",
                                         *args], signal.SIGINT),
                            stdout=subprocess.PIPE, stderr=err, text=True,
                            start_new_session=True, cwd=cwd)
    polls = 0
    try:
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if os.path.exists(stop_file):
                    raise KeyboardInterrupt from None
                polls += 1
                if polls % 25 == 0:  # every 5 s
                    for line in progress.lines():
                        err.write(line + "\n")
        out = proc.stdout.read()  # one JSON line: never fills the pipe
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = ""
        return {"status": "interrupted", "seconds": time.monotonic() - t0,
                "summary": (out or "").strip()}
    if proc.returncode == 130:
        return {"status": "interrupted", "seconds": time.monotonic() - t0,
                "summary": out.strip()}
    if proc.returncode != 0:
        return {"status": "failed", "seconds": time.monotonic() - t0,
                "detail": f"vidt train exited with {proc.returncode}"}
    return {"status": "finished", "seconds": time.monotonic() - t0, "summary": out.strip()}


def write_index(sweep: Sweep) -> None:
    """ROOT/sweep.json: each run directory's grid point, for `vidt report`. Points an earlier
    version of the file had (a variant since removed) stay listed while their directories
    exist, so the report still names what they were."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    index = sweep.root / "sweep.json"
    try:
        earlier = json.loads(index.read_text())
    except (OSError, ValueError):
        earlier = {}  # none yet (or unreadable: rewritten whole from this file)
    try:
        kept = {rel: point for rel, point in earlier["runs"].items()
                if (sweep.root / rel).is_dir()}
    except (KeyError, TypeError, AttributeError):
        kept = {}
    runs = {**kept, **{str(p.run_dir.relative_to(sweep.root)): {
        "env_id": p.dataset.env_id, "dataset": p.dataset.name, "algo": p.algo,
        "variant": p.variant, "sets": list(p.sets), "seed": p.seed,
        **({} if p.dataset.threshold is None else {"threshold": p.dataset.threshold})}
        for p in sweep.points}}
    old = earlier.get("datasets", []) if isinstance(earlier, dict) else []
    # A dataset removed from the disk since keeps what was recorded of it.
    datasets = {(d["env_id"], d["dataset"]): d for d in old if isinstance(d, dict)}
    for d in sweep.datasets:
        record = dataset_record(d)
        if record is not None:
            datasets[(d.env_id, d.name)] = record
    atomic_write_text(json.dumps({"sweep_file": str(sweep.file), "runs": runs,
                                  **({"datasets": [datasets[k] for k in sorted(datasets)]}
                                     if datasets else {})}, indent=1), index)


def dataset_record(d: Dataset) -> dict | None:
    """What the report sets beside a dataset's runs: its episodes and return statistics (the
    normalized scores of its mean and best return where the env has references) and, for
    data `vidt collect --policy` made, the policy; None while the dataset is not there yet
    (or does not load: its runs will say why)."""
    from vidt.data import is_random_policy_data, load, policy_record, summarize
    from vidt.envs import normalized_score

    if d.path is not None and not Path(d.path).exists():
        return None
    try:
        s = summarize(load(d.path, d.env_id), d.path or "builtin", d.env_id,
                      policy_record(d.path))
    except VidtError:
        return None
    by = s.collected_with
    if by:
        noise = by.get("action_noise")
        collected_by = f"{by.get('file')}" + (f", action noise {noise:g}" if noise else "")
    else:
        collected_by = "a random policy" if is_random_policy_data(d.path) else None
    return {"env_id": d.env_id, "dataset": d.name, "episodes": s.episodes, "steps": s.steps,
            "return_mean": s.return_mean, "return_max": s.return_max,
            "score_mean": s.normalized_score,
            "score_max": normalized_score(d.env_id, s.return_max),
            **({"collected_by": collected_by} if collected_by else {}),
            **({"collected_with": by} if by else {})}


def collect_missing(sweep: Sweep, echo: Callable[[str], None]) -> None:
    """Collect each dataset the sweep makes itself and does not have yet (`vidt collect`)."""
    for d in sweep.datasets:
        if d.collect is None or Path(d.path).exists():
            continue
        c = d.collect
        noise = f", action noise {c['noise']:g}" if c.get("noise") else ""
        echo(f"collecting {d.env_id} {d.name}: {c['steps']} steps, policy {c['policy']}"
             f"{noise}, seed {c['seed']} -> {d.path}")
        cmd = [sys.executable, "-m", "vidt.cli.main", "collect", "--env", d.env_id, "--policy",
               str(c["policy"]), "--steps", str(c["steps"]), "--seed", str(c["seed"]), "--out",
               d.path, "--json", *(("--action-noise", str(c["noise"])) if c.get("noise") else ())]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise VidtError(f"collecting {d.env_id} {d.name} failed: "
                            f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")


def run_sweep(sweep: Sweep, *, address: str | None = None, max_concurrent: int | None = None,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run every unfinished point of `sweep` as a Ray task; returns what became of each."""
    import ray

    result = SweepResult()
    todo: list[Point] = []
    for p in sweep.points:
        if is_finished(p.run_dir):
            result.outcomes.append(Outcome(p, "skipped"))
        else:
            todo.append(p)
    stop_file = sweep.root / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by an earlier interrupted sweep
    if todo:
        collect_missing(sweep, echo)
        from .spec import check

        check(sweep)  # the collected datasets too
    write_index(sweep)  # with what the (collected) datasets hold
    if not todo:
        echo(f"all {len(sweep.points)} runs have finished; nothing to do")
        return result

    started_here = not ray.is_initialized()
    if started_here:
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), num_gpus=_local_gpus(), **kwargs)
    running: dict = {}  # ObjectRef -> (point, start)
    configs: dict = {}  # point -> TrainConfig, for pretraining_donor
    queue: list[Point] = []
    resumed: set[Path] = set()  # run dirs that had a config.json when submitted
    # `kill PID` (SIGTERM) stops a sweep in the background as Ctrl-C does in a terminal.
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        task = ray.remote(train_task).options(num_cpus=sweep.cpus, num_gpus=sweep.gpus,
                                              max_retries=0)
        # Submit no more than can run at once, so "start" means started and Ctrl-C has little
        # queued work to cancel.
        fit = int(ray.cluster_resources().get("CPU", 1) // sweep.cpus)
        if sweep.gpus > 0:
            fit = min(fit, int(ray.cluster_resources().get("GPU", 0) // sweep.gpus))
        if fit < 1:
            raise VidtError(f"no node of this Ray cluster has {sweep.cpus:g} CPU and "
                            f"{sweep.gpus:g} GPU free for one run: lower [resources]")
        cap = min(max_concurrent or fit, fit)
        queue.extend(todo)
        durations: list[float] = []
        t0 = time.monotonic()

        waiting: dict[Point, Point] = {}  # point -> the running one whose pretraining it awaits

        def submit():
            i = 0
            while i < len(queue) and len(running) < cap:
                p = queue[i]
                q = pretraining_for(sweep, p, [x for x, _ in running.values()], configs)
                if q is not None:
                    if waiting.get(p) != q:
                        echo(f"wait   {p.name} (for the pretraining of {q.name})")
                    waiting[p] = q
                    i += 1
                    continue
                queue.pop(i)
                resume = (p.run_dir / "config.json").exists()
                if resume:
                    resumed.add(p.run_dir)
                donor = pretraining_donor(sweep, p, configs)
                ref = task.remote(sweep.train_args(p, resume, donor),
                                  str(log_path(sweep, p).absolute()), str(stop_file.absolute()),
                                  os.getcwd())
                running[ref] = (p, time.monotonic())
                how = "; ".join([*(["resuming"] if resume else []),
                                 *([f"pretrained as {donor}"] if donor else [])])
                echo(f"start  {p.name}{f' ({how})' if how else ''}; curve: "
                     f"{p.run_dir / 'learning_curve.png'}")

        submit()
        while running:
            # Short waits: Ctrl-C (a Python signal handler) only runs between them.
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            submit()  # a point waiting for another's pretraining may start now
            for ref in ready:
                p, _start = running.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as e:  # a task that could not run at all
                    r = {"status": "failed", "seconds": 0.0, "detail": f"{type(e).__name__}: {e}"}
                o = Outcome(p, r["status"], r["seconds"], log_path(sweep, p), r.get("detail", ""))
                result.outcomes.append(o)
                if o.status == "finished":
                    durations.append(o.seconds)
                    echo(f"done   {p.name} in {o.seconds:.0f} s")
                else:
                    echo(f"{o.status.upper()} {p.name}: {o.detail}; log: {o.log}")
            submit()
            if ready:
                echo(_progress(result, len(running), len(queue), durations, cap, t0))
    except KeyboardInterrupt:
        result.interrupted = True
        echo(f"interrupted: stopping {len(running)} run(s), each writes a checkpoint ...")
        stop_file.touch()
        said = {}
        for ref, (p, _start) in running.items():
            try:
                said[p] = ray.get(ref, timeout=300)
            except Exception:  # cancelled before it started, or it ended with the cancel
                said[p] = {"status": "interrupted", "seconds": 0.0}
        _wait_released(list(said), echo)
        # What each run's directory says, now that no trainer holds it: a run that reached its
        # budget before the stop (its trainer signalled while it wrote its last files, or its
        # task's answer not read yet) has finished, as `vidt report` and a rerun count it; one
        # whose trainer never wrote its config has not started.
        for p, r in said.items():
            started = p.run_dir in resumed or (p.run_dir / "config.json").exists()
            status = ("finished" if is_finished(p.run_dir) else
                      "not started" if not started else r["status"])
            result.outcomes.append(Outcome(p, status, r.get("seconds", 0.0), log_path(sweep, p),
                                           r.get("detail", "")))
        for p in queue:
            result.outcomes.append(Outcome(p, "not started"))
        stop_file.unlink(missing_ok=True)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if started_here:
            ray.shutdown()
    return result


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _wait_released(points: list[Point], echo, timeout: float = 300.0) -> None:
    """Until no `vidt train` holds these runs' directories (their checkpoints are written),
    as far as this machine can see: Ray reports a cancelled task before its process is done."""
    deadline = time.monotonic() + timeout
    busy = [p for p in points if training_pid(p.run_dir)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.2)
        busy = [p for p in busy if training_pid(p.run_dir)]
    for p in busy:
        echo(f"{p.run_dir} is still held by pid {training_pid(p.run_dir)}")


def _progress(result: SweepResult, running: int, left: int, durations: list[float], cap: int,
              t0: float) -> str:
    done = result.count("finished") + result.count("skipped")
    eta = ""
    if durations:
        per = sum(durations) / len(durations)
        slots = max(1, min(cap, running + left))
        eta = f", ETA ~{per * (running + left) / slots / 60:.0f} min"
    return (f"progress: {done} done, {running} running, {result.count('failed')} failed, "
            f"{left} waiting ({time.monotonic() - t0:.0f} s{eta})")


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
