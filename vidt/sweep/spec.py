"""A sweep file: a grid of ordinary `vidt train` runs (datasets x algos x variants x seeds)
with per-run resources. Parsed and checked whole before anything starts.

    root = "runs/sweeps/random-mujoco"        # the runs go under it (relative: to the cwd)

    [train]                                   # what every run gets
    preset = "small"
    online_steps = 10000
    set = ["eval.episodes=5"]

    [resources]                               # per run (a Ray task)
    cpus = 1
    gpus = 0

    [[datasets]]
    env = "HalfCheetah-v5"
    name = "random-20k"
    collect = { policy = "random", steps = 20000, seed = 0 }   # made under ROOT/data/ once
    # or: path = "data/hopper-medium-v2.hdf5"; or neither, for envs with built-in data

    [grid]
    algos = ["vidt", "odt", "td3"]
    seeds = [0, 1]
    [grid.variants]                           # label -> --set overrides; default: one, none
    "alpha=0.1" = ["loss.rl_coef=0.1"]
    "rl-off" = { algos = ["vidt"], set = ["loss.rl_coef=0"] }   # for these algos only
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vidt.errors import ConfigError, VidtError

TOP = {"root", "train", "resources", "datasets", "grid"}
TRAIN = {"preset", "online_steps", "pretrain_updates", "set", "device"}
RESOURCES = {"cpus", "gpus"}
DATASET = {"env", "name", "path", "collect", "threshold"}
COLLECT = {"policy", "steps", "seed", "noise"}
GRID = {"algos", "seeds", "variants"}
VARIANT = {"algos", "set"}


@dataclass(frozen=True)
class Dataset:
    env_id: str
    name: str  # names the run directories; unique per env
    path: str | None  # None: the env's built-in data
    # {policy, steps, seed}: made at `path` when missing. Out of the hash (a dict has none),
    # so that points, which hold their dataset, can be set members and dict keys.
    collect: dict | None = field(default=None, hash=False)
    # The score whose first crossing `vidt report` gives for this dataset's runs, in the
    # report's units (normalized score where the env has reference returns); None: its rule.
    threshold: float | None = None


@dataclass(frozen=True)
class Point:
    """One grid point: one `vidt train` run."""

    dataset: Dataset
    algo: str
    variant: str  # label ("" for no overrides)
    sets: tuple[str, ...]  # the variant's overrides, after the [train] ones
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return str(self.run_dir)


@dataclass(frozen=True)
class Sweep:
    file: Path
    root: Path
    preset: str | None
    online_steps: int | None
    pretrain_updates: int | None
    device: str | None
    sets: tuple[str, ...]
    cpus: float
    gpus: float
    datasets: tuple[Dataset, ...]
    points: tuple[Point, ...] = field(default=())

    def config(self, p: Point):
        """The TrainConfig `vidt train` resolves for point p (its dataset need not exist)."""
        from vidt.train.config import parse_set, resolve

        overrides = {"env_id": p.dataset.env_id, "algo": p.algo, "seed": p.seed}
        if p.dataset.path:
            overrides["dataset"] = p.dataset.path
        for name, value in (("preset", self.preset), ("device", self.device),
                            ("online.online_steps", self.online_steps),
                            ("online.pretrain_updates", self.pretrain_updates)):
            if value is not None:
                overrides[name] = value
        overrides.update(parse_set(list(self.sets) + list(p.sets)))
        return resolve(p.dataset.env_id, p.algo, self.preset or "small", overrides=overrides)

    def train_args(self, p: Point, resume: bool, pretrained_from: Path | None = None) -> list[str]:
        """The `vidt train` arguments of point p (threads set to its CPU share)."""
        args = ["--env", p.dataset.env_id, "--algo", p.algo, "--seed", str(p.seed),
                "--out", str(p.run_dir), "--no-progress", "--json"]
        if p.dataset.path:
            args += ["--dataset", p.dataset.path]
        for flag, value in (("--preset", self.preset), ("--online-steps", self.online_steps),
                            ("--pretrain-updates", self.pretrain_updates),
                            ("--device", self.device)):
            if value is not None:
                args += [flag, str(value)]
        threads = max(1, int(self.cpus))
        for s in (f"threads={threads}", *self.sets, *p.sets):
            args += ["--set", s]
        if pretrained_from is not None:
            args += ["--pretrained-from", str(pretrained_from)]
        return [*args, "--resume"] if resume else args


def slug(text: str) -> str:
    """A readable, stable directory name for a label."""
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")
    return s or "_"


def _keys(table: dict, allowed: set, where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table (keys and values), got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _list(value, where: str, kind) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list")
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where} must hold {kind.__name__} values, got {value!r}")
    return value


def parse(path: Path) -> Sweep:
    """Read and check a sweep file; ConfigError names the key at fault."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the sweep file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    where = str(path)
    _keys(data, TOP, where)
    if "root" not in data or not isinstance(data["root"], str) or not data["root"]:
        raise ConfigError(f"{where}: 'root' (the directory the runs go under) is required")
    train = data.get("train", {})
    _keys(train, TRAIN, f"{where} [train]")
    res = data.get("resources", {})
    _keys(res, RESOURCES, f"{where} [resources]")
    cpus, gpus = res.get("cpus", 1), res.get("gpus", 0)
    if not (isinstance(cpus, int | float) and cpus > 0 and isinstance(gpus, int | float)
            and gpus >= 0):
        raise ConfigError(f"{where} [resources]: cpus must be > 0 and gpus >= 0 (fractions "
                          f"allowed), got cpus={cpus!r} gpus={gpus!r}")
    sets = tuple(_list(train["set"], f"{where} [train] set", str)) if "set" in train else ()
    root = Path(data["root"])

    raw = data.get("datasets")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: no [[datasets]]: the grid is empty")
    datasets = []
    for i, d in enumerate(raw):
        at = f"{where} [[datasets]] #{i + 1}"
        _keys(d, DATASET, at)
        if not isinstance(d.get("env"), str):
            raise ConfigError(f"{at}: 'env' (a Gymnasium id) is required")
        if "path" in d and "collect" in d:
            raise ConfigError(f"{at}: give 'path' or 'collect', not both")
        for key in ("name", "path"):
            if key in d and not (isinstance(d[key], str) and d[key]):
                raise ConfigError(f"{at}: '{key}' must be a non-empty string, got {d[key]!r}")
        name = d.get("name") or (Path(d["path"]).stem if "path" in d else "builtin")
        collect = d.get("collect")
        ds_path = d.get("path")
        if collect is not None:
            _keys(collect, COLLECT, f"{at} collect")
            if not isinstance(collect.get("steps"), int) or collect["steps"] < 1:
                raise ConfigError(f"{at} collect: 'steps' (a positive integer) is required")
            noise = collect.get("noise", 0)
            if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
                raise ConfigError(f"{at} collect: 'noise' must be a number >= 0, got {noise!r}")
            collect = {"policy": "random", "seed": 0, **collect}
            ds_path = str(root / "data" / f"{d['env']}-{slug(name)}")
        threshold = d.get("threshold")
        if threshold is not None and (not isinstance(threshold, int | float)
                                      or isinstance(threshold, bool)):
            raise ConfigError(f"{at}: 'threshold' must be a number, got {threshold!r}")
        datasets.append(Dataset(d["env"], name, ds_path, collect,
                                None if threshold is None else float(threshold)))
    seen = [(d.env_id, slug(d.name)) for d in datasets]  # as directory names
    dup = next((d for d, s in zip(datasets, seen) if seen.count(s) > 1), None)
    if dup:
        raise ConfigError(f"{where}: dataset {dup.name!r} of {dup.env_id} is listed twice (or "
                          "under a name that makes the same directory name)")

    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: [grid] (algos, seeds) is required")
    _keys(grid, GRID, f"{where} [grid]")
    algos = _list(grid.get("algos"), f"{where} [grid] algos", str)
    seeds = _list(grid.get("seeds"), f"{where} [grid] seeds", int)
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} [grid] seeds must be distinct and >= 0, got {seeds}")
    variants = grid.get("variants", {"": []})
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{where} [grid.variants] must map labels to lists of overrides")
    only = {}  # label -> the algos it applies to (all when absent)
    for label, over in list(variants.items()):
        at = f"{where} [grid.variants] {label!r}"
        if isinstance(over, dict):
            _keys(over, VARIANT, at)
            if "algos" in over:
                only[label] = _list(over["algos"], f"{at} algos", str)
                stray = sorted(set(only[label]) - set(algos))
                if stray:
                    raise ConfigError(f"{at}: algos {stray} are not in [grid] algos")
            over = over.get("set", [])
            variants[label] = over
        if over:
            _list(over, at, str)
    slugs = [slug(v) for v in variants if v]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"{where} [grid.variants]: two labels make the same directory name")

    points = []
    for d in datasets:
        for algo in algos:
            for label, over in variants.items():
                if label in only and algo not in only[label]:
                    continue
                method = f"{algo}-{slug(label)}" if label else algo
                for seed in seeds:
                    run_dir = root / f"{d.env_id.replace('/', '-')}-{slug(d.name)}" / method \
                        / f"s{seed}"
                    points.append(Point(d, algo, label, tuple(over or ()), seed, run_dir))
    return Sweep(path, root, train.get("preset"), train.get("online_steps"),
                 train.get("pretrain_updates"), train.get("device"), sets, float(cpus),
                 float(gpus), tuple(datasets), tuple(points))


def check(sweep: Sweep) -> None:
    """What `vidt train --dry-run` checks, for every distinct run configuration: each override
    is a field with a valid value, the env can be made, and a dataset that exists loads and
    fits the env (one still to be collected is checked after its collection)."""
    from vidt.train.trainer import check_inputs

    done = set()
    for p in sweep.points:
        key = (p.dataset.env_id, p.dataset.name, p.algo, p.variant)
        if key in done:
            continue
        done.add(key)
        label = f"{p.dataset.env_id} {p.dataset.name} {p.algo}" + (
            f" [{p.variant}]" if p.variant else "")
        try:
            cfg = sweep.config(p)
            if p.dataset.collect is None or Path(p.dataset.path).exists():
                check_inputs(cfg)
        except VidtError as e:
            raise ConfigError(f"{sweep.file}: {label}: {e}") from None
