"""Loaders for each source, the terminated/truncated split, collection determinism, and
clear errors for bad data through the CLI."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from vidt.data import Episode, collect, is_random_policy_data, load, load_d4rl, save_d4rl
from vidt.errors import DatasetError


def _d4rl_arrays(n=10, obs_dim=3, act_dim=1, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }


def _write_h5(path, arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return path


def test_d4rl_split_on_terminal_and_timeout_with_trailing_truncated(tmp_path):
    a = _d4rl_arrays(10)
    a["terminals"][2] = True  # episode 0: steps 0..2, terminated
    a["timeouts"][6] = True  # episode 1: steps 3..6, time limit
    a["next_observations"] = np.roll(a["observations"], -1, axis=0) + 100  # distinguishable
    eps = load_d4rl(_write_h5(tmp_path / "d.hdf5", a))  # episode 2: 7..9 unfinished
    assert [len(e) for e in eps] == [3, 4, 3]
    assert [(e.terminated, e.truncated) for e in eps] == [(True, False), (False, True), (False, True)]
    # the last transition's next state is the real next observation from the file
    np.testing.assert_array_equal(eps[1].next_observations[-1], a["next_observations"][6])
    np.testing.assert_array_equal(eps[1].observations, a["observations"][3:7])
    assert eps[0].terminals.tolist() == [False, False, True]
    assert eps[1].terminals.tolist() == [False, False, False, False]  # a timeout is not terminal


def test_d4rl_without_next_observations_never_invents_a_next_state(tmp_path):
    a = _d4rl_arrays(8)
    a["terminals"][2] = True
    a["timeouts"][5] = True
    eps = load_d4rl(_write_h5(tmp_path / "d.hdf5", a))
    # terminal episode keeps all 3 steps; the timeout one drops its last step (unknown next
    # state) and its new last next_observation is the real observation of step 5.
    assert [len(e) for e in eps] == [3, 2, 1]
    np.testing.assert_array_equal(eps[1].next_observations[-1], a["observations"][5])
    np.testing.assert_array_equal(eps[0].next_observations[:2], a["observations"][1:3])


def test_d4rl_old_files_without_timeouts(tmp_path):
    a = _d4rl_arrays(6)
    del a["timeouts"]
    a["terminals"][3] = True
    eps = load_d4rl(_write_h5(tmp_path / "d.h5", a))
    assert [(len(e), e.terminated) for e in eps] == [(4, True), (1, False)]


def test_d4rl_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    eps = [Episode(rng.normal(size=(n, 2)).astype(np.float32), rng.normal(size=(n, 1)).astype(np.float32),
                   rng.normal(size=n).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32),
                   terminated=t, truncated=not t) for n, t in [(5, True), (3, False), (4, True)]]
    save_d4rl(tmp_path / "x.hdf5", eps)
    back = load(tmp_path / "x.hdf5")
    assert len(back) == 3
    for e, b in zip(eps, back):
        for k in ("observations", "actions", "rewards", "next_observations"):
            np.testing.assert_array_equal(getattr(e, k), getattr(b, k))
        assert (e.terminated, e.truncated) == (b.terminated, b.truncated)


def test_minari_collect_round_trip_and_determinism(tmp_path):
    r1 = collect("Hopper-v5", tmp_path / "a", steps=600, seed=7)
    collect("Hopper-v5", tmp_path / "b", steps=600, seed=7)
    collect("Hopper-v5", tmp_path / "c", steps=600, seed=8)
    a, b, c = (load(tmp_path / n, "Hopper-v5") for n in "abc")
    assert r1.steps == sum(len(e) for e in a) == 600
    assert len(a) == len(b) == r1.episodes
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)
        assert (x.terminated, x.truncated) == (y.terminated, y.truncated)
    assert not np.array_equal(a[0].actions, c[0].actions)
    # random Hopper falls over: terminated episodes, and the step budget cut the last one
    assert all(e.terminated for e in a[:-1])
    assert a[-1].truncated and not a[-1].terminated
    # next observation of step t is the observation of step t+1 within an episode
    np.testing.assert_array_equal(a[0].next_observations[:-1], a[0].observations[1:])
    assert r1.returns == pytest.approx([e.episode_return for e in a], rel=1e-5)


def test_minari_dataset_by_id_under_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    collect("Pendulum-v1", root / "vidt" / "pendulum-v0", steps=250, seed=0)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    eps = load("vidt/pendulum-v0", "Pendulum-v1")
    assert [len(e) for e in eps] == [200, 50]
    assert all(e.truncated for e in eps)  # Pendulum only ever truncates
    with pytest.raises(DatasetError, match="no such file, directory or local Minari dataset"):
        load("vidt/missing-v0")


def test_random_policy_data_is_told_by_the_datasets_own_labels(tmp_path, monkeypatch):
    arrays = _d4rl_arrays()
    for name, random in [("hopper-random-v2.hdf5", True), ("walker2d_random.h5", True),
                         ("hopper-medium-v2.hdf5", False), ("randomized-v2.hdf5", False)]:
        assert is_random_policy_data(_write_h5(tmp_path / name, arrays)) is random, name
    collect("Pendulum-v1", tmp_path / "pend", steps=200, seed=0)
    assert is_random_policy_data(tmp_path / "pend")  # vidt collect --policy random
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert is_random_policy_data("pend")  # the same, by id under the Minari root
    meta = tmp_path / "pend" / "data" / "metadata.json"
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "algorithm_name": "SAC", "dataset_id": "x/expert-v0"}))
    assert not is_random_policy_data(tmp_path / "pend")
    for source in (None, "builtin", tmp_path / "missing", "mujoco/hopper/random-v0"):
        assert is_random_policy_data(source) is (source == "mujoco/hopper/random-v0"), source


def test_builtin_onestate_data():
    eps = load(None, "vidt/OneState-v0")
    acts = np.array([e.actions[0, 0] for e in eps])
    assert len(eps) == 128 and (acts < -0.94).sum() == 100 and (acts >= 0.5).sum() == 28
    assert all(e.terminated and len(e) == 1 for e in eps)
    with pytest.raises(DatasetError, match="no built-in dataset"):
        load(None, "Hopper-v5")


@pytest.mark.parametrize("case, message", [
    ("missing_key", "missing key.s. rewards"),
    ("lengths", "'actions' has 9 rows, 'observations' has 10"),
    ("obs_size", "observations have 4 values per step, Pendulum-v1 has 3"),
    ("nan", "'observations' has 1 non-finite values .NaN or Inf., the first at row 4"),
    ("inf", "'rewards' has 2 non-finite values"),
    ("empty", "the dataset is empty"),
    ("zero_bytes", "the file is empty"),
    ("not_hdf5", "not a readable HDF5 file"),
])
def test_bad_data_gives_clear_error_and_nonzero_exit(tmp_path, run_cli, case, message):
    path = tmp_path / f"{case}.hdf5"
    a = _d4rl_arrays(10)
    if case == "missing_key":
        del a["rewards"]
    elif case == "lengths":
        a["actions"] = a["actions"][:9]
    elif case == "obs_size":
        a["observations"] = np.zeros((10, 4), np.float32)
    elif case == "nan":
        a["observations"][4, 1] = np.nan
    elif case == "inf":
        a["rewards"][[2, 3]] = [np.inf, -np.inf]
    elif case == "empty":
        a = {k: v[:0] for k, v in a.items()}
    if case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "not_hdf5":
        path.write_text("observations,actions\n1,2\n")
    else:
        _write_h5(path, a)
    res = run_cli("datasets", "info", str(path), "--env", "Pendulum-v1")
    assert res.exit_code == 1
    assert str(path) in res.stderr
    import re
    assert re.search(message, res.stderr), res.stderr
    assert "Traceback" not in res.stderr


def test_cli_collect_and_info_json(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("data") / "p"  # relative, as a user types it
    res = run_cli("collect", "--env", "Pendulum-v1", "--steps", "400", "--seed", "3",
                  "--out", str(out), "--json")
    assert res.exit_code == 0, res.stderr
    c = json.loads(res.stdout)
    assert c["episodes"] == 2 and c["steps"] == 400
    res = run_cli("datasets", "info", str(out), "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["env_id"] == "Pendulum-v1"  # read from the dataset's own metadata
    assert info["episodes"] == 2 and info["steps"] == 400 and info["truncated"] == 2
    assert info["return_mean"] == pytest.approx(c["return_mean"], rel=1e-5)
    assert info["normalized_score"] is not None
    again = run_cli("collect", "--env", "Pendulum-v1", "--steps", "10", "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_minari_dict_observations_flatten_like_the_env(tmp_path, monkeypatch):
    # Maze datasets store dict observations; the loader must flatten them in the order
    # make_env's FlattenObservation uses (sorted keys), or a trained policy would see its
    # inputs permuted at serving time.
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from vidt.envs import make_env

    space = gym.spaces.Dict({"observation": gym.spaces.Box(-9, 9, (2,)),
                             "achieved_goal": gym.spaces.Box(-9, 9, (1,)),
                             "desired_goal": gym.spaces.Box(-9, 9, (1,))})

    class MazeLike(gym.Env):
        observation_space = space
        action_space = gym.spaces.Box(-1, 1, (1,))

        def reset(self, *, seed=None, options=None):
            return {"observation": np.array([1, 2], np.float32),
                    "achieved_goal": np.array([3], np.float32),
                    "desired_goal": np.array([4], np.float32)}, {}

    gym.register("vidt-test/MazeLike-v0", entry_point=MazeLike)
    env_obs, _ = make_env("vidt-test/MazeLike-v0").reset(seed=0)
    T = 3
    obs = {"observation": np.tile([1, 2], (T + 1, 1)).astype(np.float32),
           "achieved_goal": np.full((T + 1, 1), 3, np.float32),
           "desired_goal": np.full((T + 1, 1), 4, np.float32)}
    buf = EpisodeBuffer(id=0, observations=obs, actions=np.zeros((T, 1), np.float32),
                        rewards=[0.0] * T, terminations=[False, False, True],
                        truncations=[False] * T)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    minari.create_dataset_from_buffers("test/mazelike-v0", buffer=[buf], env=None,
                                       observation_space=space, action_space=MazeLike.action_space)
    (ep,) = load("test/mazelike-v0")
    np.testing.assert_array_equal(ep.observations[0], env_obs)
    assert ep.terminated and len(ep) == T


def test_action_noise_spreads_an_onnx_policys_data_within_bounds_and_is_recorded(tmp_path):
    from serving_util import make_policy_onnx

    policy = str(make_policy_onnx(tmp_path / "p.onnx", obs_dim=3, act_dim=1, env_id="Pendulum-v1",
                                  low=-2.0, high=2.0))
    made = {}
    for name, noise in (("clean", 0.0), ("noisy", 0.5), ("noisy-again", 0.5)):
        collect("Pendulum-v1", tmp_path / name, 300, seed=3, policy=policy, action_noise=noise)
        made[name] = np.concatenate([e.actions for e in load(str(tmp_path / name))])
    spread = made["noisy"] - made["clean"]
    # The noise changes what is taken (and so, through the context, later actions too) ...
    assert np.abs(spread).mean() > 0.2
    np.testing.assert_array_equal(made["noisy"], made["noisy-again"])  # seeded
    assert made["noisy"].min() >= -2.0 and made["noisy"].max() <= 2.0
    meta = json.loads((tmp_path / "noisy" / "data" / "metadata.json").read_text())
    assert meta["vidt_policy"]["action_noise"] == 0.5
    assert "--action-noise 0.5" in meta["description"] + json.dumps(meta)
    with pytest.raises(DatasetError, match="--action-noise is for an ONNX policy"):
        collect("Pendulum-v1", tmp_path / "r", 10, action_noise=0.1)
