"""Training configuration: frozen dataclasses, one per concern, resolved in one place.

Resolution order (later wins): the env family's defaults (vidt.envs.get_family), the preset
(tiny | small | paper), the algorithm's coefficients, a TOML file, then `key=value`
overrides (dotted keys: `model.d_model=64`). Unknown keys, presets and algorithms raise
ConfigError. The resolved config is plain data: `to_dict()` / `from_dict()` round-trip it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vidt.errors import ConfigError
from vidt.model.dt import ModelConfig

from .algos import DEFAULT_ALGORITHM, Algorithm, get_algorithm

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None

DEFAULT_PRESET = "small"  # the CPU benchmark size: what a run gets when no preset is named
DEVICES = ("auto", "cpu", "cuda")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelSection(ModelConfig):
    """The transformer's own config (vidt.model.ModelConfig: K, width, depth, heads, dropout,
    head, timestep embedding), which the learner hands to the model as it is, plus what the
    rest of training needs to know about the networks. `stochastic` is the algorithm's head,
    set by resolve() from the algorithm table."""

    eval_context_len: int = 5  # T_eval <= K: history used when acting (paper, MuJoCo)
    critic_hidden: int = 256  # TD3's 2 x 256 critic
    critic_layernorm: bool = False  # paper: on for Adroit/AntMaze/Maze2D only

    def __post_init__(self):
        _check(self.context_len >= 1, f"model.context_len must be >= 1, got {self.context_len}")
        _check(1 <= self.eval_context_len <= self.context_len,
               f"model.eval_context_len must be in [1, context_len={self.context_len}], "
               f"got {self.eval_context_len}")
        _check(self.d_model >= 1 and self.n_head >= 1 and self.n_layer >= 1,
               "model.d_model, n_head and n_layer must be >= 1")
        _check(self.d_model % self.n_head == 0,
               f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        super().__post_init__()


@dataclass(frozen=True)
class DataSection:
    reward_scale: float = 0.001  # RTG tokens = returns x this (locomotion returns are ~1e3)
    # Added to every env reward before it enters returns-to-go, the replay buffer and the
    # critic (offline and online); evaluation returns stay the env's own. AntMaze: -1.
    reward_offset: float = 0.0
    # Then divided by this (Adroit: 100, hammer 1000); target returns are in these units.
    reward_divisor: float = 1.0
    buffer_episodes: int = 1000  # replay capacity in whole episodes (ODT)
    batch_size: int = 256  # ODT/ViDT batch size

    def __post_init__(self):
        _check(self.reward_scale > 0, f"data.reward_scale must be > 0, got {self.reward_scale}")
        _check(math.isfinite(self.reward_offset),
               f"data.reward_offset must be finite, got {self.reward_offset}")
        _check(math.isfinite(self.reward_divisor) and self.reward_divisor > 0,
               f"data.reward_divisor must be > 0, got {self.reward_divisor}")
        _check(self.buffer_episodes >= 1, f"data.buffer_episodes must be >= 1, got {self.buffer_episodes}")
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class OptimSection:
    actor_lr: float = 1e-4  # ODT's LAMB learning rate
    weight_decay: float = 5e-4  # ODT's LAMB weight decay
    eps: float = 1e-8  # ODT's LAMB epsilon
    warmup_steps: int = 10000  # linear LR warmup over this many actor steps (ODT)
    grad_clip: float = 0.25  # actor gradient-norm clip (ODT)
    critic_lr: float = 1e-3  # TD3's value; the env family sets 2e-4 outside MuJoCo
    critic_weight_decay: float = 0.01  # the authors' AdamW without a weight_decay: PyTorch's 0.01
    temperature_lr: float = 1e-4  # ODT's Adam for the entropy temperature

    def __post_init__(self):
        for name in ("actor_lr", "critic_lr", "temperature_lr", "eps"):
            _check(getattr(self, name) > 0, f"optim.{name} must be > 0, got {getattr(self, name)}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.grad_clip > 0, f"optim.grad_clip must be > 0, got {self.grad_clip}")


@dataclass(frozen=True)
class LossSection:
    supervised_coef: float = 1.0  # weight of the DT loss (MSE or NLL) with the RL term on; 0 for td3
    rl_coef: float = 0.1  # alpha: weight of mean(-Q1) (paper's 0.1); 0 for odt
    # Weight of the DT loss while pretraining with the RL term off (no rl_from_start): the
    # authors pretrain every algorithm, TD3 included, with the supervised loss alone.
    pretrain_supervised_coef: float = 1.0
    # Weight of mean((a - a_ref)^2) online, a_ref from the actor frozen at the online start
    # (an algorithm row with anchor_coef); 0 for the others.
    anchor_coef: float = 0.0
    gamma: float = 0.99  # discount for the critic only (RTGs are undiscounted)
    tau: float = 0.005  # soft target update rate (TD3)
    policy_noise: float = 0.2  # target policy smoothing noise std, in [-1, 1] action units (TD3)
    noise_clip: float = 0.5  # clip of that noise (TD3)
    actor_update_interval: int = 2  # critic steps per actor step (TD3's delay; MuJoCo 2)
    rl_from_start: bool = False  # RL term during offline pretraining too (AntMaze)
    init_temperature: float = 0.1  # ODT's initial entropy temperature
    target_entropy: float | None = None  # None: -act_dim (ODT)

    def __post_init__(self):
        _check(min(self.supervised_coef, self.rl_coef, self.pretrain_supervised_coef,
                   self.anchor_coef) >= 0,
               "loss.supervised_coef, loss.rl_coef, loss.pretrain_supervised_coef and "
               "loss.anchor_coef must be >= 0")
        _check(0 <= self.gamma <= 1, f"loss.gamma must be in [0, 1], got {self.gamma}")
        _check(0 < self.tau <= 1, f"loss.tau must be in (0, 1], got {self.tau}")
        _check(self.actor_update_interval >= 1,
               f"loss.actor_update_interval must be >= 1, got {self.actor_update_interval}")
        _check(self.init_temperature > 0, "loss.init_temperature must be > 0")


@dataclass(frozen=True)
class OnlineSection:
    pretrain_updates: int = 5000  # offline actor updates before going online (paper, MuJoCo)
    online_steps: int = 500_000  # online env-step budget (paper)
    min_steps_per_iter: int = 0  # transitions collected per iteration; 0 = one episode
    updates_per_iter: int = 300  # actor updates per online iteration (ODT)
    target_return: float = 0.0  # RTG the exploration episodes are conditioned on (family)
    exploration_noise: float = 0.1  # Gaussian std on the deterministic head, [-1, 1] units (TD3)
    max_episode_steps: int = 0  # 0: the env's own time limit
    checkpoint_every: int = 1  # online iterations between checkpoints (and pretrain chunks)

    def __post_init__(self):
        for name in ("pretrain_updates", "online_steps", "min_steps_per_iter", "max_episode_steps"):
            _check(getattr(self, name) >= 0, f"online.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.updates_per_iter >= 1, f"online.updates_per_iter must be >= 1, got {self.updates_per_iter}")
        _check(self.exploration_noise >= 0, "online.exploration_noise must be >= 0")
        _check(self.checkpoint_every >= 1, "online.checkpoint_every must be >= 1")


@dataclass(frozen=True)
class EvalSection:
    episodes: int = 10  # evaluation episodes per evaluation
    every: int = 1  # online iterations between evaluations
    target_return: float = 0.0  # RTG evaluation is conditioned on (family)
    seed: int = 1_000_000  # eval env i is reset with seed + i: fixed, and apart from collection
    # Returns the actor is also asked for, with the same episodes, at the online start and at
    # the end: achieved against asked, in conditioning.csv (`vidt report` plots it). Empty: none.
    target_returns: tuple[float, ...] = ()

    def __post_init__(self):
        _check(self.episodes >= 1, f"eval.episodes must be >= 1, got {self.episodes}")
        _check(self.every >= 1, f"eval.every must be >= 1, got {self.every}")
        # A tuple however it came (a config.json holds a list), so that configs compare.
        object.__setattr__(self, "target_returns", tuple(map(float, self.target_returns)))
        _check(all(math.isfinite(t) for t in self.target_returns),
               f"eval.target_returns must be finite, got {self.target_returns}")


@dataclass(frozen=True)
class TrainConfig:
    """A run's whole configuration. Build it with `resolve(env_id, algo, preset, ...)`: the
    env family's settings, the preset and the algorithm decide most of it, so a TrainConfig
    made field by field would not be what that env runs, and is refused without its sections.
    The sections' own defaults are the paper's MuJoCo values, a reference for reading."""

    env_id: str = "vidt/OneState-v0"
    dataset: str | None = None  # None: the env's built-in data
    algo: str = DEFAULT_ALGORITHM
    preset: str = DEFAULT_PRESET
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    amp_bf16: bool = False  # bf16 autocast, CUDA or CPU (opt-in; equal within tolerance)
    # bf16 autocast for the TD target's no-grad forward alone (target actor and critic): its
    # error is far below the 0.2 smoothing noise added to the target action (opt-in).
    bf16_td_target: bool = False
    compile: bool = False  # torch.compile the transformer (opt-in)
    threads: int = 0  # torch CPU threads; 0 = torch's default. Tiny models run best on 1.
    model: ModelSection = None  # type: ignore[assignment]  (required: see the docstring)
    data: DataSection = None  # type: ignore[assignment]
    optim: OptimSection = None  # type: ignore[assignment]
    loss: LossSection = None  # type: ignore[assignment]
    online: OnlineSection = None  # type: ignore[assignment]
    eval: EvalSection = None  # type: ignore[assignment]

    def __post_init__(self):
        alg = get_algorithm(self.algo)  # refuses an unknown name with the list of known ones
        missing = [n for n in _SECTION_CLASSES if getattr(self, n) is None]
        _check(not missing, f"TrainConfig without its {', '.join(missing)} section(s): build "
                            f"one with vidt.train.resolve(env_id, algo, preset), which applies "
                            f"the env family's settings, the preset and the algorithm")
        _check(self.model.stochastic == alg.stochastic,
               f"model.stochastic is {self.algo}'s actor head ({alg.stochastic}); choose the "
               f"head by choosing the algorithm")
        _check(self.preset in PRESETS, f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        _check(self.device in DEVICES, f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _check(self.seed >= 0, f"seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")

    @property
    def algorithm(self) -> Algorithm:
        """The algorithm's entry in vidt.train.algos.ALGORITHMS (its head, critic, loss)."""
        return get_algorithm(self.algo)

    @property
    def stochastic(self) -> bool:
        """Whether the algorithm's actor head is the tanh-Gaussian one (the table's)."""
        return self.algorithm.stochastic

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        return _build(d)


_SECTION_CLASSES = {"model": ModelSection, "data": DataSection, "optim": OptimSection,
                    "loss": LossSection, "online": OnlineSection, "eval": EvalSection}


def _build(d: dict[str, Any]) -> TrainConfig:
    top = {k: v for k, v in d.items() if k not in _SECTION_CLASSES}
    model = dict(d.get("model", {}))
    if "stochastic" not in model:  # run configs written before the head was a model field
        model["stochastic"] = get_algorithm(top.get("algo", DEFAULT_ALGORITHM)).stochastic
    secs = {name: cls(**(model if name == "model" else d.get(name, {})))
            for name, cls in _SECTION_CLASSES.items()}
    return TrainConfig(**top, **secs)


# ---------------------------------------------------------------- defaults


def _paper(family) -> dict[str, Any]:
    """The paper's size (GPU)."""
    return {"model": {"d_model": 512, "n_layer": 4, "n_head": 4},
            "data": {"batch_size": 256}, "eval": {"episodes": 10}}


def _small(family) -> dict[str, Any]:
    """A CPU benchmark in minutes: the smallest model that still learns Pendulum and Hopper
    from random data within that budget (benchmarks/RESULTS.md has the runs); width 128 costs
    ~3x."""
    k = min(family.context_len, 5)
    return {"model": {"d_model": 64, "n_layer": 2, "n_head": 2, "context_len": k,
                      "eval_context_len": min(family.eval_context_len, k)},
            "data": {"batch_size": 128},
            "optim": {"warmup_steps": 1000},  # 10k warmup would outlast a CPU run
            "online": {"online_steps": 20_000}, "eval": {"episodes": 5}}


def _tiny(family) -> dict[str, Any]:
    """Seconds per run, for tests and smoke checks."""
    k = min(family.context_len, 3)
    return {"threads": 1,  # at this size extra threads only add synchronisation
            "model": {"d_model": 32, "n_layer": 1, "n_head": 2, "context_len": k,
                      "eval_context_len": min(family.eval_context_len, k), "critic_hidden": 64},
            "data": {"batch_size": 32},
            "optim": {"warmup_steps": 100},
            "online": {"pretrain_updates": min(family.pretrain_updates, 100),
                       "online_steps": 1000, "updates_per_iter": 20},
            "eval": {"episodes": 2}}


# The presets: each one's sizes, from the env family's row (its K and budget).
_PRESET_SIZES = {"tiny": _tiny, "small": _small, "paper": _paper}
PRESETS = tuple(_PRESET_SIZES)


def default_dict(env_id: str, algo: str = DEFAULT_ALGORITHM, preset: str = DEFAULT_PRESET,
                 dataset: str | None = None) -> dict[str, Any]:
    """The config as a nested dict before user overrides: family (and, where the family has a
    rule for it, the kind of dataset), preset, the family's settings no preset undoes, the
    algorithm, the family's alpha. Every per-env value comes from the env's registry row."""
    from vidt.data import is_random_policy_data
    from vidt.envs import get_family

    alg = get_algorithm(algo)
    _check(preset in PRESETS, f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    fam = get_family(env_id)
    d: dict[str, Any] = {"env_id": env_id, "algo": algo, "preset": preset,
                         **{name: {} for name in _SECTION_CLASSES}}
    d["model"].update(context_len=fam.context_len, eval_context_len=fam.eval_context_len,
                      critic_layernorm=fam.critic_layernorm, stochastic=alg.stochastic)
    d["data"].update(reward_scale=fam.reward_scale, reward_offset=fam.reward_offset,
                     reward_divisor=fam.reward_divisor, buffer_episodes=fam.buffer_episodes)
    d["optim"].update(critic_lr=fam.critic_lr, actor_lr=fam.actor_lr,
                      weight_decay=fam.weight_decay)
    d["loss"].update(gamma=fam.gamma, actor_update_interval=fam.actor_update_interval,
                     rl_from_start=fam.rl_from_start)
    min_steps = fam.min_steps_per_iter
    if fam.random_data_min_steps_per_iter is not None and is_random_policy_data(dataset):
        min_steps = fam.random_data_min_steps_per_iter  # MuJoCo: 1000 from random data
    d["online"].update(pretrain_updates=fam.pretrain_updates, min_steps_per_iter=min_steps,
                       target_return=fam.online_target_return)
    d["eval"].update(target_return=fam.eval_target_return)
    for sec, vals in _PRESET_SIZES[preset](fam).items():
        if isinstance(vals, dict):
            d[sec].update(vals)
        else:
            d[sec] = vals
    apply_overrides(d, fam.overrides)
    # The algorithm's loss mix (vidt.train.algos), then the family's alpha for an RL term.
    d["loss"].update(supervised_coef=alg.supervised_coef, rl_coef=alg.rl_coef,
                     pretrain_supervised_coef=alg.pretrain_supervised_coef,
                     anchor_coef=alg.anchor_coef)
    if fam.rl_coef is not None and alg.rl_coef > 0:
        d["loss"]["rl_coef"] = fam.rl_coef
    return d


# ---------------------------------------------------------------- overrides


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Turn a TOML value or a `--set` string into the field's type, or raise ConfigError."""
    if typing.get_origin(typ) is tuple:  # tuple[float, ...]: "1,2,3", "[1, 2, 3]", a list
        item = typing.get_args(typ)[0]
        if isinstance(value, str):
            value = [x for x in value.strip().strip("[]").split(",") if x.strip()]
        _check(isinstance(value, (list, tuple)), f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", x, item) for i, x in enumerate(value))
    args = typing.get_args(typ)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), typ) if args else typ
    if isinstance(value, str):
        s = value.strip()
        if optional and s.lower() in ("none", "null", ""):
            return None
        try:
            if base is bool:
                if s.lower() in ("true", "1", "yes", "on"):
                    return True
                if s.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if base is int:
                try:
                    return int(s.replace("_", ""))
                except ValueError:  # "1e4" is an integer too
                    f = float(s)
                    if not f.is_integer():
                        raise
                    return int(f)
            if base is float:
                return float(s)
        except ValueError:
            raise ConfigError(f"{key}: cannot read {value!r} as {base.__name__}") from None
        return s
    if value is None:
        _check(optional, f"{key}: None is not allowed")
        return None
    if base is bool:
        _check(isinstance(value, bool), f"{key}: expected true/false, got {value!r}")
        return value
    if base is int:
        _check(isinstance(value, int) and not isinstance(value, bool)
               or isinstance(value, float) and value.is_integer(),
               f"{key}: expected an integer, got {value!r}")
        return int(value)
    if base is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"{key}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        _check(isinstance(value, str), f"{key}: expected a string, got {value!r}")
    return value


def typed_value(key: str, value: Any) -> Any:
    """`value` as config key `key` holds it ("7" -> 7 for online.online_steps); ConfigError
    for an unknown key or a value of the wrong type."""
    if "." in key:
        sec, name = key.split(".", 1)
        types = _field_types(_SECTION_CLASSES[sec]) if sec in _SECTION_CLASSES else {}
    else:
        name, types = key, {k: v for k, v in _field_types(TrainConfig).items()
                            if k not in _SECTION_CLASSES}
    if name not in types:
        raise _unknown_key(key)
    return _coerce(key, value, types[name])


def _known_keys() -> list[str]:
    top = [f.name for f in fields(TrainConfig) if f.name not in _SECTION_CLASSES]
    return top + [f"{s}.{f.name}" for s, c in _SECTION_CLASSES.items() for f in fields(c)]


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply flat dotted overrides ({"model.d_model": "64"}) to a nested config dict."""
    top_types = _field_types(TrainConfig)
    for key, value in overrides.items():
        if "." in key:
            sec, name = key.split(".", 1)
            cls = _SECTION_CLASSES.get(sec)
            types = _field_types(cls) if cls else {}
            if name not in types:
                raise _unknown_key(key)
            d[sec][name] = _coerce(key, value, types[name])
        else:
            if key in _SECTION_CLASSES or key not in top_types:
                raise _unknown_key(key)
            d[key] = _coerce(key, value, top_types[key])
    return d


def _unknown_key(key: str) -> ConfigError:
    import difflib

    known = _known_keys()
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    section = key.split(".", 1)[0] + "."
    if not close:  # a right section with a wrong name: list that section's keys
        close = [k for k in known if k.startswith(section)][:12]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; `vidt train --env ENV --dry-run` "
                       f"prints every key with its value")


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 64}} -> {"model.d_model": 64}: the dotted keys of --set."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def flatten_toml(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A TOML document ([model] tables and top-level keys) as flat dotted overrides."""
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            if k not in _SECTION_CLASSES:
                raise ConfigError(f"{source}: unknown section [{k}]; sections: {', '.join(_SECTION_CLASSES)}")
            for name, val in v.items():
                if isinstance(val, dict):
                    raise ConfigError(f"{source}: nested table [{k}.{name}] is not a config key")
                flat[f"{k}.{name}"] = val
        else:
            flat[k] = v
    return flat


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if tomllib is None:
        raise ConfigError("--config needs Python 3.11+ (tomllib); use --set key=value instead")
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    return flatten_toml(data, str(p))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """RUN_DIR/config.json as written by the trainer, or a ConfigError saying what is wrong."""
    p = Path(run_dir) / "config.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: nothing to resume (no config.json); drop --resume") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ConfigError(f"{p} is damaged ({e}); start a new run or restore the file") from None
    if not isinstance(data, dict) or "env_id" not in data:
        raise ConfigError(f"{p} is not a vidt run config (no env_id); start a new run")
    return data


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`key=value` strings -> {key: value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _check_needs(env_id: str, given: dict[str, Any]) -> None:
    """An env outside the registry has no target returns or reward scale of its own (its row
    `needs` them): a run on made-up ones (0 and 1) learns something else than the user
    thinks, so they must be given."""
    from vidt.envs import get_family
    from vidt.envs.wrappers import check_env_id

    needs = get_family(env_id).needs
    if not needs:
        return
    check_env_id(env_id)  # a typo gets gymnasium's "did you mean", not this message
    missing = [k for k in needs if k not in given]
    if missing:
        raise ConfigError(
            f"{env_id} is not in vidt's registry (`vidt envs` lists it), so it has no target "
            f"returns or reward scale: give {', '.join(f'--set {k}=...' for k in missing)} "
            f"(the scale makes the returns-to-go about 1: 0.001 for returns in the thousands)")


def resolve(env_id: str, algo: str = DEFAULT_ALGORITHM, preset: str = DEFAULT_PRESET,
            config_file: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The fully resolved config: the one path from an env id to what a run uses. In order,
    later wins:

    1. the env family's settings (vidt.envs.get_family; with the dataset's kind where the
       family has a rule for it: MuJoCo from random data collects 1000 steps per iteration);
    2. the preset's sizes (tiny | small | paper), then the family's settings that a preset
       must not undo (its row's `overrides`: the one-state task's);
    3. the algorithm's coefficients (vidt.train.algos), and the family's alpha where its row
       has one;
    4. the TOML `config_file`;
    5. `overrides` (the CLI's flags and --set).

    A file or the overrides may also set env_id/algo/preset; those choose the defaults of 1-3.
    An env outside the registry needs its target returns and reward scale in 4 or 5.
    """
    file_over = read_toml(config_file) if config_file else {}
    overrides = dict(overrides or {})
    algo = overrides.get("algo", file_over.get("algo", algo))
    preset = overrides.get("preset", file_over.get("preset", preset))
    env_id = overrides.get("env_id", file_over.get("env_id", env_id))
    dataset = overrides.get("dataset", file_over.get("dataset"))
    _check_needs(env_id, {**file_over, **overrides})
    d = default_dict(env_id, algo, preset, dataset)
    d = apply_overrides(d, file_over)
    d = apply_overrides(d, overrides)
    try:
        return _build(d)
    except TypeError as e:  # a section got a key it does not have (only via from_dict)
        raise ConfigError(str(e)) from None
