"""One loader API for every offline source: a local Minari dataset (directory or id under the
Minari root), a D4RL-layout HDF5 file, or the built-in data of vidt's own envs.

Every problem with a file becomes a DatasetError that names the file and the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vidt.errors import DatasetError

from .builtin import BUILTIN_ENVS, onestate_episodes
from .episode import Episode

D4RL_KEYS = ("observations", "actions", "rewards", "terminals")
HDF5_SUFFIXES = (".hdf5", ".h5")


def load(source: str | os.PathLike | None, env_id: str | None = None) -> list[Episode]:
    """Episodes from `source`; checked against `env_id`'s sizes when it is given.

    source: None or "builtin" (vidt/OneState-v0's built-in data), a .hdf5/.h5 file in D4RL
    layout, a Minari dataset directory, or a Minari dataset id under MINARI_DATASETS_PATH.
    """
    if source is None or str(source) == "builtin":
        if env_id not in BUILTIN_ENVS:
            raise DatasetError(
                f"no built-in dataset for {env_id or 'this env'}: pass --dataset "
                f"(built-in data exists for {', '.join(BUILTIN_ENVS)})")
        episodes, name = onestate_episodes(seed=0), "built-in data"
    else:
        path = Path(source)
        name = str(source)
        if path.suffix.lower() in HDF5_SUFFIXES or path.is_file():
            episodes = load_d4rl(path)
        else:
            episodes = load_minari(source)
    if env_id is not None:
        check_sizes(episodes, env_id, name)
    return episodes


def is_random_policy_data(source: str | os.PathLike | None) -> bool:
    """Whether `source` was recorded by a uniform random policy, as far as its own labels
    say (docs/algorithm.md gives random datasets their own collection setting). Never raises:
    an unreadable or unlabelled source counts as not random, and load() reports problems.

    Minari: the dataset's `algorithm_name` ("random" for `vidt collect --policy random`) or
    a `random` part in its id; D4RL: a `random` part in the file name (hopper-random-v2).
    """
    if source is None or str(source) == "builtin":
        return False
    path = Path(source)
    if path.suffix.lower() in HDF5_SUFFIXES or path.is_file():
        return _names_random(path.stem)
    info = minari_metadata(source)
    if info is not None:
        return (info.get("algorithm_name") == "random"
                or _names_random(str(info.get("dataset_id", ""))))
    return _names_random(str(source))


def minari_metadata(source: str | os.PathLike | None) -> dict | None:
    """A Minari dataset's metadata.json (a directory, or an id under the Minari root) as a
    dict; None for anything else (built-in data, D4RL files, a missing or broken file).
    Never raises: load() is what reports problems."""
    if source is None or str(source) == "builtin":
        return None
    path = Path(source)
    if path.is_file():
        return None
    if not path.is_dir():
        path = Path(_minari_root()).expanduser() / str(source)
    for meta in (path / "data" / "metadata.json", path / "metadata.json"):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            return info
    return None


def policy_record(source: str | os.PathLike | None) -> dict | None:
    """What a dataset recorded by `vidt collect --policy FILE.onnx` says of that policy (its
    file name, model_version, model_name, algo and the target return it was conditioned
    on); None for data recorded otherwise."""
    from .collect import POLICY_KEY

    record = (minari_metadata(source) or {}).get(POLICY_KEY)
    return record if isinstance(record, dict) else None


def _names_random(name: str) -> bool:
    last = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return "random" in last.replace("_", "-").split("-")


def check_sizes(episodes: list[Episode], env_id: str, name: str) -> None:
    from vidt.envs import env_dims

    obs_dim, act_dim = env_dims(env_id)
    ep = episodes[0]
    if ep.obs_dim != obs_dim:
        raise DatasetError(f"{name}: observations have {ep.obs_dim} values per step, "
                           f"{env_id} has {obs_dim}")
    if ep.act_dim != act_dim:
        raise DatasetError(f"{name}: actions have {ep.act_dim} values per step, "
                           f"{env_id} has {act_dim}")


def _check_finite(name: str, key: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DatasetError(f"{name}: '{key}' has {int(bad.sum())} non-finite values "
                           f"(NaN or Inf), the first at row {row}")


# ---------------------------------------------------------------- D4RL HDF5


def load_d4rl(path: str | os.PathLike) -> list[Episode]:
    """D4RL layout: observations, actions, rewards, terminals, timeouts (optional in old
    files), next_observations (optional). Episodes split at terminal or timeout; a trailing
    unfinished episode is kept as truncated.

    Without next_observations the next state of an episode's last step is unknown unless it
    was terminal (where it is never used); such a last step is dropped rather than given a
    made-up next state, and the episode stays truncated (the critic bootstraps from the real
    observation of the dropped step).
    """
    import h5py

    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DatasetError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{name}: the file is empty")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{name}: not a readable HDF5 file ({e})") from None
    # A damaged file can fail anywhere inside h5py, with RuntimeError as often as OSError.
    try:
        with f:
            missing = [k for k in D4RL_KEYS if k not in f]
            if missing:
                raise DatasetError(
                    f"{name}: missing key(s) {', '.join(missing)} (D4RL layout needs "
                    f"observations, actions, rewards, terminals; timeouts and "
                    f"next_observations are optional)")
            data = {k: np.asarray(f[k]) for k in (*D4RL_KEYS, "timeouts", "next_observations")
                    if k in f}
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{name}: cannot read its arrays, the file is damaged ({e})") from None
    n = len(data["observations"])
    if n == 0:
        raise DatasetError(f"{name}: the dataset is empty (0 steps)")
    for k, v in data.items():
        if len(v) != n:
            raise DatasetError(f"{name}: '{k}' has {len(v)} rows, 'observations' has {n}")
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise DatasetError(f"{name}: '{k}' holds {v.dtype} values, not numbers")
    obs = data["observations"].astype(np.float32).reshape(n, -1)
    acts = data["actions"].astype(np.float32).reshape(n, -1)
    rews = data["rewards"].astype(np.float32).reshape(n)
    terms = data["terminals"].astype(bool).reshape(n)
    touts = data["timeouts"].astype(bool).reshape(n) if "timeouts" in data else np.zeros(n, bool)
    nxt = data.get("next_observations")
    if nxt is not None:
        nxt = nxt.astype(np.float32).reshape(n, -1)
    for k, v in (("observations", obs), ("actions", acts), ("rewards", rews),
                 ("next_observations", nxt)):
        if v is not None:
            _check_finite(name, k, v)

    ends = np.flatnonzero(terms | touts)
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends + 1, [n]])
    episodes = []
    for s, e in zip(starts, stops):
        if e <= s:
            continue
        terminated = bool(terms[e - 1])
        o, a, r = obs[s:e], acts[s:e], rews[s:e]
        if nxt is not None:
            no = nxt[s:e]
        else:
            no = np.concatenate([obs[s + 1:e], obs[e - 1:e]])  # last row fixed below
            if not terminated:
                if e - s == 1:
                    continue  # a lone step with no known next state carries nothing usable
                o, a, r, no = o[:-1], a[:-1], r[:-1], no[:-1]
        episodes.append(Episode(o, a, r, no, terminated=terminated, truncated=not terminated))
    if not episodes:
        raise DatasetError(f"{name}: no usable episodes")
    return episodes


def save_d4rl(path: str | os.PathLike, episodes: list[Episode]) -> None:
    """Write episodes in D4RL layout (with next_observations), atomically."""
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    cat = lambda f: np.concatenate([f(ep) for ep in episodes])  # noqa: E731
    with h5py.File(tmp, "w") as f:
        f["observations"] = cat(lambda ep: ep.observations)
        f["actions"] = cat(lambda ep: ep.actions)
        f["rewards"] = cat(lambda ep: ep.rewards)
        f["next_observations"] = cat(lambda ep: ep.next_observations)
        f["terminals"] = cat(lambda ep: ep.terminals)
        f["timeouts"] = cat(lambda ep: (np.arange(len(ep)) == len(ep) - 1) & ep.truncated)
    os.replace(tmp, path)


# ---------------------------------------------------------------- Minari


def _minari_root() -> str:
    """Where Minari keeps datasets by id (its own rule; minari.storage.get_dataset_path would
    also create the folder)."""
    return os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")


def _minari_dataset(source: str | os.PathLike):
    import minari

    path = Path(source)
    if path.is_dir():
        for data_dir in (path / "data", path):
            if (data_dir / "main_data.hdf5").exists() or (data_dir / "metadata.json").exists():
                meta = data_dir / "metadata.json"
                try:
                    if not isinstance(json.loads(meta.read_text()), dict):
                        raise ValueError("not a JSON object")
                except (OSError, ValueError) as e:
                    raise DatasetError(f"{path}: not a readable Minari dataset: {meta.name} "
                                       f"is missing or broken ({e})") from None
                try:
                    return minari.MinariDataset(str(data_dir)), str(path)
                except Exception as e:  # minari raises several types for bad directories
                    raise DatasetError(f"{path}: not a readable Minari dataset ({e})") from None
        raise DatasetError(f"{path}: a directory, but not a Minari dataset "
                           f"(no data/main_data.hdf5 inside)")
    if path.is_absolute() or str(source).startswith((".", "~")):
        raise DatasetError(f"{source}: no such file or directory")
    root = _minari_root()
    try:
        # Look before asking Minari: its lookup creates the root folder, even for a typo.
        if not (Path(root).expanduser() / str(source)).is_dir():
            raise FileNotFoundError
        return minari.load_dataset(str(source), download=False), str(source)
    except FileNotFoundError:
        raise DatasetError(
            f"{source}: no such file, directory or local Minari dataset id (looked under "
            f"{root}; vidt never downloads)") from None
    except Exception as e:
        raise DatasetError(f"{source}: not a readable Minari dataset ({e})") from None


def _flat(x) -> np.ndarray:
    """Minari observations: an array, or a dict of arrays (mazes) flattened in sorted key
    order, the order gymnasium's FlattenObservation uses for a Dict space."""
    if isinstance(x, dict):
        return np.concatenate([_flat(x[k]) for k in sorted(x)], axis=-1)
    x = np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float32)


def load_minari(source: str | os.PathLike) -> list[Episode]:
    ds, name = _minari_dataset(source)
    episodes = []
    try:
        eps = list(ds.iterate_episodes())
    except Exception as e:
        raise DatasetError(f"{name}: cannot read its episodes from data/main_data.hdf5 ({e})") from None
    for ep in eps:
        obs = _flat(ep.observations)  # (T+1, S)
        T = len(ep.rewards)
        if T == 0:
            continue
        if len(obs) != T + 1 or len(ep.actions) != T:
            raise DatasetError(f"{name}: episode {ep.id} has {len(obs)} observations and "
                               f"{len(ep.actions)} actions for {T} rewards "
                               f"(Minari stores T+1 observations)")
        acts = _flat(ep.actions)
        rews = np.asarray(ep.rewards, dtype=np.float32).reshape(T)
        for k, v in (("observations", obs), ("actions", acts), ("rewards", rews)):
            _check_finite(f"{name} episode {ep.id}", k, v)
        terminated = bool(np.asarray(ep.terminations)[-1])
        episodes.append(Episode(obs[:-1], acts, rews, obs[1:], terminated=terminated,
                                truncated=not terminated))
    if not episodes:
        raise DatasetError(f"{name}: the dataset is empty (0 steps)")
    return episodes
