import gymnasium as gym
import numpy as np
import pytest

from vidt.envs import (
    EnvError,
    get_family,
    list_families,
    make_env,
    normalized_score,
)


def test_mujoco_v5_uses_d4rl_references():
    assert normalized_score("Hopper-v5", -20.272305) == pytest.approx(0.0)
    assert normalized_score("Hopper-v5", 3234.3) == pytest.approx(100.0)
    assert normalized_score("HalfCheetah-v5", 12135.0) == pytest.approx(100.0)
    fam = get_family("Walker2d-v5")
    assert (fam.context_len, fam.eval_context_len) == (20, 5)
    assert fam.online_target_return == 2 * fam.eval_target_return == 10000


@pytest.mark.parametrize("env_id, k, eval_k", [
    ("Hopper-v5", 20, 5), ("AdroitHandPen-v1", 5, 5), ("AdroitHandHammer-v1", 5, 1),
    ("AdroitHandDoor-v1", 5, 1), ("AdroitHandRelocate-v1", 5, 1), ("AntMaze_UMaze-v5", 1, 1),
    ("AntMaze_Large_Diverse_GR-v5", 5, 1), ("PointMaze_Medium-v3", 1, 1),
    ("PointMaze_Large-v3", 5, 1),
])
def test_context_lengths_follow_algorithm_md(env_id, k, eval_k):
    # docs/algorithm.md's per-family table (model.context_len / eval_context_len): Adroit 5 / 1 (pen 5), AntMaze and Maze2D 1 (large 5) / 1.
    fam = get_family(env_id)
    assert (fam.context_len, fam.eval_context_len) == (k, eval_k)


def test_only_antmaze_shifts_rewards():
    # docs/algorithm.md: AntMaze targets -100 / -200 / -500 count "reward -1 per step".
    for fam in list_families():
        assert fam.reward_offset == (-1.0 if fam.family == "antmaze" else 0.0), fam.env_id


def test_variants_share_settings_but_a_dense_reward_keeps_no_reward_counts():
    v4 = get_family("Hopper-v4")
    assert (v4.family, v4.eval_target_return, v4.has_reference) == ("mujoco", 3600, False)
    dense = get_family("AntMaze_UMazeDense-v5")
    assert (dense.family, dense.context_len, dense.gamma) == ("antmaze", 1, 0.998)
    assert (dense.eval_target_return, dense.reward_offset, dense.has_reference) == (0.0, 0.0, False)
    assert get_family("AdroitHandDoorSparse-v1").eval_target_return == 0.0
    assert get_family("AntMaze_Medium-v5").family == "generic"  # not a variant of Ant-v5
    assert get_family("Hopperish-v5").family == "generic"


def test_no_reference_gives_none():
    assert normalized_score("vidt/OneState-v0", 1.0) is None
    assert normalized_score("PointMaze_Open-v3", 50.0) is None  # maze2d-open: no reference
    assert normalized_score("Hopper-v5", float("nan")) is None


def test_every_family_is_consistent():
    for fam in list_families():
        assert 1 <= fam.eval_context_len <= fam.context_len, fam.env_id
        assert fam.reward_scale > 0
        assert (fam.ref_min is None) == (fam.ref_max is None)


def test_unknown_env_gets_generic_defaults_and_clear_error():
    assert get_family("CartPoleContinuous-v9").family == "generic"
    with pytest.raises(EnvError, match="cannot make env"):
        make_env("NoSuchEnv-v0")


def test_onestate_env_rewards_and_registration():
    env = gym.make("vidt/OneState-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1,)
    for a, r in [(-1.0, 0.0), (-0.5, 0.25), (0.0, 1.0), (0.5, 0.0), (1.0, -1.0)]:
        env.reset()
        _, reward, term, trunc, _ = env.step(np.array([a], dtype=np.float32))
        assert reward == pytest.approx(r)
        assert term and not trunc


def test_pendulum_reference_is_measured_order():
    fam = get_family("Pendulum-v1")
    assert fam.ref_min < -1000 < fam.ref_max < -100
    assert normalized_score("Pendulum-v1", fam.ref_max) == pytest.approx(100.0)


def test_dict_observations_are_flattened_in_sorted_key_order():
    # A Dict-observation env built here (mazes need the robotics extra): FlattenObservation
    # must concatenate the keys sorted, the order our Minari loader uses too.
    class DictEnv(gym.Env):
        observation_space = gym.spaces.Dict({
            "observation": gym.spaces.Box(-1, 1, (2,)),
            "achieved_goal": gym.spaces.Box(-1, 1, (1,)),
            "desired_goal": gym.spaces.Box(-1, 1, (1,)),
        })
        action_space = gym.spaces.Box(-1, 1, (1,))

        def reset(self, *, seed=None, options=None):
            return {"observation": np.array([1, 2], np.float32),
                    "achieved_goal": np.array([3], np.float32),
                    "desired_goal": np.array([4], np.float32)}, {}

    gym.register("vidt-test/DictEnv-v0", entry_point=DictEnv)
    env = make_env("vidt-test/DictEnv-v0")
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [3, 4, 1, 2])  # achieved, desired, observation
