"""Every loss of the three algorithms, in one place (docs/algorithm.md, "Specification").

    vidt: actor = supervised_coef * MSE(a_pred, a_data) + rl_coef * mean(-Q1(s, a_pred))
    odt:  actor = -(mean log-likelihood) - temperature.detach() * entropy;
          temperature loss = temperature * (entropy - target_entropy).detach()
    td3:  actor = rl_coef * mean(-Q1(s, a_pred))  (supervised_coef 0)
    critic (vidt, td3): sum over both heads of mean over real tokens of (Q_i(s, a) - y)^2,
          y = r + gamma * (1 - terminal) * min(Q1', Q2')(s', a'), a' = target actor's action
          for the next state (same padding mask) + clipped noise.

All means are over real (non-padding) tokens only: `masked_mean`. Inside the networks,
states are normalized and actions live in [-1, 1] (`Batch` holds them that way).

Each loss returns its metrics as detached tensors, left on the device: reading one to the
host waits for the device, so the learner reads all of an update's at once (`host_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidt.model.dt import Actor, DecisionTransformer, TwinCritic

from .buffer import Segments


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, K) over entries where mask (B, K) is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass(frozen=True)
class Batch:
    """Segments as network inputs: normalized states, [-1, 1] actions, scaled RTGs; padding
    slots are exactly zero in every input so they carry nothing."""

    states: torch.Tensor  # (B, K, S) normalized
    actions: torch.Tensor  # (B, K, A) in [-1, 1]
    rewards: torch.Tensor  # (B, K) raw
    next_states: torch.Tensor  # (B, K, S) normalized
    rtg: torch.Tensor  # (B, K+1) scaled
    terminals: torch.Tensor  # (B, K)
    mask: torch.Tensor  # (B, K)
    timesteps: torch.Tensor  # (B, K) long

    @staticmethod
    def from_segments(seg: Segments, actor: Actor, device: torch.device | str) -> Batch:
        t = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
        mask = t(seg.mask)
        m3 = mask.unsqueeze(-1)
        return Batch(
            states=actor.normalize_states(t(seg.observations)) * m3,
            actions=actor.to_unit(t(seg.actions)) * m3,
            rewards=t(seg.rewards),
            next_states=actor.normalize_states(t(seg.next_observations)) * m3,
            rtg=t(seg.returns_to_go) * torch.cat([mask, mask[:, -1:]], dim=1),
            terminals=t(seg.terminals),
            mask=mask,
            timesteps=t(seg.timesteps),
        )

    def target_inputs(self) -> tuple[torch.Tensor, ...]:
        """The target actor's inputs for the next steps: next states, actions shifted left
        by one (zero in the last slot: that step's action is the one being predicted), RTGs
        shifted by one, and the SAME padding mask."""
        next_actions = torch.cat([self.actions[:, 1:], torch.zeros_like(self.actions[:, :1])], 1)
        m = self.mask
        return (self.next_states, next_actions * m.unsqueeze(-1), self.rtg[:, 1:] * m, m,
                self.timesteps + 1)

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.states, self.actions, self.rtg[:, :-1], self.mask, self.timesteps


# ---------------------------------------------------------------- critic


@torch.no_grad()
def td_target(batch: Batch, target_model: DecisionTransformer, critic_target: TwinCritic,
              gamma: float, policy_noise: float, noise_clip: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminal) * min_i Q_i'(s', a' + clipped noise). (B, K)

    A time-limit end is not a terminal: its y bootstraps from the real next observation.
    """
    next_action = target_model(*batch.target_inputs())  # (B, K, A) in [-1, 1]
    noise = (torch.randn_like(next_action) * policy_noise).clamp(-noise_clip, noise_clip)
    next_action = (next_action + noise).clamp(-1.0, 1.0)
    q_next = critic_target(batch.next_states, next_action).min(dim=0).values  # (B, K)
    return batch.rewards + gamma * (1.0 - batch.terminals) * q_next


def critic_loss(batch: Batch, critic: TwinCritic, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    q = critic(batch.states, batch.actions)  # (2, B, K)
    per_head = ((q - y.unsqueeze(0)) ** 2 * batch.mask).sum(dim=(1, 2)) / batch.mask.sum().clamp(min=1)
    loss = per_head.sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": masked_mean(q[0].detach(), batch.mask)}


# ---------------------------------------------------------------- actors


def deterministic_actor_loss(batch: Batch, model: DecisionTransformer, critic: TwinCritic | None,
                             supervised_coef: float, rl_coef: float,
                             reference: DecisionTransformer | None = None,
                             anchor_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """vidt and td3: supervised MSE to the data's actions plus alpha * mean(-Q1) over real
    tokens. rl_coef = 0 (or no critic) gives the plain DT loss. With a `reference` model
    (an algorithm with anchor_coef, online): plus anchor_coef * MSE to its actions on the same windows."""
    pred = model(*batch.inputs)  # (B, K, A) in [-1, 1]
    mse = masked_mean(((pred - batch.actions) ** 2).mean(-1), batch.mask)
    loss = supervised_coef * mse
    info = {"supervised_loss": mse.detach()}
    if reference is not None and anchor_coef > 0:
        with torch.no_grad():
            ref = reference(*batch.inputs)  # (B, K, A)
        anchor = masked_mean(((pred - ref) ** 2).mean(-1), batch.mask)
        loss = loss + anchor_coef * anchor
        info["anchor_loss"] = anchor.detach()
    if rl_coef > 0 and critic is not None:
        q1 = critic.q1(batch.states, pred)  # (B, K)
        rl = -masked_mean(q1, batch.mask)
        loss = loss + rl_coef * rl
        info["rl_loss"] = rl.detach()
    info["actor_loss"] = loss.detach()
    return loss, info


def stochastic_actor_loss(batch: Batch, model: DecisionTransformer, log_temperature: torch.Tensor,
                          target_entropy: float, supervised_coef: float = 1.0
                          ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """odt: -(log-likelihood) - temperature.detach() * entropy, and the temperature's loss.
    Returns (actor loss, temperature loss, info)."""
    dist = model.distribution(*batch.inputs)
    log_lik = masked_mean(dist.log_prob(batch.actions), batch.mask)
    entropy = masked_mean(dist.entropy(), batch.mask)
    temperature = log_temperature.exp()
    loss = -supervised_coef * log_lik - temperature.detach() * entropy
    temp_loss = temperature * (entropy - target_entropy).detach()
    info = {"actor_loss": loss.detach(), "supervised_loss": -log_lik.detach(),
            "entropy": entropy.detach(), "temperature": temperature.detach()}
    return loss, temp_loss, info


# ---------------------------------------------------------------- the algorithms' actor losses
# Each has algos.ActorLoss's signature: (learner, batch, supervised_coef, rl_coef).


def deterministic_loss(learner, batch: Batch, supervised_coef: float, rl_coef: float
                       ) -> tuple[torch.Tensor, dict]:
    """vidt, td3 and the anchored vidt (they differ only in their coefficients). The anchor
    pulls only online, with the RL term (the learner has no reference before the online start)."""
    critic = learner.critic if rl_coef > 0 else None
    anchor = learner.cfg.loss.anchor_coef if rl_coef > 0 else 0.0
    return deterministic_actor_loss(batch, learner.train_model, critic, supervised_coef, rl_coef,
                                    learner.reference, anchor)


def odt_loss(learner, batch: Batch, supervised_coef: float, rl_coef: float
             ) -> tuple[torch.Tensor, dict]:
    """odt: the actor's loss plus the temperature's. Each term's gradient reaches only its
    own parameters (each detaches the other's), so one backward serves both optimisers."""
    loss, temp_loss, info = stochastic_actor_loss(batch, learner.train_model,
                                                  learner.log_temperature,
                                                  learner.target_entropy, supervised_coef)
    return loss + temp_loss, info
