"""Gymnasium episodes against a live policy server (what `vidt eval` runs).

One env steps through Act; a vector env of M sub-envs steps through ActBatch, one session
per sub-env, a new session whenever a sub-env's episode ends. Episode e (single env) and
sub-env i (vector env) are reset with seed + e / seed + i, so a run is reproducible.
Latency is measured around each Act / ActBatch call, as the client sees it.
`evaluate_targets` runs the same episodes once per target return (`vidt eval
--target-returns`), and `plot_targets` draws what was achieved against what was asked.
`compare_versions` runs the same seeds on two model versions and bounds the difference of
their mean returns with a paired bootstrap (`vidt eval --compare`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from vidt.envs import make_env, normalized_score
from vidt.errors import VidtError
from vidt.report.stats import stratified_bootstrap_ci

from .client import PolicyClient, ServerError

log = logging.getLogger(__name__)

MAX_STEPS_WITHOUT_LIMIT = 100_000  # an env without a time limit must still end somewhere
GIVE_UP_AFTER = 3  # failures in a row (no episode finished between them) that end a run


@dataclass(frozen=True)
class EvalResult:
    env_id: str
    returns: tuple[float, ...]  # per finished episode, in the order they finished
    lengths: tuple[int, ...]
    latency_ms: dict  # p50, p95, p99 of one Act (or ActBatch) call, milliseconds
    num_envs: int
    calls: int  # Act / ActBatch calls made
    failovers: int = 0  # sessions resumed on another server after theirs was lost
    versions: tuple[str, ...] = ()  # the model_version each finished episode ran on
    failed: tuple[str, ...] = ()  # why each episode that did not finish failed
    not_run: int = 0  # episodes never started: the server failed GIVE_UP_AFTER times in a row

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns)) if self.returns else math.nan

    def by_version(self) -> dict[str, dict]:
        """Episodes, mean and std of the return per model version: a run that spans an
        upgrade is two results, never one mean over two models."""
        out: dict[str, list[float]] = {}
        for v, r in zip(self.versions, self.returns):
            out.setdefault(v, []).append(r)
        return {v: {"episodes": len(rs), "return_mean": float(np.mean(rs)),
                    "return_std": float(np.std(rs))} for v, rs in out.items()}

    @property
    def normalized_score(self) -> float | None:
        return normalized_score(self.env_id, self.return_mean)

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths)) if self.lengths else math.nan

    def to_json(self) -> dict:
        """The object `vidt eval --json` prints (NaN for means over no episode: null)."""
        def num(x):
            return None if x is None or math.isnan(x) else x

        return {"episodes": len(self.returns), "return_mean": num(self.return_mean),
                "return_std": num(self.return_std),
                "normalized_score": num(self.normalized_score) if self.returns else None,
                "mean_length": num(self.mean_length), "latency_ms": {
                    k: num(v) for k, v in self.latency_ms.items()},
                "returns": list(self.returns), "lengths": list(self.lengths),
                "model_versions": list(self.versions), "by_version": self.by_version(),
                "failed": len(self.failed), "failures": list(self.failed),
                "not_run": self.not_run,
                "failovers": self.failovers}


def check_compatible(info, env_id: str, env) -> None:
    """VidtError unless the served policy fits `env` (its id, when the file names one, and
    its observation and action sizes)."""
    if info.env_id and info.env_id != env_id:
        raise VidtError(f"the server serves a policy for {info.env_id!r}, not {env_id!r}: "
                        f"run `vidt eval --env {info.env_id}` or serve a policy for {env_id}")
    obs_dim = int(np.prod(env.single_observation_space.shape if hasattr(
        env, "single_observation_space") else env.observation_space.shape))
    space = env.single_action_space if hasattr(env, "single_action_space") else env.action_space
    act_dim = int(np.prod(space.shape))
    if (info.observation_dim, info.action_dim) != (obs_dim, act_dim):
        raise VidtError(f"size mismatch: the server's policy takes {info.observation_dim} "
                        f"observation values and returns {info.action_dim} actions; {env_id} "
                        f"has {obs_dim} and {act_dim}")


def _percentiles(lat_s: list[float]) -> dict:
    p = np.percentile(np.asarray(lat_s) * 1e3, [50, 95, 99]) if lat_s else [math.nan] * 3
    return {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])}


def evaluate(client: PolicyClient, env_id: str, episodes: int, *,
             target_return: float | None = None, num_envs: int = 1, seed: int = 0,
             on_episode: Callable[[float, int], None] | None = None,
             record_dir: str | Path | None = None, record_episodes: int = 1,
             model_version: str = "") -> EvalResult:
    """Run `episodes` episodes of `env_id` against the server behind `client`.
    on_episode(return, length) is called as each episode finishes (progress bars).
    record_dir: the first `record_episodes` episodes are also written there as GIFs,
    rendered offscreen (single env only). model_version: run every episode on that version
    (a VidtError before any episode when the server cannot open a session on it)."""
    if episodes < 1 or num_envs < 1:
        raise VidtError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    if record_dir is not None and num_envs != 1:
        raise VidtError("recording needs a single env (num_envs 1)")
    info = client.info()
    if model_version:
        _check_version(client, model_version)
    failovers_before = client.failovers
    if num_envs == 1:
        run = partial(_run_single, record_dir=record_dir, record_episodes=record_episodes,
                      model_version=model_version)
    else:
        run = partial(_run_vector, num_envs=num_envs, model_version=model_version)
    out = _Episodes(on_episode or (lambda r, n: None))
    lat: list[float] = []
    try:
        lat = run(client, info, env_id, episodes, target_return, seed, out, lat)
    except ServerError as e:  # no session could be opened: keep what was measured so far
        out.fail(["opening a session"], e)
    return EvalResult(env_id, tuple(out.returns), tuple(out.lengths), _percentiles(lat),
                      num_envs, len(lat), client.failovers - failovers_before,
                      tuple(out.versions), tuple(out.failed),
                      max(0, episodes - len(out.returns) - len(out.failed)))


class _Episodes:
    """What became of each episode: finished (return, length, model version) or failed (why).
    A failed episode is counted and the run goes on."""

    def __init__(self, on_episode: Callable[[float, int], None]):
        self.on_episode = on_episode
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.versions: list[str] = []
        self.failed: list[str] = []
        # The seed each finished episode was reset with (None: an episode a vector env's
        # autoreset began, which no seed names).
        self.seeds: list[int | None] = []

    def finished(self, ret: float, length: int, version: str, seed: int | None = None) -> None:
        self.failures_in_a_row = 0
        self.returns.append(float(ret))
        self.lengths.append(int(length))
        self.versions.append(version)
        self.seeds.append(seed)
        self.on_episode(self.returns[-1], self.lengths[-1])

    def fail(self, episodes: list[str], e: ServerError) -> None:
        """The `episodes` (descriptions) failed together, of one error."""
        log.warning("%s failed: %s", ", ".join(episodes), e)
        self.failed += [f"{what}: {e}" for what in episodes]
        self.failures_in_a_row += 1

    failures_in_a_row = 0  # reset by each finished episode

    @property
    def server_gone(self) -> bool:
        """Several failures with no episode finished between them: the server (or every
        replica) is down, and the rest would only wait out the client's failover timeout."""
        return self.failures_in_a_row >= GIVE_UP_AFTER


def _run_single(client, info, env_id, episodes, target_return, seed, out: _Episodes,
                lat: list[float], record_dir=None, record_episodes=0,
                model_version="", env=None) -> list[float]:
    """env: one to reuse (the caller closes it); by default one made here and closed."""
    from vidt.envs.recording import GifRecorder, use_offscreen_gl

    if record_dir is not None:
        use_offscreen_gl()
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    own = env is None
    if own:
        env = make_env(env_id, **({"render_mode": "rgb_array"} if record_dir is not None
                                  else {}))
    try:
        check_compatible(info, env_id, env)
        limit = (env.spec.max_episode_steps if env.spec else None) or MAX_STEPS_WITHOUT_LIMIT
        for e in range(episodes):
            if out.server_gone:
                break
            obs, _ = env.reset(seed=seed + e)
            ret, n, reward = 0.0, 0, 0.0
            rec = None
            if record_dir is not None and e < record_episodes:
                rec = GifRecorder(env.metadata.get("render_fps"))
                rec.add(_render(env))
            try:
                with client.session(target_return, model_version) as s:
                    while n < limit:
                        t0 = time.perf_counter()
                        action = s.act(obs, reward)
                        lat.append(time.perf_counter() - t0)
                        obs, reward, terminated, truncated, _ = env.step(action)
                        ret, n = ret + float(reward), n + 1
                        if rec is not None:
                            rec.add(_render(env))
                        if terminated or truncated:
                            break
            except ServerError as err:
                out.fail([f"episode {e} (seed {seed + e}, step {n})"], err)
                continue
            if rec is not None:
                rec.save(Path(record_dir) / f"{env_id.replace('/', '-')}-seed{seed + e}.gif")
            out.finished(ret, n, s.model_version, seed + e)
        return lat
    finally:
        if own:
            env.close()


def _render(env):
    """One rgb frame, or a VidtError saying what offscreen rendering needs."""
    import gymnasium

    try:
        return env.render()
    except gymnasium.error.DependencyNotInstalled as e:  # e.g. pygame, for classic control
        raise VidtError(f"cannot render {env.spec.id if env.spec else 'the env'}: {e}") from None
    except Exception as e:  # MuJoCo's GL backends fail in several ways without their libraries
        raise VidtError(
            f"cannot render {env.spec.id if env.spec else 'the env'} offscreen ({type(e).__name__}: "
            f"{e}); MuJoCo needs EGL (Debian: apt-get install libegl1) or OSMesa "
            f"(libosmesa6 and MUJOCO_GL=osmesa)") from None


def _vector_env(env_id: str, num_envs: int):
    import gymnasium as gym

    # SAME_STEP: when a sub-env's episode ends, step() already returns the next episode's
    # first observation, which is exactly what the new session's step 0 needs.
    return gym.vector.SyncVectorEnv([partial(make_env, env_id)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def _run_vector(client, info, env_id, episodes, target_return, seed, out: _Episodes,
                lat: list[float], num_envs, model_version="", envs=None) -> list[float]:
    """envs: a vector env of num_envs to reuse (the caller closes it); by default one made
    here and closed."""
    M = num_envs
    own = envs is None
    if own:
        envs = _vector_env(env_id, M)
    try:
        check_compatible(info, env_id, envs)
        A = int(np.prod(envs.single_action_space.shape))
        limit = (envs.envs[0].spec.max_episode_steps if envs.envs[0].spec else None) \
            or MAX_STEPS_WITHOUT_LIMIT
        obs, _ = envs.reset(seed=seed)  # sub-env i gets seed + i
        seeds: list[int | None] = [seed + i for i in range(M)]  # None once autoreset
        active = [i < episodes for i in range(M)]
        started = sum(active)
        ep_ret, ep_len, rewards = np.zeros(M), np.zeros(M, dtype=int), np.zeros(M)
        with client.sessions(M, target_return, model_version) as batch:

            def next_episode(i: int) -> None:  # sub-env i's episode ended, one way or another
                nonlocal started
                ep_ret[i], ep_len[i], rewards[i], seeds[i] = 0.0, 0, 0.0, None
                if started < episodes:
                    batch.reset(i)
                    started += 1
                else:
                    active[i] = False
                    batch.sessions[i].__exit__(None)

            for i in range(M):
                if not active[i]:
                    batch.sessions[i].__exit__(None)
            while any(active) and not out.server_gone:
                idx = [i for i in range(M) if active[i]]
                t0 = time.perf_counter()
                try:
                    acts = batch.act(obs[idx], rewards[idx], idx)  # (m, A)
                except ServerError as err:  # every episode of the call fails; the run goes on
                    out.fail([f"sub-env {i}'s episode (step {ep_len[i]})" for i in idx], err)
                    for i in idx:
                        batch.sessions[i].__exit__(ServerError, err, None)  # closed, quietly
                        obs[i], _ = envs.envs[i].reset()
                        next_episode(i)
                    continue
                lat.append(time.perf_counter() - t0)
                full = np.zeros((M, A), dtype=np.float32)
                full[idx] = acts
                obs, rewards, terminated, truncated, _ = envs.step(full)
                for i in idx:
                    ep_ret[i] += rewards[i]
                    ep_len[i] += 1
                    if terminated[i] or truncated[i] or ep_len[i] >= limit:
                        out.finished(ep_ret[i], ep_len[i], batch.sessions[i].model_version,
                                     seeds[i])
                        next_episode(i)
        return lat
    finally:
        if own:
            envs.close()


# ---- achieved against asked: the same episodes at several target returns ---------------------

class _Runs:
    """Several evaluations' failures, summed (`results`: EvalResults)."""

    @property
    def failed(self) -> int:
        return sum(len(r.failed) for r in self.results)

    @property
    def not_run(self) -> int:
        return sum(r.not_run for r in self.results)


@dataclass(frozen=True)
class TargetCurve(_Runs):
    """What a return-conditioned policy achieves when asked for each of several target
    returns: one EvalResult per target, every target run on the same seeds."""

    env_id: str
    targets: tuple[float, ...]
    results: tuple[EvalResult, ...]  # one per target, in the same order
    # The training data's mean and best episode return, where the policy file records them.
    data_return_mean: float | None = None
    data_return_max: float | None = None

    def to_json(self) -> dict:
        """The object `vidt eval --target-returns --json` prints: one row per target, each
        the object a single-target `vidt eval --json` prints plus its target_return."""
        return {"env_id": self.env_id, "targets": list(self.targets),
                "rows": [{"target_return": t, **r.to_json()}
                         for t, r in zip(self.targets, self.results)],
                "data_return_mean": self.data_return_mean,
                "data_return_max": self.data_return_max,
                "failed": self.failed, "not_run": self.not_run}


def evaluate_targets(client: PolicyClient, env_id: str, targets, episodes: int, *,
                     num_envs: int = 1, seed: int = 0, model_version: str = "",
                     on_target: Callable[[float], None] | None = None,
                     on_episode: Callable[[float, int], None] | None = None,
                     data_return_mean: float | None = None,
                     data_return_max: float | None = None) -> TargetCurve:
    """`evaluate` once per target return in `targets`, each with the same `episodes` seeds
    (seed, seed + 1, ...), so the targets differ in what the policy is asked for alone.
    on_target(target) is called as each target's episodes begin. The server lost for good
    (GIVE_UP_AFTER failures in a row, counted across targets) ends the curve: the targets
    after it are reported as not run rather than each waiting out the same dead server."""
    targets = tuple(float(t) for t in targets)
    if not targets or not all(math.isfinite(t) for t in targets):
        raise VidtError(f"target returns must be one or more finite numbers, got {targets}")
    results: list[EvalResult] = []
    in_a_row = 0  # failures since the last target that finished an episode
    for t in targets:
        if in_a_row >= GIVE_UP_AFTER or (results and results[-1].not_run):
            results.append(EvalResult(env_id, (), (), _percentiles([]), num_envs, 0,
                                      not_run=episodes))
            continue
        if on_target is not None:
            on_target(t)
        res = evaluate(client, env_id, episodes, target_return=t, num_envs=num_envs,
                       seed=seed, on_episode=on_episode, model_version=model_version)
        in_a_row = 0 if res.returns else in_a_row + len(res.failed)
        results.append(res)
    return TargetCurve(env_id, targets, tuple(results), data_return_mean, data_return_max)


def plot_targets(curve: TargetCurve, path: str | Path, title: str | None = None) -> None:
    """A PNG of the achieved return (mean ± std over each target's episodes) against the
    asked one, with the line y = x a policy that hits every target would follow and, when
    the curve knows them, the training data's best and mean return as horizontal lines.
    Needs matplotlib (imported here only: evaluation itself never does)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vidt.files import atomic_write_bytes

    done = [(t, r) for t, r in zip(curve.targets, curve.results) if r.returns]
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = min(curve.targets), max(curve.targets)
    if done:
        lo = min(lo, *(r.return_mean - r.return_std for _, r in done))
        hi = max(hi, *(r.return_mean + r.return_std for _, r in done))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", ls="--", lw=1,
            label="achieved = asked")
    if done:
        ax.errorbar([t for t, _ in done], [r.return_mean for _, r in done],
                    yerr=[r.return_std for _, r in done], marker="o", ms=4, capsize=3,
                    color="C0", label="achieved (mean ± std)")
    for value, name, color in ((curve.data_return_max, "data: best", "C2"),
                               (curve.data_return_mean, "data: mean", "C1")):
        if value is not None:
            ax.axhline(value, color=color, lw=1, ls=":", label=f"{name} {value:.4g}")
    ax.set_xlabel("asked target return")
    ax.set_ylabel("achieved return")
    ax.set_title(title or f"{curve.env_id}: achieved vs asked return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(buf.getvalue(), path)


# ---- two model versions on the same seeds: a canary check before a promotion -----------------
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same returns always give the same interval
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison(_Runs):
    """The same seeds run on two model versions: each version's EvalResult, and the
    difference of their returns (versions[1] minus versions[0]) over the seeds that finished
    on both, with a paired bootstrap interval of its mean."""

    env_id: str
    versions: tuple[str, str]
    results: tuple[EvalResult, EvalResult]  # in the order of `versions`
    episodes: int  # seeds asked for: seed, seed + 1, ...
    seed: int
    pair_seeds: tuple[int, ...]  # the seeds that finished on both versions, ascending
    differences: tuple[float, ...]  # versions[1]'s return minus versions[0]'s, per pair
    # Percentile interval of the mean difference over resamples of the pairs; None for fewer
    # than 2 pairs, [d, d] when every pair differs by the same d.
    interval: tuple[float, float] | None
    resamples: int = BOOTSTRAP_RESAMPLES
    confidence: float = CONFIDENCE

    @property
    def pairs(self) -> int:
        return len(self.differences)

    @property
    def pairs_dropped(self) -> int:
        """Seeds left out of the difference: failed, or not run, on either version."""
        return self.episodes - self.pairs

    @property
    def difference(self) -> float:
        return float(np.mean(self.differences)) if self.differences else math.nan

    @property
    def constant(self) -> bool:
        """Two or more pairs, all differing by exactly the same amount (0 for the same
        version on a deterministic env and policy): the interval is that one value."""
        return self.pairs >= 2 and len(set(self.differences)) == 1

    @property
    def better(self) -> int | None:
        """0 or 1: the version whose mean return is higher where the interval excludes 0 (or
        every pair differs by the same non-zero amount); None otherwise."""
        if self.constant:
            return None if self.differences[0] == 0 else int(self.differences[0] > 0)
        if self.interval is None or self.interval[0] <= 0 <= self.interval[1]:
            return None
        return int(self.interval[0] > 0)


    def to_json(self) -> dict:
        """The object `vidt eval --compare --json` prints: each version's result as a
        single-version `vidt eval --json` prints it, then the difference."""
        diff = self.difference
        return {"env_id": self.env_id, "versions": list(self.versions),
                "episodes": self.episodes, "seed": self.seed,
                "results": [r.to_json() for r in self.results],
                "pairs": self.pairs, "pairs_dropped": self.pairs_dropped,
                "pair_seeds": list(self.pair_seeds), "differences": list(self.differences),
                "difference": None if math.isnan(diff) else diff,
                "interval": None if self.interval is None else list(self.interval),
                "confidence": self.confidence, "resamples": self.resamples,
                "constant": self.constant,
                "better": None if self.better is None else self.versions[self.better],
                "failed": self.failed, "not_run": self.not_run}


def paired_interval(differences, resamples: int = BOOTSTRAP_RESAMPLES,
                    confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `differences` (one per pair: the pairs,
    not the two sides, are resampled, so what the seeds share cancels), with a fixed RNG
    seed. None for fewer than 2 pairs; [d, d] when every pair differs by the same d (each
    resample's mean is d: the same version twice on a deterministic env and policy)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return None
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    return stratified_bootstrap_ci(d[:, None], np.mean, reps=resamples,
                                   alpha=1 - confidence, seed=BOOTSTRAP_SEED)


def _check_version(client: PolicyClient, version: str) -> None:
    """VidtError unless the server opens a session on `version` (loading it from its model
    repository if it must): before any episode, so a wrong version costs nothing."""
    try:
        with client.session(model_version=version) as s:
            got = s.model_version
    except ServerError as e:  # e.g. FAILED_PRECONDITION, naming the version
        raise VidtError(f"{e.details} ({e.code.name}); `vidt models list DIR` lists the "
                        f"versions of a model repository") from None
    if got != version:
        raise VidtError(f"asked for model_version {version!r}, the server ran {got!r}: it "
                        f"cannot pin a session to a version (upgrade it)")


def compare_versions(client: PolicyClient, env_id: str, versions, episodes: int, *,
                     target_return: float | None = None, num_envs: int = 1, seed: int = 0,
                     on_episode: Callable[[float, int], None] | None = None,
                     resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison:
    """Seeds seed .. seed + episodes - 1 on both `versions` (V1, V2), alternating: seed s on
    V1, then s on V2 (with num_envs > 1: a batch of num_envs seeds on V1, then the same
    batch on V2), so whatever changes during the run (the server's load, the fleet's
    pointer) falls on both alike. A seed whose episode failed (or did not run) on either
    version is left out of the difference. The same version twice is allowed: on a
    deterministic env and policy every difference is 0. The server lost for good
    (GIVE_UP_AFTER failures in a row, on either version) ends the run: the seeds after it
    are not run."""
    versions = tuple(str(v) for v in versions)
    if len(versions) != 2 or not all(versions):
        raise VidtError(f"compare needs two model versions, got {versions}")
    if episodes < 1 or num_envs < 1:
        raise VidtError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    info = client.info()
    for v in dict.fromkeys(versions):
        _check_version(client, v)
    outs = (_Episodes(on_episode or (lambda r, n: None)),
            _Episodes(on_episode or (lambda r, n: None)))
    lats: tuple[list[float], list[float]] = ([], [])
    failovers = [0, 0]
    in_a_row = 0  # failures since an episode last finished, on either version
    if num_envs == 1:
        env = make_env(env_id)
        run = partial(_run_single, env=env)
    else:
        env = _vector_env(env_id, num_envs)
        run = partial(_run_vector, num_envs=num_envs, envs=env)
    try:
        for start in range(seed, seed + episodes, num_envs):
            n = min(num_envs, seed + episodes - start)
            for side in (0, 1):
                if in_a_row >= GIVE_UP_AFTER:
                    break
                out = outs[side]
                out.failures_in_a_row = in_a_row
                before = client.failovers
                try:
                    run(client, info, env_id, n, target_return, start, out, lats[side],
                        model_version=versions[side])
                except ServerError as e:  # the batch's sessions could not be opened
                    out.fail([f"seed {s}'s episode (opening a session)"
                              for s in range(start, start + n)], e)
                failovers[side] += client.failovers - before
                in_a_row = out.failures_in_a_row
    finally:
        env.close()
    results = tuple(
        EvalResult(env_id, tuple(o.returns), tuple(o.lengths), _percentiles(lat), num_envs,
                   len(lat), f, tuple(o.versions), tuple(o.failed),
                   max(0, episodes - len(o.returns) - len(o.failed)))
        for o, lat, f in zip(outs, lats, failovers))
    first, second = ({s: r for s, r in zip(o.seeds, o.returns)} for o in outs)
    pair_seeds = tuple(sorted(s for s in first if s in second))
    differences = tuple(second[s] - first[s] for s in pair_seeds)
    return Comparison(env_id, versions, results, episodes, seed, pair_seeds, differences,
                      paired_interval(differences, resamples), resamples)
