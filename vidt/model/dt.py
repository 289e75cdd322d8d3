"""The decision transformer and the twin critic: networks only, nothing about training.

Shapes use B = batch, K = context length, S = observation size, A = action size, d = width.
Inside the networks observations are normalized and actions live in [-1, 1]; `Actor` wraps
the transformer with the state normalization, reward scale and action bounds so that it takes
raw environment values (that is what rollouts use and what is exported to ONNX).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
STATE_TOKENS = slice(1, None, 3)  # positions of the s_t tokens among (R_t, s_t, a_t)
LAST_TOKEN = slice(-1, None)


@dataclass(frozen=True)
class ModelSpec:
    """Sizes that come from the environment, not from the user."""

    obs_dim: int
    act_dim: int


@dataclass(frozen=True)
class ModelConfig:
    context_len: int = 20  # K: the paper's MuJoCo setting
    d_model: int = 512  # paper width
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1
    stochastic: bool = False  # ODT's tanh-Gaussian head instead of ViDT's tanh head
    timestep_embedding: bool = False  # the paper uses none; a learned one is available
    max_timestep: int = 4096  # size of the timestep table when it is on

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {self.context_len}")


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) real-token mask -> (B, 1, T, T) bool, True where query i may attend key j.

    Causal, and never to a padding key. A padding query keeps its own diagonal so that its
    softmax row is never empty (its output is ignored; an empty row would make NaNs).
    Built from arange comparisons: a boolean torch.eye exports to an ONNX op that
    onnxruntime's CPU provider lacks.
    """
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T): key j <= query i
    diag = idx[None, :] == idx[:, None]
    keys = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
    return (causal[None, None] & keys) | diag[None, None]  # (B, 1, T, T)


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d); with rows, the outputs of those tokens only, (B, Tq, d), and
        allowed holds those tokens' rows (B, 1, Tq, T): keys and values of every token, queries
        of some. (One qkv product for all tokens even then: slicing the weight instead would
        copy it on every call in onnxruntime, which does not fold slices of initializers.)"""
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # each (B, T, d)
        if rows is not None:
            q = q[:, rows]  # (B, Tq, d)
        Tq = q.shape[1]
        q = q.view(B, Tq, self.n_head, d // self.n_head).transpose(1, 2)  # (B, h, Tq, d/h)
        k, v = (t.view(B, T, self.n_head, d // self.n_head).transpose(1, 2) for t in (k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_head)  # (B, h, Tq, T)
        # masked_fill rather than scaled_dot_product_attention: it exports to ONNX exactly.
        att = att.masked_fill(~allowed, -1e9).softmax(dim=-1)
        y = self.attn_drop(att) @ v  # (B, h, Tq, d/h)
        y = y.transpose(1, 2).reshape(B, Tq, d)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """GPT-2 pre-LayerNorm block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_head, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))

    def forward_rows(self, x: torch.Tensor, allowed: torch.Tensor, rows: slice) -> torch.Tensor:
        """forward(x, allowed)[:, rows] without computing the other tokens' outputs: every
        token's keys and values, but queries, projection and MLP for `rows` only."""
        x = x[:, rows] + self.attn(self.ln1(x), allowed[:, :, rows], rows)  # (B, Tq, d)
        return x + self.mlp(self.ln2(x))


class DecisionTransformer(nn.Module):
    """Tokens (R_t, s_t, a_t) per step; the action for step t is read from the s_t token."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        d = cfg.d_model
        self.embed_rtg = nn.Linear(1, d)
        self.embed_state = nn.Linear(spec.obs_dim, d)
        self.embed_action = nn.Linear(spec.act_dim, d)
        self.embed_time = nn.Embedding(cfg.max_timestep, d) if cfg.timestep_embedding else None
        self.embed_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_head, cfg.dropout) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        # Deterministic head: tanh(linear). Stochastic head: mean and log-std of a tanh-Gaussian.
        self.head = nn.Linear(d, spec.act_dim * (2 if cfg.stochastic else 1))

    def encode(
        self,
        states: torch.Tensor,  # (B, K, S) normalized
        actions: torch.Tensor,  # (B, K, A) in [-1, 1]; the current step's is a placeholder
        rtg: torch.Tensor,  # (B, K) scaled returns-to-go
        mask: torch.Tensor,  # (B, K) 1 = real step, 0 = left padding
        timesteps: torch.Tensor | None = None,  # (B, K) long, only with timestep_embedding
    ) -> torch.Tensor:
        x = self._tokens(states, actions, rtg, timesteps)  # (B, 3K, d)
        allowed = attention_mask(mask.repeat_interleave(3, dim=1))  # (B, 1, 3K, 3K)
        for block in self.blocks[:-1]:
            x = block(x, allowed)
        # Only the s_t tokens are read: the last block computes their outputs alone (~1/8 of
        # a forward's arithmetic at 4 layers), from every token's keys and values.
        x = self.blocks[-1].forward_rows(x, allowed, STATE_TOKENS)  # (B, K, d)
        return self.ln_f(x)  # (B, K, d): hidden state of each s_t token

    def encode_every_token(self, states, actions, rtg, mask, timesteps=None) -> torch.Tensor:
        """encode() the plain way, every token through every block: the reference the cut in
        encode() is tested and timed against. Same inputs and output."""
        B, K, _ = states.shape
        x = self._tokens(states, actions, rtg, timesteps)  # (B, 3K, d)
        allowed = attention_mask(mask.repeat_interleave(3, dim=1))
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x).reshape(B, K, 3, -1)[:, :, 1]  # (B, K, d)

    def encode_last(self, states, actions, rtg, mask, timesteps=None) -> torch.Tensor:
        """encode(...)[:, -1], the last s_t token's hidden state (B, d), for acting: the last
        a_t token comes after it (causal: never attended) and is left out, and the last
        block computes only this token's query and MLP. Same inputs as encode()."""
        x = self._tokens(states, actions, rtg, timesteps)[:, :-1]  # (B, 3K-1, d)
        allowed = attention_mask(mask.repeat_interleave(3, dim=1)[:, :-1])  # (B, 1, 3K-1, 3K-1)
        for block in self.blocks[:-1]:
            x = block(x, allowed)
        x = self.blocks[-1].forward_rows(x, allowed, LAST_TOKEN)  # (B, 1, d)
        return self.ln_f(x)[:, 0]  # (B, d)

    def _tokens(self, states, actions, rtg, timesteps) -> torch.Tensor:
        """Embedded (R_t, s_t, a_t) tokens interleaved per step: (B, 3K, d)."""
        B, K, _ = states.shape
        tok_r = self.embed_rtg(rtg.unsqueeze(-1))  # (B, K, d)
        tok_s = self.embed_state(states)  # (B, K, d)
        tok_a = self.embed_action(actions)  # (B, K, d)
        if self.embed_time is not None:
            t = self.embed_time(timesteps.clamp(0, self.cfg.max_timestep - 1))
            tok_r, tok_s, tok_a = tok_r + t, tok_s + t, tok_a + t
        x = torch.stack([tok_r, tok_s, tok_a], dim=2).reshape(B, 3 * K, -1)  # (B, 3K, d)
        return self.drop(self.embed_ln(x))

    def forward(self, states, actions, rtg, mask, timesteps=None) -> torch.Tensor:
        """Deterministic action per step in [-1, 1]: (B, K, A). For the stochastic head, the
        tanh of the mean (its mode), which is what evaluation and export use."""
        h = self.encode(states, actions, rtg, mask, timesteps)
        out = self.head(h)  # (B, K, A) or (B, K, 2A)
        if self.cfg.stochastic:
            out = out[..., : self.spec.act_dim]
        return torch.tanh(out)

    def act_last(self, states, actions, rtg, mask, timesteps=None) -> torch.Tensor:
        """forward(...)[:, -1], the current step's action (B, A) in [-1, 1], at a fraction of
        the cost: see encode_last."""
        out = self.head(self.encode_last(states, actions, rtg, mask, timesteps))  # (B, A|2A)
        if self.cfg.stochastic:
            out = out[..., : self.spec.act_dim]
        return torch.tanh(out)

    def distribution(self, states, actions, rtg, mask, timesteps=None) -> TanhNormal:
        """The stochastic head's tanh-Gaussian over actions per step (ODT)."""
        assert self.cfg.stochastic, "distribution() needs the stochastic head"
        h = self.encode(states, actions, rtg, mask, timesteps)
        mean, log_std = self.head(h).chunk(2, dim=-1)  # (B, K, A) each
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return TanhNormal(mean, log_std.exp())


class TanhNormal:
    """tanh(N(mean, std)) with log-probabilities of squashed values (ODT's action head)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.base = torch.distributions.Normal(mean, std)

    def log_prob(self, action: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Sum over action dims of log p(action); action in (-1, 1). (B, K)"""
        a = action.clamp(-1 + eps, 1 - eps)
        pre = torch.atanh(a)
        # log|d tanh(x)/dx| = 2 (log 2 - x - softplus(-2x)), the numerically stable form
        log_det = 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))
        return (self.base.log_prob(pre) - log_det).sum(-1)

    def rsample(self) -> torch.Tensor:
        return torch.tanh(self.base.rsample())

    def entropy(self, n: int = 1) -> torch.Tensor:
        """Monte-Carlo entropy estimate from n reparameterised samples. (B, K)"""
        x = self.base.rsample((n,))  # (n, B, K, A) pre-tanh samples
        log_det = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        return -(self.base.log_prob(x) - log_det).sum(-1).mean(0)

    @property
    def mode(self) -> torch.Tensor:
        return torch.tanh(self.base.mean)


class EnsembleLinear(nn.Module):
    """n independent linear layers applied in one batched matmul: (n, N, i) -> (n, N, o)."""

    def __init__(self, n: int, i: int, o: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, i, o))
        self.bias = nn.Parameter(torch.empty(n, 1, o))
        bound = 1.0 / math.sqrt(i)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    """Two independent Q MLPs (2 x hidden, ReLU) on [normalized state, action], per token,
    evaluated together in one batched pass."""

    def __init__(self, spec: ModelSpec, hidden: int = 256, layernorm: bool = False, n: int = 2):
        super().__init__()
        self.n, self.layernorm = n, layernorm
        self.l1 = EnsembleLinear(n, spec.obs_dim + spec.act_dim, hidden)
        self.l2 = EnsembleLinear(n, hidden, hidden)
        self.l3 = EnsembleLinear(n, hidden, 1)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        # Parameter-free LayerNorm (paper: on for Adroit/AntMaze/Maze2D).
        return F.relu(F.layer_norm(x, x.shape[-1:]) if self.layernorm else x)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """states (..., S), actions (..., A) -> Q values (n, ...)."""
        lead = states.shape[:-1]
        x = torch.cat([states, actions], dim=-1).reshape(1, -1, states.shape[-1] + actions.shape[-1])
        x = x.expand(self.n, -1, -1)  # (n, N, S+A)
        x = self._act(self.l1(x))
        x = self._act(self.l2(x))
        return self.l3(x).reshape(self.n, *lead)  # (n, ...)

    def q1(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The first head only (the actor's RL term needs no Q2): (...)."""
        lead = states.shape[:-1]
        x = torch.cat([states, actions], dim=-1).reshape(-1, states.shape[-1] + actions.shape[-1])
        x = self._act(torch.addmm(self.l1.bias[0], x, self.l1.weight[0]))  # (N, hidden)
        x = self._act(torch.addmm(self.l2.bias[0], x, self.l2.weight[0]))
        return torch.addmm(self.l3.bias[0], x, self.l3.weight[0]).reshape(lead)


class Actor(nn.Module):
    """The transformer with its normalization and bounds: raw observations and returns in,
    the current step's action in the env's bounds out. Rollouts use it and it is exported.

    Buffers (saved with the weights, exported into the graph): state mean and std, the reward
    scale, and the action scale and bias that map [-1, 1] onto [low, high].
    """

    def __init__(self, model: DecisionTransformer, state_mean, state_std, reward_scale: float,
                 act_low, act_high):
        super().__init__()
        self.model = model
        f32 = dict(dtype=torch.float32)
        self.register_buffer("state_mean", torch.as_tensor(state_mean, **f32).reshape(-1))
        self.register_buffer("state_std", torch.as_tensor(state_std, **f32).reshape(-1))
        self.register_buffer("reward_scale", torch.tensor(float(reward_scale), **f32))
        low = torch.as_tensor(act_low, **f32).reshape(-1)
        high = torch.as_tensor(act_high, **f32).reshape(-1)
        self.register_buffer("act_scale", (high - low) / 2)
        self.register_buffer("act_bias", (high + low) / 2)

    def normalize_states(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.state_mean) / self.state_std

    def to_unit(self, action: torch.Tensor) -> torch.Tensor:
        """Env-bounded action -> [-1, 1]."""
        return ((action - self.act_bias) / self.act_scale).clamp(-1, 1)

    def from_unit(self, action: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> env bounds."""
        return action * self.act_scale + self.act_bias

    def forward(
        self,
        observations: torch.Tensor,  # (B, K, S) raw
        actions: torch.Tensor,  # (B, K, A) raw, env bounds; the last step's is ignored
        returns_to_go: torch.Tensor,  # (B, K) raw returns
        mask: torch.Tensor,  # (B, K) 1 = real step, 0 = left padding
        timesteps: torch.Tensor | None = None,  # (B, K) long, only with timestep_embedding
    ) -> torch.Tensor:
        """Action for the last step of each window, within the action bounds: (B, A)."""
        s, a, r = self.network_inputs(observations, actions, returns_to_go, mask)
        return self.from_unit(self.model.act_last(s, a, r, mask, timesteps))  # (B, A)

    def network_inputs(self, observations, actions, returns_to_go, mask):
        """Raw values -> the transformer's inputs; padding slots become exactly zero."""
        s = self.normalize_states(observations) * mask.unsqueeze(-1)  # (B, K, S)
        a = self.to_unit(actions) * mask.unsqueeze(-1)  # (B, K, A)
        r = returns_to_go * self.reward_scale * mask  # (B, K)
        return s, a, r

    def sample(self, observations, actions, returns_to_go, mask, timesteps=None) -> torch.Tensor:
        """A sampled action for the last step (stochastic head: ODT's exploration). (B, A)"""
        s, a, r = self.network_inputs(observations, actions, returns_to_go, mask)
        dist = self.model.distribution(s, a, r, mask, timesteps)
        return self.from_unit(dist.rsample()[:, -1])  # (B, A)
