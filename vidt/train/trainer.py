"""The training loop, top to bottom (docs/algorithm.md, "Loop"):

1. offline pretraining: `pretrain_updates` actor updates on the offline data (the critic
   learns alongside; the RL term is off unless `rl_from_start`);
2. at the online start: targets re-synchronised, replay buffer seeded with the best offline
   episodes;
3. online iterations until the env-step budget is spent: collect episodes conditioned on the
   online target return (with exploration), `updates_per_iter` updates from the replay
   buffer, and every `eval.every` iterations a deterministic evaluation on envs of its own.

Checkpoints are taken at iteration boundaries (and between updates on Ctrl-C) and hold every
piece of state, so a killed run resumed with `resume=True` ends with the same metrics as one
never interrupted (same seed, CPU).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import vidt
from vidt.data.episode import Episode
from vidt.envs import get_family, make_env, normalized_score
from vidt.errors import ConfigError, DatasetError, StorageError
from vidt.files import atomic_write_text
from vidt.model.dt import Actor, ModelSpec
from vidt.window import ContextWindow, WindowInputs

from .buffer import ReplayBuffer, SegmentSampler
from .checkpoint import (
    ACTOR,
    ACTOR_BEST,
    CHECKPOINT,
    CONDITIONING,
    FORMAT_VERSION,
    LOCK_FILE,
    PRETRAINED,
    ActorMeta,
    RunDirLock,
    actor_payload,
    atomic_save,
    load_file,
    numpy_rng_state,
    remove_stale_temps,
    set_numpy_rng_state,
)
from .config import TrainConfig, flatten_dict, read_run_config
from .learner import Learner
from .metrics import LossMeter, MetricsLog

log = logging.getLogger(__name__)

# Ours, so `--force` removes them: what the trainer writes, and `vidt export`'s default file,
# which would otherwise sit beside a new run's actor as if it were its export.
RUN_FILES = ("config.json", "metrics.csv", CHECKPOINT, ACTOR, ACTOR_BEST, "learning_curve.png",
             "tb", "policy.onnx", PRETRAINED)
EPISODE_STEP_CAP = 100_000  # bound on an episode of an env without a time limit


@dataclass
class RunResult:
    run_dir: Path
    config: TrainConfig
    online_env_steps: int
    actor_updates: int
    wall_time_s: float
    final_eval_return_mean: float | None
    final_eval_return_std: float | None
    final_normalized_score: float | None
    metrics: list[dict] = field(default_factory=list)
    interrupted: bool = False
    pretrained_from: str | None = None  # the pretrained.pt it started from, if not its own


# ---------------------------------------------------------------- setup helpers


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available "
                          "(torch.cuda.is_available() is False); use --device cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_offline(cfg: TrainConfig) -> list[Episode]:
    from vidt.data import load

    episodes = load(cfg.dataset, cfg.env_id)  # checks sizes against the env
    episodes = [e for e in episodes if len(e) > 0]
    if not episodes:
        raise DatasetError(f"{cfg.dataset or 'built-in data'}: no episodes")
    return [learning_rewards(e, cfg) for e in episodes]


def learning_rewards(episode: Episode, cfg: TrainConfig) -> Episode:
    """The episode as the agent learns from it: every reward r becomes (r + reward_offset) /
    reward_divisor (AntMaze: r - 1; Adroit: r / 100), so the RTGs, hindsight relabels and TD
    targets all see the same rewards, in the units of the target returns."""
    offset, divisor = cfg.data.reward_offset, cfg.data.reward_divisor
    if offset == 0 and divisor == 1:
        return episode
    rewards = (episode.rewards.astype(np.float64) + offset) / divisor
    return replace(episode, rewards=rewards.astype(np.float32))


def check_inputs(cfg: TrainConfig) -> None:
    """What a run checks before it touches its directory (and `--dry-run` checks alone): the
    env can be made, the dataset loads and fits the env's sizes."""
    env = make_env(cfg.env_id)
    try:
        S, A = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
        check_dims(load_offline(cfg), S, A, cfg.env_id, cfg.dataset or "built-in data")
    finally:
        env.close()


def check_dims(episodes: list[Episode], obs_dim: int, act_dim: int, env_id: str, name: str) -> None:
    e = episodes[0]
    if e.obs_dim != obs_dim or e.act_dim != act_dim:
        raise DatasetError(f"{name}: dataset has observation/action sizes {e.obs_dim}/{e.act_dim}, "
                           f"{env_id} has {obs_dim}/{act_dim}")


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> RunDirLock:
    """Check, create and lock the run directory; returns the lock the trainer holds."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a directory")
    if resume and not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no config.json); drop --resume")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(run_dir)  # before deleting anything: the run may be live elsewhere
    except OSError as e:
        raise StorageError(f"cannot use {run_dir} as a run directory: {e.strerror or e}") from None
    try:
        if not resume and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            if not force:
                raise ConfigError(f"{run_dir} is not empty: pass --resume to continue that run "
                                  f"or --force to start over in it")
            for name in RUN_FILES:  # only our own files: never delete what a user put there
                p = run_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        stale = remove_stale_temps(run_dir)
        if stale:
            log.info("removed %d partial file(s) left by an interrupted write: %s", len(stale),
                     ", ".join(stale))
    except BaseException:
        lock.release()
        raise
    return lock


# ---------------------------------------------------------------- rollouts


def play(actor: Actor, envs: list, cfg: TrainConfig, target_return: float, device: torch.device,
         seeds: list[int | None], explore: bool, rng: np.random.Generator | None,
         max_steps: int) -> list[Episode]:
    """One episode per env, all envs stepped in lockstep with one batched actor call per step.

    The window is vidt.window.ContextWindow: the same code the server uses. explore: Gaussian
    noise (deterministic head) or a sample (stochastic head) instead of the deterministic
    action. Returns the episodes with the env's own rewards (the windows' return-to-go counts
    data.reward_offset and data.reward_divisor, as the server's does).
    """
    m = cfg.model
    S, A = actor.model.spec.obs_dim, actor.model.spec.act_dim
    low = actor.act_bias - actor.act_scale
    high = actor.act_bias + actor.act_scale
    low_np, high_np = low.cpu().numpy(), high.cpu().numpy()
    n = len(envs)
    windows = [ContextWindow(S, A, m.context_len, m.eval_context_len, target_return,
                             cfg.data.reward_offset, cfg.data.reward_divisor) for _ in envs]
    obs = [env.reset(seed=s)[0] if s is not None else env.reset()[0] for env, s in zip(envs, seeds)]
    traj = [{"o": [], "a": [], "r": [], "o2": []} for _ in envs]
    last_r = [0.0] * n
    done = [False] * n
    flags = [(False, False)] * n
    actor.eval()
    for t in range(max_steps):
        live = [i for i in range(n) if not done[i]]
        if not live:
            break
        inputs = WindowInputs.stack([windows[i].observe(obs[i], last_r[i]) for i in live])
        with torch.no_grad():
            args = [torch.as_tensor(x, device=device) for x in
                    (inputs.observations, inputs.actions, inputs.returns_to_go, inputs.mask,
                     inputs.timesteps)]
            if explore and cfg.algorithm.stochastic:
                act = actor.sample(*args)
            else:
                act = actor(*args)
        act = act.float().cpu().numpy()  # (n_live, A)
        if explore and not cfg.algorithm.stochastic and cfg.online.exploration_noise > 0:
            scale = (high_np - low_np) / 2
            act = act + rng.normal(0.0, cfg.online.exploration_noise, act.shape) * scale
        act = np.clip(act, low_np, high_np).astype(np.float32)
        for j, i in enumerate(live):
            windows[i].record_action(act[j])
            o2, r, term, trunc, _ = envs[i].step(act[j])
            tr = traj[i]
            tr["o"].append(np.asarray(obs[i], np.float32).reshape(-1))
            tr["a"].append(act[j])
            tr["r"].append(float(r))
            tr["o2"].append(np.asarray(o2, np.float32).reshape(-1))
            obs[i], last_r[i] = o2, float(r)
            if term or trunc or t == max_steps - 1:
                done[i] = True
                flags[i] = (bool(term), not term)
    return [Episode(observations=np.stack(tr["o"]), actions=np.stack(tr["a"]),
                    rewards=np.asarray(tr["r"], np.float32), next_observations=np.stack(tr["o2"]),
                    terminated=f[0], truncated=f[1]) for tr, f in zip(traj, flags)]


# ---------------------------------------------------------------- the trainer


CONDITIONING_COLUMNS = ("phase", "target_return", "return_mean", "return_std", "episodes",
                        "data_return_mean", "data_return_max")


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 force: bool = False, progress: bool = False,
                 pretrained_from: str | Path | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = resolve_device(cfg.device)
        self.progress = progress
        # Inputs first, so a bad env or dataset fails before the run directory is touched.
        self.family = get_family(cfg.env_id)
        kw = {"max_episode_steps": cfg.online.max_episode_steps} if cfg.online.max_episode_steps else {}
        self.collect_env = make_env(cfg.env_id, **kw)
        self.eval_envs = [make_env(cfg.env_id, **kw) for _ in range(cfg.eval.episodes)]
        spec_env = self.collect_env
        S, A = int(spec_env.observation_space.shape[0]), int(spec_env.action_space.shape[0])
        limit = cfg.online.max_episode_steps or (spec_env.spec.max_episode_steps if spec_env.spec else None)
        self.max_episode_steps = int(limit or 0)
        self.step_cap = self.max_episode_steps or EPISODE_STEP_CAP

        self.offline = load_offline(cfg)
        check_dims(self.offline, S, A, cfg.env_id, cfg.dataset or "built-in data")
        all_obs = np.concatenate([e.observations for e in self.offline]).astype(np.float64)
        state_mean, state_std = all_obs.mean(0), all_obs.std(0) + 1e-6

        try:
            # Before the run directory is touched too: a donor it cannot use is an input error.
            # (Not read when the run goes on from its own checkpoint.)
            own = resume and (self.run_dir / CHECKPOINT).exists()
            donor = (read_pretrained(pretrained_from, cfg, self.device)
                     if pretrained_from and not own else None)
            self.lock = prepare_run_dir(self.run_dir, resume, force)
        except BaseException:
            self._close_envs()
            raise
        try:
            self._setup(cfg, resume, state_mean, state_std, donor)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: TrainConfig, resume: bool, state_mean, state_std,
               donor: dict | None) -> None:
        if resume:
            saved = TrainConfig.from_dict(read_run_config(self.run_dir))
            check_resume_config(saved, cfg)
        atomic_write_text(cfg.to_json() + "\n", self.run_dir / "config.json")
        spec_env = self.collect_env
        S, A = int(spec_env.observation_space.shape[0]), int(spec_env.action_space.shape[0])

        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.collect_env.reset(seed=cfg.seed)  # seeded once; later resets continue its RNG
        self.learner = Learner(cfg, ModelSpec(S, A), state_mean, state_std,
                               spec_env.action_space.low, spec_env.action_space.high, self.device)
        self.pretrain_sampler = SegmentSampler(self.offline, cfg.model.context_len, cfg.data.reward_scale)
        self.buffer = ReplayBuffer(cfg.data.buffer_episodes)

        # Counters (all in the checkpoint).
        self.phase = "pretrain"
        self.iteration = 0
        self.online_env_steps = 0
        self.iter_collected = False  # within the current online iteration
        self.iter_updates = 0
        self.wall_time = 0.0
        self.last_eval: tuple[float, float] | None = None
        self.best_eval: float | None = None  # the best evaluation's mean return so far
        self.meter = LossMeter()
        self.pretrained_from: str | None = None

        ckpt = self.run_dir / CHECKPOINT
        self.resumed = resume and ckpt.exists()
        state = load_file(ckpt, map_location=self.device) if self.resumed else None
        if state is None and donor is not None:
            state = {**donor, "pretrained_from": donor["path"]}
        purge = int(state["learner"]["actor_updates"]) if state else None
        self.metrics = MetricsLog(self.run_dir, f"{cfg.algo} on {cfg.env_id} (seed {cfg.seed})",
                                  purge_step=purge)
        if state is not None:
            self._load_state(state)
        elif not resume:
            self.metrics.write_csv()
        self._stop = False

    # ------------------------------------------------------------ state

    def _state(self) -> dict:
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        env_rng = self.collect_env.unwrapped.np_random.bit_generator.state
        return {
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_json(),
            "learner": self.learner.state_dict(),
            "buffer": self.buffer.state_dict() if self.phase == "online" else None,
            "counters": {"phase": self.phase, "iteration": self.iteration,
                         "online_env_steps": self.online_env_steps,
                         "iter_collected": self.iter_collected, "iter_updates": self.iter_updates,
                         "wall_time": self.wall_time},
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng,
                    "numpy": numpy_rng_state(self.rng), "collect_env": json.dumps(env_rng)},
            "metrics": json.dumps(self.metrics.rows),
            "meter": json.dumps([self.meter.sums, self.meter.counts]),
            "actor_file": actor_payload(self.learner.actor, self.meta()),
            "pretrained_from": self.pretrained_from or "",
        }

    def _load_state(self, s: dict) -> None:
        self.learner.load_state_dict(s["learner"])
        if s["buffer"] is not None:
            self.buffer.load_state_dict(s["buffer"])
        c = s["counters"]
        self.phase, self.iteration = c["phase"], int(c["iteration"])
        self.online_env_steps = int(c["online_env_steps"])
        self.iter_collected, self.iter_updates = bool(c["iter_collected"]), int(c["iter_updates"])
        self.wall_time = float(c["wall_time"])
        torch.set_rng_state(s["rng"]["torch"].cpu())
        if s["rng"]["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        set_numpy_rng_state(self.rng, s["rng"]["numpy"])
        self.collect_env.unwrapped.np_random.bit_generator.state = json.loads(s["rng"]["collect_env"])
        self.metrics.rows = json.loads(s["metrics"])
        self.metrics.write_csv()
        self.meter.sums, self.meter.counts = json.loads(s["meter"])
        self.pretrained_from = s.get("pretrained_from") or None  # absent before it existed
        evals = [r for r in self.metrics.rows if r["eval_return_mean"] != ""]
        if evals:
            self.last_eval = (evals[-1]["eval_return_mean"], evals[-1]["eval_return_std"])
            self.best_eval = max(r["eval_return_mean"] for r in evals)

    def meta(self, **changes) -> ActorMeta:
        cfg, a = self.cfg, self.learner.actor
        return ActorMeta(
            env_id=cfg.env_id, algo=cfg.algo, seed=cfg.seed,
            model_name=f"{cfg.algo}-{cfg.env_id.replace('/', '-')}",
            context_len=cfg.model.context_len, eval_context_len=cfg.model.eval_context_len,
            eval_target_return=cfg.eval.target_return,
            online_target_return=cfg.online.target_return,
            default_target_return=cfg.eval.target_return,
            reward_scale=cfg.data.reward_scale, reward_offset=cfg.data.reward_offset,
            reward_divisor=cfg.data.reward_divisor, max_episode_steps=self.max_episode_steps,
            obs_dim=a.model.spec.obs_dim, act_dim=a.model.spec.act_dim,
            action_low=(a.act_bias - a.act_scale).tolist(),
            action_high=(a.act_bias + a.act_scale).tolist(),
            stochastic=cfg.algorithm.stochastic, timestep_embedding=cfg.model.timestep_embedding,
            online_env_steps=self.online_env_steps, actor_updates=self.learner.actor_updates,
            vidt_version=vidt.__version__, **changes)

    def checkpoint(self, *also: str) -> None:
        """checkpoint.pt and actor.pt, and the same state under each name in `also`."""
        self.wall_time += self._elapsed()
        self._t0 = time.perf_counter()
        state = self._state()
        for name, obj in ((CHECKPOINT, state), (ACTOR, state["actor_file"]),
                          *((n, state) for n in also)):
            self._save(name, obj)

    def _save(self, name: str, obj: dict) -> None:
        try:
            atomic_save(obj, self.run_dir / name)
        except StorageError as e:
            raise StorageError(
                f"{e}. The previous {name} is intact; free space or fix permissions, "
                f"then continue with `vidt train --out {self.run_dir} --resume`") from None

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> tuple[float, float]:
        eps = play(self.learner.actor, self.eval_envs, self.cfg, self.cfg.eval.target_return,
                   self.device, [self.cfg.eval.seed + i for i in range(len(self.eval_envs))],
                   explore=False, rng=None, max_steps=self.step_cap)
        rets = np.array([e.episode_return for e in eps])
        return float(rets.mean()), float(rets.std())

    def _conditioning(self, phase: str) -> None:
        """With eval.target_returns: the actor asked for each of them on the evaluation's
        episodes (the same seeds), one row per target, written beside the other phase's rows.
        A resume that repeats this phase writes the same rows again. Acting changes nothing
        the training uses: the evaluation envs are reset with their fixed seeds each time."""
        targets = self.cfg.eval.target_returns
        if not targets:
            return
        path = self.run_dir / CONDITIONING
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["phase"] != phase]
        data = np.array([e.episode_return for e in self.offline])
        for target in targets:
            eps = play(self.learner.actor, self.eval_envs, self.cfg, target, self.device,
                       [self.cfg.eval.seed + i for i in range(len(self.eval_envs))],
                       explore=False, rng=None, max_steps=self.step_cap)
            rets = np.array([e.episode_return for e in eps])
            rows.append({"phase": phase, "target_return": target,
                         "return_mean": float(rets.mean()), "return_std": float(rets.std()),
                         "episodes": len(rets), "data_return_mean": float(data.mean()),
                         "data_return_max": float(data.max())})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CONDITIONING_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(buf.getvalue(), path)

    def _row(self, mean: float, std: float) -> None:
        score = normalized_score(self.cfg.env_id, mean)
        losses = self.meter.means()
        self.meter.reset()
        row = {"phase": self.phase, "iteration": self.iteration,
               "online_env_steps": self.online_env_steps,
               "actor_updates": self.learner.actor_updates,
               "critic_updates": self.learner.critic_updates,
               "wall_time_s": round(self.wall_time + self._elapsed(), 3),
               "eval_return_mean": mean, "eval_return_std": std,
               "eval_normalized_score": "" if score is None else score, **losses}
        self.metrics.add_row(row)
        self.last_eval = (mean, std)
        if self.best_eval is None or mean > self.best_eval:
            self.best_eval = mean
            self._save_best(mean)

    def _save_best(self, mean: float) -> None:
        """Evaluations of one actor swing (Hopper's 2x between iterations), so the actor of the
        best one is kept beside the last. Written when it is evaluated: a resumed run repeats
        that evaluation exactly and rewrites the same file."""
        meta = self.meta(actor_selection="best", selected_eval_return=mean)
        self._save(ACTOR_BEST, actor_payload(self.learner.actor, meta))

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    # ------------------------------------------------------------ loop

    def _on_sigint(self, signum, frame):
        if self._stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop = True

    def run(self) -> RunResult:
        from tqdm import tqdm

        cfg = self.cfg
        self._t0 = time.perf_counter()
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(total=cfg.online.pretrain_updates + cfg.online.online_steps, file=sys.stderr,
                   disable=not self.progress, dynamic_ncols=True, unit="")
        try:
            done = self._loop(bar)
        except BaseException:
            with contextlib.suppress(Exception):  # e.g. a full disk: keep the first error
                self.metrics.close()
            raise
        else:
            self.metrics.close()
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        return self._result(interrupted=not done)

    def _bar(self, bar, rate: float) -> None:
        ev = f"{self.last_eval[0]:.3g}" if self.last_eval else "-"
        bar.set_postfix_str(f"{self.phase} steps={self.online_env_steps} upd/s={rate:.1f} eval={ev}",
                            refresh=False)
        bar.n = min(self.learner.actor_updates, self.cfg.online.pretrain_updates) + self.online_env_steps
        bar.refresh()

    def _interrupt(self) -> bool:
        """At a safe point: on Ctrl-C, save everything and report that we stop."""
        if self._stop:
            self.checkpoint()
            log.info("interrupted: checkpoint written to %s", self.run_dir / CHECKPOINT)
        return self._stop

    def _loop(self, bar) -> bool:
        cfg, L = self.cfg, self.learner
        o = cfg.online
        chunk = o.updates_per_iter
        rl_pre = cfg.loss.rl_from_start
        # 1. offline pretraining, in chunks of one iteration's worth of updates.
        while self.phase == "pretrain" and L.actor_updates < o.pretrain_updates:
            t = time.perf_counter()
            n = min(chunk - L.actor_updates % chunk, o.pretrain_updates - L.actor_updates)
            for _ in range(n):
                self.meter.add(L.update(self.pretrain_sampler, self.rng, rl=rl_pre))
                if self._interrupt():
                    return False
            self._bar(bar, n / (time.perf_counter() - t))
            if (L.actor_updates // chunk) % o.checkpoint_every == 0:
                self.checkpoint()
        # 2. the online start, from a state kept as pretrained.pt: a run that differs from
        # this one only online (its RL-off control) can start there instead of pretraining.
        if self.phase == "pretrain":
            self.checkpoint(PRETRAINED)
            self._row(*self.evaluate())
            self._conditioning("pretrained")
            L.sync_targets()
            self.buffer.seed_with(self.offline)
            self.phase = "online"
            self.checkpoint()
        # 3. online iterations.
        while not online_done(self.online_env_steps, self.iter_collected, o.online_steps):
            if not self.iter_collected:
                steps = 0
                while steps < max(1, o.min_steps_per_iter):
                    ep = play(L.actor, [self.collect_env], cfg, o.target_return, self.device, [None],
                              explore=True, rng=self.rng, max_steps=self.step_cap)[0]
                    self.buffer.add(learning_rewards(ep, cfg))
                    steps += len(ep)
                self.online_env_steps += steps
                self.iter_collected = True
                if self._interrupt():
                    return False
            sampler = self.buffer.sampler(cfg.model.context_len, cfg.data.reward_scale)
            t = time.perf_counter()
            n0 = self.iter_updates
            while self.iter_updates < o.updates_per_iter:
                self.meter.add(L.update(sampler, self.rng, rl=True))
                self.iter_updates += 1
                if self._interrupt():
                    return False
            rate = (self.iter_updates - n0) / max(time.perf_counter() - t, 1e-9)
            self.iteration += 1
            self.iter_collected, self.iter_updates = False, 0
            last = self.online_env_steps >= o.online_steps
            if self.iteration % cfg.eval.every == 0 or last:
                self._row(*self.evaluate())
            if last:
                self._conditioning("final")
            self._bar(bar, rate)
            if self.iteration % o.checkpoint_every == 0 or last:
                self.checkpoint()
        return True

    def _result(self, interrupted: bool) -> RunResult:
        evals = [r for r in self.metrics.rows if r["eval_return_mean"] != ""]
        last = evals[-1] if evals else None
        score = last["eval_normalized_score"] if last else None
        return RunResult(
            run_dir=self.run_dir, config=self.cfg, online_env_steps=self.online_env_steps,
            actor_updates=self.learner.actor_updates,
            wall_time_s=self.wall_time + (time.perf_counter() - self._t0),
            final_eval_return_mean=last["eval_return_mean"] if last else None,
            final_eval_return_std=last["eval_return_std"] if last else None,
            final_normalized_score=None if score in ("", None) else float(score),
            metrics=list(self.metrics.rows), interrupted=interrupted,
            pretrained_from=self.pretrained_from)

    def _close_envs(self) -> None:
        for env in [self.collect_env, *self.eval_envs]:
            env.close()

    def close(self) -> None:
        self._close_envs()
        self.lock.release()


RESUMABLE_CHANGES = ("online.online_steps", "device", "threads")


def online_done(online_env_steps: int, iter_collected: bool, online_steps: int) -> bool:
    """Whether the online phase is over: its budget spent and no iteration pending whose
    episodes were collected before a stop (its updates and evaluation are still to come, even
    when that collection spent the budget)."""
    return online_env_steps >= online_steps and not iter_collected


def differing_fields(a: dict, b: dict, free: tuple[str, ...]) -> list[str]:
    """The keys of flattened config `a` whose value in `b` differs, but for those in `free`."""
    return [k for k in a if a[k] != b.get(k) and k not in free]

# What only the online phase reads (unless the RL term is on from the start): two runs whose
# configs differ in nothing else pretrain to the same state, bit for bit on one machine.
ONLINE_ONLY = ("algo", "loss.supervised_coef", "loss.rl_coef", "loss.anchor_coef")


def pretraining_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The settings in which a and b pretrain differently (empty: one can start from the
    other's pretrained.pt). Their algorithms may differ when pretraining runs them alike."""
    x, y = flatten_dict(a.to_dict()), flatten_dict(b.to_dict())
    free = RESUMABLE_CHANGES + (() if x["loss.rl_from_start"] or y["loss.rl_from_start"] else ONLINE_ONLY)
    diff = [f"{k}: {x[k]!r} vs {y.get(k)!r}" for k in differing_fields(x, y, free)]
    # Every field of the algorithm's row but its name, notes and online coefficients (which
    # the config carries, compared above), so that a field added later counts by default.
    online = dict(name="", notes="", supervised_coef=0.0, rl_coef=0.0, anchor_coef=0.0)
    if replace(a.algorithm, **online) != replace(b.algorithm, **online):
        diff.insert(0, f"algo: {a.algo!r} vs {b.algo!r} (pretrained differently)")
    return diff


def read_pretrained(run_dir: str | Path, cfg: TrainConfig, device) -> dict:
    """RUN_DIR/pretrained.pt, checked to be the pretraining `cfg` would do itself."""
    path = Path(run_dir) / PRETRAINED
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {PRETRAINED} (a run writes it when its pretraining "
                          f"ends)")
    state = load_file(path, map_location=device)
    diff = pretraining_differences(TrainConfig.from_dict(json.loads(state["config"])), cfg)
    if diff:
        raise ConfigError(f"{path} was pretrained with other settings: {', '.join(diff[:4])}; "
                          f"only {', '.join(ONLINE_ONLY)} may differ (none of them with "
                          f"loss.rl_from_start)")
    # Its RNG states and numerics are those of the device it ran on.
    there, here = ("CUDA" if state["rng"]["cuda"] else "CPU"), torch.device(device).type.upper()
    if there != here:
        raise ConfigError(f"{path} was pretrained on {there} and this run is on {here}: it would "
                          f"not continue as its own pretraining would; use --device")
    return {**state, "path": str(path.resolve())}


def check_resume_config(saved: TrainConfig, new: TrainConfig) -> None:
    """A resumed run keeps its config; only the budget, the device and the CPU threads may
    change (the last two are where it runs, not what it learns)."""
    a, b = flatten_dict(saved.to_dict()), flatten_dict(new.to_dict())
    diff = differing_fields(a, b, RESUMABLE_CHANGES)
    if diff:
        shown = ", ".join(f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"--resume continues a run with its own config; these differ: {shown}. "
                          f"Resume with the same settings, or start a new run.")


def train(config: TrainConfig, out: str | Path | None = None, *, resume: bool = False,
          force: bool = False, progress: bool = False,
          pretrained_from: str | Path | None = None) -> RunResult:
    """Pretrain offline, then finetune online; everything lands in `out` (the run dir).

    Default run dir: runs/<env>-<algo>-s<seed>. Returns the run's metrics and final eval.
    """
    if out is None:
        out = Path("runs") / f"{config.env_id.replace('/', '-')}-{config.algo}-s{config.seed}"
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        trainer = Trainer(config, out, resume=resume, force=force, progress=progress,
                          pretrained_from=pretrained_from)
        try:
            return trainer.run()
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
