"""td3bc: TD3+BC on Minari MuJoCo medium data, as the paper ran it (Appendix F, Table 4).

One update, as the authors' script (SPEC section 4; rewards unscaled):
  1. critics, every update: target action clamp(actor_target(s') + clip(policy_noise * N(0, 1),
     +-noise_clip), +-1), target r + discount * (1 - done) * min(Q1_target, Q2_target)(s', a');
     loss MSE(Q1) + MSE(Q2), one Adam for both;
  2. every `policy_delay`-th update (the counter is incremented before the test, so updates 2, 4,
     ...: 150k actor steps in 300k): the actor loss -lambda * mean Q1(s, pi(s)) + MSE(pi(s), a),
     lambda = alpha / (mean |Q1(s, pi(s))| (detached) + 1e-6); then, and only then, the actor and
     both critic targets move by Polyak tau.
The actor is deterministic, tanh on its MLP's output; evaluation acts with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..registry import register_experiment
from .common import activation_factory
from .offline_rl import (
    OFFLINE_METRICS,
    SMOKE,
    Batch,
    Critic,
    OfflineRLConfig,
    adam,
    frozen_copy,
    mlp,
    optimize,
    polyak,
    train,
)


@dataclass
class TD3BCConfig(OfflineRLConfig):
    alpha: float = 2.5  # behaviour-cloning balance: lambda = alpha / mean |Q|
    policy_noise: float = 0.2  # std of the target-policy smoothing noise
    noise_clip: float = 0.5  # the smoothing noise is clipped to +-this
    policy_delay: int = 2  # the actor and the targets update every this many critic updates

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha > 0, "alpha", "a number > 0", self.alpha)
        check(self.policy_noise >= 0, "policy_noise", "a number >= 0", self.policy_noise)
        check(self.noise_clip >= 0, "noise_clip", "a number >= 0", self.noise_clip)
        check(self.policy_delay >= 1, "policy_delay", "an integer >= 1", self.policy_delay)


def td3bc_actor_loss(q: torch.Tensor, policy_actions: torch.Tensor, actions: torch.Tensor, alpha: float) -> torch.Tensor:
    """-lambda * mean(q) + MSE(pi(s), a), lambda = alpha / (mean |q| + 1e-6) with q detached in lambda."""
    lam = alpha / (q.abs().mean().detach() + 1e-6)
    return -lam * q.mean() + F.mse_loss(policy_actions, actions)


class Actor(nn.Module):
    """pi(s) = tanh(MLP(s)), in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, activation, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, activation, hidden)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(observations))


class TD3BC:
    scales_rewards = False

    def __init__(self, config: TD3BCConfig, obs_dim: int, act_dim: int, device: torch.device, generator: torch.Generator):
        act = activation_factory(config.activation, config.rational)
        self.actor = Actor(obs_dim, act_dim, act, config.hidden).to(device)
        self.q1 = Critic(obs_dim, act_dim, act, config.hidden).to(device)
        self.q2 = Critic(obs_dim, act_dim, act, config.hidden).to(device)
        self.actor_target, self.q1_target, self.q2_target = frozen_copy(self.actor), frozen_copy(self.q1), frozen_copy(self.q2)
        self.networks = nn.ModuleDict({"q1": self.q1, "q2": self.q2, "actor": self.actor})

        self.q_optimizer, self.actor_optimizer = adam(config, self.q1, self.q2), adam(config, self.actor)
        self.parts = {
            "networks": self.networks, "actor_target": self.actor_target, "q1_target": self.q1_target,
            "q2_target": self.q2_target, "q_optimizer": self.q_optimizer, "actor_optimizer": self.actor_optimizer,
        }
        self.config, self.generator = config, generator

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        s, a, r, s2, done = batch

        # 1. critics, towards the smoothed target policy's value
        with torch.no_grad():
            noise = torch.randn(a.shape, generator=self.generator, device=a.device)
            noise = (noise * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            a2 = (self.actor_target(s2) + noise).clamp(-1, 1)
            q_target = r + c.discount * (1 - done) * torch.min(self.q1_target(s2, a2), self.q2_target(s2, a2))
        q_loss = F.mse_loss(self.q1(s, a), q_target) + F.mse_loss(self.q2(s, a), q_target)
        optimize(self.q_optimizer, q_loss)
        losses = {"q_loss": q_loss.detach()}

        # 2. delayed actor and targets (step counts from 1: the counter is incremented before the test)
        if step % c.policy_delay == 0:
            policy_actions = self.actor(s)
            actor_loss = td3bc_actor_loss(self.q1(s, policy_actions), policy_actions, a, c.alpha)
            optimize(self.actor_optimizer, actor_loss)
            polyak(self.actor_target, self.actor, c.tau)
            polyak(self.q1_target, self.q1, c.tau)
            polyak(self.q2_target, self.q2, c.tau)
            losses["actor_loss"] = actor_loss.detach()
        return losses

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)


@register_experiment("td3bc", config=TD3BCConfig, datasets=("minari",), smoke=SMOKE,
                     metrics={**OFFLINE_METRICS, "q_loss": "min", "actor_loss": "min"})
def run(config: TD3BCConfig, session) -> dict[str, float]:
    """TD3+BC on Minari MuJoCo medium data, Gymnasium v5 evaluation (Appendix F, Table 4)."""
    return train(config, session, TD3BC)
