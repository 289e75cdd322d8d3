"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning") and the warmup
schedule ODT uses. torch has no LAMB; this is the paper's algorithm in a few lines.

Per parameter tensor: an Adam direction (bias-corrected moments) plus decoupled weight
decay, rescaled by the trust ratio ||w|| / ||update|| so that every layer moves by about
lr x its own norm. A tensor whose norm or update norm is zero (e.g. a zero-initialised
bias) takes the plain Adam step (ratio 1).
"""

from __future__ import annotations

import math

import torch


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        if lr <= 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid Lamb settings: lr={lr}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            b1, b2 = group["betas"]
            for p in params:
                if not self.state[p]:
                    self.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            for s in states:
                s["step"] += 1
            t = states[0]["step"].item()  # all tensors of a group step together
            # Adam moments, then the bias-corrected direction m_hat / (sqrt(v_hat) + eps).
            torch._foreach_lerp_(m, grads, 1 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1 - b2**t))
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(m, denom)
            torch._foreach_div_(update, 1 - b1**t)
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            # Layer-wise trust ratio ||w|| / ||update|| (1 where either norm is 0).
            w_norm = torch.stack(torch._foreach_norm(params))
            u_norm = torch.stack(torch._foreach_norm(update))
            trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            torch._foreach_mul_(update, list((trust * -group["lr"]).unbind()))
            torch._foreach_add_(params, update)
        return loss


def warmup_lambda(warmup_steps: int):
    """Linear warmup from lr/warmup to lr over `warmup_steps` optimiser steps, then flat."""
    def f(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps))
    return f
