"""Run directories as records: what each run is (env, dataset, algo, variant, seed), its
evaluation curve, and whether it has finished."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidt.errors import VidtError

INDEX_FILE = "sweep.json"  # written by `vidt sweep` in its root: each run's grid point


@dataclass(frozen=True)
class Run:
    path: Path
    env_id: str
    dataset: str  # the dataset's name (its directory or file name)
    algo: str
    variant: str  # a sweep's override label ("" for none)
    seed: int
    steps: np.ndarray  # online env steps of each evaluation (0 = after pretraining)
    scores: np.ndarray  # normalized score of each evaluation (the return where the env has none)
    normalized: bool  # whether `scores` are normalized scores
    budget: int  # online steps the run was given
    finished: bool
    returns: np.ndarray | None = None  # eval return of each evaluation (None: as scores)
    wall_time: float | None = None  # seconds, at its last metrics row
    threshold: float | None = None  # its sweep's crossing threshold, in the units of scores
    # conditioning.csv (eval.target_returns): rows of phase, target_return, return_mean, ...
    conditioning: tuple[dict, ...] = ()

    @property
    def task(self) -> tuple[str, str]:
        return self.env_id, self.dataset

    @property
    def method(self) -> str:
        return f"{self.algo} ({self.variant})" if self.variant else self.algo

    @property
    def final(self) -> float:
        return float(self.scores[-1])

    @property
    def last3(self) -> float:
        return float(np.mean(self.scores[-3:]))

    @property
    def start(self) -> float:
        """The score of the first evaluation: after pretraining, before any online step."""
        return float(self.scores[0])

    @property
    def final_return(self) -> float:
        return float((self.scores if self.returns is None else self.returns)[-1])


def _float(x: str) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def read_run(path: Path, point: dict | None = None) -> Run | None:
    """The run in `path` (config.json + metrics.csv), or None when it has no evaluation yet.
    point: its grid point from a sweep's index (dataset name and variant label)."""
    try:
        config = json.loads((path / "config.json").read_text())
        with open(path / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, json.JSONDecodeError, csv.Error) as e:
        raise VidtError(f"{path}: unreadable run ({e})") from None
    point = point or {}
    evals = [r for r in rows if _float(r.get("eval_return_mean")) is not None]
    if not evals:
        return None
    norm = [_float(r.get("eval_normalized_score")) for r in evals]
    normalized = all(v is not None for v in norm)
    returns = [_float(r["eval_return_mean"]) for r in evals]
    scores = norm if normalized else returns
    wall = _float(rows[-1].get("wall_time_s"))
    threshold = point.get("threshold")
    try:
        steps = [int(float(r["online_env_steps"])) for r in evals]
        reached = max(int(float(r["online_env_steps"])) for r in rows)
        budget = int(config["online"]["online_steps"])
        env_id, algo, seed = config["env_id"], config["algo"], int(config["seed"])
        dataset = point.get("dataset") or Path(str(config["dataset"])).name
    except (KeyError, TypeError, ValueError) as e:
        raise VidtError(f"{path}: not a vidt run ({type(e).__name__}: {e} in config.json or "
                        "metrics.csv)") from None
    conditioning = ()
    if (path / "conditioning.csv").exists():
        try:
            with open(path / "conditioning.csv", newline="") as f:
                conditioning = tuple(
                    {k: v if k == "phase" else float(v) for k, v in r.items()}
                    for r in csv.DictReader(f))
        except (OSError, csv.Error, ValueError, TypeError) as e:
            raise VidtError(f"{path}: unreadable conditioning.csv ({e})") from None
    # The first row comes when pretraining ends (online step 0): with no online budget, that
    # row ends the run.
    return Run(path=path, env_id=env_id, dataset=dataset, algo=algo,
               variant=point.get("variant", ""), seed=seed, steps=np.asarray(steps),
               scores=np.asarray(scores, dtype=np.float64), normalized=normalized,
               budget=budget, finished=reached >= budget,
               returns=np.asarray(returns, dtype=np.float64), wall_time=wall,
               threshold=None if threshold is None else float(threshold),
               conditioning=conditioning)


def find_runs(root: Path) -> tuple[list[Run], list[Path], list[Path]]:
    """Every run under `root` (a directory holding config.json) with at least one evaluation,
    sorted; and, read in the same pass, the run directories that have started but have no
    evaluation yet (still pretraining) and the runs a sweep index lists that have not started,
    so the report lists them instead of leaving them out."""
    root = Path(root)
    if not root.is_dir():
        raise VidtError(f"{root}: no such directory")
    points, listed = {}, {}
    for index in root.rglob(INDEX_FILE):
        try:
            for rel, point in json.loads(index.read_text())["runs"].items():
                points[(index.parent / rel).resolve()] = point
                listed[(index.parent / rel).resolve()] = index.parent / rel
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise VidtError(f"{index}: unreadable sweep index ({e})") from None
    runs, pending, started = [], [], set()
    for cfg in sorted(root.rglob("config.json")):
        started.add(cfg.parent.resolve())
        run = None
        if (cfg.parent / "metrics.csv").exists():
            run = read_run(cfg.parent, points.get(cfg.parent.resolve()))
        if run is None:
            pending.append(cfg.parent)
        else:
            runs.append(run)
    if not runs:
        raise VidtError(f"{root}: no runs with an evaluation yet (a run is a directory with "
                        "config.json and metrics.csv, as `vidt train --out` writes)")
    waiting = sorted(path for key, path in listed.items() if key not in started)
    return sorted(runs, key=lambda r: (r.task, r.method, r.seed)), pending, waiting


def find_datasets(root: Path) -> dict[tuple[str, str], dict]:
    """(env_id, dataset name) -> what `vidt sweep` recorded of that dataset in the sweep
    indexes under `root` (episodes, return mean and best, their normalized scores, the
    policy that collected it): `vidt.sweep.run.dataset_record`."""
    out = {}
    for index in sorted(Path(root).rglob(INDEX_FILE)):
        try:
            records = json.loads(index.read_text()).get("datasets", [])
            for d in records:
                out[(d["env_id"], d["dataset"])] = d
        except (OSError, json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise VidtError(f"{index}: unreadable sweep index ({e})") from None
    return out
