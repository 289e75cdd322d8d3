"""The networks, their optimisers and one training update: everything a checkpoint must hold
about learning, and nothing about environments.

One `update()` = one actor step and, for the critic algorithms, `actor_update_interval`
critic steps before it (TD3's delayed policy update), then soft updates of the critic target
AND the actor target. The target actor is constant across those critic steps, so their TD
targets are computed together in one no-grad forward over all their batches: the same work
as one forward per step, in larger matrix products.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
import torch.nn as nn

from vidt.model.dt import Actor, DecisionTransformer, ModelSpec, TwinCritic

from .buffer import SegmentSampler
from .config import TrainConfig
from .losses import Batch, critic_loss, td_target
from .optim import Lamb, warmup_lambda


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, for every parameter."""
    with torch.no_grad():
        tp = [p for p in target.parameters()]
        sp = [p for p in source.parameters()]
        torch._foreach_lerp_(tp, sp, tau)


def host_metrics(info: dict) -> dict[str, float]:
    """An update's metrics as Python floats, its tensors read in one device-to-host copy: each
    read waits for the device, so reading them one by one would stop a CUDA update once per
    value. The values are exactly `.item()`'s: every float dtype widens to float64 exactly."""
    keys = [k for k, v in info.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in info.items() if k not in keys}
    if keys:
        values = torch.stack([info[k].double() for k in keys]).tolist()
        out.update(zip(keys, values))
    return {k: out[k] for k in info}  # the info's own order


def _split(batch: Batch, n: int) -> list[Batch]:
    fields = batch.__dataclass_fields__
    parts = {k: getattr(batch, k).chunk(n, dim=0) for k in fields}
    return [Batch(**{k: parts[k][i] for k in fields}) for i in range(n)]


class Learner:
    def __init__(self, cfg: TrainConfig, spec: ModelSpec, state_mean, state_std, act_low, act_high,
                 device: str | torch.device = "cpu"):
        self.cfg, self.spec, self.device = cfg, spec, torch.device(device)
        self.algo = algo = cfg.algorithm
        model = DecisionTransformer(spec, cfg.model)  # the config's section is the model's config
        self.actor = Actor(model, state_mean, state_std, cfg.data.reward_scale, act_low, act_high)
        self.actor.to(self.device)
        o = cfg.optim
        self.actor_opt = Lamb(self.actor.model.parameters(), lr=o.actor_lr, eps=o.eps,
                              weight_decay=o.weight_decay)
        self._lr = warmup_lambda(o.warmup_steps)
        self.train_model = torch.compile(self.actor.model) if cfg.compile else self.actor.model
        self.critic = self.critic_target = self.actor_target = None
        if algo.critic:
            self.critic = TwinCritic(spec, cfg.model.critic_hidden, cfg.model.critic_layernorm).to(self.device)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            # The target transformer runs without dropout: TD3's target policy is deterministic
            # apart from its explicit smoothing noise.
            self.actor_target = copy.deepcopy(self.actor.model).requires_grad_(False).eval()
            self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=o.critic_lr,
                                                weight_decay=o.critic_weight_decay)
        # The anchor's reference (loss.anchor_coef > 0): the actor as pretraining left it,
        # made at the online start (sync_targets) and kept in checkpoints. None before, so
        # that nothing pulls while pretraining, even with the RL term on from the start.
        self.reference = None
        self.log_temperature = None
        if algo.stochastic:
            self.log_temperature = torch.tensor(math.log(cfg.loss.init_temperature),
                                                device=self.device, requires_grad=True)
            self.temp_opt = torch.optim.Adam([self.log_temperature], lr=o.temperature_lr)
            te = cfg.loss.target_entropy
            self.target_entropy = float(-spec.act_dim if te is None else te)
        self.actor_updates = 0
        self.critic_updates = 0

    def _autocast(self, td_target: bool = False):
        # Matrix products in bf16, weights and optimiser state in fp32.
        if self.cfg.amp_bf16 or (td_target and self.cfg.bf16_td_target):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch(self, sampler: SegmentSampler, batch_size: int, rng: np.random.Generator) -> Batch:
        return Batch.from_segments(sampler.sample(batch_size, rng), self.actor, self.device)

    # ---------------------------------------------------------------- steps

    def td_targets(self, batch: Batch) -> torch.Tensor:
        """y for every token of `batch` from the target actor and target critic. (B, K)"""
        lc = self.cfg.loss
        with torch.no_grad(), self._autocast(td_target=True):
            return td_target(batch, self.actor_target, self.critic_target, lc.gamma,
                             lc.policy_noise, lc.noise_clip).float()

    def critic_step(self, batch: Batch, y: torch.Tensor) -> dict:
        """One critic step; its metrics as detached tensors (`host_metrics` reads them)."""
        with self._autocast():
            loss, info = critic_loss(batch, self.critic, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        self.critic_updates += 1
        return info

    def actor_step(self, batch: Batch, rl: bool) -> dict:
        """The algorithm's actor loss, one clipped LAMB step (and the temperature's, for a
        stochastic head). rl=False (pretraining without `rl_from_start`): the supervised term
        alone at `pretrain_supervised_coef`, whatever the online mix; this is how the paper's
        TD3 row gets a pretrained DT (authors' main.py:439-440). Its metrics are detached
        tensors, as the loss returned them, and the learning rate."""
        lc = self.cfg.loss
        sup, alpha = (lc.supervised_coef, lc.rl_coef) if rl else (lc.pretrain_supervised_coef, 0.0)
        if self.critic is None:
            alpha = 0.0
        for g in self.actor_opt.param_groups:
            g["lr"] = self.cfg.optim.actor_lr * self._lr(self.actor_updates)
        self.actor.model.train()
        if alpha > 0:  # the actor's gradient flows through Q1 but never into it
            self.critic.requires_grad_(False)
        try:
            with self._autocast():
                loss, info = self.algo.loss(self, batch, sup, alpha)
        finally:
            if alpha > 0:
                self.critic.requires_grad_(True)
        self.actor_opt.zero_grad(set_to_none=True)
        if self.log_temperature is not None:
            self.temp_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.model.parameters(), self.cfg.optim.grad_clip)
        self.actor_opt.step()
        if self.log_temperature is not None:
            self.temp_opt.step()
        self.actor_updates += 1
        info["lr"] = self.actor_opt.param_groups[0]["lr"]
        return info

    def soft_update_targets(self) -> None:
        soft_update(self.critic_target, self.critic, self.cfg.loss.tau)
        soft_update(self.actor_target, self.actor.model, self.cfg.loss.tau)

    def update(self, sampler: SegmentSampler, rng: np.random.Generator, rl: bool
               ) -> dict[str, float]:
        """One actor update. With a critic (TD3's delayed policy update): `interval` critic
        steps, each on its own batch, then one actor step on the last of them, then the soft
        updates of both targets. The target actor is fixed across those critic steps, so all
        their TD targets come from one no-grad forward over the batches sampled together.
        Returns the metrics of the last critic step and of the actor step, read to the host
        once."""
        bs = self.cfg.data.batch_size
        if self.critic is None:
            return host_metrics(self.actor_step(self.batch(sampler, bs, rng), rl))
        n = self.cfg.loss.actor_update_interval
        together = self.batch(sampler, bs * n, rng)  # (n B, K, ...)
        y = self.td_targets(together)  # (n B, K)
        batches, ys = _split(together, n), y.chunk(n, dim=0)
        for batch, y_batch in zip(batches, ys):
            info = self.critic_step(batch, y_batch)
        info.update(self.actor_step(batches[-1], rl))
        self.soft_update_targets()
        return host_metrics(info)

    def sync_targets(self) -> None:
        """Targets (and the anchor's reference) := current weights (at the start of the online
        phase)."""
        if self.critic is not None:
            self.critic_target.load_state_dict(self.critic.state_dict())
            self.actor_target.load_state_dict(self.actor.model.state_dict())
        if self.cfg.loss.anchor_coef > 0:
            self._make_reference().load_state_dict(self.actor.model.state_dict())

    def _make_reference(self):
        if self.reference is None:
            self.reference = copy.deepcopy(self.actor.model).requires_grad_(False).eval()
        return self.reference

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict:
        s = {"actor": self.actor.state_dict(), "actor_opt": self.actor_opt.state_dict(),
             "actor_updates": self.actor_updates, "critic_updates": self.critic_updates}
        if self.critic is not None:
            s.update(critic=self.critic.state_dict(), critic_target=self.critic_target.state_dict(),
                     actor_target=self.actor_target.state_dict(),
                     critic_opt=self.critic_opt.state_dict())
        if self.log_temperature is not None:
            s.update(log_temperature=self.log_temperature.detach().clone(),
                     temp_opt=self.temp_opt.state_dict())
        if self.reference is not None:
            s["reference"] = self.reference.state_dict()
        return s

    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.actor_updates, self.critic_updates = int(s["actor_updates"]), int(s["critic_updates"])
        if self.critic is not None:
            self.critic.load_state_dict(s["critic"])
            self.critic_target.load_state_dict(s["critic_target"])
            self.actor_target.load_state_dict(s["actor_target"])
            self.critic_opt.load_state_dict(s["critic_opt"])
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.copy_(s["log_temperature"])
            self.temp_opt.load_state_dict(s["temp_opt"])
        if "reference" in s and self.cfg.loss.anchor_coef > 0:  # none before the online start
            self._make_reference().load_state_dict(s["reference"])
