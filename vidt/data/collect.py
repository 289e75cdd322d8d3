"""Record a dataset from an env and a policy (random, or an exported ONNX actor) and write it
as a local Minari dataset. No jax: Minari's DataCollector needs it, but
`create_dataset_from_buffers` with EpisodeBuffers we fill ourselves does not.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidt.envs import get_family, make_env
from vidt.errors import DatasetError
from vidt.policy_file import OnnxPolicy


@dataclass(frozen=True)
class CollectReport:
    out: str
    env_id: str
    policy: str
    seed: int
    steps: int
    episodes: int
    returns: list[float] = field(repr=False)
    # For an ONNX policy: what the dataset's metadata records of it (POLICY_KEY), else None.
    policy_record: dict | None = None


# The key of a collected dataset's Minari metadata (metadata.json) that says which exported
# policy recorded it and with what target return: a dataset made by a model says which one.
POLICY_KEY = "vidt_policy"


class _OnnxActor:
    """An exported actor acting through its own context window and target return."""

    def __init__(self, path: str, env_id: str, target_return: float | None, obs_dim: int,
                 act_dim: int, noise: float = 0.0, seed: int = 0):
        self.policy = OnnxPolicy(path)
        meta = self.policy.metadata
        if (meta.obs_dim, meta.act_dim) != (obs_dim, act_dim):
            raise DatasetError(
                f"{path}: the policy takes {meta.obs_dim} observations and gives {meta.act_dim} "
                f"actions, {env_id} has {obs_dim} and {act_dim}")
        self.target_return = meta.default_target_return if target_return is None \
            else float(target_return)
        self.window = None
        # Gaussian noise on each action, `noise` x half the action range, then clipped: a
        # good policy's data with some spread (D4RL's "medium" data kept its policy's noise).
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.low = np.asarray(meta.action_low, np.float32)
        self.high = np.asarray(meta.action_high, np.float32)

    def record(self, path: str) -> dict:
        """What the dataset records of this policy (under POLICY_KEY in its metadata)."""
        m = self.policy.metadata
        return {"file": Path(path).name, "model_version": m.model_version,
                "model_name": m.model_name, "algo": m.algo,
                "target_return": self.target_return, "action_noise": self.noise}

    def reset(self) -> None:
        self.window = self.policy.new_window(self.target_return)

    def __call__(self, obs: np.ndarray, reward: float) -> np.ndarray:
        inputs = self.window.observe(obs, reward)
        action = self.policy.predict(inputs)[0]
        if self.noise:
            scale = self.noise * (self.high - self.low) / 2
            action = np.clip(action + self.rng.normal(0.0, 1.0, action.shape) * scale,
                             self.low, self.high).astype(np.float32)
        self.window.record_action(action)  # the action taken, as the policy's context
        return action


def collect(
    env_id: str,
    out: str | os.PathLike,
    steps: int,
    seed: int = 0,
    policy: str = "random",
    target_return: float | None = None,
    on_step: Callable[[int], None] | None = None,
    action_noise: float = 0.0,
) -> CollectReport:
    """Run `steps` env steps with `policy` ("random" or a path to an ONNX actor) and write a
    Minari dataset to `out` (a directory that must not exist yet; written to a temporary
    directory beside it, then renamed, so it is never half-written).

    Determinism: the env is reset with `seed` once and its RNG carries on through later
    episodes; the random policy samples from the action space seeded with `seed`.

    Finished episodes go to a writer process in chunks, so the HDF5 writes (Minari keeps a
    group of five datasets per episode: a third of the time for short Hopper episodes)
    overlap the env loop instead of following it.
    """
    out = Path(out)
    if steps < 1:
        raise DatasetError(f"--steps must be at least 1, got {steps}")
    if out.exists():
        raise DatasetError(f"{out}: already exists; choose a new --out directory")
    if target_return is not None and not math.isfinite(target_return):
        raise DatasetError(f"--target-return must be a finite number, got {target_return}")
    if not (math.isfinite(action_noise) and action_noise >= 0):
        raise DatasetError(f"--action-noise must be a number >= 0, got {action_noise}")
    if action_noise and policy == "random":
        raise DatasetError("--action-noise is for an ONNX policy; the random policy has none")
    env = make_env(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if policy == "random":
        env.action_space.seed(seed)
        act, record = None, None
    else:
        act = _OnnxActor(policy, env_id, target_return, obs_dim, act_dim, action_noise, seed)
        record = act.record(policy)

    try:
        if out.parent.exists() and not out.parent.is_dir():
            raise NotADirectoryError(20, f"{out.parent} is not a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        # Absolute: Minari resolves dataset paths against its root in ways a relative root breaks.
        tmp_root = Path(tempfile.mkdtemp(prefix=".collect-", dir=out.parent.resolve()))
    except OSError as e:
        env.close()
        raise DatasetError(f"cannot write a dataset to {out}: {e.strerror or e}") from None
    safe = re.sub(r"[^A-Za-z0-9]+", "-", env_id).strip("-").lower()
    algo = "random" if policy == "random" else "onnx-policy"
    dataset_id = f"vidt/{safe}-{algo}-v0"
    command = f"vidt collect --env {env_id} --policy {policy} --steps {steps} --seed {seed}"
    if target_return is not None:
        command += f" --target-return {target_return:.10g}"
    if action_noise:
        command += f" --action-noise {action_noise:.10g}"
    writer = _Writer(tmp_root, dataset_id, env_id, algo, command,
                     {POLICY_KEY: record} if record else {})
    returns: list[float] = []
    try:
        obs, _ = env.reset(seed=seed)
        ep_obs, ep_act, ep_rew, ep_term, ep_trunc = [obs], [], [], [], []
        reward = 0.0
        if act is not None:
            act.reset()

        def close_episode() -> None:
            writer.add(dict(
                id=len(returns), seed=seed if not returns else None,
                observations=np.asarray(ep_obs, dtype=np.float32),
                actions=np.asarray(ep_act, dtype=np.float32),
                rewards=list(ep_rew), terminations=list(ep_term), truncations=list(ep_trunc),
            ))
            returns.append(float(np.sum(ep_rew)))

        for t in range(steps):
            a = env.action_space.sample() if act is None else act(obs, reward)
            obs, reward, term, trunc, _ = env.step(a)
            ep_obs.append(obs)
            ep_act.append(a)
            ep_rew.append(float(reward))
            ep_term.append(bool(term))
            ep_trunc.append(bool(trunc))
            if on_step is not None:
                on_step(1)
            if term or trunc:
                close_episode()
                obs, _ = env.reset()
                ep_obs, ep_act, ep_rew, ep_term, ep_trunc = [obs], [], [], [], []
                reward = 0.0
                if act is not None:
                    act.reset()
            elif t == steps - 1:
                ep_trunc[-1] = True  # the step budget ended it: a truncation, as Minari records
                close_episode()
        writer.finish()
        try:
            os.replace(tmp_root / dataset_id, out)
        except OSError as e:  # e.g. another collect wrote `out` meanwhile: never merge into it
            raise DatasetError(f"cannot move the dataset into {out}: {e.strerror or e} "
                               f"(did another process create it meanwhile?)") from None
    finally:
        writer.abort()
        env.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    return CollectReport(str(out), env_id, policy, seed, steps, len(returns), returns, record)


class _Writer:
    """Parent side of the writer process: batches episodes and ships them over a pipe."""

    CHUNK_STEPS = 5000

    def __init__(self, root: Path, dataset_id: str, env_id: str, algo: str, description: str,
                 metadata: dict):
        # fork: the child starts at once with the modules already imported (spawn re-imports
        # them, 0.7 s of CPU that a short collection notices). The child only touches
        # h5py/Minari, never the parent's onnxruntime or torch threads. But only from a
        # process with one Python thread: a lock another thread holds at the fork (a server
        # in the same process, as in tests or an embedding) stays held in the child for ever.
        alone = sys.platform == "linux" and threading.active_count() == 1
        ctx = mp.get_context("fork" if alone else "spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_writer_main, daemon=True,
                                args=(child, str(root), dataset_id, env_id, algo, description,
                                      metadata))
        self.proc.start()
        child.close()
        self.pending: list[dict] = []
        self.pending_steps = 0

    def add(self, episode: dict) -> None:
        self.pending.append(episode)
        self.pending_steps += len(episode["rewards"])
        if self.pending_steps >= self.CHUNK_STEPS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.conn.send(self.pending)
            self.pending, self.pending_steps = [], 0

    def finish(self) -> None:
        self._flush()
        self.conn.send(None)
        error = self.conn.recv()
        self.proc.join(timeout=60)
        if error:
            raise DatasetError(f"writing the Minari dataset failed: {error}")

    def abort(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=10)
        self.conn.close()


def _writer_main(conn, root: str, dataset_id: str, env_id: str, algo: str,
                 description: str, metadata: dict) -> None:
    """Writer process: creates the dataset with the first chunk (and adds `metadata` to
    Minari's own), appends the others."""
    # The Minari root is process-global state; in this process it is ours alone.
    os.environ["MINARI_DATASETS_PATH"] = root
    warnings.filterwarnings("ignore", category=UserWarning, module="minari")
    error, dataset = "", None
    try:
        import minari
        from minari.data_collector.episode_buffer import EpisodeBuffer
    except Exception as e:  # reported to the parent, which raises
        error = repr(e)
    while True:
        chunk = conn.recv()
        if chunk is None:
            break
        if error:
            continue  # keep draining so the parent never blocks on a full pipe
        try:
            buffers = [EpisodeBuffer(**ep) for ep in chunk]
            if dataset is None:
                fam = get_family(env_id)
                refs = (dict(ref_min_score=fam.ref_min, ref_max_score=fam.ref_max)
                        if fam.has_reference else {})
                env = make_env(env_id)
                dataset = minari.create_dataset_from_buffers(
                    dataset_id, buffer=buffers, env=env, algorithm_name=algo,
                    description=description, **refs)
                env.close()
                if metadata:
                    dataset.storage.update_metadata(metadata)
            else:
                dataset.storage.update_episodes(buffers)
        except Exception as e:
            error = repr(e)
    conn.send(error)
    conn.close()
