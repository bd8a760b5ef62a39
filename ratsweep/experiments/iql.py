"""iql: Implicit Q-Learning on Minari MuJoCo medium data, as the paper ran it (Appendix F, Table 3).

One update, in the authors' order (SPEC section 4):
  1. critics: target r * scale + discount * (1 - done) * V(s') with the ONLINE value network (IQL
     keeps no target V); loss MSE(Q1) + MSE(Q2), one Adam for both;
  2. value: expectile regression of V(s) towards min(Q1_target, Q2_target)(s, a);
  3. actor: advantage-weighted log-likelihood of the dataset action, weights
     exp(beta * (min Q_target(s, a) - V(s))) with V after its update, clamped at max_weight; a
     tanh-squashed Gaussian with a state-independent log-std; its learning rate decays to 0 on a
     cosine over all updates (the critics' and V's stay constant);
  4. both target critics move towards the online ones by Polyak tau.
Evaluation acts with tanh(mean).
"""

from __future__ import annotations

import math
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

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
ACTION_CLAMP = 0.999  # dataset actions are clamped to +-this before atanh


@dataclass
class IQLConfig(OfflineRLConfig):
    expectile: float = 0.7  # tau of the value network's expectile loss
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0  # advantage weights are clamped at this

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.expectile < 1, "expectile", "a number in (0, 1)", self.expectile)
        check(self.beta >= 0, "beta", "a number >= 0", self.beta)
        check(self.max_weight > 0, "max_weight", "a number > 0", self.max_weight)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|expectile - 1(diff < 0)| * diff^2), diff = target - prediction."""
    return (torch.abs(expectile - (diff < 0).float()) * diff**2).mean()


def advantage_weights(q: torch.Tensor, v: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """exp(beta * (q - v)), clamped at max_weight."""
    return torch.exp(beta * (q - v)).clamp(max=max_weight)


def tanh_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a | s) of a tanh-squashed Gaussian, per row: the Gaussian log-density of
    u = atanh(a) (a clamped to +-ACTION_CLAMP, log-std to [LOG_STD_MIN, LOG_STD_MAX]) minus the
    tanh correction sum log(1 - tanh(u)^2 + 1e-6)."""
    a = actions.clamp(-ACTION_CLAMP, ACTION_CLAMP)
    u = torch.atanh(a)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (gaussian - torch.log(1 - a**2 + 1e-6)).sum(-1)


class GaussianActor(nn.Module):
    """mean = MLP(s); a state-independent log-std vector, initialised at 0."""

    def __init__(self, obs_dim: int, act_dim: int, activation, hidden: int):
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, activation, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return tanh_gaussian_log_prob(self.mean(observations), self.log_std, actions)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """The deterministic action tanh(mean)."""
        return torch.tanh(self.mean(observations))


class IQL:
    scales_rewards = True

    def __init__(self, config: IQLConfig, obs_dim: int, act_dim: int, device: torch.device, generator: torch.Generator):
        act = activation_factory(config.activation, config.rational)
        self.q1 = Critic(obs_dim, act_dim, act, config.hidden).to(device)
        self.q2 = Critic(obs_dim, act_dim, act, config.hidden).to(device)
        self.v = mlp(obs_dim, 1, act, config.hidden).to(device)
        self.actor = GaussianActor(obs_dim, act_dim, act, config.hidden).to(device)
        self.q1_target, self.q2_target = frozen_copy(self.q1), frozen_copy(self.q2)
        self.networks = nn.ModuleDict({"q1": self.q1, "q2": self.q2, "v": self.v, "actor": self.actor})

        self.q_optimizer, self.v_optimizer, self.actor_optimizer = adam(config, self.q1, self.q2), adam(config, self.v), adam(config, self.actor)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, T_max=config.updates, eta_min=0.0)
        self.parts = {
            "networks": self.networks, "q1_target": self.q1_target, "q2_target": self.q2_target,
            "q_optimizer": self.q_optimizer, "v_optimizer": self.v_optimizer, "actor_optimizer": self.actor_optimizer,
            "actor_schedule": self.actor_schedule,
        }
        self.config = config

    def value(self, observations: torch.Tensor) -> torch.Tensor:
        return self.v(observations).squeeze(-1)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        s, a, r, s2, done = batch

        # 1. critics, towards the online V of the next state
        with torch.no_grad():
            q_target = r + c.discount * (1 - done) * self.value(s2)
        q_loss = F.mse_loss(self.q1(s, a), q_target) + F.mse_loss(self.q2(s, a), q_target)
        optimize(self.q_optimizer, q_loss)

        # 2. value: expectile of the target critics' minimum
        with torch.no_grad():
            q_min = torch.min(self.q1_target(s, a), self.q2_target(s, a))
        value_loss = expectile_loss(q_min - self.value(s), c.expectile)
        optimize(self.v_optimizer, value_loss)

        # 3. actor: advantage-weighted regression, with V after its update
        with torch.no_grad():
            weights = advantage_weights(q_min, self.value(s), c.beta, c.max_weight)
        actor_loss = -(weights * self.actor.log_prob(s, a)).mean()
        optimize(self.actor_optimizer, actor_loss)
        self.actor_schedule.step()

        # 4. target critics
        polyak(self.q1_target, self.q1, c.tau)
        polyak(self.q2_target, self.q2, c.tau)
        return {"q_loss": q_loss.detach(), "value_loss": value_loss.detach(), "actor_loss": actor_loss.detach()}

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)


@register_experiment("iql", config=IQLConfig, datasets=("minari",), smoke=SMOKE,
                     metrics={**OFFLINE_METRICS, "q_loss": "min", "value_loss": "min", "actor_loss": "min"})
def run(config: IQLConfig, session) -> dict[str, float]:
    """Implicit Q-Learning on Minari MuJoCo medium data, Gymnasium v5 evaluation (Appendix F, Table 3)."""
    return train(config, session, IQL)
